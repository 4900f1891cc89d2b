"""Tests for deploy/: the device-side scripts run with NumPy + LiteRT only (no TensorFlow)."""

from __future__ import annotations

import ast
import gzip
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import tf_dynhp
from tf_dynhp import export

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
DATA_ROOT = Path(os.environ.get("TF_DYNHP_DATA", REPO.parent / "shared" / "datasets"))
MNIST_DIR = DATA_ROOT / "mnist" if (DATA_ROOT / "mnist").is_dir() else DATA_ROOT
BLOCKED = ("tensorflow", "tf_dynhp", "keras", "absl")

pytestmark = pytest.mark.skipif(
    not (MNIST_DIR / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason=f"MNIST IDX files not found under {DATA_ROOT} (set TF_DYNHP_DATA)",
)


def _load_runner():
    spec = importlib.util.spec_from_file_location("litert_runner", DEPLOY / "litert_runner.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lr = _load_runner()


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """Writes an IDX file (uint8, int32 or float32 data), gzip-compressed if `compress`."""
    codes = {np.dtype("u1"): (0x08, ">u1"), np.dtype("int32"): (0x0C, ">i4"), np.dtype("float32"): (0x0D, ">f4")}
    code, big = codes[array.dtype]
    data = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes() + array.astype(big).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def device(tmp_path_factory):
    """A device folder: a copy of deploy/, models, IDX subsets, and a PYTHONPATH that blocks TensorFlow."""
    root = tmp_path_factory.mktemp("device")
    (x_train, y_train), (x_test, y_test) = tf_dynhp.datasets.load("mnist", DATA_ROOT, download=False)
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((28, 28)), keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu"), keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.003), loss="sparse_categorical_crossentropy")
    model.fit(x_train[:2000], y_train[:2000], epochs=1, batch_size=32, verbose=0)
    gated = tf_dynhp.to_l0(model, dataset_size=1000)
    l0 = [layer for layer in gated.layers if isinstance(layer, tf_dynhp.L0Dense)]
    blank = x_train[:1000].reshape(1000, -1).max(axis=0) == 0
    l0[0].log_alpha.assign(np.where(blank, -10.0, 10.0).astype(np.float32))
    for layer in l0[1:]:
        n = layer.log_alpha.shape[0]
        layer.log_alpha.assign(np.where(np.arange(n) % 8 == 0, -10.0, 10.0).astype(np.float32))
    stripped = tf_dynhp.strip(gated)  # pruned without fine-tuning: the device has something to recover

    app = root / "app"
    shutil.copytree(DEPLOY, app, ignore=shutil.ignore_patterns("__pycache__"))
    files = {
        "fp32": export.to_tflite(stripped, root / "model.tflite").path,
        "int8": export.to_tflite(stripped, root / "model_int8.tflite", "int8", x_train[:300]).path,
        "trainable": export.to_trainable_tflite(stripped, root / "trainable.tflite", "sgd", learning_rate=0.05).path,
    }
    to_u8 = lambda x: np.round(x * 255).astype(np.uint8)  # noqa: E731 - exact inverse of /255
    files["test_images"] = write_idx(root / "test-images.gz", to_u8(x_test[:1000]))
    files["test_labels"] = write_idx(root / "test-labels.gz", y_test[:1000].astype(np.uint8))
    files["train_images"] = write_idx(root / "train-images.gz", to_u8(x_train[2000:4000]))
    files["train_labels"] = write_idx(root / "train-labels.gz", y_train[2000:4000].astype(np.uint8))

    blocker = root / "blocker"
    for name in BLOCKED:
        (blocker / name).mkdir(parents=True)
        (blocker / name / "__init__.py").write_text(
            "import os\n"
            "with open(os.environ['IMPORT_LOG'], 'a') as f:\n"
            "    f.write(__name__ + '\\n')\n"
            "raise ImportError(__name__ + ' is not available on the device (blocked by tests/test_deploy.py)')\n"
        )
    keras_probs = stripped.predict(x_test[:1000], verbose=0)
    return {"root": root, "app": app, "blocker": blocker, "files": files, "y_test": y_test[:1000],
            "keras_acc": float(np.mean(np.argmax(keras_probs, 1) == y_test[:1000])), "keras_pred": np.argmax(keras_probs, 1)}


#: Accuracy of the int8 export of the fixture's seeded, pruned model on the first 800 test images.
GOLDEN_INT8_ACCURACY_800 = 346 / 800


def run_device(device, script: str, *args: str, expect: int = 0) -> subprocess.CompletedProcess:
    """Runs deploy/<script> from the copied folder with TensorFlow, keras, absl and tf_dynhp blocked."""
    log = device["root"] / "imports.log"
    if log.exists():
        log.unlink()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env.update(PYTHONPATH=str(device["blocker"]), IMPORT_LOG=str(log), PYTHONDONTWRITEBYTECODE="1")
    result = subprocess.run(
        [sys.executable, str(device["app"] / script), *map(str, args)],
        capture_output=True, text=True, timeout=120, cwd=device["root"], env=env,
    )
    assert result.returncode == expect, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert not log.exists(), f"{script} tried to import {log.read_text().split()}"
    return result


def number(pattern: str, text: str) -> list[float]:
    match = re.search(pattern, text, re.M)
    assert match, f"{pattern!r} not in:\n{text}"
    return [float(g) for g in match.groups()]


# --------------------------------------------------------------------------- static checks
def test_deploy_imports_only_numpy_and_litert():
    allowed_third_party = {"numpy", "ai_edge_litert", "tflite_runtime", "litert_runner"}
    seen = set()
    for path in DEPLOY.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                seen.add(top)
                assert top not in BLOCKED, f"{path.name} imports {name}"
                assert top in sys.stdlib_module_names or top in allowed_third_party or top == "__future__", (path.name, name)
    assert {"numpy", "ai_edge_litert", "argparse", "resource"} <= seen


def test_requirements_list_the_runtime():
    lines = [ln.split("#")[0].strip() for ln in (DEPLOY / "requirements.txt").read_text().splitlines()]
    names = {re.split(r"[<>=!~ ]", ln)[0].lower() for ln in lines if ln}
    assert names == {"numpy", "ai-edge-litert"}


def test_blocker_really_blocks(device):
    env = {**os.environ, "PYTHONPATH": str(device["blocker"]), "IMPORT_LOG": str(device["root"] / "probe.log")}
    result = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True, text=True, env=env,
                            cwd=device["root"], timeout=60)
    assert result.returncode != 0 and "not available on the device" in result.stderr


# --------------------------------------------------------------------------- IDX reader
def test_read_idx_matches_library(tmp_path):
    labels = MNIST_DIR / "t10k-labels-idx1-ubyte.gz"
    np.testing.assert_array_equal(lr.read_idx(labels), tf_dynhp.datasets.read_idx(labels))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    ints = rng.integers(-1000, 1000, (4, 3)).astype(np.int32)
    for compress in (True, False):
        np.testing.assert_array_equal(lr.read_idx(write_idx(tmp_path / f"i{compress}", images, compress)), images)
        got = lr.read_idx(write_idx(tmp_path / f"n{compress}", ints, compress))
        assert got.dtype == np.int32 and np.array_equal(got, ints)
    x, y = lr.load_images_labels(tmp_path / "iTrue", write_idx(tmp_path / "l", np.arange(5, dtype=np.uint8)))
    assert x.dtype == np.float32 and x.max() <= 1.0 and np.allclose(x * 255, images) and y.dtype == np.int32


def test_read_idx_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad-magic.gz"
    bad.write_bytes(gzip.compress(b"\x01\x02\x08\x01" + b"\0" * 8))
    with pytest.raises(ValueError, match=r"bad-magic.gz: not an IDX file.*0x01020801"):
        lr.read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1]) + np.asarray([10], ">u4").tobytes() + b"\0" * 7)
    with pytest.raises(ValueError, match=r"short: expected 10 data bytes.*received 7"):
        lr.read_idx(short)
    cut = tmp_path / "cut-header"
    cut.write_bytes(bytes([0, 0, 8, 3]) + np.asarray([10], ">u4").tobytes())
    with pytest.raises(ValueError, match=r"cut-header: truncated IDX header: expected 16 bytes for 3 dimensions, received 8"):
        lr.read_idx(cut)
    # examples of as many values as the model takes take its shape, flat or not; others are refused
    assert lr.fit_input(np.zeros((4, 784)), (28, 28), "x").shape == (4, 28, 28)
    assert lr.fit_input(np.zeros((4, 28, 28)), (784,), "x").shape == (4, 784)
    assert lr.fit_input(np.zeros((4, 28, 28)), (28, 28, 1), "x").shape == (4, 28, 28, 1)
    for images, shape in (((4, 14, 56), (28, 28, 1)), ((4, 3, 20, 20), (20, 20, 3))):  # as many values, other pixels
        with pytest.raises(ValueError, match=r"x: expected inputs of shape"):
            lr.fit_input(np.zeros(images), shape, "x")
    with pytest.raises(ValueError, match=r"lf: expected integer class ids, received float32 labels"):
        lr.load_images_labels(write_idx(tmp_path / "im2", np.zeros((3, 2, 2), np.uint8)), write_idx(tmp_path / "lf", np.full(3, 2.7, np.float32)))
    with pytest.raises(ValueError, match=r"x: expected inputs of shape \(batch, 28, 28\), received \(4, 783\)"):
        lr.fit_input(np.zeros((4, 783)), (28, 28), "x")
    with pytest.raises(ValueError, match="same n"):
        lr.load_images_labels(write_idx(tmp_path / "im", np.zeros((3, 2, 2), np.uint8)),
                              write_idx(tmp_path / "lb", np.zeros(4, np.uint8)))


