"""Benchmark the DynHP training loop against plain Keras, side by side in one run.

    python tools/benchmark_step.py --dataset=mnist --batch_sizes=16,100,512 --examples=30000

Part 1: examples/second of tf_dynhp's DynHP epoch loop (per-example gates, the
expected-L0 penalty, exact ||S||_1 of Eq. 8, gate counting of Eq. 6) against plain
`keras.Model.fit` of the same dense 784-300-100-10 MLP with the same
`steps_per_execution`, at each batch size (target >= 0.7x). To show where the
time goes, the same loop also trains the dense model (no gates) and SP (gates,
no Eq. 8). Both are timed on
their second epoch (after tracing); each number is the best of `--repeats`
interleaved measurements (this VM's speed drifts by tens of percent). The DynHP run uses alpha_bs=1 (no growth) and
gamma ~ 0 (no pruning) so the batch stays the one being measured. The SP and DynHP
columns sample the gates with `--gate_kernel` (default "auto": the fused kernel of
`tf_dynhp/fused.py` when it builds); a last column times DynHP with the TensorFlow-op
gates (`gate_kernel="tf"`) in the same run, for comparison.

Part 2: the share of wall time spent in rebuilds (surgery + optimizer transfer)
and retraces over a `--dynhp_epochs` DynHP run on the full dataset with the
paper's MNIST setting (target <= 10%), twice from the same initial model: with the
step traced once for every pruned model (`fit(trace_once=True)`, the default:
`tf_dynhp/storage.py`) and traced again after every rebuild (`trace_once=False`).
A trace is counted with TensorFlow's graph optimization and kernel set-up of the
new function (`fit` runs each new function once on no data right after tracing
it, so that this cost is measured here and not hidden in the next epoch); the
first model's trace is shown apart (plain Keras pays one too). The last line says
whether the two runs gave the same history.

Part 3: where a step's time goes, each piece timed alone in a compiled loop of
`--steps_per_execution` steps: the Adam update of the gated MLP's variables by Keras'
`Adam.apply` and by tf_dynhp's fused path (`tf_dynhp/optim.py`), and the
per-example hard-concrete gates (uniform noise, Eq. 2 sample, gated product,
open-gate count, and their backward pass) of the three `L0Dense` layers (784 +
300 + 100 gates per example) at each batch size, by TensorFlow ops and by the
fused kernel: work plain Keras does not do.
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
flags.DEFINE_integer("repeats", 3, "Part 1: each measurement is the best of this many (interleaved).")
flags.DEFINE_integer("dynhp_epochs", 20, "Epochs of the part-2 DynHP run (0 skips part 2).")
flags.DEFINE_float("alpha_bs", 0.972, "Part 2 alpha_bs.")
flags.DEFINE_integer("seed", 1, "Seed.")
flags.register_validator("seed", lambda v: 0 <= v < 2**32, "--seed: expected an integer in [0, 2**32) (NumPy's seed range)")
flags.DEFINE_string("parts", "1,2,3", "Which parts to run (comma-separated).")
flags.DEFINE_enum("gate_kernel", "auto", ["auto", "fused", "tf"], "Gate kernel of the tf_dynhp loops (parts 1 and 2).")


def _ints(text: str, allowed=None) -> bool:
    parts = [p.strip() for p in str(text).split(",")]
    return all(p.isdigit() and int(p) >= 1 and (allowed is None or int(p) in allowed) for p in parts) and bool(parts)


# Checked when the flags are parsed: they were tracebacks (a division by zero, range() of step 0, "`x` is empty").
flags.register_validator("batch_sizes", _ints, "--batch_sizes: expected comma-separated integers >= 1")
flags.register_validator("parts", lambda v: _ints(v, {1, 2, 3}), "--parts: expected some of 1,2,3, comma-separated")
for _name in ("examples", "steps_per_execution", "repeats"):
    flags.register_validator(_name, lambda v: v >= 1, f"--{_name}: expected an integer >= 1")
flags.register_validator("dynhp_epochs", lambda v: v >= 0, "--dynhp_epochs: expected an integer >= 0 (0 skips part 2)")
flags.register_validator("alpha_bs", lambda v: 0.0 <= v <= 1.0, "--alpha_bs: expected a float in [0, 1]")


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


def loop_examples_per_second(x, y, batch: int, method: str, gate_kernel: str = "auto") -> float:
    """tf_dynhp's own loop; `dynhp` with alpha_bs=1 (no growth) and gamma ~ 0 (no pruning)."""
    import tf_dynhp

    extra = dict(alpha_bs=1.0, gamma=1e-6, budget_kb=1e9) if method == "dynhp" else {}
    result = tf_dynhp.fit(
        _mlp(), x, y, method=method, epochs=2, batch_size=batch,
        steps_per_execution=FLAGS.steps_per_execution, seed=FLAGS.seed, verbose=0, gate_kernel=gate_kernel, **extra,
    )
    return len(x) / result.history["epoch_seconds"][-1]


