r"""DynHP against what a user would pick instead, side by side in one run.

    python tools/benchmark.py --dynhp_run=runs/mnist-dynhp-a0.972-step_mean-lam0.01-e200-seed1 --out=runs/benchmark.md
    python tools/benchmark.py --dynhp_run=... --quick --skip_tfmot       # smoke test

Rows, all trained here on the same data, epochs and seed (the DynHP run folder
says which data set, its configuration and its final architecture):

1. **DynHP**: the run's configuration trained again here (`tf_dynhp.runs.run`), so
   its timings are measured under the same conditions (`--noretrain_dynhp` reads
   the folder's own numbers instead).
2. **Keras dense**: plain `keras.Model.fit` of the same dense MLP (784-300-100-10),
   Adam at the same learning rate and schedule (`RunConfig.lr_decay` of the DynHP run:
   every row decays as DynHP does), the same L2 term (`RunConfig.weight_decay_per_weight`:
   0.5 * it * ||w||^2 on every kernel and bias, as Keras `L2` regularizers) and the same
   optimizer (AdamW with the run's `decoupled_weight_decay`, else Adam), the same
   `Dropout` layers (`RunConfig.dropout`), the same data augmentation (`RunConfig.augment_shift`,
   `augment_flip`: each epoch the images DynHP's epoch saw, unshifted from the same epoch on
   with `RunConfig.augment_until`), the same label smoothing
   (`RunConfig.label_smoothing`), `--batch_size`.
3. **DynHP architecture, dense from scratch**: the run's final model
   (`model.keras`: the same kept input pixels and layer sizes as `metrics.json`
   `layer_sizes`) re-initialized and trained densely.
4. **tfmot prune_low_magnitude**: the dense MLP pruned by TF Model Optimization
   with a polynomial schedule to the DynHP model's sparsity (the share of dense
   kernel weights the DynHP model does not have), exported with
   `tf.lite.Optimize.EXPERIMENTAL_SPARSITY`. tfmot needs tf-keras, so it runs in a
   separate virtualenv (`--tfmot_venv`, created on first use with `python -m venv`
   and `pip install tensorflow-cpu==<ours> tf-keras tensorflow-model-optimization`)
   through `tools/_tfmot_baseline.py`. If that venv cannot be built, the script
   says why and goes on without this row.

Columns: final test error; `.tflite` size float32 and int8 (`tf_dynhp.export.to_tflite`;
tfmot's own sparse export) and their gzip sizes; training memory as the paper
counts it (sum over epochs of MO = weights + one batch, and its mean per epoch)
and the peak full footprint (`tf_dynhp.memory.memory_full_kb`: variables,
gradients, Adam slots, activations; tfmot: plus its masks); wall time to train;
wall time until the test error first reaches `--target_error`; examples/second.
Every row evaluates the test set after each epoch (DynHP does), and its wall
time includes that evaluation. Printed, and written to `--out` (Markdown;
`tools/report.py` includes `<runs>/benchmark.md` in RESULTS.md), with the raw numbers
in the file of the same name ending in `.json` beside it (so `--out` may not end in `.json`).

Refused before any training, in one `benchmark.py: error: ...` line: a run folder that
is not a finished DynHP run of the MLP (`arch` other than "mlp": the baselines are the
dense MLP and tfmot's pruned MLP), whose `config.json` is missing or no JSON object, or
whose `model.keras` does not load; an `--out` whose folder cannot be written (a file is
created and removed there first: permission bits alone say nothing to root).
"""

from __future__ import annotations

import gzip
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FLAGS = flags.FLAGS
flags.DEFINE_string("dynhp_run", None, "Finished DynHP run folder (tools/reproduce.py or tools/train.py).")
flags.DEFINE_string("data_dir", None, "Folder of the IDX files (see tf_dynhp.datasets.load).")
flags.DEFINE_integer("epochs", None, "Epochs of every row (default: the DynHP run's; --quick: 2).")
flags.DEFINE_integer("batch_size", 100, "Batch size of the Keras and tfmot rows.")
flags.DEFINE_float("target_error", 2.0, "Test error (%) whose first reaching is timed.")
flags.DEFINE_string("out", "runs/benchmark.md", "Markdown file to write; the raw numbers go beside it to the same name "
                    "ending in .json (b.md: b.json), so a path ending in .json is refused.")
