r"""Fine-tune a trainable `.tflite` model on the device.

Usage::

    python train_on_device.py --model trainable.tflite \
        --images train-images-idx3-ubyte.gz --labels train-labels-idx1-ubyte.gz \
        --steps 200 [--batch 32] [--weights out.npz] [--restore in.npz]

The model comes from `tf_dynhp.export.to_trainable_tflite`. Prints the mean
loss every `--log_every` steps, the accuracy before and after training (on
`--eval_images/--eval_labels`, or on the training files if not given), and saves
the weights and optimizer state to `--weights` (a `.npz` with the weights under
their names, ``kernel_0``, ``bias_0``, ..., and the optimizer slots under
``optimizer/<name>``). `--restore` loads such a file first and continues from
it. Labels outside the model's classes (e.g. 200 or -1 for 10 classes) are refused:
the loss would not see them. So are, before any training, a `--weights` path whose
folder is missing or not writable (or that is a folder, or one of the input files:
`--model`, the images, the labels), a `--restore` file holding
NaN or infinite values (named with the array), and float images outside [0, 1]
(uint8 pixels are divided by 255; float images are taken as stored). Bad input
exits with status 2 and one `error:` line.
Needs NumPy and the LiteRT runtime only (no TensorFlow).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

import litert_runner as lr

OPTIMIZER_PREFIX = "optimizer/"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="trainable .tflite (tf_dynhp.export.to_trainable_tflite)")
    p.add_argument("--images", required=True,
                   help="IDX(.gz) training images (n, 28, 28): uint8 pixels (divided by 255) or floats in [0, 1]")
    p.add_argument("--labels", required=True, help="IDX(.gz) training labels (n,)")
    p.add_argument("--eval_images", default=None, help="IDX(.gz) images for the accuracy (default: --images)")
    p.add_argument("--eval_labels", default=None, help="IDX(.gz) labels for the accuracy (default: --labels)")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps (default 200)")
    p.add_argument("--batch", type=int, default=None,
                   help="batch size (default: the model's fixed batch size, else 32)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training examples")
    p.add_argument("--seed", type=int, default=0, help="seed of the example order (default 0)")
    p.add_argument("--log_every", type=int, default=20, help="print the mean loss every N steps (default 20)")
    p.add_argument("--weights", default=None, help="write weights + optimizer state to this .npz")
    p.add_argument("--restore", default=None, help="start from the weights (+ optimizer state) of this .npz")
    p.add_argument("--threads", type=int, default=None, help="interpreter threads")
    args = p.parse_args(argv)
    for name in ("steps", "batch", "limit", "log_every", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name} must be a positive integer, received {value}")
    if (args.eval_images is None) != (args.eval_labels is None):
        p.error("--eval_images and --eval_labels go together; received only one of them")
    return args


def load_npz(path: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Weights and optimizer state from a `.npz` written by `save_npz`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a `.npz` archive of arrays (names `path`).
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"--restore {path}: no such file")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"--restore {path}: expected a .npz archive written by --weights; it is not readable ({err})") from err
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"--restore {path}: expected a .npz archive written by --weights; received a single .npy array")
    try:
        with data:
            weights = {k: data[k] for k in data.files if not k.startswith(OPTIMIZER_PREFIX)}
            state = {k[len(OPTIMIZER_PREFIX):]: data[k] for k in data.files if k.startswith(OPTIMIZER_PREFIX)}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"--restore {path}: a damaged .npz archive ({err})") from err
    check_finite(path, weights)
    check_finite(path, {OPTIMIZER_PREFIX + k: v for k, v in state.items()})
    return weights, state


def check_finite(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Refuses restored arrays holding NaN or infinite values (a run that diverged): the
    first step's loss would be NaN and blame the learning rate.

    Raises:
        ValueError: names `path`, the first such array and how many of its values are.
    """
    for name, value in arrays.items():
        if value.dtype.kind not in "fc":  # integers and booleans are always finite
            continue
        bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
        if bad:
            raise ValueError(f"--restore {path}: expected finite values; received the array '{name}' with {bad} "
                             f"of its {np.size(value)} values NaN or infinite (saved from a run that diverged?)")


def check_output(flag: str, path: str) -> None:
    """Refuses, before any training, an output path `save_npz` could not write: a folder,
    a path in a folder that is missing (or a file), or in one where no file can be created
    (probed by creating and removing an empty file there: permission bits alone do not
    stop root, a read-only file system stops everyone).

    Raises:
        FileNotFoundError, ValueError, PermissionError: naming `--flag` and `path`.
    """
    target = Path(path)
    folder = target.parent
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise FileNotFoundError(f"--{flag} {path}: expected a path in an existing folder; the folder {folder} {what}")
    if target.is_dir():
        raise ValueError(f"--{flag} {path}: expected the path of a .npz file to write; that is a folder")
    probe = folder / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.probe"
    try:
        with open(probe, "xb"):
            pass
    except OSError as err:
        raise PermissionError(f"--{flag} {path}: expected a writable folder; cannot create a file in {folder} "
                              f"({err.strerror or err})") from None
    with contextlib.suppress(OSError):
        probe.unlink()