def _loop_ms(body, steps: int) -> float:
    """Milliseconds per call of `body(i)` inside one compiled while-loop of `steps` calls."""
    import tensorflow as tf

    @tf.function(autograph=False)
    def loop():
        def step(i, acc):
            return i + 1, acc + body(i)

        return tf.while_loop(lambda i, a: i < steps, step, (tf.constant(0), tf.constant(0.0)))

    loop()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(5):
            loop()
        best = min(best, (time.perf_counter() - t0) / (5 * steps))
    return 1000.0 * best


def adam_ms() -> tuple[float, float]:
    """(Keras Adam.apply, fused) ms per update of the gated MLP's 9 variables."""
    import keras
    import numpy as np
    import tensorflow as tf

    from tf_dynhp import optim

    shapes = [(784, 300), (300,), (300, 100), (100,), (100, 10), (10,), (784,), (300,), (100,)]
    rng = np.random.default_rng(FLAGS.seed)
    out = []
    for fused in (False, True):
        variables = [keras.Variable(rng.normal(size=s).astype("float32") * 0.01) for s in shapes]
        grads = [tf.constant(rng.normal(size=s).astype("float32") * 1e-3) for s in shapes]
        opt = keras.optimizers.Adam(1e-3)
        opt.build(variables)

        def body(i, opt=opt, variables=variables, grads=grads, fused=fused):
            if fused:
                optim.apply_gradients(opt, grads, variables)
            else:
                opt.apply(grads, variables)
            return tf.constant(0.0)

        out.append(_loop_ms(body, FLAGS.steps_per_execution))
    return out[0], out[1]


def gates_ms(batch: int, kernel: str) -> float:
    """ms per step of the per-example gates of the 784-300-100 gated MLP, forward and backward,
    by TensorFlow ops (`kernel="tf"`) or the fused kernel (`"fused"`)."""
    import numpy as np
    import tensorflow as tf

    from tf_dynhp import fused, gates
    from tf_dynhp.layers import L0Dense

    rng = np.random.default_rng(FLAGS.seed)
    layers, inputs = [], []
    for width in (784, 300, 100):
        layer = L0Dense(1, dataset_size=60000, seed=FLAGS.seed)
        layer.build((None, width))
        layers.append(layer)
        inputs.append(tf.constant(rng.random((batch, width), dtype=np.float32)))

    def body(i):
        total = tf.constant(0.0)
        for layer, x in zip(layers, inputs):
            with tf.GradientTape() as tape:
                # What L0Dense.forward does in training: noise, gated product, open count.
                if kernel == "fused":
                    gated, count = fused.gated_product_fused(
                        x, layer.seed_generator.next(), layer.log_alpha, layer.temperature, layer.limit_l, layer.limit_r
                    )
                else:
                    gated, opened = gates.gated_product(
                        x, layer.sample_noise(batch), layer.log_alpha, layer.temperature, layer.limit_l, layer.limit_r
                    )
                    count = tf.reduce_sum(opened, axis=0)
                loss = tf.reduce_sum(gated)
            grad = tape.gradient(loss, layer.log_alpha)
            total += grad[0] + count[0]
        return total

    return _loop_ms(body, FLAGS.steps_per_execution)


def main(argv):
    del argv

    import tf_dynhp

    (x, y), (xt, yt) = tf_dynhp.datasets.load(FLAGS.dataset, FLAGS.data_dir)
    parts = {int(p) for p in FLAGS.parts.split(",") if p}
    if 1 in parts:
        part1(x, y)
    if 2 in parts and FLAGS.dynhp_epochs > 0:
        part2(x, y, xt, yt)
    if 3 in parts:
        part3()