flags.DEFINE_bool("quick", False, "Smoke test: 2 epochs on 2000 train / 1000 test images.")
flags.DEFINE_bool("skip_tfmot", False, "Leave out the tfmot row (no virtualenv is built).")
flags.DEFINE_string("tfmot_venv", str(REPO / ".venv-tfmot"), "Virtualenv for tf-keras + tensorflow-model-optimization.")
flags.DEFINE_integer("train_limit", None, "First N training images (default: the DynHP run's; --quick: 2000).")
flags.DEFINE_integer("test_limit", None, "First N test images (default: the DynHP run's; --quick: 1000).")
flags.DEFINE_integer("seed", 1, "Seed of every row.")
flags.DEFINE_integer("steps_per_execution", 50, "Train steps per compiled call of the Keras rows (DynHP's own default is 50; tfmot needs 1).")
flags.DEFINE_bool("retrain_dynhp", True, "Train the DynHP configuration again here (else use the run folder's numbers).")
flags.DEFINE_integer("calibration_examples", 300, "Training images calibrating the int8 exports.")
for _name in ("epochs", "batch_size", "train_limit", "test_limit", "steps_per_execution", "calibration_examples"):
    flags.register_validator(_name, lambda v: v is None or v >= 1, f"--{_name}: expected a positive integer")
flags.register_validator("seed", lambda v: 0 <= v < 2**32, "--seed: expected an integer in [0, 2**32) (NumPy's seed range)")
flags.DEFINE_float("tfmot_ramp", 0.8, "Share of the training steps over which tfmot's sparsity ramps to its final value.")

QUICK = {"epochs": 2, "train_limit": 2000, "test_limit": 1000}
#: The architecture every baseline row is built for: the Keras dense row is `runs.build_mlp`,
#: tfmot's row (`tools/_tfmot_baseline.py`) prunes an MLP, `_kernel_count` counts Dense kernels.
SUPPORTED_ARCH = "mlp"
#: What `keras.models.load_model` raises for a file that is no (complete) Keras model: a
#: truncated or foreign zip, a damaged member, a class it cannot rebuild.
_NOT_A_MODEL = (ValueError, TypeError, KeyError, OSError, EOFError, zipfile.BadZipFile)
_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean", type(None): "null"}


# --------------------------------------------------------------------------- helpers
def time_to_target(records: list[dict[str, float]], target: float) -> tuple[float, int] | None:
    """(seconds, epoch) at which the test error first reached `target`, or None."""
    for r in records:
        if r["error"] <= target:
            return r["elapsed"], int(r["epoch"])
    return None


def _gzip_size(path: str | Path) -> int:
    return len(gzip.compress(Path(path).read_bytes(), compresslevel=9))


def _kernel_count(model) -> int:
    from tf_dynhp.chain import DENSE_TYPES, parse_chain

    return sum(int(layer.kernel.shape[0] * layer.kernel.shape[1]) for layer in parse_chain(model).body if isinstance(layer, DENSE_TYPES))


def with_l2(model, weight_decay_per_weight: float):
    """`model` with Keras `L2(0.5 * weight_decay_per_weight)` on every Dense kernel and bias
    (the DynHP run's expected-L2 term once its gates are open; fresh weights), or `model`."""
    import keras

    if not weight_decay_per_weight:
        return model
    l2 = {"kernel_regularizer": keras.regularizers.L2(0.5 * weight_decay_per_weight),
          "bias_regularizer": keras.regularizers.L2(0.5 * weight_decay_per_weight)}

    def clone(layer):
        config = layer.get_config()
        return layer.__class__.from_config({**config, **l2} if isinstance(layer, keras.layers.Dense) else config)

    return keras.models.clone_model(model, clone_function=clone)


