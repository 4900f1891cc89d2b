"""The fused hard-concrete gate kernel (`tf_dynhp.fused`) against NumPy and the TensorFlow-op path."""

import math
import os

import keras
import numpy as np
import pytest
from conftest import load_gate_kernel
import tensorflow as tf

from conftest import make_mlp
import tf_dynhp
from tf_dynhp import fused, gates, to_l0
from tf_dynhp.pruning import core_from as _core_from

T, L, R = 2.0 / 3.0, -0.1, 1.1


@pytest.fixture(scope="module", autouse=True)
def kernel_dir(tmp_path_factory):
    """Every test here builds into (and `fit` loads from) a temporary cache folder, never the
    user's cache (a training run elsewhere may be using it)."""
    folder = tmp_path_factory.mktemp("kernels")
    folder.chmod(0o755)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TF_DYNHP_KERNEL_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def kernel(kernel_dir):
    """The loaded op module (compiled once into the temporary cache, ~10 s).
    Skipped only on a machine without a C++ compiler; a failing compilation fails."""
    return load_gate_kernel()


def np_sample(u, log_alpha, t=T, l=L, r=R):
    s = 1.0 / (1.0 + np.exp(-(np.log(u) - np.log(1 - u) + log_alpha) / t))
    return np.clip(s * (r - l) + l, 0.0, 1.0)


# ------------------------------------------------------------------- the noise
def test_noise_reference_is_odd_multiples_of_2_pow_minus_24():
    u = fused.noise_reference([3, 9], 40, 77)
    k = u * 2**24
    assert u.shape == (40, 77) and u.min() > 0 and u.max() < 1
    np.testing.assert_array_equal(k, np.round(k))
    assert np.all(np.round(k) % 2 == 1)


def test_noise_reference_is_uniform_and_uncorrelated():
    u = fused.noise_reference([1, 0], 1000, 300)  # 300 000 values
    assert u.mean() == pytest.approx(0.5, abs=5 * math.sqrt(1 / 12 / u.size))
    assert u.var() == pytest.approx(1 / 12, abs=1e-3)
    counts = np.histogram(u, bins=100, range=(0, 1))[0]
    expected = u.size / 100
    chi2 = np.sum((counts - expected) ** 2 / expected)
    assert chi2 < 99 + 5 * math.sqrt(2 * 99), chi2  # 99 degrees of freedom, ~5 sigma
    bound = 5 / math.sqrt(u.size)
    assert abs(np.corrcoef(u[:, :-1].ravel(), u[:, 1:].ravel())[0, 1]) < bound  # neighbouring gates
    assert abs(np.corrcoef(u[:-1].ravel(), u[1:].ravel())[0, 1]) < bound  # neighbouring examples
    nxt = fused.noise_reference([1, 1], 1000, 300)  # the next step of the same seed generator
    assert abs(np.corrcoef(u.ravel(), nxt.ravel())[0, 1]) < bound
    assert np.mean(u == nxt) < 1e-3


@pytest.mark.parametrize("other", [[4, 0], [3, 1], [-3, 0]])
def test_noise_depends_on_both_key_halves(other):
    a, b = fused.noise_reference([3, 0], 8, 16), fused.noise_reference(other, 8, 16)
    assert np.mean(a == b) < 0.05


# --------------------------------------------------------------- forward values
@pytest.mark.parametrize("t,l,r", [(T, L, R), (0.5, -0.2, 1.3), (1.0, -0.05, 1.05)])
@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (64, 784), (513, 100)])
def test_kernel_equals_numpy_sample_of_reference_noise(kernel, t, l, r, shape, rng):
    """Values and open counts of the kernel == NumPy's hard-concrete sample of the same bits
    (T = 2/3 takes the kernel's r * sqrt(r) path, the others pow); large shapes are
    split over threads by column blocks."""
    x = rng.normal(size=shape).astype(np.float32)
    la = rng.uniform(gates.LOG_ALPHA_MIN, gates.LOG_ALPHA_MAX, size=shape[1]).astype(np.float32)
    key = np.array([11, 5], np.int64)
    gated, count = fused.gated_product_fused(x, key, la, t, l, r)
    z = np_sample(fused.noise_reference(key, *shape), la.astype(np.float64), t, l, r)
    np.testing.assert_allclose(gated.numpy(), x * z, rtol=0, atol=2e-6 * max(1.0, np.abs(x).max()))
    # Open counts: exact, except where float32 rounding can move a sample across the clip at 0.
    u = fused.noise_reference(key, *shape)
    s_ref = 1.0 / (1.0 + np.exp(-(np.log(u) - np.log(1 - u) + la.astype(np.float64)) / t))
    near_zero = np.abs(s_ref * (r - l) + l) < 1e-5
    diff = np.abs(count.numpy() - (z > 0).sum(axis=0))
    assert np.all(diff <= near_zero.sum(axis=0)), diff.max()