# --------------------------------------------------------------------------- interpreter loading
def test_garbage_tflite_is_rejected_with_the_file_name(device, tmp_path):
    bad = tmp_path / "garbage.tflite"
    bad.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(ValueError, match=r"garbage.tflite: not a TFLite model.*TFL3"):
        lr.load_interpreter(bad)
    with pytest.raises(FileNotFoundError, match="missing.tflite"):
        lr.load_interpreter(tmp_path / "missing.tflite")
    files = device["files"]
    for script, args in (
        ("infer.py", ["--images", files["test_images"], "--labels", files["test_labels"]]),
        ("train_on_device.py", ["--images", files["train_images"], "--labels", files["train_labels"], "--steps", "2"]),
    ):
        result = run_device(device, script, "--model", bad, *args, expect=2)
        errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and str(bad) in errors[0] and "TFL3" in errors[0], result.stderr
        assert "Traceback" not in result.stderr


def test_a_truncated_tflite_and_mismatched_labels_are_named(device, tmp_path):
    """A .tflite cut in half keeps its TFL3 header: the interpreter's error now names the
    file. train_step refuses labels that do not match x's batch (the interpreter failed
    with an XNNPack reshape error) and takes Keras-style (batch, 1) labels."""
    files = device["files"]
    cut = tmp_path / "cut.tflite"
    data = Path(files["trainable"]).read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut.tflite: not a loadable TFLite model"):
        lr.load_interpreter(cut)
    trainer = lr.Trainer(files["trainable"])
    x, y = lr.load_images_labels(files["train_images"], files["train_labels"], 8)
    for bad in (y[:3], y[:0], np.stack([y, y], 1)):
        with pytest.raises(ValueError, match=r"expected labels of shape \(4,\)"):
            trainer.train_step(x[:4], bad[:4] if bad.ndim == 2 else bad)
    with pytest.raises(ValueError, match="at least one example"):
        trainer.train_step(x[:0], y[:0])
    assert np.isfinite(trainer.train_step(x[:4], y[:4].reshape(4, 1)))


