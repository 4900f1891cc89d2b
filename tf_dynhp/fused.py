"""The fused CPU kernel of the per-example hard-concrete input gates (`L0Dense` training step).

Composed of TensorFlow ops, one gated layer's training step makes about twenty
memory-bound passes over (batch, gates) floats, and TensorFlow's uniform noise
(scalar Philox) is as slow as all of them together: at batch 512 on the
784-300-100 MLP the gates cost more than Keras' whole dense step
(`tools/benchmark_step.py`, part 3). `csrc/hard_concrete_gate.cc` does the same
work in one pass forward (noise, Eq. 2 sample, stretch and clip, `x * z`, the
open counts of Eq. 6) and one backward (the gradient of the gate logits), with
counter-based noise computed in place (`noise_reference` gives the same bits in
NumPy).

The kernel is compiled on first use with the C++ compiler (`$CXX`, else `g++`)
against the installed TensorFlow's headers (`tf.sysconfig`), for this CPU
(`-march=native`, or `-mcpu=native` where only that is accepted; each CPU flag is
probed by compiling an empty file with it), into a cache folder
(`$TF_DYNHP_KERNEL_DIR`, else `~/.cache/tf_dynhp/kernels`) keyed by the source,
the TensorFlow version, the compiler, its flags and the CPU: about 10 s once, then
loaded. The library's SHA-256 is written beside it (`<library>.sha256`) and checked
before every load: a truncated or foreign file there is compiled again, never loaded.
Builds into one folder take turns (a lock file) and remove what killed builds left.
A cache folder writable by group or others is refused.

`tf_dynhp.fit(..., gate_kernel="auto")` uses the kernel when it builds and no GPU
is visible to TensorFlow (the kernel is CPU-only), and falls back to the TensorFlow-op
path (`gates.gated_product`) otherwise, logging why.

The two paths draw different noise, so a run gives the same numbers again only
with the same `gate_kernel` (and, for "fused", on a CPU of the same kind: the
kernel is compiled for it).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tf_dynhp import gates
from tf_dynhp._checks import invalid, write_atomic

__all__ = [
    "GATE_KERNELS",
    "KernelBuildError",
    "build_kernel",
    "gated_product_fused",
    "load_kernel",
    "noise_reference",
    "resolve_gate_kernel",
]

_LOG = logging.getLogger("tf_dynhp")
SOURCE = Path(__file__).with_name("csrc") / "hard_concrete_gate.cc"
#: Accepted values of `gate_kernel`: the fused kernel, TensorFlow ops, or the first that works.
GATE_KERNELS = ("auto", "fused", "tf")
_MASK64 = (1 << 64) - 1


class KernelBuildError(RuntimeError):
    """The fused gate kernel could not be compiled or loaded (the message says why)."""


def _cpu_signature() -> str:
    """What `-march=native` depends on: the CPU's model name and feature flags."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or platform.machine()
    keep = [line for line in text.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(keep)))


def _compiler() -> str | None:
    cxx = os.environ.get("CXX") or "g++"
    return shutil.which(cxx)


#: Flags every C++ compiler we support (GCC, clang) takes.
_OPT_FLAGS = ("-O3",)
_LIB_FLAGS = ("-fno-math-errno", "-fPIC", "-shared", "-w")
#: CPU flags, each group's first alternative the compiler accepts (probed), in this order:
#: code for this CPU (`-march=native` on GCC and x86 clang, `-mcpu=native` where only that
#: is accepted, e.g. aarch64 / Apple clang), and no AVX-512 FP16 (TensorFlow's bundled Eigen
#: headers do not compile with it under GCC 12; older compilers do not know the flag and
#: do not enable the extension either). A group none of whose flags is accepted is left out.
_CPU_FLAG_CHOICES = (("-march=native", "-mcpu=native"), ("-mno-avx512fp16",))


@functools.cache
def _accepts(cxx: str, flag: str) -> bool:
    """True when `cxx` compiles an empty C++ file with `flag` (warnings as errors: clang
    only warns about some flags it ignores)."""
    with tempfile.TemporaryDirectory(prefix="tf_dynhp-probe-") as tmp:
        src = Path(tmp) / "empty.cc"
        src.write_text("int tf_dynhp_probe;\n")
        try:
            done = subprocess.run(
                [cxx, flag, "-Werror", "-x", "c++", "-c", str(src), "-o", str(Path(tmp) / "empty.o")],
                capture_output=True, text=True, timeout=60,
            )
        except (OSError, subprocess.SubprocessError):
            return False
    return done.returncode == 0