@pytest.mark.parametrize("log_alpha", [-3.0, -1.0, 0.0, 0.5, 2.0])
def test_kernel_open_rate_is_prob_open(kernel, log_alpha):
    """Eq. 4: the fraction of open samples drawn by the kernel's own noise is P(z > 0)."""
    n, width = 4000, 50
    _, count = fused.gated_product_fused(np.ones((n, width), np.float32), np.array([2, 7], np.int64), np.full(width, log_alpha, np.float32))
    rate = count.numpy().sum() / (n * width)
    expected = float(gates.prob_open(np.float64(log_alpha)))
    assert rate == pytest.approx(expected, abs=5 * math.sqrt(expected * (1 - expected) / (n * width)))


def test_same_key_same_values_other_key_other_values(kernel, rng):
    x = rng.random((20, 30)).astype(np.float32)
    la = np.zeros(30, np.float32)
    a = fused.gated_product_fused(x, np.array([1, 2], np.int64), la)[0].numpy()
    b = fused.gated_product_fused(x, np.array([1, 2], np.int64), la)[0].numpy()
    c = fused.gated_product_fused(x, np.array([1, 3], np.int64), la)[0].numpy()
    np.testing.assert_array_equal(a, b)
    assert np.mean(a == c) < 0.6  # exact ones and zeros may coincide, the rest does not


# ------------------------------------------------------------------- gradients
@pytest.mark.parametrize("shape", [(5, 7), (200, 300)])
def test_gradients_equal_autodiff_of_composition_with_same_noise(kernel, shape, rng):
    x = tf.constant(rng.normal(size=shape).astype(np.float32))
    la = tf.Variable(rng.uniform(-2, 3, size=shape[1]).astype(np.float32))
    up = tf.constant(rng.normal(size=shape).astype(np.float32))
    key = np.array([5, 9], np.int64)
    u = tf.constant(fused.noise_reference(key, *shape))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        loss_fused = tf.reduce_sum(fused.gated_product_fused(x, key, la)[0] * up)
        # The plain composition in float64, differentiated by TensorFlow.
        z = gates.sample_gates(u, tf.cast(la, tf.float64))
        loss_ref = tf.reduce_sum(tf.cast(x, tf.float64) * z * tf.cast(up, tf.float64))
    for got, want in zip(tape.gradient(loss_fused, [x, la]), tape.gradient(loss_ref, [x, la])):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5 * np.abs(want.numpy()).max())


def test_training_step_fused_equals_tf_path_on_same_noise(kernel, rng):
    """A whole GatedModel step (loss, every gradient, Eq. 6 counts, Eq. 8's ||S||_1) is the
    same with the fused kernel and with the TF ops fed the kernel's noise."""
    keras.utils.set_random_seed(0)
    model = make_mlp(input_shape=(20,), hidden=(16, 8), classes=4)
    core, _, _ = _core_from(to_l0(model, l0_lambda=0.1, weight_decay=1e-3, dataset_size=64, seed=0))
    core.compile(optimizer="adam", jit_compile=False)
    core.track_variance = True
    x = tf.constant(rng.normal(size=(64, 20)).astype(np.float32))
    y = tf.constant(rng.integers(0, 4, size=64).astype(np.int32))
    keys = [layer.seed_generator.state.numpy().copy() for layer in core.gated_layers]
    core.gate_kernel = "fused"
    a = core.train_stats(x, y, apply=False)
    noise = [tf.constant(fused.noise_reference(k, 64, layer.num_gates).astype(np.float32)) for k, layer in zip(keys, core.gated_layers)]
    core.gate_kernel = "tf"
    b = core.train_stats(x, y, noise=noise, apply=False)
    for name in ("loss", "data_loss", "correct", "variance_l1"):
        np.testing.assert_allclose(float(a[name]), float(b[name]), rtol=2e-5)
    for ga, gb in zip(a["grads"], b["grads"]):
        np.testing.assert_allclose(ga.numpy(), gb.numpy(), rtol=1e-4, atol=1e-6)
    for ca, cb in zip(a["gate_open"], b["gate_open"]):
        np.testing.assert_array_equal(ca.numpy(), cb.numpy())
    # The fused step advanced each layer's seed generator by one, as the TF path's noise draw does.
    assert [int(layer.seed_generator.state.numpy()[1]) for layer in core.gated_layers] == [int(k[1]) + 1 for k in keys]