def part1(x, y):
    import tf_dynhp

    xs, ys = x[: FLAGS.examples], y[: FLAGS.examples]
    print(f"Part 1: examples/second on {len(xs)} {FLAGS.dataset} examples, steps_per_execution={FLAGS.steps_per_execution}, "
          f"best of {FLAGS.repeats}")
    kernel = tf_dynhp.fused.resolve_gate_kernel(FLAGS.gate_kernel)
    print(f"Gates: gate_kernel={FLAGS.gate_kernel!r} resolves to {kernel!r}; the last DynHP column always uses TensorFlow ops.")
    print("| batch | plain Keras fit | tf_dynhp loop, dense | tf_dynhp loop, SP (gates) | tf_dynhp loop, DynHP (gates + Eq. 8) "
          "| DynHP / Keras (target >= 0.7) | dense loop / Keras | DynHP with TF-op gates | its ratio to Keras |")
    print("|---|---|---|---|---|---|---|---|---|")
    for batch in [int(b) for b in FLAGS.batch_sizes.split(",")]:
        # Best of --repeats, all interleaved: this VM's speed drifts by tens of percent.
        best = {"keras": 0.0, "dense": 0.0, "sp": 0.0, "dynhp": 0.0, "dynhp_tf": 0.0}
        for _ in range(FLAGS.repeats):
            best["keras"] = max(best["keras"], keras_examples_per_second(xs, ys, batch))
            for method in ("dense", "sp", "dynhp"):
                best[method] = max(best[method], loop_examples_per_second(xs, ys, batch, method, kernel))
            best["dynhp_tf"] = max(best["dynhp_tf"], loop_examples_per_second(xs, ys, batch, "dynhp", "tf"))
        k, dense, sp, d, dtf = (best[key] for key in ("keras", "dense", "sp", "dynhp", "dynhp_tf"))
        print(f"| {batch} | {k:,.0f} | {dense:,.0f} | {sp:,.0f} | {d:,.0f} | {d / k:.2f}x | {dense / k:.2f}x "
              f"| {dtf:,.0f} | {dtf / k:.2f}x |", flush=True)


def part2(x, y, xt, yt):
    import keras
    import numpy as np

    import tf_dynhp
    from tf_dynhp.training import RUNTIME_KEYS

    budget = tf_dynhp.memory.mo_kb(_mlp(), batch_size=512)
    print(f"\nPart 2: DynHP, {FLAGS.dynhp_epochs} epochs, alpha_bs={FLAGS.alpha_bs}, budget {budget:.1f} KB, full {FLAGS.dataset}")
    print("| step traced | wall s (fit call) | rebuilds | rebuild s | retraces | trace + first-call graph set-up s "
          "| of which the first model's | share rebuild+trace, all traces | share rebuilds + retraces (target <= 10%) |")
    print("|---|---|---|---|---|---|---|---|---|")
    histories = []
    for trace_once in (True, False):
        keras.utils.set_random_seed(FLAGS.seed)  # the same initial model both times
        model = _mlp()
        t0 = time.perf_counter()
        result = tf_dynhp.fit(
            model, x, y, method="dynhp", epochs=FLAGS.dynhp_epochs, alpha_bs=FLAGS.alpha_bs, budget_kb=budget,
            validation_data=(xt, yt), seed=FLAGS.seed, steps_per_execution=FLAGS.steps_per_execution, verbose=0,
            gate_kernel=FLAGS.gate_kernel, trace_once=trace_once,
        )
        wall = time.perf_counter() - t0
        h = result.history
        histories.append({k: v for k, v in h.items() if k not in RUNTIME_KEYS})
        rebuild = float(np.sum(h["rebuild_seconds"]))
        trace = float(np.sum(h["trace_seconds"]))
        rebuilt_epochs = int(np.sum([1 for p in h["pruned_units"] if sum(p) > 0]))
        first = result.state.first_trace_seconds
        label = "once (trace_once=True, default)" if trace_once else "after every rebuild (trace_once=False)"
        print(f"| {label} | {wall:.1f} | {rebuilt_epochs} | {rebuild:.2f} | {h['retraces'][-1]} | {trace:.2f} | {first:.2f} "
              f"| {100 * (rebuild + trace) / wall:.1f}% | {100 * (rebuild + trace - first) / wall:.1f}% |", flush=True)
    same = "the same" if histories[0] == histories[1] else "DIFFERENT"
    print(f"The two runs' histories (all but timings and retraces) are {same}; final test error "
          f"{histories[0]['val_error'][-1]:.2f}%, batch {histories[0]['batch_size'][-1]}.")


def part3():
    keras_adam, fused_adam = adam_ms()
    print("\nPart 3: where the step time goes (ms per step, each piece alone, best of 3)")
    print(f"Adam update of the gated MLP's 9 variables: Keras Adam.apply {keras_adam:.3f} ms, fused {fused_adam:.3f} ms")
    print("| batch | per-example gates of 784+300+100 inputs, forward + backward: TensorFlow ops (ms) "
          "| the same, fused kernel (ms) |")
    print("|---|---|---|")
    for batch in [int(b) for b in FLAGS.batch_sizes.split(",")]:
        print(f"| {batch} | {gates_ms(batch, 'tf'):.3f} | {gates_ms(batch, 'fused'):.3f} |", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tools/_load.py, also under python -m tools.<name>
    from _load import cli_module

    app.run(cli_module("flag_rules").one_line_usage(main))