def train_keras(model, data, epochs: int, batch: int, learning_rate: float, seed: int, lr_decay: str = "none",
                weight_decay_per_weight: float = 0.0, decoupled_weight_decay: float = 0.0, augment=None,
                label_smoothing: float = 0.0, augment_epochs: int | None = None,
                restart_epoch: int | None = None) -> dict[str, Any]:
    """Plain `model.fit` (Adam, or AdamW with `decoupled_weight_decay`; sparse cross-entropy;
    the DynHP run's learning-rate schedule `tf_dynhp.runs.lr_callbacks` and L2 term `with_l2`),
    test error after every epoch. With `augment` (the DynHP run's, `tf_dynhp.runs.augmentation`)
    every epoch trains on `augment(x, tf_dynhp.augment.epoch_rng(seed, epoch))`, the images
    DynHP's epoch saw: one `fit` call per epoch (`initial_epoch`), so the schedule runs on;
    from epoch `augment_epochs` on (the run's `augment_until`) the images as they are.
    With `label_smoothing` (the run's `RunConfig.label_smoothing`) the cross-entropy is
    `tf_dynhp.losses.SparseCategoricalCrossentropy(label_smoothing)`, as in the DynHP run."""
    import keras
    import numpy as np

    from tf_dynhp import memory, runs

    (x, y), (xt, yt) = data
    keras.utils.set_random_seed(seed)
    model = with_l2(model, weight_decay_per_weight)
    schedule = runs.lr_callbacks(lr_decay, learning_rate, epochs, restart_epoch)
    adam = (keras.optimizers.AdamW(learning_rate, weight_decay=decoupled_weight_decay) if decoupled_weight_decay
            else keras.optimizers.Adam(learning_rate))
    loss = runs.loss(runs.RunConfig(label_smoothing=label_smoothing)) or "sparse_categorical_crossentropy"
    model.compile(optimizer=adam, loss=loss,
                  steps_per_execution=FLAGS.steps_per_execution, jit_compile=False)
    records: list[dict[str, float]] = []

    class Clock(keras.callbacks.Callback):
        t0 = None

        def on_train_begin(self, logs=None):
            if self.t0 is None:  # the first of the per-epoch fit calls
                self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            probs = self.model.predict(xt, batch_size=2000, verbose=0)
            records.append({"epoch": epoch + 1, "elapsed": time.perf_counter() - self.t0,
                             "error": 100.0 * float(np.mean(np.argmax(probs, -1) != yt))})

    clock = Clock()
    t0 = time.perf_counter()
    if augment is None:
        model.fit(x, y, batch_size=batch, epochs=epochs, shuffle=True, verbose=0, callbacks=[*schedule, clock])
    else:
        from tf_dynhp.augment import epoch_images

        for epoch in range(epochs):
            images = epoch_images(augment, x, seed, epoch, augment_epochs)
            model.fit(images, y, batch_size=batch, initial_epoch=epoch, epochs=epoch + 1,
                      shuffle=True, verbose=0, callbacks=[*schedule, clock])
    seconds = time.perf_counter() - t0
    mo = memory.mo_kb(model, batch)
    return {
        "model": model, "test_error": records[-1]["error"], "epochs": records, "train_seconds": seconds,
        "examples": len(x) * epochs, "mo_sum_mb": mo * epochs / memory.KB_PER_MB, "mo_mean_kb": mo,
        "full_peak_kb": memory.memory_full_kb(model, batch, model.optimizer),
    }


def run_dynhp(config, data, retrain: bool, run_dir: Path, tmp: Path) -> dict[str, Any]:
    import keras

    from tf_dynhp import runs

    folder = run_dir
    if retrain:
        folder = tmp / "dynhp"
        runs.run(config, folder, data=data, verbose=0)
    h = runs.read_history(folder)
    m = json.loads((folder / "metrics.json").read_text())
    resolved = json.loads((folder / "config.json").read_text())
    elapsed, records = 0.0, []
    for epoch, (sec, err) in enumerate(zip(h["epoch_seconds"], h["val_error"], strict=True), 1):
        elapsed += sec
        records.append({"epoch": epoch, "elapsed": elapsed, "error": err})
    return {
        "model": keras.models.load_model(folder / "model.keras", compile=False), "test_error": m["test_error"],
        "epochs": records, "train_seconds": m["train_seconds"], "examples": len(records) * int(resolved.get("train_examples") or len(data[0][0])),
        "mo_sum_mb": m["training_memory_mb"], "mo_mean_kb": m["mean_memory_kb"], "full_peak_kb": max(h["memory_full_kb"]),
        "layer_sizes": m.get("layer_sizes"), "batch_sizes": m.get("batch_sizes"), "retrained": retrain,
    }