def save_npz(path: str, weights: dict[str, np.ndarray], state: dict[str, np.ndarray]) -> None:
    """Writes weights and optimizer state atomically (temporary file + os.replace)."""
    target = Path(path)
    arrays = dict(weights)
    arrays.update({OPTIMIZER_PREFIX + k: v for k, v in state.items()})
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:  # np.savez on a file object keeps the name as given
            np.savez(f, **arrays)
        os.replace(tmp, target)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise


def main(argv: list[str] | None = None) -> int:
    """Runs `train_on_device.py`; bad input (a missing or broken file, labels outside the
    model's classes, images it cannot take, weights of other shapes) exits with status 2
    and one `error:` line on stderr."""
    args = parse_args(argv)
    try:
        return _run(args)
    except (FileNotFoundError, ValueError, ImportError, OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def check_not_an_input(args: argparse.Namespace) -> None:
    """Refuses a `--weights` path that is one of the run's input files (`--model`, the
    images or labels): the .npz written over it after training destroyed the model, without
    a word. `--restore` may be the same file: it is read before the run and written after."""
    target = Path(args.weights)
    for flag in ("model", "images", "labels", "eval_images", "eval_labels"):
        given = getattr(args, flag)
        if given is not None and target.exists() and Path(given).exists() and os.path.samefile(target, given):
            raise ValueError(f"--weights {args.weights}: expected a new .npz file (or the --restore file); that is "
                             f"the --{flag} file, which the weights would overwrite")


def _run(args: argparse.Namespace) -> int:
    if args.weights is not None:
        check_output("weights", args.weights)
        check_not_an_input(args)
    trainer = lr.Trainer(args.model, num_threads=args.threads)
    raw = trainer.takes_integers  # a uint8-input model was trained on the pixels as stored
    x, y = lr.load_images_labels(args.images, args.labels, args.limit, raw=raw)
    x, y = trainer.prepare(x), lr.check_labels(y, trainer.num_classes, args.labels)
    if args.eval_images is not None:
        x_eval, y_eval = lr.load_images_labels(args.eval_images, args.eval_labels, raw=raw)
        x_eval, y_eval = trainer.prepare(x_eval), lr.check_labels(y_eval, trainer.num_classes, args.eval_labels)
        eval_name = args.eval_images
    else:
        x_eval, y_eval, eval_name = x, y, f"{args.images} (the training files)"
    if args.restore is not None:
        weights, state = load_npz(args.restore)
        try:
            trainer.set_weights(weights)
            if state:
                trainer.set_optimizer_state(state)
        except (ValueError, RuntimeError) as err:
            raise ValueError(f"--restore {args.restore}: does not fit {args.model}: {err}") from err
        print(f"restored {len(weights)} weights and {len(state)} optimizer tensors from {args.restore}")
    batch = args.batch or trainer.fixed_batch or 32
    if trainer.fixed_batch and batch != trainer.fixed_batch:
        print(f"error: {args.model} trains with a fixed batch of {trainer.fixed_batch}, received --batch {batch}",
              file=sys.stderr)
        return 2
    n = x.shape[0]
    if n < batch:
        print(f"error: expected at least --batch={batch} training examples, received {n}", file=sys.stderr)
        return 2

    before = trainer.accuracy(x_eval, y_eval)
    print(f"model: {args.model}; {n} training examples, batch {batch}, {args.steps} steps")
    print(f"accuracy before: {before:.4f} on {x_eval.shape[0]} examples of {eval_name}")

    rng = np.random.default_rng(args.seed)
    order = rng.permutation(n)
    pos = 0
    window: list[float] = []
    losses: list[float] = []
    step_times: list[float] = []
    for step in range(1, args.steps + 1):
        if pos + batch > n:  # new epoch, new order
            order, pos = rng.permutation(n), 0
        idx = order[pos : pos + batch]
        pos += batch
        t0 = time.perf_counter()
        loss = trainer.train_step(x[idx], y[idx])
        step_times.append(time.perf_counter() - t0)
        if not np.isfinite(loss):
            print(f"error: the loss became {loss} at step {step}; lower the learning rate", file=sys.stderr)
            return 1
        window.append(loss)
        losses.append(loss)
        if step % args.log_every == 0 or step == args.steps:
            print(f"step {step:5d}  loss {np.mean(window):.4f}")
            window = []

    after = trainer.accuracy(x_eval, y_eval)
    p50, p99 = lr.percentiles_ms(step_times)
    print(f"accuracy after: {after:.4f} (before {before:.4f})")
    span = min(args.log_every, len(losses) // 2)  # two spans that do not overlap (none below 2 steps)
    if span:
        print(f"loss first {span} steps {np.mean(losses[:span]):.4f} -> last {span} steps {np.mean(losses[-span:]):.4f}")
    print(f"train step latency: p50 {p50:.3f} ms, p99 {p99:.3f} ms")
    if args.weights is not None:
        save_npz(args.weights, trainer.get_weights(), trainer.get_optimizer_state())
        print(f"saved weights and optimizer state to {args.weights}")
    print(f"peak RSS: {lr.peak_rss_mb():.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
