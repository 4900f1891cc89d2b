r"""Accuracy, latency and peak memory of a `.tflite` classifier on IDX files.

Usage::

    python infer.py --model model.tflite \
        --images t10k-images-idx3-ubyte.gz --labels t10k-labels-idx1-ubyte.gz [--limit N]

Prints the accuracy, the latency per single example and per batch (p50/p99),
and the peak resident memory of the process. (n, 28, 28) images are fed to a
model taking (28, 28, 1) with a channel axis and to one taking (784,) flattened;
labels must be the model's class ids. A float model takes pixels in [0, 1], as
the training pipeline scales them: uint8 IDX images are divided by 255, images
of another type (e.g. float32) are taken as stored and refused unless all their
values are in [0, 1] (float 0-255 pixels would be scored unscaled). A model
with an integer input (keras.Input(dtype="uint8")) gets the pixels as stored.
Bad input exits with status 2 and one `error:` line. Needs NumPy and the
LiteRT runtime only (no TensorFlow).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import litert_runner as lr


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help=".tflite classifier (tf_dynhp.export.to_tflite)")
    p.add_argument("--images", required=True,
                   help="IDX(.gz) images (n, 28, 28): uint8 pixels (divided by 255) or floats in [0, 1]")
    p.add_argument("--labels", required=True, help="IDX(.gz) labels (n,)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N examples")
    p.add_argument("--batch", type=int, default=32, help="batch size of the batched latency (default 32)")
    p.add_argument("--latency_examples", type=int, default=1000,
                   help="single-example calls timed (default 1000, capped at the example count)")
    p.add_argument("--threads", type=int, default=None, help="interpreter threads")
    args = p.parse_args(argv)
    for name in ("limit", "batch", "latency_examples", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name} must be a positive integer, received {value}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Runs `infer.py`; bad input (a missing or broken file, images the model cannot take,
    labels outside its classes) exits with status 2 and one `error:` line on stderr."""
    args = parse_args(argv)
    try:
        return _run(args)
    except (FileNotFoundError, ValueError, ImportError, OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    model = lr.Classifier(args.model, num_threads=args.threads)
    load_s = time.perf_counter() - start
    # An integer-input model (keras.Input(dtype="uint8")) was trained on the pixels as stored.
    x, y = lr.load_images_labels(args.images, args.labels, args.limit, raw=model.takes_integers)
    x = model.prepare(x)  # e.g. (n, 28, 28) IDX images for a flat (784,) model: flattened
    if model.num_classes is not None:
        y = lr.check_labels(y, model.num_classes, args.labels)
    n = x.shape[0]
    if n == 0:
        raise ValueError("no examples to evaluate")

    # Single examples first, then batches: the interpreter re-allocates when the batch size changes.
    single = []
    if model.fixed_batch in (None, 1):
        for i in range(min(args.latency_examples, n)):
            xi = x[i : i + 1]
            t0 = time.perf_counter()
            model(xi)
            single.append(time.perf_counter() - t0)
    batch = model.fixed_batch or args.batch
    probs = []
    batch_times = []
    for s in range(0, n, batch):
        chunk = x[s : s + batch]
        if chunk.shape[0] < batch:  # the ragged tail is predicted without timing
            probs.append(model.predict(chunk, batch))
            continue
        t0 = time.perf_counter()
        probs.append(model(chunk))
        batch_times.append(time.perf_counter() - t0)
    pred = np.argmax(np.concatenate(probs), axis=1)
    accuracy = float(np.mean(pred == y))

    print(f"model: {args.model} (signature '{model.signature}', input {model.input_shape}, load {load_s * 1e3:.1f} ms)")
    print(f"examples: {n}")
    print(f"accuracy: {accuracy:.4f}")
    if single:
        p50, p99 = lr.percentiles_ms(single)
        print(f"latency single example: p50 {p50:.4f} ms, p99 {p99:.4f} ms ({len(single)} calls)")
    if batch_times:
        p50, p99 = lr.percentiles_ms(batch_times)
        print(
            f"latency batch of {batch}: p50 {p50:.4f} ms, p99 {p99:.4f} ms ({len(batch_times)} calls, "
            f"{p50 / batch * 1e3:.2f} us per example at p50)"
        )
    else:
        print(f"latency batch of {batch}: n/a (fewer than {batch} examples)")
    print(f"peak RSS: {lr.peak_rss_mb():.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