def ensure_tfmot_venv(venv: Path) -> tuple[str | None, str]:
    """The python of a virtualenv holding tf-keras and tfmot (built on first use), or (None, why not)."""
    python = venv / "bin" / "python"
    ready = venv / ".tf_dynhp_tfmot_ready"
    if ready.exists() and python.exists():
        return str(python), f"reused {venv}"
    try:
        tf_version = importlib.metadata.version("tensorflow-cpu")
        tf_package = "tensorflow-cpu"
    except importlib.metadata.PackageNotFoundError:
        tf_version = importlib.metadata.version("tensorflow")
        tf_package = "tensorflow"
    major_minor = ".".join(tf_version.split(".")[:2])
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"{tf_package}=={tf_version}",
         f"tf-keras~={major_minor}.0", "tensorflow-model-optimization"],
        [str(python), "-c", "import os; os.environ['TF_USE_LEGACY_KERAS']='1'; import tf_keras, tensorflow_model_optimization"],
    ]
    print(f"building the tfmot virtualenv {venv} ({tf_package}=={tf_version}, tf-keras~={major_minor}.0, "
          "tensorflow-model-optimization); a few minutes the first time", flush=True)
    for cmd in steps:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        except (OSError, subprocess.TimeoutExpired) as err:
            return None, f"`{' '.join(cmd[:4])} ...` failed: {err}"
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-6:])
            return None, f"`{' '.join(cmd[:4])} ...` exited with {done.returncode}:\n{tail}"
    ready.write_text(json.dumps({"tensorflow": tf_version}) + "\n")
    return str(python), f"built {venv}"


def run_tfmot(python: str, data, calibration, hidden, epochs: int, batch: int, learning_rate: float, sparsity: float,
              seed: int, tmp: Path, lr_decay: str = "none", weight_decay_per_weight: float = 0.0,
              decoupled_weight_decay: float = 0.0, dropout: float = 0.0, augment: dict | None = None,
              label_smoothing: float = 0.0, augment_epochs: int | None = None,
              restart_epoch: int | None = None) -> dict[str, Any]:
    """Runs tools/_tfmot_baseline.py in the venv and reads its JSON back."""
    import numpy as np

    (x, y), (xt, yt) = data
    npz = tmp / "tfmot_data.npz"
    np.savez(npz, x_train=x, y_train=y, x_test=xt, y_test=yt, calibration=calibration)
    request = {"data": str(npz), "hidden": list(hidden), "epochs": epochs, "batch_size": batch, "learning_rate": learning_rate,
               "final_sparsity": sparsity, "end_fraction": FLAGS.tfmot_ramp, "seed": seed, "out_dir": str(tmp / "tfmot"),
               "lr_decay": lr_decay, "weight_decay_per_weight": weight_decay_per_weight,
               "decoupled_weight_decay": decoupled_weight_decay, "dropout": dropout, "augment": augment,
               "augment_module": str(REPO / "tf_dynhp" / "augment.py"), "label_smoothing": label_smoothing,
               "augment_epochs": augment_epochs, "restart_epoch": restart_epoch}
    (tmp / "tfmot_request.json").write_text(json.dumps(request))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    done = subprocess.run([python, str(REPO / "tools" / "_tfmot_baseline.py"), str(tmp / "tfmot_request.json"),
                           str(tmp / "tfmot_result.json")], capture_output=True, text=True, env=env, timeout=24 * 3600)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise RuntimeError(f"tools/_tfmot_baseline.py exited with {done.returncode}:\n{tail}")
    return json.loads((tmp / "tfmot_result.json").read_text())