def test_accuracy_takes_keras_style_labels_and_refuses_others(device):
    # (n, 1) labels broadcast against (n,) predictions into an (n, n) table: a wrong accuracy.
    files = device["files"]
    x, y = lr.load_images_labels(files["test_images"], files["test_labels"], 300)
    for runner in (lr.Classifier(files["fp32"]), lr.Trainer(files["trainable"])):
        assert runner.accuracy(x, y.reshape(-1, 1)) == runner.accuracy(x, y)
        with pytest.raises(ValueError, match=r"expected labels of shape \(300,\)"):
            runner.accuracy(x, y[:299])


def test_trainer_rejects_inference_model(device):
    with pytest.raises(ValueError, match=r"not a trainable model.*\['train', 'infer', 'get_weights', 'set_weights'\]"):
        lr.Trainer(device["files"]["fp32"])


# --------------------------------------------------------------------------- infer.py
@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_infer_end_to_end_without_tensorflow(device, variant):
    files = device["files"]
    result = run_device(device, "infer.py", "--model", files[variant], "--images", files["test_images"],
                        "--labels", files["test_labels"], "--limit", "800", "--batch", "32")
    out = result.stdout
    assert number(r"^examples: (\d+)$", out) == [800.0]
    (accuracy,) = number(r"^accuracy: ([\d.]+)$", out)
    classifier = lr.Classifier(files[variant])
    x, y = lr.load_images_labels(files["test_images"], files["test_labels"], 800)
    assert accuracy == pytest.approx(classifier.accuracy(x, y), abs=1e-4)
    exact = classifier.accuracy(x, y)
    if variant == "fp32":  # Keras' own accuracy on these 800
        assert exact == pytest.approx(float(np.mean(device["keras_pred"][:800] == y)), abs=1e-9)
    else:
        # int8: the golden value of this seeded run (346 of 800; the same with 1 or all threads
        # here); another CPU may train the float model a few ulps differently and quantize one
        # example across a decision boundary: two examples of slack.
        assert exact == pytest.approx(GOLDEN_INT8_ACCURACY_800, abs=2 / 800)
    p50, p99 = number(r"^latency single example: p50 ([\d.]+) ms, p99 ([\d.]+) ms \((\d+) calls\)", out)[:2]
    assert 0 < p50 <= p99
    b50, b99, calls = number(r"^latency batch of 32: p50 ([\d.]+) ms, p99 ([\d.]+) ms \((\d+) calls", out)[:3]
    assert 0 < b50 <= b99 and calls == 25
    (rss,) = number(r"^peak RSS: ([\d.]+) MiB$", out)
    # The deploy process's own peak (NumPy + LiteRT, ~100 MiB), not the parent's:
    # this pytest process holds TensorFlow and is far larger.
    parent = lr.peak_rss_mb()
    assert 10 < rss < 300 and rss < parent