def _cpu_flags(cxx: str) -> list[str]:
    """The CPU flags of `_CPU_FLAG_CHOICES` that `cxx` accepts."""
    chosen = []
    for group in _CPU_FLAG_CHOICES:
        for flag in group:
            if _accepts(cxx, flag):
                chosen.append(flag)
                break
    return chosen


def _build_flags(cxx: str) -> tuple[list[str], list[str]]:
    """Compile and link flags for `cxx` (its CPU flags probed, TensorFlow's from `tf.sysconfig`).

    On x86 with GCC >= 12 this is `-O3 -march=native -mno-avx512fp16 -fno-math-errno
    -fPIC -shared -w` plus TensorFlow's flags, as before the flags were probed (so the
    cache key, hence the cached library, stays the same).
    """
    import tensorflow as tf

    opt = [*_OPT_FLAGS, *_cpu_flags(cxx), *_LIB_FLAGS]
    return opt + list(tf.sysconfig.get_compile_flags()), list(tf.sysconfig.get_link_flags())


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("TF_DYNHP_KERNEL_DIR"):
        return Path(os.environ["TF_DYNHP_KERNEL_DIR"])
    return Path.home() / ".cache" / "tf_dynhp" / "kernels"


def _check_cache_folder(folder: Path) -> None:
    """Refuses a cache folder that others may write: whoever can put a library there runs
    code in every training process of this user."""
    try:
        st = folder.stat()
    except (FileNotFoundError, NotADirectoryError):
        return  # created (or refused as unwritable) by the build
    except OSError as err:
        raise KernelBuildError(f"Cannot read the kernel cache folder {folder}: {err}") from err
    if not stat.S_ISDIR(st.st_mode):
        raise KernelBuildError(f"The kernel cache folder {folder} is not a folder.")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise KernelBuildError(
            f"The kernel cache folder {folder} is writable by others (mode {stat.filemode(st.st_mode)}): "
            f"a library placed there would run in this process. Run `chmod go-w {folder}`, or point "
            "$TF_DYNHP_KERNEL_DIR at a folder only you can write, or use gate_kernel='tf'."
        )
    if hasattr(os, "getuid") and st.st_uid not in (os.getuid(), 0):
        raise KernelBuildError(
            f"The kernel cache folder {folder} belongs to another user (uid {st.st_uid}, this process runs as "
            f"uid {os.getuid()}): a library placed there would run in this process. Point "
            "$TF_DYNHP_KERNEL_DIR at a folder of your own, or use gate_kernel='tf'."
        )