# ---------------------------------------------------------------------- errors
def test_kernel_rejects_bad_shapes(kernel):
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"log_alpha of shape \(4,\)"):
        kernel.tf_dynhp_hard_concrete_gate(tf.zeros((2, 4)), tf.zeros((3,)), tf.constant([1, 2], tf.int64), temperature=T, limit_l=L, limit_r=R)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"key of shape \(2,\)"):
        kernel.tf_dynhp_hard_concrete_gate(tf.zeros((2, 4)), tf.zeros((4,)), tf.constant([1, 2, 3], tf.int64), temperature=T, limit_l=L, limit_r=R)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="rank 2|must be rank 2"):
        kernel.tf_dynhp_hard_concrete_gate(tf.zeros((2, 4, 1)), tf.zeros((4,)), tf.constant([1, 2], tf.int64), temperature=T, limit_l=L, limit_r=R)
    with pytest.raises(tf.errors.InvalidArgumentError, match="temperature > 0"):
        kernel.tf_dynhp_hard_concrete_gate(tf.zeros((2, 4)), tf.zeros((4,)), tf.constant([1, 2], tf.int64), temperature=0.0, limit_l=L, limit_r=R)


def test_resolve_gate_kernel_names():
    assert fused.resolve_gate_kernel("tf") == "tf"
    with pytest.raises(ValueError, match=r"Expected one of \['auto', 'fused', 'tf'\]. Received: gate_kernel='xla'"):
        fused.resolve_gate_kernel("xla")


def test_build_without_compiler_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(fused.KernelBuildError, match="No C.. compiler found .*gate_kernel='tf'"):
        fused.build_kernel(tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # nothing written


def test_build_into_unwritable_folder_says_so(tmp_path):
    if os.geteuid() == 0:  # root writes anywhere: use a path under a regular file instead
        blocker = tmp_path / "file"
        blocker.write_text("x")
        folder = blocker / "cache"
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o500)
        folder = folder / "cache"
    with pytest.raises(fused.KernelBuildError, match="Cannot write the kernel cache folder"):
        fused.build_kernel(folder)


def test_build_is_cached_by_content(kernel, kernel_dir, monkeypatch):
    monkeypatch.setattr(fused, "_compile", lambda cmd: pytest.fail(f"compiled again: {cmd}"))
    first = fused.build_kernel()  # the fixture built it: found, not compiled again
    assert first.exists() and first.name.startswith("hard_concrete_gate-") and first.parent == kernel_dir
    assert fused.build_kernel() == first
    # Its digest is written beside it, in `sha256sum` format.
    assert (kernel_dir / (first.name + ".sha256")).read_text() == f"{fused._sha256(first)}  {first.name}\n"