# --------------------------------------------------------------------------- table
COLUMNS = [
    "method", "test error %", ".tflite fp32 KB (gzip)", ".tflite int8 KB (gzip)", "nonzero params",
    "training memory: MO sum MB (mean MO KB/epoch)", "peak full footprint KB", "train s", "s to reach {target}% (epoch)",
    "examples/s",
]


def _row_cells(row: dict[str, Any], target: float) -> list[str]:
    reach = time_to_target(row["epochs"], target)
    fp32, int8 = row.get("tflite_fp32"), row.get("tflite_int8")
    return [
        row["name"], f"{row['test_error']:.2f}",
        f"{fp32[0] / 1024:.1f} ({fp32[1] / 1024:.1f})" if fp32 else "–",
        f"{int8[0] / 1024:.1f} ({int8[1] / 1024:.1f})" if int8 else "–",
        f"{row['nonzero']:,}", f"{row['mo_sum_mb']:.1f} ({row['mo_mean_kb']:.1f})", f"{row['full_peak_kb']:.1f}",
        f"{row['train_seconds']:.1f}", f"{reach[0]:.1f} ({reach[1]})" if reach else "not reached",
        f"{row['examples'] / row['train_seconds']:.0f}",
    ]


def markdown_table(rows: list[dict[str, Any]], target: float) -> list[str]:
    header = [c.format(target=f"{target:g}") for c in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_row_cells(r, target)) + " |" for r in rows]
    return lines


def text_table(rows: list[dict[str, Any]], target: float) -> str:
    header = [c.format(target=f"{target:g}") for c in COLUMNS]
    cells = [header] + [_row_cells(r, target) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    return "\n".join("  ".join(c[i].ljust(widths[i]) for i in range(len(header))) for c in cells)


# --------------------------------------------------------------------------- checks before any work
def read_run_config(run_dir: Path, given: str) -> dict[str, Any]:
    """The run's `config.json` as a dict.

    Raises:
        app.UsageError: the file is missing, unreadable, not JSON or no JSON object; names it.
    """
    path = run_dir / "config.json"
    expected = "expected the run's configuration, a JSON object written by tools/train.py"
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise app.UsageError(f"--dynhp_run={given}: {path} is missing ({expected})") from err
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise app.UsageError(f"--dynhp_run={given}: {path} cannot be read ({expected}; "
                             f"{getattr(err, 'strerror', None) or str(err).splitlines()[0]})") from err
    if not isinstance(saved, dict):
        raise app.UsageError(f"--dynhp_run={given}: {path} holds {_JSON_KINDS.get(type(saved), type(saved).__name__)} "
                             f"({expected})")
    return saved


def load_run_model(path: Path, given: str):
    """The Keras model of the run folder's `model.keras` (`path`), loaded before any training.

    Raises:
        app.UsageError: the file is no loadable Keras model (truncated, damaged, foreign); names it.
    """
    import keras

    import tf_dynhp  # noqa: F401 - registers the package's layers

    if not zipfile.is_zipfile(path):
        raise app.UsageError(f"--dynhp_run={given}: {path} is not a readable Keras model file (a .keras file is a zip "
                             "archive; this one is not: truncated, or not written by Keras)")
    try:
        return keras.models.load_model(path, compile=False)
    except _NOT_A_MODEL as err:
        raise app.UsageError(f"--dynhp_run={given}: {path} is not a readable Keras model file ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else 'no message'})") from err


def check_out(value: str) -> tuple[Path, Path]:
    """--out (`value`, "~" expanded) and the .json of raw numbers beside it, looked at (nothing
    created, so a refusal of the run folder after this leaves no trace; `probe_writable` writes).

    Raises:
        app.UsageError: --out is a folder or no regular file, ends in .json (the raw numbers'
            name), or its folder cannot be created (a file on its path).
    """
    out = Path(value).expanduser()
    if out.is_dir():
        raise app.UsageError(f"--out={value}: expected the path of a Markdown file to write; that is a folder")
    raw_path = out.with_suffix(".json")
    if raw_path == out or out.suffix.lower() == ".json":
        raise app.UsageError(f"--out={value}: expected the path of a Markdown file (e.g. benchmark.md); the raw numbers "
                             "go to the same name ending in .json, which would be this file")
    for path in (out, raw_path):
        if path.is_dir() or (path.exists() and not path.is_file()):
            raise app.UsageError(f"--out={value}: {path} would be written, and is not a regular file (a folder, a device "
                                 "or a pipe)")
    for folder in out.parents:
        if folder.is_dir():
            break
        if os.path.lexists(folder):
            raise app.UsageError(f"--out={value}: its folder cannot be created ({folder} is a file, not a folder)")
    return out, raw_path


def probe_writable(out: Path, files: tuple[Path, ...]) -> None:
    """Creates `out`'s folder, then an empty file in it and removes it; opens each existing
    file of `files` for appending (nothing written). A real write, as permission bits tell
    root nothing (a folder of /proc or /sys passes `os.access`).

    Raises:
        app.UsageError: naming --out and what could not be written.
    """
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=out.parent, prefix=".benchmark_probe_")
        os.close(handle)
        os.unlink(name)
    except OSError as err:
        raise app.UsageError(f"--out={FLAGS.out}: its folder cannot be created or written ({out.parent}: a file could not "
                             f"be created there: {err.strerror or err})") from err
    for path in files:
        if path.exists():
            try:
                with open(path, "ab"):
                    pass
            except OSError as err:
                raise app.UsageError(f"--out={FLAGS.out}: {path} cannot be overwritten ({err.strerror or err})") from err