def _digest_path(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _unverified(target: Path) -> str | None:
    """None when `target` has the SHA-256 written beside it at build time, else why not."""
    sums = _digest_path(target)
    if not target.is_file():
        return f"{target} does not exist"
    for path in (target, sums):
        if path.exists() and path.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return f"{path} is writable by others"
    try:
        recorded = sums.read_text().split()
    except FileNotFoundError:
        return f"{target} has no digest file {sums.name} (an earlier build was interrupted, or it is not ours)"
    except OSError as err:
        return f"cannot read {sums}: {err}"
    if not recorded:
        return f"{sums} is empty"
    actual = _sha256(target)
    if recorded[0] != actual:
        return f"{target} does not match its digest {sums.name} (truncated or replaced: SHA-256 {actual[:16]}..., recorded {recorded[0][:16]}...)"
    return None


@contextlib.contextmanager
def _build_lock(folder: Path, wait: bool = True):
    """One build at a time per cache folder (other processes wait; no-op without `fcntl`).
    With `wait=False` it yields False at once when another process holds the lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield True
        return
    with open(folder / ".build.lock", "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _tidy(folder: Path) -> None:
    """Best effort: removes what killed builds left beside a valid library, unless a build is
    running (then it is that build's job) or the folder is read-only."""
    try:
        with _build_lock(folder, wait=False) as held:
            if held:
                removed = _remove_leftovers(folder)
                if removed:
                    _LOG.info("tf_dynhp: removed %d temporary file(s) of an interrupted kernel build in %s: %s", len(removed), folder, removed)
    except OSError:
        pass


#: Seconds after which a temporary file of the build before the lock existed is
#: taken as left by a killed build (the compile times out after 600 s).
_STALE_SECONDS = 900


def _remove_leftovers(folder: Path) -> list[str]:
    """Removes temporary files killed builds left (called holding the build lock: any
    temporary file of ours is then stale). Returns their names."""
    removed = []
    now = time.time()
    for path in folder.iterdir():
        name = path.name
        ours = name.startswith(".hard_concrete_gate-") and name.endswith(".tmp")
        # Builds before the lock named their output tmpXXXXXXXX.so and took no lock: only old ones.
        legacy = name.startswith("tmp") and name.endswith(".so")
        try:
            if ours or (legacy and now - path.stat().st_mtime > _STALE_SECONDS):
                path.unlink()
                removed.append(name)
        except FileNotFoundError:
            pass
    return removed


def _compile(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def build_kernel(cache_dir: str | os.PathLike | None = None, announce: Callable[[str], Any] | None = None) -> Path:
    """Compiles `csrc/hard_concrete_gate.cc` (once per source, TensorFlow, compiler and CPU).

    The library is written under a name keyed by what it was built from, with its
    SHA-256 in `<name>.sha256` beside it. A library that does not match its digest
    (truncated by a full disk or a killed copy, replaced by another file) is never
    returned: it is compiled again. Temporary files of killed builds are removed.

    Args:
        cache_dir: folder for the compiled library; default `$TF_DYNHP_KERNEL_DIR`,
            else `~/.cache/tf_dynhp/kernels`. It must not be writable by group or
            others.
        announce: called with a one-line message before a compilation starts
            (e.g. `print`); the library is otherwise silent.

    Returns:
        Path of the shared library (verified against its digest).

    Raises:
        KernelBuildError: no compiler, a cache folder others may write or one that
            cannot be written, or a failed compilation (with the compiler's last lines).
    """
    import tensorflow as tf

    cxx = _compiler()
    if cxx is None:
        raise KernelBuildError(
            f"No C++ compiler found (looked for $CXX, else g++; CXX={os.environ.get('CXX')!r}). "
            "Install one (Debian: apt-get install g++) or use gate_kernel='tf'."
        )
    folder = _cache_dir(cache_dir)
    _check_cache_folder(folder)
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise KernelBuildError(f"The C++ compiler {cxx} does not run: {err}") from err
    compile_flags, link_flags = _build_flags(cxx)
    key = hashlib.sha256(
        b"\0".join(
            s.encode()
            for s in [SOURCE.read_text(), tf.__version__, version, " ".join(compile_flags + link_flags), _cpu_signature()]
        )
    ).hexdigest()[:16]
    target = folder / f"hard_concrete_gate-{key}.so"
    if _unverified(target) is None:
        _tidy(folder)
        return target
    try:
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        if created:
            os.chmod(folder, 0o755)  # a umask of 002 would leave it group-writable: refused next time
    except OSError as err:
        raise KernelBuildError(f"Cannot write the kernel cache folder {folder}: {err}") from err
    _check_cache_folder(folder)
    try:
        with _build_lock(folder):
            problem = _unverified(target)
            if problem is None:  # another process built it while this one waited
                return target
            removed = _remove_leftovers(folder)
            if removed:
                _LOG.info("tf_dynhp: removed %d temporary file(s) of an interrupted kernel build in %s: %s", len(removed), folder, removed)
            if target.exists():
                _LOG.warning("tf_dynhp: compiling the fused gate kernel again: %s", problem)
            _compile_into(cxx, compile_flags, link_flags, target, announce)
    except OSError as err:
        raise KernelBuildError(f"Cannot write the kernel cache folder {folder}: {err}") from err
    return target


def _compile_into(cxx: str, compile_flags: list[str], link_flags: list[str], target: Path, announce: Callable[[str], Any] | None) -> None:
    """Compiles into a temporary file beside `target`, then renames it and writes its digest."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    cmd = [cxx, str(SOURCE), "-o", tmp, *compile_flags, *link_flags]
    if announce is not None:
        announce(f"tf_dynhp: compiling the fused gate kernel for this CPU into {target} (once, ~10 s)")
    try:
        try:
            done = _compile(cmd)
        except (OSError, subprocess.SubprocessError) as err:
            raise KernelBuildError(f"Compiling {SOURCE.name} failed: {err}") from err
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
            raise KernelBuildError(f"Compiling {SOURCE.name} failed (exit {done.returncode}): {' '.join(cmd)}\n{tail}")
        if os.path.getsize(tmp) == 0:
            raise KernelBuildError(f"Compiling {SOURCE.name} wrote an empty library: {' '.join(cmd)}")
        os.chmod(tmp, 0o755)
        digest = _sha256(Path(tmp))
        _fsync_file(tmp)
        os.replace(tmp, target)  # atomic: a process loading the old file keeps its own copy
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    # After the library: a kill in between leaves a library without a digest, compiled again.
    write_atomic(_digest_path(target), f"{digest}  {target.name}\n", mode=0o644)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_LOADED: dict[str, Any] = {}  # per cache folder: the op module loaded in this process
_BY_DIGEST: dict[str, Any] = {}  # per library digest: TensorFlow registers ops once per process
_OPS = ("tf_dynhp_hard_concrete_gate", "tf_dynhp_hard_concrete_gate_grad")


def load_kernel(cache_dir: str | os.PathLike | None = None, announce: Callable[[str], Any] | None = None) -> Any:
    """Builds (if needed) and loads the kernel; returns the op module (loaded once per process:
    the training step's trace calls this for every gated layer).

    The library is checked against its digest right before it is loaded (a truncated
    library would kill the process with SIGBUS when mapped).

    Raises:
        KernelBuildError: as `build_kernel`, or the library does not load or lacks the ops.
    """
    folder = str(_cache_dir(cache_dir))
    if folder in _LOADED:
        return _LOADED[folder]
    import tensorflow as tf

    path = build_kernel(cache_dir, announce)
    problem = _unverified(path)
    if problem is not None:  # changed since build_kernel verified it
        raise KernelBuildError(f"Not loading the kernel: {problem}")
    digest = _sha256(path)
    if digest in _BY_DIGEST:  # the same library from another cache folder: its ops are registered already
        _LOADED[folder] = _BY_DIGEST[digest]
        return _LOADED[folder]
    if _BY_DIGEST:
        # Another build (of this source, other flags) is loaded: TensorFlow registers ops and
        # kernels once per process, so loading this one too would register the kernels
        # twice and fail every later call ("Multiple OpKernel registrations"). Its ops serve.
        first = next(iter(_BY_DIGEST.values()))
        _LOG.info("tf_dynhp: %s not loaded: another build of the gate kernel is loaded in this process "
                  "and serves its ops", path)
        _LOADED[folder] = first
        return first
    try:
        module = tf.load_op_library(str(path))
    except Exception as err:  # tf.errors.NotFoundError and friends
        raise KernelBuildError(f"Loading {path} failed: {err}") from err
    missing = [op for op in _OPS if not hasattr(module, op)]
    if missing:
        other = " (another build of the kernel was loaded in this process first)" if _BY_DIGEST else ""
        raise KernelBuildError(f"{path} loaded but lacks the op(s) {missing}: not a tf_dynhp kernel{other}")
    _LOADED[folder] = _BY_DIGEST[digest] = module
    return module


_FAILED: dict[str, str] = {}  # per cache folder: why the kernel did not build (not retried in this process)


def _availability(announce: Callable[[str], Any] | None = None) -> str | None:
    """None when the kernel loads, else the reason."""
    folder = str(_cache_dir(None))
    if folder in _FAILED:
        return _FAILED[folder]
    try:
        load_kernel(announce=announce)
    except KernelBuildError as err:
        _FAILED[folder] = str(err)
        return str(err)
    return None


def _gpus() -> list[Any]:
    import tensorflow as tf

    return list(tf.config.list_physical_devices("GPU"))


def resolve_gate_kernel(gate_kernel: str, announce: Callable[[str], Any] | None = None, layers: Sequence[Any] | None = None) -> str:
    """Resolves `gate_kernel` ("auto", "fused" or "tf") to the path used: "fused" or "tf".
    The one place the choice is made (`tf_dynhp.fit` passes the model's `L0Dense` layers).

    `layers`, when given, are the layers whose gates the kernel would sample (a
    model's `L0Dense` layers): none means nothing for the kernel to do ("tf"); the
    kernel is float32 only, so a layer computing in another dtype means "tf" under
    "auto" and a ValueError naming it under "fused".

    "auto" takes TensorFlow ops when TensorFlow sees a GPU (the kernel is CPU-only:
    every gated layer would copy its activations to the host and back) or when the
    kernel does not build or load (the reason logged), else the kernel. "fused" insists
    (also with a GPU: the op then runs on the CPU).
    `announce` (e.g. `print`) hears of a compilation before it starts.

    Raises:
        ValueError: an unknown name.
        KernelBuildError: "fused" asked for and the kernel does not build.
    """
    if gate_kernel not in GATE_KERNELS:
        raise invalid("gate_kernel", f"one of {list(GATE_KERNELS)}", gate_kernel)
    if gate_kernel == "tf":
        return "tf"
    if layers is not None:
        if not layers:
            return "tf"  # no L0Dense gates: nothing for the kernel to do
        not_f32 = [layer for layer in layers if layer.compute_dtype != "float32"]
        if not_f32:
            if gate_kernel == "fused":
                raise ValueError(
                    "gate_kernel='fused' needs float32 L0Dense layers. Received: "
                    f"{not_f32[0].name!r} computes in {not_f32[0].compute_dtype}. Use gate_kernel='tf'."
                )
            return "tf"
    if gate_kernel == "auto":
        gpus = _gpus()
        if gpus:
            _LOG.info("tf_dynhp: gate_kernel='auto' uses TensorFlow ops: the fused kernel is CPU-only and TensorFlow sees %d GPU(s)", len(gpus))
            return "tf"
    reason = _availability(announce)
    if reason is None:
        return "fused"
    if gate_kernel == "fused":
        raise KernelBuildError(f"gate_kernel='fused' asked for, but the kernel is not available: {reason}")
    _LOG.warning("tf_dynhp: the fused gate kernel is not available, using TensorFlow ops (slower): %s", reason)
    return "tf"


def gated_product_fused(inputs, key, log_alpha, temperature: float = gates.TEMPERATURE, limit_l: float = gates.LIMIT_L, limit_r: float = gates.LIMIT_R):
    """`inputs * z` for per-example hard-concrete gates drawn from `key`, and the open counts.

    The fused counterpart of `gates.gated_product` (same distribution, other noise):
    z as `gates.sample_gates(u, log_alpha, ...)` for the counter-based uniforms u of
    `noise_reference(key, batch, gates)`. Gradients: `d(x z)/dx = z`, and for the
    gate logits `(r - l) / T * sum_i upstream x s (1 - s)` where the clip did not act.

    Args:
        inputs: (batch, gates) float32 tensor.
        key: (2,) int64 noise key (a Keras `SeedGenerator.next()`).
        log_alpha: (gates,) gate logits.
        temperature, limit_l, limit_r: see `gates.prob_open`.

    Returns:
        `(gated, open_count)`: `inputs * z` (batch, gates) and, per gate, the number of
        examples whose sample is non-zero (gates,), as float32.

    Raises:
        KernelBuildError: the kernel is not available.
    """
    import tensorflow as tf

    module = load_kernel()
    attrs = {"temperature": float(temperature), "limit_l": float(limit_l), "limit_r": float(limit_r)}
    key = tf.cast(key, tf.int64)

    @tf.custom_gradient
    def _gated(x, la):
        gated, z, open_count = module.tf_dynhp_hard_concrete_gate(x, la, key, **attrs)

        def grad(upstream, _upstream_count):
            d_la = module.tf_dynhp_hard_concrete_gate_grad(x, z, upstream, **attrs)
            return upstream * z, d_la

        return (gated, open_count), grad

    return _gated(tf.convert_to_tensor(inputs, tf.float32), tf.cast(log_alpha, tf.float32))


# ----------------------------------------------------------------------------- NumPy reference
def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _lowbias32(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(16)
    return x


def noise_reference(key, batch: int, gates: int) -> np.ndarray:
    """The kernel's uniform noise for `key`, (batch, gates) float64, in NumPy (see the C++ header).

    `K = splitmix64(splitmix64(k0) + k1)`; element (i, j) has counter `c = i * gates + j`,
    `h = lowbias32(lowbias32(c ^ K_lo) + K_hi)` and `u = (2 * (h >> 9) + 1) / 2**24`.
    """
    k0, k1 = (int(v) & _MASK64 for v in np.asarray(key).reshape(-1)[:2])
    stream = _splitmix64((_splitmix64(k0) + k1) & _MASK64)
    lo, hi = np.uint64(stream & 0xFFFFFFFF), np.uint64(stream >> 32)
    counter = np.arange(batch * gates, dtype=np.uint64).reshape(batch, gates)
    h = _lowbias32((_lowbias32(counter ^ lo) + hi) & np.uint64(0xFFFFFFFF))
    return (2.0 * (h >> np.uint64(9)).astype(np.float64) + 1.0) / 2.0**24
