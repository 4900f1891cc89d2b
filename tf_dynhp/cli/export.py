r"""Export a trained model to LiteRT (TFLite) and compare sizes and accuracies.

Usage::

    python tools/export.py --model=run/model.keras --out=model.tflite --quantization=int8 \
        --dataset=mnist [--data_dir=...] [--dense_model=run_dense/model.keras]
    python tools/export.py --model=run/model.keras --out=model.tflite --quantization=all

(`tf-dynhp-export` is the same program, installed with the package.)

`--model` is the stripped model (`tf_dynhp.strip`, or `FitResult.model` saved
as `.keras`); a gated model (with `L0Dense` layers) is stripped first. With
`--quantization=all` every variant is written next to `--out`
(`<stem>_<quantization>.tflite`). The table lists each variant's file size and
test accuracy through the LiteRT interpreter, and the float reference: the
unpruned model of `--dense_model` if given, else the pruned float model. The
resolved flags and the table are written to `<out stem>_export.json`.
`--trainable_out` additionally writes the on-device training model.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

from absl import app, flags, logging  # noqa: E402

from tf_dynhp.cli.flag_rules import expect, load_dataset, one_line_usage  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Stripped (or gated) Keras model, .keras file.")
flags.DEFINE_string("out", None, "Output .tflite path; with --quantization=all, the stem of every variant.")
#: tf_dynhp.export.QUANTIZATIONS, named here so that the files --quantization=all writes are
#: checked before TensorFlow loads (a test holds the two equal).
VARIANTS = ("none", "float16", "dynamic", "int8")
flags.DEFINE_enum("quantization", "none", [*VARIANTS, "all"], "Quantization of the export.")
flags.DEFINE_enum("dataset", "mnist", ["mnist", "fashion_mnist"], "Dataset for calibration and accuracy.")
flags.DEFINE_string("data_dir", None, "Folder of the dataset (see tf_dynhp.datasets.load).")
flags.DEFINE_string("dense_model", None, "Optional unpruned float Keras model, the reference row of the table.")
flags.DEFINE_integer("calibration_examples", 300, "Training examples used to calibrate int8 (200-500).")
flags.DEFINE_integer("eval_limit", None, "Evaluate on the first N test examples only (default: all).")
flags.DEFINE_string("trainable_out", None, "Also write an on-device training model (to_trainable_tflite) here.")
flags.DEFINE_enum("optimizer", "sgd", ["sgd", "adam"], "Optimizer of --trainable_out.")
flags.DEFINE_float("learning_rate", None, "Learning rate of --trainable_out (default: Keras' default).")
flags.DEFINE_integer("seed", 0, "Seed of the calibration sample.")
flags.register_validator("calibration_examples", lambda v: v >= 1, "--calibration_examples: expected an integer >= 1")
flags.register_validator("eval_limit", lambda v: v is None or v >= 1, "--eval_limit: expected an integer >= 1 (leave it out for all)")
flags.DEFINE_bool("per_channel", True, "Weight scales per output unit (default) or per tensor (--noper_channel: smaller file).")
expect("learning_rate", "a positive float", lambda v: v > 0 and math.isfinite(v))  # before any file is written


#: What `keras.models.load_model` raises for a file that is no (complete) Keras model: a
#: truncated or foreign zip, a damaged member, a class it cannot rebuild.
_NOT_A_MODEL = (ValueError, TypeError, KeyError, OSError, EOFError, zipfile.BadZipFile)


def _load_keras(path: str, flag: str = "model"):
    """The Keras model of `--<flag>`=`path`; a file that is none is refused naming the flag."""
    import keras  # noqa: PLC0415

    import tf_dynhp  # noqa: PLC0415,F401 - registers the custom layers

    given, path = path, str(Path(path).expanduser())  # "~" as the shell would (the error names the flag's value)
    if not Path(path).is_file():
        raise app.UsageError(f"--{flag}={given}: no such file")
    suffix = Path(path).suffix.lower()
    if suffix not in (".keras", ".h5", ".hdf5"):
        raise app.UsageError(f"--{flag}={path}: not a readable Keras model file (expected a .keras file, or a legacy "
                             f".h5; received a {suffix or 'suffix-less'} file"
                             f"{': a LiteRT model, not the Keras model it was exported from' if suffix == '.tflite' else ''})")
    if suffix == ".keras" and not zipfile.is_zipfile(path):
        raise app.UsageError(f"--{flag}={path}: not a readable Keras model file (a .keras file is a zip archive; this "
                             "one is not: truncated, or not written by Keras)")
    try:
        model = keras.models.load_model(path, compile=False)
    except _NOT_A_MODEL as err:
        raise app.UsageError(f"--{flag}={path}: not a readable Keras model file ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else 'no message'})") from err
    if any(isinstance(layer, (tf_dynhp.L0Dense, tf_dynhp.L0Conv2D)) for layer in model.layers):
        print(f"{path}: gated model (L0Dense/L0Conv2D layers); stripping it first")
        model = tf_dynhp.strip(model)
    return model


def _as_input(x, model, what: str, flag: str = "model"):
    """The data set's images `x` (`datasets.load`'s, in [0, 1]) in the input shape of
    `model`, the model of `--<flag>` (`tf_dynhp.data.reshape_to_input`); for a model on
    an integer input (`keras.Input(dtype="uint8")`) the pixels as stored, 0-255 in that
    dtype, as the model was trained on them (and as `deploy/infer.py` feeds it)."""
    import numpy as np  # noqa: PLC0415

    from tf_dynhp.data import reshape_to_input  # noqa: PLC0415

    dtype = np.dtype(str(model.inputs[0].dtype))
    if np.issubdtype(dtype, np.integer):
        if np.iinfo(dtype).min > 0 or np.iinfo(dtype).max < 255:  # int8 would wrap pixels 128-255 around
            raise app.UsageError(f"--{flag}={FLAGS[flag].value}: the model's input is {dtype.name}, which cannot hold "
                                 "the data set's 0-255 pixels; give the model a uint8 (or wider) or float input.")
        x = np.rint(np.asarray(x, dtype=np.float32) * 255.0).astype(dtype)
    try:
        return reshape_to_input(x, model.inputs[0].shape[1:], f"the --dataset={FLAGS.dataset} {what}")
    except ValueError as err:
        raise app.UsageError(f"--{flag}={FLAGS[flag].value}: {err}") from err


def _accuracy(path: str, x, y) -> float:
    import numpy as np  # noqa: PLC0415
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415

    runner = Interpreter(model_path=path).get_signature_runner("serving_default")
    probs = np.concatenate([runner(x=x[i : i + 1000])["output"] for i in range(0, len(x), 1000)])
    return float(np.mean(np.argmax(probs, axis=1) == y))


def _variant_path(out: Path, quantization: str, all_variants: bool) -> Path:
    if not all_variants:
        return out
    return out.with_name(f"{out.stem}_{quantization}{out.suffix or '.tflite'}")


def _tflite_path(name: str) -> Path:
    """The file flag `--name` names, "~" expanded (the path written is the path checked):
    in an existing folder, and not a folder itself."""
    value = FLAGS[name].value
    path = Path(value).expanduser()
    if not path.parent.is_dir():
        raise app.UsageError(f"--{name}={value}: the folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK):  # checked before the data, the models and any file written
        raise app.UsageError(f"--{name}={value}: the folder {path.parent} is not writable")
    if path.is_dir():
        raise app.UsageError(f"--{name}={value}: expected the path of a .tflite file to write; that is a folder")
    return path


def _same_file(a: Path, b: Path) -> bool:
    """Whether paths `a` and `b` name one file (one path, a symbolic link or a hard link)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _check_outputs(outputs: list[tuple[str, Path]]) -> None:
    """Refuses, before any work, an output (described, path) that would overwrite an input
    (--model, --dense_model) or another output of the same call."""
    inputs = [(f"--{name}={FLAGS[name].value}", Path(FLAGS[name].value).expanduser()) for name in ("model", "dense_model")
              if FLAGS[name].value]
    for i, (what, path) in enumerate(outputs):
        for other, other_path in inputs:
            if _same_file(path, other_path):
                raise app.UsageError(f"{what}: expected a path other than {other}, which it would overwrite; received "
                                     f"the same file ({path})")
        for other, other_path in outputs[:i]:
            if _same_file(path, other_path):
                raise app.UsageError(f"{what}: expected a path of its own; received the same file as {other} ({path})")


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # TF's SavedModel INFO lines
    import numpy as np  # noqa: PLC0415

    out = _tflite_path("out")
    variants = list(VARIANTS) if FLAGS.quantization == "all" else [FLAGS.quantization]
    summary = out.with_name(f"{out.stem}_export.json")
    outputs = [(f"--out={FLAGS.out}" + (f" (its {q} variant)" if FLAGS.quantization == "all" else ""),
                _variant_path(out, q, FLAGS.quantization == "all")) for q in variants]
    outputs.append((f"--out={FLAGS.out} (its summary {summary.name})", summary))
    trainable_out = _tflite_path("trainable_out") if FLAGS.trainable_out else None
    if trainable_out is not None:
        outputs.append((f"--trainable_out={FLAGS.trainable_out}", trainable_out))
    _check_outputs(outputs)
    from tf_dynhp import export  # noqa: PLC0415 - TensorFlow, once the flags and paths are checked

    (x_train, _), (x_test, y_test) = load_dataset(FLAGS.dataset, FLAGS.data_dir)
    if FLAGS.eval_limit:
        x_test, y_test = x_test[: FLAGS.eval_limit], y_test[: FLAGS.eval_limit]
    rng = np.random.default_rng(FLAGS.seed)
    calibration = x_train[rng.permutation(len(x_train))[: FLAGS.calibration_examples]]

    model = _load_keras(FLAGS.model)
    images = x_test  # as the data set has them: the reference may take another shape
    x_test, calibration = _as_input(x_test, model, "test images"), _as_input(calibration, model, "training images")
    try:  # refusals of the model (e.g. not float32, or a CNN for --trainable_out) before any file is written
        export.check_exportable(model, trainable=bool(FLAGS.trainable_out))
    except (TypeError, ValueError) as err:
        raise app.UsageError(f"--model={FLAGS.model}: {err}") from err
    if FLAGS.dense_model:  # the reference may take another input shape (a CNN against an MLP on flat rows)
        ref_model, ref_name = _load_keras(FLAGS.dense_model, "dense_model"), "dense float32 (unpruned)"
        x_ref = _as_input(images, ref_model, "test images", flag="dense_model")
    else:
        ref_model, ref_name, x_ref = model, "pruned float32", x_test
    rows = []
    with tempfile.TemporaryDirectory(prefix="tf_dynhp_export_ref_") as tmp:
        ref = export.to_tflite(ref_model, os.path.join(tmp, "reference.tflite"), "none")
        rows.append({"model": ref_name, "file": "-", "parameters": ref.parameters, "bytes": ref.size_bytes,
                     "accuracy": _accuracy(ref.path, x_ref, y_test)})
        for q in variants:
            target = _variant_path(out, q, FLAGS.quantization == "all")
            start = time.perf_counter()
            report = export.to_tflite(model, target, q, calibration if q == "int8" else None,
                                      per_channel=FLAGS.per_channel)
            rows.append({"model": f"pruned {q}", "file": str(target), "parameters": report.parameters,
                         "bytes": report.size_bytes, "accuracy": _accuracy(report.path, x_test, y_test),
                         "ops": report.ops, "seconds": round(time.perf_counter() - start, 2)})
    if FLAGS.trainable_out:
        report = export.to_trainable_tflite(model, trainable_out, FLAGS.optimizer, FLAGS.learning_rate)
        print(f"trainable model: {report.path} ({report.size_bytes} bytes, signatures {sorted(report.signatures)})")

    ref_bytes, ref_acc = rows[0]["bytes"], rows[0]["accuracy"]
    header = f"{'model':<26} {'params':>9} {'bytes':>10} {'KiB':>8} {'x smaller':>9} {'accuracy':>9} {'delta pt':>8}"
    print(f"test accuracy on {len(x_test)} {FLAGS.dataset} test images, through the LiteRT interpreter")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['model']:<26} {r['parameters']:>9d} {r['bytes']:>10d} {r['bytes'] / 1024:>8.1f} "
              f"{ref_bytes / r['bytes']:>9.2f} {r['accuracy']:>9.4f} {100 * (r['accuracy'] - ref_acc):>+8.2f}")
    for r in rows[1:]:
        print(f"wrote {r['file']}")
    resolved = {name: FLAGS[name].value for name in (
        "model", "out", "quantization", "dataset", "data_dir", "dense_model", "calibration_examples",
        "eval_limit", "trainable_out", "optimizer", "learning_rate", "seed", "per_channel")}
    summary.write_text(json.dumps({"flags": resolved, "eval_examples": len(x_test), "rows": rows}, indent=1))
    print(f"wrote {summary}")
    return 0


def run() -> None:
    """Entry point of `tf-dynhp-export` and `tools/export.py`: parses the flags, then calls `main`."""
    entry = sys.modules["__main__"]
    if entry is not sys.modules.get(__name__):
        entry.__doc__ = __doc__  # absl's --help prints __main__'s docstring
    for flag in FLAGS.get_flags_for_module(__name__):  # and the flags of the module named sys.argv[0]
        FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    flags.mark_flags_as_required(["model", "out"])
    app.run(one_line_usage(main))


if __name__ == "__main__":
    run()