def test_loader_checks_the_digest_right_before_loading(kernel, monkeypatch, tmp_path):
    """load_kernel never hands tf.load_op_library a file that does not match its digest
    (a truncated library is mapped, then SIGBUS kills the process). The library this
    process has loaded is never written to: a copy is damaged."""
    built = fused.build_kernel()
    copy = tmp_path / built.name
    copy.write_bytes(built.read_bytes()[: built.stat().st_size // 2])
    (tmp_path / (built.name + ".sha256")).write_text((built.parent / (built.name + ".sha256")).read_text())
    monkeypatch.setattr(fused, "_LOADED", {})
    monkeypatch.setattr(fused, "build_kernel", lambda *a, **k: copy)  # verified, then damaged
    monkeypatch.setattr(tf, "load_op_library", lambda p: pytest.fail(f"loaded the damaged {p}"))
    with pytest.raises(fused.KernelBuildError, match="Not loading the kernel: .*does not match its digest"):
        fused.load_kernel(tmp_path)


def test_loader_refuses_a_library_without_the_ops(kernel, monkeypatch, tmp_path):
    """A library with a valid digest that is not ours: a KernelBuildError, not an AttributeError."""
    monkeypatch.setattr(fused, "_LOADED", {})
    monkeypatch.setattr(fused, "_BY_DIGEST", {})  # a process that has loaded no build yet
    monkeypatch.setattr(fused, "build_kernel", lambda *a, **k: fused.SOURCE)  # any file with a digest
    monkeypatch.setattr(fused, "_unverified", lambda p: None)
    monkeypatch.setattr(tf, "load_op_library", lambda p: object())
    with pytest.raises(fused.KernelBuildError, match=r"lacks the op\(s\) \['tf_dynhp_hard_concrete_gate', .*not a tf_dynhp kernel"):
        fused.load_kernel(tmp_path)


def test_a_second_build_is_not_loaded_into_a_process_that_has_one(kernel, monkeypatch, tmp_path):
    """Two builds (other flags, other cache folders) loaded in one process registered the
    kernels twice, and every later fused call failed with "Multiple OpKernel
    registrations"; the second is now not loaded, the first one's ops serve."""
    loaded = fused.load_kernel()
    monkeypatch.setattr(fused, "_LOADED", dict(fused._LOADED))
    other = tmp_path / fused.build_kernel().name
    other.write_bytes(fused.build_kernel().read_bytes() + b"another build")
    monkeypatch.setattr(fused, "build_kernel", lambda *a, **k: other)
    monkeypatch.setattr(fused, "_unverified", lambda p: None)
    monkeypatch.setattr(tf, "load_op_library", lambda p: pytest.fail(f"loaded a second build {p}"))
    assert fused.load_kernel(tmp_path) is loaded


# ------------------------------------------------- building with a fake compiler
FAKE_CXX = """#!/bin/sh
# A C++ compiler that logs its arguments, rejects REJECT, and writes `-o` a small file.
[ "$1" = "--version" ] && {{ echo "fake-c++ 1.0"; exit 0; }}
echo "$@" >> "{log}"
for a in "$@"; do
  for r in {reject}; do
    [ "$a" = "$r" ] && {{ echo "error: unrecognized command-line option '$a'" >&2; exit 1; }}
  done
done
prev=""; out=""
for a in "$@"; do [ "$prev" = "-o" ] && out="$a"; prev="$a"; done
[ -n "$out" ] && printf 'library built by fake-c++' > "$out"
exit 0
"""


def fake_compiler(tmp_path, monkeypatch, reject=()):
    """$CXX -> a script (a new path per test: flag probes are cached per compiler path)."""
    log = tmp_path / "cxx.log"
    script = tmp_path / f"fake-cxx-{'-'.join(r.strip('-') for r in reject) or 'all'}"
    script.write_text(FAKE_CXX.format(log=log, reject=" ".join(reject) or "-none-"))
    script.chmod(0o755)
    monkeypatch.setenv("CXX", str(script))
    return log


def builds(log):
    """The compile commands (not the flag probes) the fake compiler saw."""
    return [line for line in log.read_text().splitlines() if "hard_concrete_gate.cc" in line] if log.exists() else []


@pytest.mark.parametrize("reject,kept,dropped", [
    ((), ["-march=native", "-mno-avx512fp16"], []),
    (("-mno-avx512fp16",), ["-march=native"], ["-mno-avx512fp16"]),  # GCC < 12
    (("-march=native",), ["-mcpu=native", "-mno-avx512fp16"], ["-march=native"]),  # aarch64 / Apple clang
    (("-march=native", "-mcpu=native", "-mno-avx512fp16"), [], ["-march=native", "-mcpu=native", "-mno-avx512fp16"]),
])
def test_cpu_flags_are_probed_not_assumed(tmp_path, monkeypatch, reject, kept, dropped):
    log = fake_compiler(tmp_path, monkeypatch, reject)
    path = fused.build_kernel(tmp_path / "cache")
    assert path.read_bytes() == b"library built by fake-c++"
    (cmd,) = builds(log)
    args = cmd.split()
    assert [a for a in args if a in ("-march=native", "-mcpu=native", "-mno-avx512fp16")] == kept
    assert not set(dropped) & set(args)
    assert args[args.index("-o") + 2 : args.index("-o") + 4 + len(kept)] == ["-O3", *kept, "-fno-math-errno"]


def test_flags_on_this_machine_are_the_ones_used_before_probing():
    """The behaviour digest of the kernel depends on its flags: on x86 with GCC >= 12 they
    are exactly the flags this module passed before it probed them."""
    cxx = fused._compiler()
    if cxx is None:
        pytest.skip("no C++ compiler")
    version = os.popen(f"{cxx} --version").read()
    if "x86" not in os.uname().machine or "g++" not in os.path.basename(cxx) or not any(f" {v}." in version for v in range(12, 40)):
        pytest.skip("not x86 with GCC >= 12")
    assert fused._build_flags(cxx)[0][:7] == ["-O3", "-march=native", "-mno-avx512fp16", "-fno-math-errno", "-fPIC", "-shared", "-w"]


@pytest.mark.parametrize("damage", ["truncated", "foreign", "no_digest", "empty_digest", "writable_library"])
def test_damaged_cached_library_is_rebuilt(tmp_path, monkeypatch, damage):
    log = fake_compiler(tmp_path, monkeypatch)
    cache = tmp_path / "cache"
    path = fused.build_kernel(cache)
    assert len(builds(log)) == 1
    assert fused.build_kernel(cache) == path and len(builds(log)) == 1  # verified: not built again
    good = path.read_bytes()
    sums = path.with_name(path.name + ".sha256")
    if damage == "truncated":
        path.write_bytes(good[:5])
    elif damage == "foreign":
        path.write_bytes(b"\x7fELF some other library of the same length" [: len(good)])
    elif damage == "no_digest":
        sums.unlink()
    elif damage == "empty_digest":
        sums.write_text("")
    else:  # intact, but anyone may rewrite it between the check and the load
        path.chmod(0o777)
    assert fused.build_kernel(cache) == path
    assert len(builds(log)) == 2 and path.read_bytes() == good
    assert fused._unverified(path) is None and path.stat().st_mode & 0o022 == 0


def test_leftovers_of_a_killed_build_are_removed(tmp_path, monkeypatch):
    fake_compiler(tmp_path, monkeypatch)
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o755)
    ours = cache / ".hard_concrete_gate-0123456789abcdef.so.k1ll3d.tmp"
    old_legacy, new_legacy = cache / "tmpab12cd34.so", cache / "tmpzz99yy88.so"
    for f in (ours, old_legacy, new_legacy):
        f.write_bytes(b"half a library")
    os.utime(old_legacy, (1e9, 1e9))  # 2001: long dead
    path = fused.build_kernel(cache)
    left = sorted(p.name for p in cache.iterdir())
    assert left == sorted([".build.lock", path.name, path.name + ".sha256", new_legacy.name]), left
    # Beside a valid library too (a build killed while another one finished), unless a build runs.
    ours.write_bytes(b"half a library")
    with fused._build_lock(cache):
        with fused._build_lock(cache, wait=False) as held:
            assert held is False
    assert fused.build_kernel(cache) == path and not ours.exists()


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o777])
def test_cache_folder_writable_by_others_is_refused(tmp_path, monkeypatch, caplog, mode):
    log = fake_compiler(tmp_path, monkeypatch)
    cache = tmp_path / "shared-cache"
    cache.mkdir()
    cache.chmod(mode)
    with pytest.raises(fused.KernelBuildError, match=f"kernel cache folder {cache} is writable by others.*chmod go-w {cache}"):
        fused.build_kernel(cache)
    assert builds(log) == [] and list(cache.iterdir()) == []
    # Under "auto": TensorFlow ops, the reason logged; "fused" insists and fails.
    monkeypatch.setenv("TF_DYNHP_KERNEL_DIR", str(cache))
    monkeypatch.setattr(fused, "_FAILED", {})
    monkeypatch.setattr(fused, "_gpus", lambda: [])
    with caplog.at_level("WARNING", logger="tf_dynhp"):
        assert fused.resolve_gate_kernel("auto") == "tf"
    assert f"kernel cache folder {cache} is writable by others" in caplog.text
    with pytest.raises(fused.KernelBuildError, match="writable by others"):
        fused.resolve_gate_kernel("fused")


