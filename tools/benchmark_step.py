"""Benchmark the DynHP training loop against plain Keras, side by side in one run.

    python tools/benchmark_step.py --dataset=mnist --batch_sizes=16,100,512 --examples=30000

Part 1: examples/second of tf_dynhp's DynHP epoch loop (per-example gates, the
expected-L0 penalty, exact ||S||_1 of Eq. 8, gate counting of Eq. 6) against plain
`keras.Model.fit` of the same dense 784-300-100-10 MLP with the same
`steps_per_execution`, at each batch size (target >= 0.7x). To show where the
time goes, the same loop also trains the dense model (no gates) and SP (gates,
no Eq. 8). Both are timed on
their second epoch (after tracing). The DynHP run uses alpha_bs=1 (no growth) and
gamma ~ 0 (no pruning) so the batch stays the one being measured.

Part 2: the share of wall time spent in rebuilds (surgery + optimizer transfer)
and retraces over a `--dynhp_epochs` DynHP run on the full dataset with the
paper's MNIST setting (target <= 10%).
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", "mnist", ["mnist", "fashion_mnist"], "Dataset.")
flags.DEFINE_string("data_dir", None, "Dataset folder (see tf_dynhp.datasets.load).")
flags.DEFINE_string("batch_sizes", "16,100,512", "Batch sizes for part 1.")
flags.DEFINE_integer("examples", 30000, "Training examples per epoch in part 1.")
flags.DEFINE_integer("steps_per_execution", 50, "Steps per compiled call, both sides.")
flags.DEFINE_integer("dynhp_epochs", 20, "Epochs of the part-2 DynHP run (0 skips part 2).")
flags.DEFINE_float("alpha_bs", 0.972, "Part 2 alpha_bs.")
flags.DEFINE_integer("seed", 1, "Seed.")


def _mlp():
    import keras

    return keras.Sequential(
        [keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(300, activation="relu"),
         keras.layers.Dense(100, activation="relu"), keras.layers.Dense(10, activation="softmax")]
    )


def keras_examples_per_second(x, y, batch: int) -> float:
    import keras

    keras.utils.set_random_seed(FLAGS.seed)
    model = _mlp()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  steps_per_execution=FLAGS.steps_per_execution, jit_compile=False)
    times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t)

    model.fit(x, y, batch_size=batch, epochs=2, verbose=0, shuffle=True, callbacks=[Timer()])
    return len(x) / times[-1]


def loop_examples_per_second(x, y, batch: int, method: str) -> float:
    """tf_dynhp's own loop; `dynhp` with alpha_bs=1 (no growth) and gamma ~ 0 (no pruning)."""
    import tf_dynhp

    extra = dict(alpha_bs=1.0, gamma=1e-6, budget_kb=1e9) if method == "dynhp" else {}
    result = tf_dynhp.fit(
        _mlp(), x, y, method=method, epochs=2, batch_size=batch,
        steps_per_execution=FLAGS.steps_per_execution, seed=FLAGS.seed, verbose=0, **extra,
    )
    return len(x) / result.history["epoch_seconds"][-1]


def main(argv):
    del argv
    import numpy as np

    import tf_dynhp

    (x, y), (xt, yt) = tf_dynhp.datasets.load(FLAGS.dataset, FLAGS.data_dir)
    xs, ys = x[: FLAGS.examples], y[: FLAGS.examples]
    print(f"Part 1: examples/second on {len(xs)} {FLAGS.dataset} examples, steps_per_execution={FLAGS.steps_per_execution}")
    print("| batch | plain Keras fit | tf_dynhp loop, dense | tf_dynhp loop, SP (gates) | tf_dynhp loop, DynHP (gates + Eq. 8) "
          "| DynHP / Keras (target >= 0.7) | dense loop / Keras |")
    print("|---|---|---|---|---|---|---|")
    for batch in [int(b) for b in FLAGS.batch_sizes.split(",")]:
        k = keras_examples_per_second(xs, ys, batch)
        dense = loop_examples_per_second(xs, ys, batch, "dense")
        sp = loop_examples_per_second(xs, ys, batch, "sp")
        d = loop_examples_per_second(xs, ys, batch, "dynhp")
        print(f"| {batch} | {k:,.0f} | {dense:,.0f} | {sp:,.0f} | {d:,.0f} | {d / k:.2f}x | {dense / k:.2f}x |", flush=True)
    if FLAGS.dynhp_epochs <= 0:
        return
    model = _mlp()
    budget = tf_dynhp.memory.mo_kb(model, batch_size=512)
    t0 = time.perf_counter()
    result = tf_dynhp.fit(
        model, x, y, method="dynhp", epochs=FLAGS.dynhp_epochs, alpha_bs=FLAGS.alpha_bs, budget_kb=budget,
        validation_data=(xt, yt), seed=FLAGS.seed, steps_per_execution=FLAGS.steps_per_execution, verbose=0,
    )
    wall = time.perf_counter() - t0
    h = result.history
    rebuild = float(np.sum(h["rebuild_seconds"]))
    trace = float(np.sum(h["trace_seconds"]))
    rebuilt_epochs = int(np.sum([1 for p in h["pruned_units"] if sum(p) > 0]))
    print(f"\nPart 2: DynHP, {FLAGS.dynhp_epochs} epochs, alpha_bs={FLAGS.alpha_bs}, budget {budget:.1f} KB, full {FLAGS.dataset}")
    print("| wall s (fit call) | rebuilds | rebuild s | retraces | trace s | share rebuild+trace (target <= 10%) |")
    print("|---|---|---|---|---|---|")
    print(f"| {wall:.1f} | {rebuilt_epochs} | {rebuild:.2f} | {h['retraces'][-1]} | {trace:.2f} | {100 * (rebuild + trace) / wall:.1f}% |")


if __name__ == "__main__":
    app.run(main)