def test_infer_fp32_matches_keras_accuracy(device):
    classifier = lr.Classifier(device["files"]["fp32"])
    x, y = lr.load_images_labels(device["files"]["test_images"], device["files"]["test_labels"])
    assert classifier.accuracy(x, y, batch_size=100) == pytest.approx(device["keras_acc"], abs=1e-9)


def test_infer_runs_a_cnn_on_idx_images_without_tensorflow(device):
    """A stripped CNN takes (28, 28, 1); the IDX images are (n, 28, 28): the runner adds the channel axis."""
    root = device["root"]
    (x_train, y_train), _ = tf_dynhp.datasets.load("mnist", DATA_ROOT, download=False)
    keras.utils.set_random_seed(3)
    cnn = keras.Sequential([
        keras.Input((28, 28, 1)), keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax"),
    ])
    cnn.compile(optimizer=keras.optimizers.Adam(0.003), loss="sparse_categorical_crossentropy")
    cnn.fit(x_train[:1000, ..., None], y_train[:1000], epochs=1, batch_size=32, verbose=0)
    gated = tf_dynhp.to_l0(cnn, dataset_size=1000)
    conv = next(layer for layer in gated.layers if isinstance(layer, tf_dynhp.L0Conv2D))
    conv.log_alpha.assign(np.array([10.0, -10.0, 10.0, 10.0], np.float32))  # channel 1 pruned
    path = export.to_tflite(tf_dynhp.strip(gated), root / "cnn.tflite").path
    files = device["files"]
    x, y = lr.load_images_labels(files["test_images"], files["test_labels"], 500)
    classifier = lr.Classifier(path)
    assert classifier.input_shape == (28, 28, 1) and x.shape[1:] == (28, 28)
    keras_acc = float(np.mean(np.argmax(gated.predict(x[..., None], verbose=0), 1) == y))
    assert classifier.accuracy(x, y) == pytest.approx(keras_acc, abs=2e-3) and keras_acc > 0.5
    result = run_device(device, "infer.py", "--model", path, "--images", files["test_images"],
                        "--labels", files["test_labels"], "--limit", "500", "--latency_examples", "20")
    assert "input (28, 28, 1)" in result.stdout
    assert number(r"^accuracy: ([\d.]+)$", result.stdout) == [pytest.approx(classifier.accuracy(x, y), abs=1e-4)]


