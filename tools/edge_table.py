"""The edge table of issue 5, in one go: export a DynHP model and the dense model in
every quantization with `tools/export.py`, then measure each file on the "device" with
`deploy/infer.py` (NumPy + LiteRT only, its own process, so its peak RSS is the
deploy process's).

    python tools/edge_table.py --dynhp_model=runs/i4_dynhp_step_mean/model.keras \
        --dense_model=runs/mnist_dense10/model.keras --out_dir=runs/edge

Prints a Markdown table: model, quantization, file KB, parameters, accuracy through
LiteRT, p50/p99 latency for one example and a batch of 32, peak RSS of the deploy
process; writes it to `<out_dir>/edge_table.md`. The test images come from what
`tf_dynhp.datasets` finds (`--data_dir`, else the usual places): a folder of IDX
files, or an `.npz` such as Keras' `mnist.npz`, whose test split is then written
to `<out_dir>` as IDX files for `deploy/infer.py`.
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
FLAGS = flags.FLAGS
flags.DEFINE_string("dynhp_model", None, "Stripped DynHP model (.keras).")
flags.DEFINE_string("dense_model", None, "Dense reference model (.keras).")
flags.DEFINE_string("out_dir", "runs/edge", "Folder for the .tflite files and the table.")
flags.DEFINE_enum("dataset", "mnist", ["mnist", "fashion_mnist"], "Data set of the test images.")
flags.DEFINE_string("data_dir", None, "Dataset folder (default: TF_DYNHP_DATA, then the usual places).")
flags.DEFINE_integer("limit", None, "Evaluate on the first N test images only.", lower_bound=1)
VARIANTS = ("none", "float16", "dynamic", "int8")
PATTERNS = {
    "accuracy": r"accuracy: ([0-9.]+)",
    "p50": r"single example: p50 ([0-9.]+) ms",
    "p99": r"single example: p50 [0-9.]+ ms, p99 ([0-9.]+) ms",
    "batch_p50": r"batch of \d+: p50 ([0-9.]+) ms",
    "rss": r"peak RSS: ([0-9.]+) MiB",
}


def _run(cmd: list[str]) -> str:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:  # export.py's own one-line error, said as this tool's
        said = [line for line in done.stderr.splitlines() if line.startswith("error:") or "Error" in line]
        raise app.UsageError(f"{Path(cmd[1]).name} failed: {(said or done.stderr.strip().splitlines() or ['?'])[-1]}")
    return done.stdout


def _field(pattern: str, text: str) -> str:
    m = re.search(pattern, text)
    return m.group(1) if m else "n/a"


def _idx_path(folder: Path, base: str) -> Path:
    """`folder/base.gz`, else `folder/base` (the order `tf_dynhp.datasets` reads them in)."""
    gz = folder / f"{base}.gz"
    return gz if gz.is_file() else folder / base


def _test_idx_files(found: Path, out: Path) -> tuple[Path, Path]:
    """The test images and labels as IDX files for `deploy/infer.py`, which reads nothing else.

    `found` is what `tf_dynhp.datasets.find_dataset_dir` returned: a folder of IDX files
    (its own are used), or an `.npz` (`--data_dir=.../mnist.npz`, or Keras' cached
    `mnist.npz`), whose test split `datasets.load` reads and checks and which is written
    to `out` as uint8 IDX files (`pixel / 255` undone exactly).
    """
    from tf_dynhp import datasets  # noqa: PLC0415
    from tf_dynhp._checks import write_atomic  # noqa: PLC0415
    from tf_dynhp.cli.flag_rules import load_dataset  # noqa: PLC0415

    if found.is_dir():
        return _idx_path(found, datasets.TEST_IMAGES), _idx_path(found, datasets.TEST_LABELS)
    _, (x, y) = load_dataset(FLAGS.dataset, str(found), download=False)
    pixels = np.round(x * 255).astype(np.uint8)
    written = []
    for base, array in ((datasets.TEST_IMAGES, pixels), (datasets.TEST_LABELS, np.asarray(y, np.uint8))):
        header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
        written.append(write_atomic(out / f"{FLAGS.dataset}-{base}.gz", gzip.compress(header + array.tobytes())))
    return written[0], written[1]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]} (every setting is a --flag)")
    sys.path.insert(0, str(ROOT))
    from tf_dynhp.cli.flag_rules import output_folder  # noqa: PLC0415 - loaded by its path under __main__

    out = output_folder("out_dir", FLAGS.out_dir, "a folder for the .tflite files and the table")
    for flag in ("dynhp_model", "dense_model"):  # before any folder is made or export run
        given = FLAGS[flag].value
        if given and not Path(given).expanduser().is_file():
            raise app.UsageError(f"--{flag}={given}: no such file (a .keras model, e.g. a run folder's model.keras)")
    from tf_dynhp import datasets

    found = datasets.find_dataset_dir(FLAGS.dataset, FLAGS.data_dir)
    out.mkdir(parents=True, exist_ok=True)
    images, labels = _test_idx_files(found, out)
    rows = []
    for name, model in (("DynHP", FLAGS.dynhp_model), ("dense", FLAGS.dense_model)):
        if not model:
            continue
        stem = out / f"{name.lower()}.tflite"
        _run([sys.executable, str(ROOT / "tools" / "export.py"), f"--model={model}", f"--out={stem}",
              "--quantization=all", f"--dataset={FLAGS.dataset}"] + ([f"--data_dir={FLAGS.data_dir}"] if FLAGS.data_dir else []))
        # int8 with one weight scale per tensor: the per-unit scales are a visible share of a small pruned model.
        pt = out / f"{name.lower()}_int8_per_tensor.tflite"
        _run([sys.executable, str(ROOT / "tools" / "export.py"), f"--model={model}", f"--out={pt}",
              "--quantization=int8", "--noper_channel", f"--dataset={FLAGS.dataset}"] + ([f"--data_dir={FLAGS.data_dir}"] if FLAGS.data_dir else []))
        import keras  # noqa: PLC0415

        import tf_dynhp  # noqa: F401,PLC0415

        params = keras.models.load_model(model, compile=False).count_params()
        for q in VARIANTS + ("int8_per_tensor",):
            path = out / f"{name.lower()}_{q}.tflite"
            text = _run([sys.executable, str(ROOT / "deploy" / "infer.py"), "--model", str(path), "--images", str(images),
                         "--labels", str(labels)] + (["--limit", str(FLAGS.limit)] if FLAGS.limit else []))
            f = {key: _field(pattern, text) for key, pattern in PATTERNS.items()}
            rows.append(
                f"| {name} | {q} | {path.stat().st_size / 1024:.1f} | {params:,} | {f['accuracy']} | {f['p50']} "
                f"| {f['p99']} | {f['batch_p50']} | {f['rss']} |"
            )
            print(rows[-1], flush=True)
    table = "\n".join(
        ["| model | quantization | file KB | parameters | accuracy (LiteRT) | p50 1 example ms | p99 1 example ms "
         "| p50 batch of 32 ms | peak RSS MiB |", "|---|---|---|---|---|---|---|---|---|"] + rows
    )
    (out / "edge_table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    flags.mark_flags_as_required(["dynhp_model"])
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tools/_load.py, also under python -m tools.<name>
    from _load import cli_module

    app.run(cli_module("flag_rules").one_line_usage(main))
