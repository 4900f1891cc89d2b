"""The compiled part of training: the epoch runner, the evaluator, their accumulators.

* `Accumulators`: tf.Variables summing one epoch's batch statistics (losses, the
  open-gate counts of Eq. 6, the increments of Eq. 8) outside the model.
* `make_epoch_runner`: one `tf.function` running up to `steps_per_execution` train
  steps, gathering each batch inside the graph (Eq. 8's "step"/"step_mean" increments
  are computed here, by `tf_dynhp.batching.growth`).
* `make_evaluator`, `evaluate_split`: loss and error (the paper's ERR) of a split.
* `trace_ahead`: traces both functions before training and runs them once on no data,
  so their set-up time is counted apart from the epochs.

What runs between compiled calls (pruning, the batch size, callbacks) is in
`tf_dynhp.trainer`.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from tf_dynhp import batching
from tf_dynhp.model import GatedModel

__all__ = [
    "EVAL_BATCH",
    "Accumulators",
    "make_epoch_runner",
    "make_evaluator",
    "trace_ahead",
    "evaluate_split",
    "stray_captures",
    "tracing_count",
]

EVAL_BATCH = 2000


class Accumulators:
    """tf.Variables summing the batch statistics of one epoch (outside the model).

    Few variables, so that the step updates them with few ops (each op costs trace
    time: once per run, or after every rebuild with `trace_once=False`): one vector of
    sums, one of maxima, the non-finite step, and the open-gate counts of all gated
    layers in one vector (of any length: `resize` follows a rebuilt model).
    """

    SUMS = ("loss", "data_loss", "correct", "count", "steps", "ratio", "increment")
    MAXIMA = ("max_batch", "width")

    def __init__(self, core: GatedModel) -> None:
        f64 = "float64"
        self.sizes = [layer.num_gates for layer in core.gated_layers]
        self.sums = tf.Variable(tf.zeros((len(self.SUMS),), f64), trainable=False)
        self.maxima = tf.Variable(tf.zeros((len(self.MAXIMA),), f64), trainable=False)
        self.nonfinite = tf.Variable(0.0, dtype=f64, trainable=False)
        # Any length: after a rebuild the same (traced) step counts fewer gates (`resize`).
        self.gate_open = tf.Variable(tf.zeros((sum(self.sizes),), f64), trainable=False, shape=tf.TensorShape([None]))

    def resize(self, core: GatedModel) -> None:
        """Follows a rebuilt `core` (same layers, fewer gates)."""
        self.sizes = [layer.num_gates for layer in core.gated_layers]
        self.gate_open.assign(tf.zeros((sum(self.sizes),), self.gate_open.dtype))

    def variables(self) -> list[tf.Variable]:
        return [self.sums, self.maxima, self.nonfinite, self.gate_open]

    def reset(self) -> None:
        for v in self.variables():
            v.assign(tf.zeros_like(v))

    def read(self) -> dict[str, Any]:
        out = dict(zip(self.SUMS, (float(v) for v in self.sums.numpy())))
        out.update(zip(self.MAXIMA, (float(v) for v in self.maxima.numpy())))
        out["nonfinite"] = float(self.nonfinite.numpy())
        out["gate_open"] = np.split(self.gate_open.numpy(), np.cumsum(self.sizes)[:-1]) if self.sizes else []
        return out


def make_epoch_runner(
    core: GatedModel, acc: Accumulators, steps_per_execution: int, alpha_bs: float, growth: str
):
    """A tf.function running up to `steps_per_execution` steps of an epoch.

    `run(x_all, y_all, order, start, batch_size)` trains on the batches
    `order[start + k * batch_size : ...]` for k = 0, 1, ... (the last one may be
    short), gathering each batch inside the graph from `x_all` (the training
    inputs, only the kept features: `tf_dynhp.data.FeatureSelection`): no tf.data iterator,
    no per-step host round trip. It returns the number of steps run; fewer than
    `steps_per_execution` means the epoch is over (or a non-finite step stopped it).
    The batch size is a tensor argument, so a new batch size does not retrace; a
    rebuilt (pruned) model does not either when it takes over the storage of the
    traced one's variables (`tf_dynhp.storage`), else it gets a new runner.
    """
    def accumulate(st, x, ok):
        """Adds the step's statistics where `ok` (finite step); else records the step as
        the non-finite one. Branch-free (`tf.where`, which does not let a NaN through
        from the branch it does not take): a `tf.cond` here doubled this part of the trace."""
        f64 = "float64"
        count = tf.cast(st["count"], f64)
        data_loss = tf.cast(st["data_loss"], f64)
        ratio = increment = tf.zeros((), f64)
        if core.track_variance:
            variance = tf.cast(st["variance_l1"], f64)
            safe_loss = tf.maximum(data_loss, 1e-12)
            ratio = variance / safe_loss
            if growth == "step_mean":  # Eq. 8 with the variance of the mean gradient
                increment = batching.growth(ratio, alpha_bs, count, tf.floor)
            elif growth == "step":
                increment = batching.growth(ratio, alpha_bs, 1.0, tf.floor)
        one = tf.ones((), f64)
        sums = tf.stack([tf.cast(st["loss"], f64) * count, data_loss * count, tf.cast(st["correct"], f64), count, one, ratio, increment])
        acc.sums.assign_add(tf.where(ok, sums, 0.0))
        width = tf.cast(tf.reduce_prod(tf.shape(x)[1:]), f64)
        acc.maxima.assign(tf.where(ok, tf.maximum(acc.maxima, tf.stack([count, width])), acc.maxima))
        acc.nonfinite.assign(tf.where(ok, acc.nonfinite, acc.sums[4] + 1.0))  # 1-based step of the epoch
        if st["gate_open"]:
            counts = tf.concat([tf.cast(c, f64) for c in st["gate_open"]], axis=0)
            acc.gate_open.assign_add(tf.where(ok, counts, 0.0))

    # autograph=False and an explicit while_loop: tracing skips AutoGraph's source
    # conversion of the step (a large share of its trace time).
    @tf.function(reduce_retracing=True, autograph=False)
    def run(x_all, y_all, order, start, batch_size):
        n = tf.shape(order, out_type=tf.int64)[0]

        def cond(done, begin, ok):
            return tf.logical_and(tf.logical_and(ok, done < steps_per_execution), begin < n)

        def body(done, begin, ok):
            idx = order[begin : tf.minimum(begin + batch_size, n)]
            x = tf.gather(x_all, idx)
            y = tf.nest.map_structure(lambda t: tf.gather(t, idx), y_all)  # labels, or (labels, weights)
            st = core.train_stats(x, y)
            # A sum is non-finite when any term is: one reduction per gradient.
            total = st["loss"] + tf.add_n([tf.reduce_sum(g) for g in st["grads"]])
            ok = tf.math.is_finite(total)
            accumulate(st, x, ok)
            return done + tf.cast(ok, tf.int32), begin + batch_size, ok

        done, _, _ = tf.while_loop(cond, body, (tf.constant(0), start, tf.constant(True)))
        return done

    return run


def make_evaluator(core: GatedModel):
    @tf.function(reduce_retracing=True, autograph=False)
    def evaluate(x, y):
        h, logits, _ = core.forward(x, training=False)
        per_example = core.per_example_loss(y, h, logits)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.cast(tf.argmax(logits, -1), tf.int32), y), "float64"))
        return tf.reduce_sum(tf.cast(per_example, "float64")), correct

    return evaluate


def trace_ahead(runner, evaluator, core: GatedModel, data_spec: tf.TensorSpec, weighted: bool = False) -> tuple[float, list[Any]]:
    """Traces the step loop and the evaluator for `core` now (not inside the first
    epoch), and runs each once on no data, so that TensorFlow's graph optimization and
    kernel set-up of a new function (done at its first call: as long again as the trace)
    are counted here too, apart from training.

    `data_spec`: the (examples, ...) training inputs as the runner receives them (any
    feature count for flat inputs); the evaluator gets inputs of that shape in the
    model's dtype; `weighted`: the runner gathers (labels, weights) (`fit(sample_weight=
    ...)`). Returns (seconds, the two concrete functions)."""
    t0 = time.perf_counter()
    shape = tuple(int(d) for d in core.inputs[0].shape[1:])
    dtype = core.inputs[0].dtype
    i64 = tf.TensorSpec([], tf.int64)
    labels = tf.TensorSpec([None], tf.int32)
    targets = (labels, tf.TensorSpec([None], tf.float32)) if weighted else labels
    concretes = [
        runner.get_concrete_function(data_spec, targets, tf.TensorSpec([None], tf.int64), i64, i64),
        evaluator.get_concrete_function(tf.TensorSpec(data_spec.shape, dtype), tf.TensorSpec([None], tf.int32)),
    ]
    # Zero steps (the order is empty): nothing trains, nothing is accumulated.
    no_x = tf.zeros((0,) + shape, data_spec.dtype)
    no_y = (tf.zeros((0,), tf.int32), tf.zeros((0,), tf.float32)) if weighted else tf.zeros((0,), tf.int32)
    runner(no_x, no_y, tf.zeros((0,), tf.int64), tf.constant(0, tf.int64), tf.constant(1, tf.int64))
    # One zero example (the evaluator has no side effects; an empty batch trips a
    # broadcast of the conv gates in TensorFlow's optimized graph).
    evaluator(tf.zeros((1,) + shape, dtype), tf.zeros((1,), tf.int32))
    return time.perf_counter() - t0, concretes


def evaluate_split(evaluator, x: np.ndarray, y: np.ndarray, features: np.ndarray | None) -> tuple[float, float, float]:
    """(mean loss, error %, accuracy) of a split; the accuracy is correct / n itself (from
    the error it would read 0.15000000000000002 for 0.15)."""
    loss, correct = 0.0, 0.0
    for i in range(0, len(x), EVAL_BATCH):
        xb = x[i : i + EVAL_BATCH]
        if features is not None:
            xb = xb[:, features]
        lb, cb = evaluator(tf.constant(xb), tf.constant(y[i : i + EVAL_BATCH]))
        loss += float(lb)
        correct += float(cb)
    return loss / len(x), 100.0 * (1.0 - correct / len(x)), correct / len(x)


def stray_captures(variables: Sequence[Any], accumulators: Accumulators, concretes: Sequence[Any], extra: Sequence[Any] = ()) -> list[str]:
    """Names of the variables the traced functions capture that are not shared storage
    (`variables`: the model's and optimizer's Keras variables), the accumulators or
    `extra` (tf.Variables the trainer owns, e.g. the size multiplier)."""
    known = {id(v._value) for v in variables}
    known.update(id(v) for v in list(accumulators.variables()) + list(extra))
    return sorted({v.name for concrete in concretes for v in concrete.variables if id(v) not in known})


def tracing_count(*functions: Any) -> int:
    return int(sum(f.experimental_get_tracing_count() for f in functions))