# --------------------------------------------------------------------------- train_on_device.py
def test_train_on_device_end_to_end_and_restore(device):
    files, root = device["files"], device["root"]
    weights = root / "weights.npz"
    common = ["--model", files["trainable"], "--images", files["train_images"], "--labels", files["train_labels"],
              "--eval_images", files["test_images"], "--eval_labels", files["test_labels"], "--batch", "32"]
    first = run_device(device, "train_on_device.py", *common, "--steps", "60", "--log_every", "10",
                       "--weights", weights).stdout
    losses = [float(v) for v in re.findall(r"^step\s+\d+\s+loss ([\d.]+)$", first, re.M)]
    assert len(losses) == 6
    assert np.mean(losses[-2:]) < losses[0] - 0.05, losses
    (before,) = number(r"^accuracy before: ([\d.]+)", first)
    (after,) = number(r"^accuracy after: ([\d.]+)", first)
    assert after > before + 0.02, (before, after)
    assert number(r"^peak RSS: ([\d.]+) MiB$", first)[0] > 10
    assert re.search(r"^loss first 10 steps [\d.]+ -> last 10 steps [\d.]+$", first, re.M), first

    with np.load(weights) as data:
        saved = {k: data[k] for k in data.files}
    assert {"kernel_0", "bias_0", "kernel_2", "bias_2", "optimizer/momentum_kernel_0"} <= set(saved)
    fresh = lr.Trainer(files["trainable"])
    assert saved["kernel_0"].shape == fresh.get_weights()["kernel_0"].shape
    assert not np.array_equal(saved["kernel_0"], fresh.get_weights()["kernel_0"])
    assert np.any(saved["optimizer/momentum_kernel_0"] != 0)

    second = run_device(device, "train_on_device.py", *common, "--steps", "5", "--restore", weights).stdout
    assert re.search(r"^restored 6 weights and 6 optimizer tensors from", second, re.M), second
    assert number(r"^accuracy before: ([\d.]+)", second) == [after]  # continues from the saved weights
    assert re.search(r"^loss first 2 steps [\d.]+ -> last 2 steps [\d.]+$", second, re.M), second  # 5 steps, not "first 100"


def test_restore_with_wrong_shapes_is_rejected(device, tmp_path):
    files = device["files"]
    weights = lr.Trainer(files["trainable"]).get_weights()
    weights["kernel_1"] = weights["kernel_1"][:, :3]
    bad = tmp_path / "bad.npz"
    np.savez(bad, **weights)
    result = run_device(device, "train_on_device.py", "--model", files["trainable"], "--images", files["train_images"],
                        "--labels", files["train_labels"], "--steps", "1", "--restore", bad, expect=2)
    assert re.search(r"error: .*kernel_1': expected shape \(\d+, \d+\), received \(\d+, 3\)", result.stderr), result.stderr
    assert f"--restore {bad}: does not fit" in result.stderr


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder in which creating a file really fails: a mode-555 one (not for root, whom
    permission bits do not stop), else sysfs' /sys; skips when there is none."""
    ro = tmp_path / "read_only"
    ro.mkdir()
    ro.chmod(0o555)
    for folder in (ro, Path("/sys")):
        try:
            (folder / "probe.tmp").open("xb").close()
        except OSError:
            return folder
        (folder / "probe.tmp").unlink()
    pytest.skip("no folder here in which creating a file fails (root, and no sysfs)")


@pytest.mark.parametrize("flag", ["--model", "--labels"])
def test_weights_over_an_input_file_is_refused_before_training(device, tmp_path, flag):
    """--weights naming the --model file wrote the .npz over it after training (exit 0, the
    model gone); the probe then found "not a TFLite model" in its place."""
    import shutil

    files = device["files"]
    inputs = {"--model": files["trainable"], "--images": files["train_images"], "--labels": files["train_labels"]}
    victim = tmp_path / Path(inputs[flag]).name
    shutil.copy(inputs[flag], victim)
    before = victim.read_bytes()
    inputs[flag] = victim
    args = [part for pair in inputs.items() for part in pair]
    result = run_device(device, "train_on_device.py", *args, "--steps", "1", "--weights", victim, expect=2)
    one_error_line(result, f"--weights {victim}", f"that is the {flag} file")
    assert victim.read_bytes() == before and "accuracy before" not in result.stdout