# --------------------------------------------------------------------------- main
def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    given = FLAGS.dynhp_run
    run_dir = Path(given).expanduser()  # "~" as the shell would
    if not run_dir.is_dir():
        raise app.UsageError(f"--dynhp_run={given}: no such folder")
    out, raw_path = check_out(FLAGS.out)  # looked at before hours of training, not after them; written to below
    import tf_dynhp

    if not tf_dynhp.runs.is_finished(run_dir) or not (run_dir / "model.keras").is_file():
        raise app.UsageError(f"--dynhp_run={given}: not a finished run folder (expected a readable metrics.json and model.keras)")
    saved = read_run_config(run_dir, given)
    if saved.get("method") != "dynhp":
        raise app.UsageError(f"--dynhp_run={given}: method is {saved.get('method')!r}, expected 'dynhp'")
    arch = saved.get("arch", "mlp")  # runs written before `arch` existed are MLPs
    if arch != SUPPORTED_ARCH:
        raise app.UsageError(f"--dynhp_run={given}: arch is {arch!r}, expected {SUPPORTED_ARCH!r} (the baselines, Keras' dense "
                             "row and tfmot's pruned row, are MLPs)")
    final = load_run_model(run_dir / "model.keras", given)  # the DynHP model, its architecture trained from scratch in row 3
    probe_writable(out, (out, raw_path))

    logging.set_verbosity(logging.WARNING)  # TensorFlow's SavedModel INFO lines during the exports
    import keras
    import numpy as np

    from tf_dynhp import export, memory, runs

    fields = {f for f in runs.RunConfig.__dataclass_fields__}
    config = runs.RunConfig(**{k: v for k, v in saved.items() if k in fields})
    if isinstance(config.hidden, str):
        config.hidden = [int(h) for h in config.hidden.split(",") if h]

    def pick(name: str):
        if FLAGS[name].present:
            return FLAGS[name].value
        return QUICK[name] if FLAGS.quick else getattr(config, name)

    config.epochs, config.train_limit, config.test_limit, config.seed = pick("epochs"), pick("train_limit"), pick("test_limit"), FLAGS.seed
    epochs = config.epochs
    (x, y), (xt, yt) = tf_dynhp.datasets.load(config.dataset, FLAGS.data_dir)
    if config.train_limit:
        x, y = x[: config.train_limit], y[: config.train_limit]
    if config.test_limit:
        xt, yt = xt[: config.test_limit], yt[: config.test_limit]
    data = ((x, y), (xt, yt))
    calibration = x[np.random.default_rng(FLAGS.seed).permutation(len(x))[: FLAGS.calibration_examples]]
    print(f"benchmark on {config.dataset}: {len(x)} train / {len(xt)} test images, {epochs} epochs, seed {FLAGS.seed}", flush=True)

    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tf_dynhp_bench_") as tmp_name:
        tmp = Path(tmp_name)
        print("[1/4] DynHP" + (" (training the run's configuration again)" if FLAGS.retrain_dynhp else " (numbers of the run folder)"), flush=True)
        dyn = run_dynhp(config, data, FLAGS.retrain_dynhp, run_dir, tmp)
        dyn["name"] = f"DynHP (α_bs={config.alpha_bs}, {config.batch_growth})"
        rows.append(dyn)

        print("[2/4] Keras dense", flush=True)
        keras.utils.set_random_seed(FLAGS.seed)
        lr_decay = getattr(config, "lr_decay", "none")  # every row trains on the DynHP run's schedule and L2 term
        restart = runs.restart_epoch(lr_decay, getattr(config, "target_deadline", 0.25), epochs)
        wd = getattr(config, "weight_decay_per_weight", 0.0)
        dwd = getattr(config, "decoupled_weight_decay", 0.0)
        dropout = getattr(config, "dropout", 0.0) or 0.0
        augment = runs.augmentation(config)
        until = getattr(config, "augment_until", 1.0)
        augment_epochs = None if until >= 1 else tf_dynhp.augment.augmented_epochs(until, epochs)
        smoothing = getattr(config, "label_smoothing", 0.0) or 0.0
        dense = train_keras(runs.build_mlp(config.hidden, dropout=dropout), data, epochs, FLAGS.batch_size, config.learning_rate, FLAGS.seed, lr_decay,
                            wd, dwd, augment, smoothing, augment_epochs, restart)
        dense["name"] = f"Keras dense 784-{'-'.join(map(str, config.hidden))}-10 (bs={FLAGS.batch_size})"
        rows.append(dense)

        print("[3/4] DynHP architecture, dense from scratch", flush=True)
        keras.utils.set_random_seed(FLAGS.seed)
        scratch_model = keras.models.clone_model(final)  # same layers and kept pixels, fresh weights
        scratch = train_keras(scratch_model, data, epochs, FLAGS.batch_size, config.learning_rate, FLAGS.seed, lr_decay, wd, dwd,
                              augment, smoothing, augment_epochs, restart)
        sizes = json.loads((run_dir / "metrics.json").read_text()).get("layer_sizes")
        scratch["name"] = f"DynHP architecture {'-'.join(map(str, sizes or []))}-10, dense from scratch (bs={FLAGS.batch_size})"
        rows.append(scratch)

        dense_kernels = _kernel_count(dense["model"])
        sparsity = 1.0 - _kernel_count(final) / dense_kernels
        if FLAGS.skip_tfmot:
            notes.append("tfmot row skipped (--skip_tfmot).")
        else:
            print(f"[4/4] tfmot prune_low_magnitude to sparsity {sparsity:.3f}", flush=True)
            python, why = ensure_tfmot_venv(Path(FLAGS.tfmot_venv))
            if python is None:
                print(f"tfmot row left out: could not build the virtualenv: {why}", flush=True)
                notes.append(f"tfmot row left out: the virtualenv could not be built here ({why.splitlines()[0]}).")
            else:
                try:
                    t = run_tfmot(python, data, calibration, config.hidden, epochs, FLAGS.batch_size, config.learning_rate, sparsity, FLAGS.seed, tmp,
                                  lr_decay, wd, dwd, dropout, None if augment is None else augment.get_config(), smoothing,
                                  augment_epochs, restart)
                except (RuntimeError, subprocess.TimeoutExpired, OSError, json.JSONDecodeError) as err:
                    print(f"tfmot row left out: {err}", flush=True)
                    notes.append(f"tfmot row left out: {str(err).splitlines()[0]}")
                else:
                    dense_model = dense["model"]
                    mo = memory.mo_kb(dense_model, FLAGS.batch_size)  # tfmot keeps every weight (masked) while training
                    rows.append({
                        "name": f"tfmot prune_low_magnitude, polynomial 0→{sparsity:.3f} (bs={FLAGS.batch_size})",
                        "test_error": t["test_error"], "epochs": t["epochs"], "train_seconds": t["train_seconds"],
                        "examples": t["examples"], "mo_sum_mb": mo * epochs / memory.KB_PER_MB, "mo_mean_kb": mo,
                        "full_peak_kb": memory.memory_full_kb(dense_model, FLAGS.batch_size) + memory.floats_to_kb(t["mask_floats"]),
                        "tflite_fp32": t["tflite_fp32"], "tflite_int8": t["tflite_int8"], "nonzero": t["nonzero_weights"],
                    })
                    notes.append(
                        f"tfmot ({t['versions']}): kernels pruned to sparsity {', '.join(f'{s:.3f}' for s in t['kernel_sparsity'])} "
                        f"(schedule {t['schedule']}); `.tflite` with `Optimize.EXPERIMENTAL_SPARSITY` (int8: with `DEFAULT` and "
                        "int8 builtins). Trained with steps_per_execution=1 (tfmot's UpdatePruningStep counts steps in a "
                        "batch callback); its memory holds the dense weights plus one mask float per kernel weight."
                    )

        print("exporting .tflite files", flush=True)
        for i, row in enumerate(rows[:3]):
            if "model" not in row:
                continue
            row["nonzero"] = int(row["model"].count_params())
            for q in ("none", "int8"):
                path = tmp / f"row{i}_{q}.tflite"
                report = export.to_tflite(row["model"], path, q, calibration if q == "int8" else None)
                row["tflite_fp32" if q == "none" else "tflite_int8"] = (report.size_bytes, _gzip_size(path))

    target = FLAGS.target_error
    command = "python tools/benchmark.py " + " ".join(sys.argv[1:])
    print()
    print(text_table(rows, target))
    lines = [
        "# Benchmark: DynHP against the alternatives",
        "",
        "```bash",
        command,
        "```",
        "",
        f"{config.dataset}, {len(x)} train / {len(xt)} test images, {epochs} epochs, seed {FLAGS.seed}, {os.cpu_count()} CPU cores, "
        f"TensorFlow {importlib.metadata.version('tensorflow-cpu') if _has('tensorflow-cpu') else 'n/a'}, Keras {keras.__version__}. "
        f"DynHP run: `{run_dir}` ({'trained again here' if FLAGS.retrain_dynhp else 'numbers of the folder, with its own epochs, data and machine load: not timed side by side'}; "
        f"final batch {rows[0].get('batch_sizes', [None])[-1]}, layer sizes {rows[0].get('layer_sizes')}).",
        "",
        *markdown_table(rows, target),
        "",
        "* Test error: after the last epoch. Sizes in KB of 1024 bytes; gzip -9 in parentheses. Nonzero params: "
        "weights and biases the exported model holds (tfmot: nonzero kernel weights + biases).",
        "* Training memory: MO (paper Sec. 5.1: weights + one mini-batch, 4-byte floats) summed over epochs, in MB of "
        "1000 KB, and its mean per epoch; peak full footprint: `tf_dynhp.memory.memory_full_kb` (variables, gradients, "
        "optimizer slots, activations of one batch).",
        f"* Wall times include the test-set evaluation after every epoch (all rows); examples/s = training examples × epochs / train s. "
        f"Keras rows: steps_per_execution={FLAGS.steps_per_execution}.",
        *[f"* {n}" for n in notes],
        "",
    ]
    out.write_text("\n".join(lines))
    raw = [{k: v for k, v in r.items() if k != "model"} for r in rows]
    raw_path.write_text(json.dumps({"command": command, "target_error": target, "rows": raw, "notes": notes}, indent=1, default=str))
    print(f"\nwrote {out} and {raw_path}")
    return 0


def _has(package: str) -> bool:
    try:
        importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


if __name__ == "__main__":
    flags.mark_flags_as_required(["dynhp_run"])
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tools/_load.py, also under python -m tools.<name>
    from _load import cli_module

    app.run(cli_module("flag_rules").one_line_usage(main))