def test_cache_folder_of_another_user_is_refused(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    fake_compiler(tmp_path, monkeypatch)
    cache = tmp_path / "theirs"
    cache.mkdir(mode=0o755)
    os.chown(cache, 65534, 65534)
    with pytest.raises(fused.KernelBuildError, match=f"kernel cache folder {cache} belongs to another user \\(uid 65534"):
        fused.build_kernel(cache)


def test_new_cache_folder_is_not_group_writable_under_umask_002(tmp_path, monkeypatch):
    fake_compiler(tmp_path, monkeypatch)
    old = os.umask(0o002)
    try:
        path = fused.build_kernel(tmp_path / "new" / "cache")
    finally:
        os.umask(old)
    assert path.parent.stat().st_mode & 0o777 == 0o755
    assert fused.build_kernel(tmp_path / "new" / "cache") == path  # accepted the next time


# ------------------------------------------------------------------------- GPU
def test_auto_takes_tf_ops_when_a_gpu_is_visible(monkeypatch, caplog):
    """The kernel is CPU-only: with a GPU, "auto" must not pick it (nor compile it)."""
    real = tf.config.list_physical_devices
    fake_gpu = tf.config.PhysicalDevice(name="/physical_device:GPU:0", device_type="GPU")
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [fake_gpu] if kind == "GPU" else real(kind))
    monkeypatch.setattr(fused, "_availability", lambda announce=None: pytest.fail("tried to build the kernel"))
    with caplog.at_level("INFO", logger="tf_dynhp"):
        assert fused.resolve_gate_kernel("auto") == "tf"
    assert "CPU-only and TensorFlow sees 1 GPU" in caplog.text
    monkeypatch.setattr(fused, "_availability", lambda announce=None: None)
    assert fused.resolve_gate_kernel("fused") == "fused"  # asked for: runs on the CPU
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [] if kind == "GPU" else real(kind))
    assert fused.resolve_gate_kernel("auto") == "fused"