@pytest.mark.parametrize("content", ["garbage", "npy", "folder", "under_file", "unwritable"])
def test_a_broken_restore_or_weights_file_is_one_error_line_before_training(device, tmp_path, content):
    """--restore of a damaged .npz or of a .npy, and a --weights path that cannot be written
    (a folder, a path under a file, a path in a folder where no file can be created) end
    with one `error:` line naming the flag and the file (they were tracebacks; the folder
    and the unwritable one only after every step had trained, losing the weights)."""
    files = device["files"]
    common = ("--model", files["trainable"], "--images", files["train_images"], "--labels", files["train_labels"],
              "--steps", "1")
    if content == "folder":
        result = run_device(device, "train_on_device.py", *common, "--weights", tmp_path, expect=2)
        line = one_error_line(result, f"--weights {tmp_path}", "that is a folder")
    elif content == "under_file":
        (tmp_path / "file.txt").write_text("keep me\n")
        path = tmp_path / "file.txt" / "w.npz"
        result = run_device(device, "train_on_device.py", *common, "--weights", path, expect=2)
        line = one_error_line(result, f"--weights {path}", "expected a path in an existing folder", "is a file")
        assert (tmp_path / "file.txt").read_text() == "keep me\n"
    elif content == "unwritable":
        folder = unwritable_folder(tmp_path)
        path = folder / "w.npz"
        result = run_device(device, "train_on_device.py", *common, "--weights", path, expect=2)
        line = one_error_line(result, f"--weights {path}", "expected a writable folder", f"cannot create a file in {folder}")
        assert not [p for p in folder.iterdir() if p.name.startswith(".w.npz.")]  # the probe is gone
    else:
        path = tmp_path / "in.npz"
        if content == "npy":
            np.save(tmp_path / "in.npy", np.zeros(3))
            path = tmp_path / "in.npy"
        else:
            path.write_bytes(b"PK\x03\x04garbage")
        result = run_device(device, "train_on_device.py", *common, "--restore", path, expect=2)
        line = one_error_line(result, f"--restore {path}", "expected a .npz archive")
    assert "accuracy before" not in result.stdout, line


@pytest.mark.parametrize("name,value", [("kernel_0", np.nan), ("bias_2", np.inf), ("optimizer/momentum_kernel_0", -np.inf)])
def test_a_restore_holding_nan_or_inf_is_refused_before_training(device, tmp_path, name, value):
    """NaN weights were restored, then the first step's NaN loss said to lower the learning
    rate: the file is refused up front, naming it and the array."""
    files = device["files"]
    trainer = lr.Trainer(files["trainable"])
    arrays = {**trainer.get_weights(), **{"optimizer/" + k: v for k, v in trainer.get_optimizer_state().items()}}
    arrays[name].flat[5] = value
    path = tmp_path / "diverged.npz"
    np.savez(path, **arrays)
    result = run_device(device, "train_on_device.py", "--model", files["trainable"], "--images", files["train_images"],
                        "--labels", files["train_labels"], "--steps", "1", "--restore", path, expect=2)
    one_error_line(result, f"--restore {path}", "expected finite values", f"the array '{name}' with 1 of its", "values NaN or infinite")
    assert "accuracy before" not in result.stdout and "learning rate" not in result.stderr


# --------------------------------------------------------------------------- bad input: one line, no traceback
def one_error_line(result, *needles):
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert str(needle) in errors[0], (needle, errors[0])
    return errors[0]


@pytest.mark.parametrize("bad", [200, -1, 10])
def test_train_on_device_refuses_labels_outside_the_classes(device, tmp_path, bad):
    """Labels 200 or -1 trained with a reported loss of 0 instead of being refused."""
    files = device["files"]
    y = lr.read_idx(files["train_labels"]).astype(np.int32)
    y[37] = bad
    labels = write_idx(tmp_path / "bad-labels.gz", y)
    result = run_device(device, "train_on_device.py", "--model", files["trainable"], "--images", files["train_images"],
                        "--labels", labels, "--steps", "2", expect=2)
    one_error_line(result, labels, "class ids in [0, 10)", f"received {bad} at index 37", "1 of 2000 labels")
    # The same check for the evaluation labels, and in the Python API.
    result = run_device(device, "train_on_device.py", "--model", files["trainable"], "--images", files["train_images"],
                        "--labels", files["train_labels"], "--eval_images", files["train_images"], "--eval_labels", labels,
                        "--steps", "2", expect=2)
    one_error_line(result, labels, f"received {bad}")
    trainer = lr.Trainer(files["trainable"])
    x = np.zeros((4,) + trainer.input_shape, np.float32)
    with pytest.raises(ValueError, match=re.escape(f"class ids in [0, 10) for this model; received {bad} at index 2")):
        trainer.train_step(x, np.array([0, 1, bad, 3]))


def test_infer_refuses_labels_outside_the_classes(device, tmp_path):
    files = device["files"]
    labels = write_idx(tmp_path / "labels.gz", np.full(1000, 200, np.uint8))
    result = run_device(device, "infer.py", "--model", files["fp32"], "--images", files["test_images"], "--labels", labels,
                        expect=2)
    one_error_line(result, labels, "received 200 at index 0")


@pytest.fixture(scope="module")
def flat_model(device):
    """A model taking flat (784,) inputs, as a user's own Dense stack would."""
    (x_train, y_train), _ = tf_dynhp.datasets.load("mnist", DATA_ROOT, download=False)
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(0.003), loss="sparse_categorical_crossentropy")
    model.fit(x_train[:1000].reshape(-1, 784), y_train[:1000], epochs=1, batch_size=32, verbose=0)
    return model, export.to_tflite(model, device["root"] / "flat.tflite").path


def test_infer_flattens_idx_images_for_a_flat_model(device, flat_model):
    model, path = flat_model
    files = device["files"]
    x, y = lr.load_images_labels(files["test_images"], files["test_labels"], 500)
    classifier = lr.Classifier(path)
    assert classifier.input_shape == (784,) and x.shape[1:] == (28, 28)
    keras_acc = float(np.mean(np.argmax(model.predict(x.reshape(-1, 784), verbose=0), 1) == y))
    assert classifier.accuracy(x, y) == pytest.approx(keras_acc, abs=1e-9) and keras_acc > 0.5
    result = run_device(device, "infer.py", "--model", path, "--images", files["test_images"],
                        "--labels", files["test_labels"], "--limit", "500", "--latency_examples", "20")
    assert "input (784,)" in result.stdout
    assert number(r"^accuracy: ([\d.]+)$", result.stdout) == [pytest.approx(keras_acc, abs=1e-4)]


def test_float_images_are_taken_in_0_1_and_refused_as_0_255(device, tmp_path):
    """Float32 IDX images holding 0-255 pixels were scored unscaled without a word (uint8
    ones are divided by 255): float images in [0, 1] give the uint8 files' accuracy, float
    ones outside it are refused by infer.py and train_on_device.py, naming the file."""
    files = device["files"]
    pixels = lr.read_idx(files["test_images"])
    unit = write_idx(tmp_path / "unit-images.gz", pixels.astype(np.float32) / np.float32(255))
    wide = write_idx(tmp_path / "wide-images.gz", pixels.astype(np.float32))
    common = ("--labels", files["test_labels"], "--latency_examples", "1")
    expected = run_device(device, "infer.py", "--model", files["fp32"], "--images", files["test_images"], *common).stdout
    same = run_device(device, "infer.py", "--model", files["fp32"], "--images", unit, *common).stdout
    assert number(r"^accuracy: ([\d.]+)$", same) == number(r"^accuracy: ([\d.]+)$", expected)
    result = run_device(device, "infer.py", "--model", files["fp32"], "--images", wide, *common, expect=2)
    one_error_line(result, wide, "expected pixel values in [0, 1]", "finite ones in [0, 255]", "divide them by 255")
    result = run_device(device, "train_on_device.py", "--model", files["trainable"], "--images", wide,
                        "--labels", files["test_labels"], "--steps", "1", expect=2)
    one_error_line(result, wide, "expected pixel values in [0, 1]")
    assert "accuracy before" not in result.stdout


def test_infer_images_of_another_size_fail_with_one_line(device, flat_model, tmp_path):
    _, path = flat_model
    files = device["files"]
    images = write_idx(tmp_path / "small-images.gz", np.zeros((1000, 20, 20), np.uint8))
    for model in (path, files["fp32"]):
        result = run_device(device, "infer.py", "--model", model, "--images", images, "--labels", files["test_labels"],
                            expect=2)
        one_error_line(result, model, "received (1000, 20, 20)", "examples of 400 values")