# ------------------------------------------------------------------------- fit
def test_fit_gate_kernel_argument_checked_before_training(mnist_small):
    (x, y), _ = mnist_small
    with pytest.raises(ValueError, match=r"`gate_kernel`. Expected one of \['auto', 'fused', 'tf'\]. Received: gate_kernel='gpu'"):
        tf_dynhp.fit(make_mlp(), x, y, method="sp", epochs=1, gate_kernel="gpu", verbose=0)
    with pytest.raises(ValueError, match="gate_kernel='fused' needs float32 L0Dense layers.*float64"):
        tf_dynhp.fit(make_mlp(dtype="float64"), x.astype("float64"), y, method="sp", epochs=1, gate_kernel="fused", verbose=0)


def test_fit_fused_is_deterministic_and_recorded(kernel, mnist_small):
    (x, y), (xt, yt) = mnist_small
    runs = []
    for k in ("fused", "fused", "tf"):
        keras.utils.set_random_seed(3)  # the same initial weights
        runs.append(tf_dynhp.fit(make_mlp(), x, y, method="dynhp", alpha_bs=0.972, budget_kb=2000.0, epochs=2, seed=3, verbose=0, gate_kernel=k))
    assert [r.state.gate_kernel for r in runs] == ["fused", "fused", "tf"]
    assert 0 < runs[0].state.first_trace_seconds <= runs[0].history["trace_seconds"][0]
    for wa, wb in zip(runs[0].gated_model.get_weights(), runs[1].gated_model.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    assert runs[0].history["loss"] == runs[1].history["loss"]
    assert runs[0].history["loss"] != runs[2].history["loss"]  # other noise
    assert tf_dynhp.fit(make_mlp(dtype="float64"), x.astype("float64"), y, method="sp", epochs=1, verbose=0).state.gate_kernel == "tf"


def test_resume_refuses_other_gate_kernel(kernel, mnist_small, tmp_path):
    (x, y), _ = mnist_small
    tf_dynhp.fit(make_mlp(), x, y, method="sp", epochs=1, seed=1, verbose=0, checkpoint_dir=tmp_path, gate_kernel="fused")
    with pytest.raises(ValueError, match="made with gate_kernel='fused'; this run has gate_kernel='tf'"):
        tf_dynhp.fit(make_mlp(), x, y, method="sp", epochs=2, seed=1, verbose=0, checkpoint_dir=tmp_path, resume=True, gate_kernel="tf")