def test_a_uint8_input_model_exports_int8_and_refuses_scaled_pixels(device, tmp_path):
    """A keras.Input(dtype="uint8") model: its int8 export fed float32 calibration images
    and failed; on the device, IDX pixels scaled to [0, 1] were cast to uint8 (zeros and
    ones) and scored without a word. Raw pixels run; scaled ones are refused."""
    (x_train, y_train), (x_test, y_test) = tf_dynhp.datasets.load("mnist", DATA_ROOT, download=False)
    raw, raw_test = np.round(x_train[:600] * 255).astype(np.uint8), np.round(x_test[:200] * 255).astype(np.uint8)
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((28, 28), dtype="uint8"), keras.layers.Flatten(),
                              keras.layers.Dense(16, activation="relu"), keras.layers.Dense(10, activation="softmax")])
    result = tf_dynhp.fit(model, raw, y_train[:600], method="hp", epochs=1, batch_size=50, seed=1, verbose=0)
    for quantization in ("none", "int8"):
        path = export.to_tflite(result.model, tmp_path / f"u8_{quantization}.tflite", quantization,
                                representative_data=raw[:100]).path
        classifier = lr.Classifier(path)
        keras_acc = float(np.mean(np.argmax(result.model.predict(raw_test, verbose=0), 1) == y_test[:200]))
        assert classifier.accuracy(raw_test, y_test[:200]) == pytest.approx(keras_acc, abs=0.05)
        with pytest.raises(ValueError, match=r"takes uint8 inputs.*not whole numbers"):
            classifier.accuracy(x_test[:200], y_test[:200])
        # infer.py feeds such a model the IDX pixels as stored (it refused the scaled ones
        # it loaded for every model).
        raw_1000 = np.round(x_test[:1000] * 255).astype(np.uint8)
        expected = classifier.accuracy(raw_1000, y_test[:1000])
        out = run_device(device, "infer.py", "--model", path, "--images", device["files"]["test_images"],
                         "--labels", device["files"]["test_labels"], "--latency_examples", "1")
        assert number(r"^accuracy: ([\d.]+)$", out.stdout) == [pytest.approx(expected, abs=1e-4)]
    # Trained on the device: the trainable export took float32 inputs, and train_on_device.py
    # fed it pixels scaled to [0, 1], which the model never saw.
    path = export.to_trainable_tflite(result.model, tmp_path / "u8_trainable.tflite").path
    trainer = lr.Trainer(path)
    assert trainer.takes_integers
    keras_acc = float(np.mean(np.argmax(result.model.predict(raw_test, verbose=0), 1) == y_test[:200]))
    assert trainer.accuracy(raw_test, y_test[:200]) == pytest.approx(keras_acc, abs=1e-6)
    with pytest.raises(ValueError, match=r"takes uint8 inputs.*not whole numbers"):
        trainer.accuracy(x_test[:200], y_test[:200])
    raw_1000 = np.round(x_test[:1000] * 255).astype(np.uint8)
    out = run_device(device, "train_on_device.py", "--model", path, "--images", device["files"]["test_images"],
                     "--labels", device["files"]["test_labels"], "--steps", "1").stdout
    assert number(r"^accuracy before: ([\d.]+)", out) == [pytest.approx(trainer.accuracy(raw_1000, y_test[:1000]), abs=1e-4)]
    # int8 calibrated on pixels scaled to [0, 1] was written without a word (cast to zeros and
    # ones, its top class agreed with Keras on 42% of a probe's images); refused, naming the range.
    with pytest.raises(ValueError, match=r"input is uint8: expected whole numbers in \[0, 255\].*not whole numbers"):
        export.to_tflite(result.model, tmp_path / "u8_bad.tflite", "int8", representative_data=x_train[:100])
    with pytest.raises(ValueError, match=r"whole numbers in \[0, 255\].*received values in \[-1, 300\]"):
        export.to_tflite(result.model, tmp_path / "u8_bad.tflite", "int8",
                         representative_data=np.where(raw[:100] > 128, 300, -1).astype(np.int32))
    assert not (tmp_path / "u8_bad.tflite").exists()
    # tools/export.py fed such a model the data set's scaled float images: a traceback in the
    # interpreter. It feeds the pixels as stored, for calibration and accuracy.
    result.model.save(tmp_path / "u8.keras")
    done = subprocess.run([sys.executable, str(REPO / "tools" / "export.py"), f"--data_dir={DATA_ROOT}",
                           f"--model={tmp_path / 'u8.keras'}", f"--out={tmp_path / 'u8_tool.tflite'}", "--quantization=all",
                           "--eval_limit=200"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    keras_acc = float(np.mean(np.argmax(result.model.predict(raw_test, verbose=0), 1) == y_test[:200]))
    rows = dict(re.findall(r"^(pruned \w+)\s+\d+\s+\d+\s+[\d.]+\s+[\d.]+x?\s+([\d.]+)", done.stdout, re.M))
    assert set(rows) >= {"pruned none", "pruned int8"}, done.stdout
    assert float(rows["pruned none"]) == pytest.approx(keras_acc, abs=1e-6)
    assert float(rows["pruned int8"]) == pytest.approx(keras_acc, abs=0.05)
