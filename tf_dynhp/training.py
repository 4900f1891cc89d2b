"""`tf_dynhp.fit`: dense, SP, HP and DynHP training (paper Sec. 3-4).

Data flow of one run::

    user model --to_l0--> gated model --(dense-first: flatten+select in the data pipeline)--> GatedModel core
    epoch:  seeded shuffle -> compiled multi-step loop: gather batch b_i (and kept features), train_stats
            -> accumulated: losses, open-gate counts (Eq. 6), Eq. 8 increments
    boundary: evaluate; prune (Eq. 7, hp/dynhp) -> rebuild core + optimizer on the traced storage;
              batch b_{i+1} = min(cap from budget (Eq. 9), candidate (Eq. 8))  (Eq. 10)
    end:    result.model = strip(gated model)

The methods:

* ``"dense"``: plain training of the user's Dense model (the reference).
* ``"sp"``: L0 soft pruning (Louizos et al. 2018), fixed batch; nothing removed.
* ``"hp"``: hard pruning (Sec. 4.1), fixed batch.
* ``"dynhp"``: hard pruning plus the dynamic batch size under `budget_kb` (Sec. 4.2).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
import warnings
from typing import Any, Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from tf_dynhp import batching, fused, memory, storage
from tf_dynhp import checkpoint as ckpt
from tf_dynhp.chain import GATED_TYPES, parse_chain
from tf_dynhp.convert import strip, to_l0
from tf_dynhp.layers import L0Dense
from tf_dynhp.model import GatedModel
from tf_dynhp.state import TrainerState
from tf_dynhp.surgery import build_chain_model, effective_keep, rebuild_body, transfer_optimizer, unit_axes

__all__ = ["fit", "FitResult", "METHODS", "NonFiniteError"]

METHODS = ("dense", "sp", "hp", "dynhp")
EVAL_BATCH = 2000
TIMING_KEYS = ("epoch_seconds", "rebuild_seconds", "trace_seconds")
#: Keys that describe the run's execution, not its result: timings and the trace
#: counter (TensorFlow may trace once more or less across processes). A resumed
#: or repeated run with the same seed matches an uninterrupted one on every other key.
RUNTIME_KEYS = TIMING_KEYS + ("retraces",)


@dataclasses.dataclass
class FitResult:
    """What `fit` returns.

    Attributes:
        model: the stripped plain Keras model (smaller `Dense` / `Conv2D` layers, original input).
        gated_model: the trained model with its gated layers (original input),
            e.g. to continue training; for method="dense" the trained dense model.
        history: dict of per-epoch lists.
        state: the `TrainerState` at the end.
    """

    model: keras.Model
    gated_model: keras.Model
    history: dict[str, list[Any]]
    state: TrainerState


# --------------------------------------------------------------------------- input checks
def _invalid(name: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"Invalid value received for argument `{name}`. Expected {expected}. Received: {name}={value!r}")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise _invalid(name, "a positive integer", value)
    return int(value)


def _materialize(dataset: tf.data.Dataset, what: str) -> tuple[np.ndarray, np.ndarray]:
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) != 2:
        raise ValueError(
            f"`{what}` is a tf.data.Dataset whose elements are {spec}; expected (features, label) "
            "pairs, e.g. tensorflow_datasets.load(..., as_supervised=True)."
        )
    xs, ys = [], []
    for xb, yb in dataset.batch(4096).as_numpy_iterator():
        xs.append(xb)
        ys.append(yb)
    if not xs:
        raise ValueError(f"`{what}` is an empty tf.data.Dataset; expected at least one example.")
    return np.concatenate(xs), np.concatenate(ys)


def _as_arrays(x: Any, y: Any, input_shape: tuple[int, ...], num_classes: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Validates one split and returns (x flattened to float32 (N, features), y int32)."""
    x_name, y_name = ("x", "y") if what == "x" else (f"{what}[0]", f"{what}[1]")
    if isinstance(x, tf.data.Dataset):
        if y is not None:
            raise ValueError(f"`{x_name}` is a tf.data.Dataset of (features, label) pairs; `y` must be None, received {type(y).__name__}.")
        x, y = _materialize(x, x_name)
        if x.ndim == len(input_shape) + 2:  # a batched dataset: undo the batching
            x, y = x.reshape((-1,) + x.shape[2:]), y.reshape(-1)
    if y is None:
        raise ValueError(f"`{y_name}` (the labels) is missing.")
    x = np.asarray(x)
    y = np.asarray(y)
    if x.shape[0] == 0:
        raise ValueError(f"`{x_name}` is empty; expected at least one example.")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"`{x_name}` has {x.shape[0]} examples but `{y_name}` has {y.shape[0]} labels; they must match.")
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise ValueError(f"`{x_name}` has examples of shape {tuple(x.shape[1:])}; the model expects {tuple(input_shape)}.")
    if not np.issubdtype(x.dtype, np.number):
        raise TypeError(f"`{x_name}` must be numeric, received dtype {x.dtype}.")
    x = x.reshape(x.shape[0], -1).astype(np.float32, copy=False)
    if not np.all(np.isfinite(x)):
        bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise ValueError(f"`{x_name}` contains NaN or infinite values (first in example {bad}).")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"`{y_name}` must be integer class ids of shape (n,), received shape {y.shape}.")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise TypeError(f"`{y_name}` must hold integer class ids, received dtype {y.dtype} with non-integer values.")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(
            f"`{y_name}` has labels in [{int(y.min())}, {int(y.max())}]; the last layer has "
            f"{num_classes} units, so labels must be in [0, {num_classes})."
        )
    return x, y.astype(np.int32)


# --------------------------------------------------------------------------- the core model
def _core_from(gated: keras.Model) -> tuple[GatedModel, np.ndarray | None, tuple[int, ...]]:
    """GatedModel on flat selected features (dense-first) or on the input as it is
    (convolutional) from a full-input gated (or dense) model."""
    chain = parse_chain(gated)
    layers, _, load = rebuild_body(chain.body, None, convert="same")
    core = _assemble_core(chain.body_input_shape, layers, dtype=gated.inputs[0].dtype)
    load()
    return core, chain.features, chain.input_shape


def _assemble_core(input_shape: int | Sequence[int], layers: Sequence[keras.layers.Layer], dtype: Any = None) -> GatedModel:
    shape = (int(input_shape),) if isinstance(input_shape, (int, np.integer)) else tuple(int(d) for d in input_shape)
    inputs = keras.Input(shape=shape, name="features", dtype=dtype)
    x = inputs
    for layer in layers:
        x = layer(x)
    return GatedModel(inputs, x, name="dynhp_core")


def _is_spatial(core: GatedModel) -> bool:
    return len(core.inputs[0].shape) > 2


def _full_model(core: GatedModel, features: np.ndarray | None, input_shape: tuple[int, ...], name: str) -> keras.Model:
    """The core's layers behind the original input: Input -> [Flatten -> SelectFeatures] -> layers."""
    layers, _, load = rebuild_body(core.body, None, convert="same")
    model = build_chain_model(input_shape, layers, features, name=name, dtype=core.inputs[0].dtype, spatial=_is_spatial(core))
    load()
    return model


# --------------------------------------------------------------------------- compiled epoch loop
class _Accumulators:
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


def _make_epoch_runner(
    core: GatedModel, acc: _Accumulators, steps_per_execution: int, alpha_bs: float, growth: str
):
    """A tf.function running up to `steps_per_execution` steps of an epoch.

    `run(x_all, y_all, order, start, batch_size)` trains on the batches
    `order[start + k * batch_size : ...]` for k = 0, 1, ... (the last one may be
    short), gathering each batch inside the graph from `x_all` (the training
    inputs, only the kept features: `_Run.select_features`): no tf.data iterator,
    no per-step host round trip. It returns the number of steps run; fewer than
    `steps_per_execution` means the epoch is over (or a non-finite step stopped it).
    The batch size is a tensor argument, so a new batch size does not retrace; a
    rebuilt (pruned) model does not either when it takes over the storage of the
    traced one's variables (`tf_dynhp.storage`), else it gets a new runner.
    """
    scale = 1.0 - alpha_bs

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
            if growth == "step_mean":
                increment = tf.floor(scale * ratio / count)
            elif growth == "step":
                increment = tf.floor(scale * ratio)
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
            y = tf.gather(y_all, idx)
            st = core.train_stats(x, y)
            # A sum is non-finite when any term is: one reduction per gradient.
            total = st["loss"] + tf.add_n([tf.reduce_sum(g) for g in st["grads"]])
            ok = tf.math.is_finite(total)
            accumulate(st, x, ok)
            return done + tf.cast(ok, tf.int32), begin + batch_size, ok

        done, _, _ = tf.while_loop(cond, body, (tf.constant(0), start, tf.constant(True)))
        return done

    return run


def _make_evaluator(core: GatedModel):
    @tf.function(reduce_retracing=True, autograph=False)
    def evaluate(x, y):
        h, logits, _ = core.forward(x, training=False)
        per_example = core.per_example_loss(y, h, logits)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.cast(tf.argmax(logits, -1), tf.int32), y), "float64"))
        return tf.reduce_sum(tf.cast(per_example, "float64")), correct

    return evaluate


def _trace_ahead(runner, evaluator, core: GatedModel, data_spec: tf.TensorSpec) -> tuple[float, list[Any]]:
    """Traces the step loop and the evaluator for `core` now (not inside the first
    epoch), and runs each once on no data, so that TensorFlow's graph optimization and
    kernel set-up of a new function (done at its first call: as long again as the trace)
    are counted here too, apart from training.

    `data_spec`: the (examples, ...) training inputs as the runner receives them (any
    feature count for flat inputs); the evaluator gets inputs of that shape in the
    model's dtype. Returns (seconds, the two concrete functions)."""
    t0 = time.perf_counter()
    shape = tuple(int(d) for d in core.inputs[0].shape[1:])
    dtype = core.inputs[0].dtype
    i64 = tf.TensorSpec([], tf.int64)
    concretes = [
        runner.get_concrete_function(data_spec, tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int64), i64, i64),
        evaluator.get_concrete_function(tf.TensorSpec(data_spec.shape, dtype), tf.TensorSpec([None], tf.int32)),
    ]
    # Zero steps (the order is empty): nothing trains, nothing is accumulated.
    no_x = tf.zeros((0,) + shape, data_spec.dtype)
    runner(no_x, tf.zeros((0,), tf.int32), tf.zeros((0,), tf.int64), tf.constant(0, tf.int64), tf.constant(1, tf.int64))
    # One zero example (the evaluator has no side effects; an empty batch trips a
    # broadcast of the conv gates in TensorFlow's optimized graph).
    evaluator(tf.zeros((1,) + shape, dtype), tf.zeros((1,), tf.int32))
    return time.perf_counter() - t0, concretes


def _evaluate(evaluator, x: np.ndarray, y: np.ndarray, features: np.ndarray | None) -> tuple[float, float]:
    loss, correct = 0.0, 0.0
    for i in range(0, len(x), EVAL_BATCH):
        xb = x[i : i + EVAL_BATCH]
        if features is not None:
            xb = xb[:, features]
        lb, cb = evaluator(tf.constant(xb), tf.constant(y[i : i + EVAL_BATCH]))
        loss += float(lb)
        correct += float(cb)
    return loss / len(x), 100.0 * (1.0 - correct / len(x))


def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """Shuffle of epoch `epoch`, derived from (seed, epoch) only (a resumed run sees the same)."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


# --------------------------------------------------------------------------- pruning
def _prune_plan(core: GatedModel, gate_open: list[np.ndarray], count: float, gamma: float) -> tuple[list[np.ndarray | None], list[int], list[bool]]:
    """Eq. 6-7: activation rates and the units that survive, per unit axis.

    The unit axes (`tf_dynhp.surgery.unit_axes`) are the last axis of the tensors
    between layers: for a dense chain, the inputs of each dense layer; for a conv
    chain also the output channels of each conv layer and the flattened features.
    An axis is pruned by the gates sitting on it (the inputs of an `L0Dense`, the
    output channels of an `L0Conv2D`); the plan is then made consistent by
    `effective_keep` (a closed conv channel takes its flattened copies with it).
    Never the last unit of an axis; the output axis is never pruned.

    Returns:
        (keep indices per unit axis but the output (None: nothing pruned), pruned
        count per axis, whether each gated axis is at its floor of one unit).
    """
    axes, _ = unit_axes(core.body)
    rate_of = {id(layer): open_ / max(count, 1.0) for layer, open_ in zip(core.gated_layers, gate_open)}  # Eq. 6
    wanted: list[np.ndarray | None] = []
    scores: list[np.ndarray | None] = []
    for axis in axes[:-1]:
        if not axis.gated_by:
            wanted.append(None)
            scores.append(None)
            continue
        rate = np.min(np.stack([rate_of[id(layer)] for layer in axis.gated_by]), axis=0)
        survive = np.flatnonzero(rate >= gamma)  # Eq. 7: Z = Z * g(a, gamma)
        if survive.size == 0:  # never remove the last unit of a layer
            survive = np.array([int(np.argmax(rate))])
        wanted.append(survive)
        scores.append(rate)
    eff = effective_keep(axes, wanted + [None], scores + [None])
    keep: list[np.ndarray | None] = []
    pruned: list[int] = []
    floors: list[bool] = []
    for axis, e in zip(axes[:-1], eff):
        keep.append(e if e.size < axis.size else None)
        pruned.append(int(axis.size - e.size))
        floors.append(bool(axis.gated_by) and e.size == 1)
    return keep, pruned, floors


def _rebuild_core(core: GatedModel, keep: list[np.ndarray | None]) -> GatedModel:
    layers, var_map, load = rebuild_body(core.body, keep, convert="same")
    shape = tuple(int(d) for d in core.inputs[0].shape[1:])
    if keep[0] is not None:
        shape = shape[:-1] + (len(keep[0]),)
    new = _assemble_core(shape, layers, dtype=core.inputs[0].dtype)
    load()
    optimizer = transfer_optimizer(core.optimizer, var_map, new.trainable_variables)
    new.compile(optimizer=optimizer, jit_compile=False)
    new.track_variance = core.track_variance
    new.loss_fn = core.loss_fn
    return new


# --------------------------------------------------------------------------- fit
def _resolve_gate_kernel(gate_kernel: str, core: GatedModel, method: str, announce: Callable[[str], Any] | None = None) -> str:
    """`gate_kernel` of `fit` -> "fused" or "tf" (the fused kernel is float32, dense gates only)."""
    dense_gated = [layer for layer in core.gated_layers if isinstance(layer, L0Dense)]
    if method == "dense" or not dense_gated:
        return "tf"  # no L0Dense gates: nothing for the kernel to do
    not_f32 = [layer.name for layer in dense_gated if layer.compute_dtype != "float32"]
    if not_f32:
        if gate_kernel == "fused":
            raise ValueError(
                "gate_kernel='fused' needs float32 L0Dense layers. Received: "
                f"{not_f32[0]!r} computes in {core.get_layer(not_f32[0]).compute_dtype}. Use gate_kernel='tf'."
            )
        return "tf"
    return fused.resolve_gate_kernel(gate_kernel, announce)


def _resolve_loss(loss: Any) -> Callable | None:
    if loss is None or loss == "sparse_categorical_crossentropy":
        return None
    fn = keras.losses.get(loss)
    if isinstance(fn, keras.losses.Loss):
        return fn.call  # unreduced, per example
    if callable(fn):
        return fn
    raise _invalid("loss", "None, a loss name or a callable returning per-example losses", loss)


def _resolve_optimizer(optimizer: Any, learning_rate: float) -> keras.optimizers.Optimizer:
    if isinstance(optimizer, str):
        try:
            opt = keras.optimizers.get({"class_name": optimizer, "config": {"learning_rate": learning_rate}})
        except ValueError as err:
            raise _invalid("optimizer", "a Keras optimizer or its name ('adam', 'sgd', ...)", optimizer) from err
        return opt
    if isinstance(optimizer, keras.optimizers.Optimizer):
        if optimizer.built:
            return type(optimizer).from_config(optimizer.get_config())
        return optimizer
    raise _invalid("optimizer", "a Keras optimizer or its name ('adam', 'sgd', ...)", optimizer)


def _check_callbacks(callbacks: Sequence[Any] | None, method: str) -> list[Any]:
    callbacks = list(callbacks or [])
    for cb in callbacks:
        if not isinstance(cb, keras.callbacks.Callback):
            raise TypeError(f"`callbacks` must hold keras.callbacks.Callback instances, received {type(cb).__name__}.")
        if method in ("hp", "dynhp") and isinstance(cb, keras.callbacks.EarlyStopping) and cb.restore_best_weights:
            raise ValueError(
                "EarlyStopping(restore_best_weights=True) cannot restore weights across hard pruning: "
                f"with method='{method}' the layer shapes change between epochs. Use "
                "restore_best_weights=False (training stops at the patience limit and result.model is "
                "the last model), or method='sp'."
            )
    return callbacks


def _scalar_logs(record: dict[str, Any]) -> dict[str, float]:
    """Per-epoch record flattened to scalars for Keras callbacks (lists become key_0, key_1, ...)."""
    logs: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                logs[f"{key}_{i}"] = float(v)
        elif value is not None:
            logs[key] = float(value)
    return logs


def _format_line(record: dict[str, Any], epochs: int) -> str:
    parts = [
        f"Epoch {record['epoch']}/{epochs}",
        f"loss {record['loss']:.4f}",
        f"acc {record['accuracy']:.4f}",
    ]
    if record.get("val_error") is not None:
        parts.append(f"val_error {record['val_error']:.2f}%")
    batch = f"batch {record['batch_size']}"
    if record.get("variance_ratio") is not None:  # DynHP: Eq. 8's candidate and ratio
        batch += f" (cand {record['candidate_batch_size']}, S/F {record['variance_ratio']:.0f})"
    parts += [batch, "active " + "-".join(str(int(round(a))) for a in record["active_units"])]
    if sum(record.get("pruned_units") or []):
        parts.append(f"pruned {sum(record['pruned_units'])}")
    budget = f"/{record['budget_kb']:.1f}" if record.get("budget_kb") else ""
    parts += [f"MO {record['memory_kb']:.1f}{budget} KB", f"{record['epoch_seconds']:.1f}s"]
    return " - ".join(parts)


def fit(
    model: keras.Model,
    x: Any,
    y: Any = None,
    *,
    method: str = "sp",
    epochs: int = 200,
    batch_size: int | None = None,
    l0_lambda: float = 0.01,
    alpha_bs: float | None = None,
    gamma: float = 0.5,
    budget_kb: float | None = None,
    budget_on: str = "paper",
    batch_growth: str = "step_mean",
    optimizer: Any = "adam",
    learning_rate: float = 1e-3,
    loss: Any = None,
    validation_data: Any = None,
    seed: int | None = None,
    verbose: int = 1,
    callbacks: Sequence[keras.callbacks.Callback] | None = None,
    steps_per_execution: int = 50,
    weight_decay: float = 0.0,
    droprate_init: float = 0.5,
    input_droprate_init: float = 0.2,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    on_nonfinite: str = "raise",
    gate_kernel: str = "auto",
    trace_once: bool = True,
) -> FitResult:
    """Trains `model` with dense, SP, HP or DynHP training and returns it stripped.

    Args:
        model: a Keras MLP (Sequential or functional chain of Flatten/Reshape,
            Dense, Dropout, Activation; `L0Dense`/`SelectFeatures` accepted) or a
            CNN (Conv2D/`L0Conv2D`, MaxPooling2D/AveragePooling2D, channels_last,
            then Flatten and the dense part; see `tf_dynhp.parse_chain`).
            It is not modified.
        x: inputs (NumPy array shaped like the model input) or a
            `tf.data.Dataset` of `(features, label)` pairs (then `y` is None).
        y: integer labels.
        method: "dense", "sp" (L0 soft pruning), "hp" (hard pruning, Sec. 4.1) or
            "dynhp" (hard pruning + dynamic batch, Sec. 4.2).
        epochs: number of epochs.
        batch_size: (initial) mini-batch size; default 16 for "dynhp" (the
            paper's), 100 otherwise.
        l0_lambda: lambda of Eq. 5, on the reference scale (see `L0Dense`).
        alpha_bs: smoothing parameter of Eq. 8 in [0, 1]; required for "dynhp"
            (the paper's best: 0.972 MNIST, 0.980 Fashion-MNIST).
        gamma: threshold of Eq. 7 in (0, 1); gates open less often are pruned.
        budget_kb: memory budget C of Eq. 9 in KB; required for "dynhp"; with
            "sp"/"hp" only checked (None: unconstrained).
        budget_on: "paper" (MO: weights + batch) or "full" (`memory_full_kb`).
        batch_growth: reading of Eq. 8: "step_mean" (default), "step" or "epoch"
            (see `tf_dynhp.batching`).
        optimizer: name or Keras optimizer (default Adam, as the reference L0 code).
        learning_rate: used when `optimizer` is a name; fixed, as in the paper.
        loss: None for sparse categorical cross-entropy on the logits (the last
            layer may be softmax or linear), or a loss giving per-example values.
        validation_data: `(x_val, y_val)` or a `tf.data.Dataset`; gives
            `val_loss`/`val_error` (misclassification %, the paper's ERR).
        seed: makes two runs identical (sets Keras' seeds and TF op determinism).
        verbose: 0 silent, 1 one line per epoch.
        callbacks: Keras callbacks; they receive the current (rebuilt) model each
            epoch and scalar logs (per-layer lists as `key_0`, `key_1`, ...).
        steps_per_execution: train steps per compiled call.
        weight_decay, droprate_init, input_droprate_init: `L0Dense` arguments.
        checkpoint_dir: folder for an atomic checkpoint after every epoch (the last
            two are kept; see `tf_dynhp.checkpoint`). Checked for writability first.
        resume: continue from the newest valid checkpoint in `checkpoint_dir` (a
            checkpoint of other settings, model or data is refused, naming the setting).
        on_nonfinite: "raise" (stop with `NonFiniteError`, whose `last_good` holds the
            model of the last good epoch) or "rollback" (restore the last good epoch,
            halve the learning rate, go on; give up after 3 tries).
        gate_kernel: how `L0Dense` samples its per-example gates in training:
            "fused" (one compiled CPU kernel, `tf_dynhp.fused`; float32 models),
            "tf" (TensorFlow ops, `tf_dynhp.gates.gated_product`) or "auto" (default:
            "fused" when it builds here and the model is float32, else "tf"). The
            two draw different noise: identical seeds give identical runs with the
            same resolved kernel, recorded in `FitResult.state.gate_kernel`.
        trace_once: trace the compiled step once for all the pruned models of the run
            (default): each rebuilt model takes over the storage of the traced one's
            variables (`tf_dynhp.storage`). False traces it again after every rebuild
            (what `retraces` then counts); the results are the same to the bit.

    Returns:
        A `FitResult`: `.model` (stripped plain Keras model), `.history` (per-epoch
        lists: loss, accuracy, val_loss, val_error, batch_size, candidate_batch_size,
        active_units, pruned_units, at_floor (one entry per unit axis: the inputs of
        each dense layer; for a CNN also the input channels, each conv layer's output
        channels and the flattened features, see `tf_dynhp.surgery.unit_axes`), model_kb, memory_kb, memory_full_kb,
        budget_kb, variance_ratio, retraces, rebuild_seconds (surgery and optimizer
        transfer), trace_seconds (tracing the step for a new model; epoch 1 includes the
        first trace), epoch_seconds),
        `.gated_model`, `.state`.

    Raises:
        ValueError / TypeError: for bad arguments or data, before any training.
    """
    # ---------------------------------------------------------------- arguments
    if method not in METHODS:
        raise _invalid("method", f"one of {list(METHODS)}", method)
    epochs = _positive_int("epochs", epochs)
    if batch_size is None:
        batch_size = 16 if method == "dynhp" else 100
    batch_size = _positive_int("batch_size", batch_size)
    steps_per_execution = _positive_int("steps_per_execution", steps_per_execution)
    if isinstance(l0_lambda, bool) or not isinstance(l0_lambda, (int, float)) or not l0_lambda >= 0:
        raise _invalid("l0_lambda", "a float >= 0", l0_lambda)
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0.0 < gamma < 1.0:
        raise _invalid("gamma", "a float in (0, 1)", gamma)
    if budget_on not in ("paper", "full"):
        raise _invalid("budget_on", "'paper' or 'full'", budget_on)
    if batch_growth not in batching.BATCH_GROWTH_MODES:
        raise _invalid("batch_growth", f"one of {list(batching.BATCH_GROWTH_MODES)}", batch_growth)
    if budget_kb is not None and (isinstance(budget_kb, bool) or not isinstance(budget_kb, (int, float)) or not budget_kb > 0 or not math.isfinite(budget_kb)):
        raise _invalid("budget_kb", "a positive number of KB (1024 bytes) or None", budget_kb)
    if method == "dynhp":
        if alpha_bs is None:
            raise ValueError("method='dynhp' needs `alpha_bs` (Eq. 8's smoothing, e.g. 0.972 for MNIST, 0.980 for Fashion-MNIST).")
        if budget_kb is None:
            raise ValueError(
                "method='dynhp' needs `budget_kb`, the memory budget C of Eq. 9 in KB; e.g. "
                "tf_dynhp.memory.mo_kb(model, batch_size=512) for the paper's MNIST setting."
            )
        alpha_bs = batching.check_alpha_bs(alpha_bs)
    elif alpha_bs is not None:
        alpha_bs = batching.check_alpha_bs(alpha_bs)
    if not isinstance(verbose, (int, bool)):
        raise _invalid("verbose", "0 or 1", verbose)
    callbacks = _check_callbacks(callbacks, method)
    if gate_kernel not in fused.GATE_KERNELS:
        raise _invalid("gate_kernel", f"one of {list(fused.GATE_KERNELS)}", gate_kernel)
    if not isinstance(trace_once, bool):
        raise _invalid("trace_once", "True or False", trace_once)
    loss_fn = _resolve_loss(loss)
    opt = _resolve_optimizer(optimizer, learning_rate)

    # ------------------------------------------------------------------- model
    chain = parse_chain(model)  # raises on unsupported layers before anything else
    if method == "dense" and any(isinstance(layer, GATED_TYPES) for layer in chain.body):
        raise ValueError("method='dense' trains plain Dense/Conv2D layers; this model has gated (L0Dense/L0Conv2D) layers: pass tf_dynhp.strip(model).")
    from tf_dynhp.model import classifier_head

    num_classes, _ = classifier_head(chain.body)

    # -------------------------------------------------------------------- data
    x_train, y_train = _as_arrays(x, y, chain.input_shape, num_classes, "x")
    val = None
    if validation_data is not None:
        if isinstance(validation_data, tf.data.Dataset):
            val = _as_arrays(validation_data, None, chain.input_shape, num_classes, "validation_data")
        elif isinstance(validation_data, (tuple, list)) and len(validation_data) == 2:
            val = _as_arrays(validation_data[0], validation_data[1], chain.input_shape, num_classes, "validation_data")
        else:
            raise _invalid("validation_data", "(x_val, y_val) or a tf.data.Dataset", type(validation_data).__name__)
    n_train = len(x_train)

    # ------------------------------------------------------------- seeds, core
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**31 - 1))
    else:
        seed = int(seed)
        keras.utils.set_random_seed(seed)
        tf.config.experimental.enable_op_determinism()
    if method == "dense":
        gated = model
    else:
        gated = to_l0(
            model, l0_lambda, weight_decay=weight_decay, droprate_init=droprate_init,
            input_droprate_init=input_droprate_init, dataset_size=n_train, seed=seed,
        )
    core, features, input_shape = _core_from(gated)
    gate_kernel = _resolve_gate_kernel(gate_kernel, core, method, announce=print if verbose else None)
    for layer in core.gated_layers:
        if layer.dataset_size is None:
            layer.dataset_size = n_train
    core.compile(optimizer=opt, jit_compile=False)
    core.optimizer.build(core.trainable_variables)
    if chain.spatial:  # the images go in as they are (no flatten head, no feature selection)
        x_train = x_train.reshape((-1,) + tuple(input_shape))
        if val is not None:
            val = (val[0].reshape((-1,) + tuple(input_shape)), val[1])

    axes, _ = unit_axes(core.body)
    state = TrainerState(
        method=method, seed=seed, batch_size=batch_size, candidate_batch_size=batch_size,
        alive=[list(range(axis.size)) for axis in axes[:-1]],
        original_inputs=[axis.size for axis in axes[:-1]], gate_kernel=gate_kernel,
    )
    if features is not None:
        state.alive[0] = [int(i) for i in features]
        state.original_inputs[0] = int(math.prod(input_shape))

    settings = {
        "method": method, "batch_size": batch_size, "l0_lambda": float(l0_lambda), "alpha_bs": alpha_bs,
        "gamma": float(gamma), "budget_kb": budget_kb, "budget_on": budget_on, "batch_growth": batch_growth,
        "optimizer": {k: v for k, v in core.optimizer.get_config().items() if k != "name"}, "seed": seed, "loss": repr(loss),
        "weight_decay": float(weight_decay), "droprate_init": float(droprate_init),
        "input_droprate_init": float(input_droprate_init), "model": _model_signature(chain),
        "gate_kernel": gate_kernel,
        # Hashing the data costs ~0.3 s per 60k images: only runs that checkpoint need it.
        "data": _data_fingerprint(x_train, y_train) if checkpoint_dir is not None else None,
    }
    # Flat inputs of any width (pruning drops input features); images as they are.
    data_spec = tf.TensorSpec((None,) + (x_train.shape[1:] if chain.spatial else (None,)), tf.as_dtype(x_train.dtype))
    run = _Run(core, features, input_shape, state, steps_per_execution, alpha_bs or 0.0, batch_growth, loss_fn, data_spec, trace_once)

    # ------------------------------------------------------------ budget check
    if budget_kb is not None:
        need = (
            memory.mo_kb_from_counts(run.weights(), batch_size, run.input_dim())
            if budget_on == "paper"
            else memory.memory_full_kb(run.core, batch_size, run.core.optimizer)
        )
        if need > budget_kb:
            raise ValueError(
                f"`budget_kb`={budget_kb} cannot hold the model plus the initial batch: they need "
                f"{need:.1f} KB ({'MO' if budget_on == 'paper' else 'full footprint'}: model "
                f"{memory.floats_to_kb(run.weights()):.1f} KB + batch of {batch_size}). Raise the budget or "
                "lower batch_size."
            )

    # ------------------------------------------------------- checkpoint, resume
    if on_nonfinite not in ("raise", "rollback"):
        raise _invalid("on_nonfinite", "'raise' or 'rollback'", on_nonfinite)
    if resume and checkpoint_dir is None:
        raise ValueError("`resume=True` needs `checkpoint_dir`, the folder the checkpoints were written to.")
    if checkpoint_dir is not None:
        ckpt.probe_writable(checkpoint_dir)  # a clear error now, not after an hour
        if resume:
            found = ckpt.latest_checkpoint(checkpoint_dir)
            if found is not None:
                path, arrays, meta = found
                _check_settings(path, meta["settings"], settings)
                run.restore(arrays, meta)
                if verbose:
                    print(f"Resumed from {path} (epoch {run.state.epoch})", flush=True)
        elif ckpt.list_checkpoints(checkpoint_dir):
            # A new run: checkpoints of an earlier run here must not be resumed later by mistake.
            removed = ckpt.remove_checkpoints(checkpoint_dir)
            warnings.warn(
                f"Starting a new run in {checkpoint_dir}: removed {removed} checkpoint(s) of an earlier run "
                "(pass resume=True to continue it instead).", RuntimeWarning, stacklevel=2,
            )
    run.trace()  # the first model, or the one a resume restored
    if run.state.epoch == 0:
        run.state.first_trace_seconds = run.trace_seconds  # not a retrace: Keras' fit traces once too
    last_good = run.snapshot()

    # -------------------------------------------------------------- epoch loop
    run.set_data(tf.constant(x_train), tf.constant(y_train))
    cb_list = keras.callbacks.CallbackList(callbacks, add_history=False, add_progbar=False, model=run.core)
    cb_list.on_train_begin()
    model_name = getattr(model, "name", "model")
    tries = 0
    epoch = run.state.epoch
    while epoch < epochs:
        t0 = time.perf_counter()
        cb_list.on_epoch_begin(epoch)
        stats = run.train_epoch(epoch)
        if stats["nonfinite"]:
            step = int(stats["nonfinite"])
            message = f"Non-finite loss or gradient in epoch {epoch + 1}, step {step}"
            if on_nonfinite == "rollback" and tries < 3:
                tries += 1
                run.restore(*last_good)
                lr = run.core.optimizer.learning_rate
                lr.assign(lr * 0.5**tries)
                run.trace()
                warnings.warn(f"{message}: rolled back to the end of epoch {epoch}, learning rate halved to {float(lr.numpy()):.3g} (try {tries} of 3).", RuntimeWarning, stacklevel=2)
                continue
            failed = _result_from(last_good, run, model_name, method)
            raise NonFiniteError(
                f"{message}{' after 3 rollbacks' if on_nonfinite == 'rollback' else ''}; training stopped. "
                f"The last good model (end of epoch {failed.state.epoch}; 0 is the initial model) is in the "
                "exception's `last_good`" + (f" and in the checkpoints of {checkpoint_dir}." if checkpoint_dir and failed.state.epoch else "."),
                last_good=failed,
            )
        record = run.end_epoch(stats, epoch, val, method, gamma, budget_kb, budget_on, alpha_bs)
        cb_list.set_model(run.core)
        record["epoch_seconds"] = time.perf_counter() - t0
        for key, value in record.items():
            run.state.history.setdefault(key, []).append(value)
        last_good = run.snapshot()
        if checkpoint_dir is not None:
            arrays, meta = last_good
            ckpt.write_checkpoint(checkpoint_dir, run.state.epoch, arrays, {**meta, "settings": settings})
        if verbose:
            print(_format_line(record, epochs), file=sys.stdout, flush=True)
        cb_list.on_epoch_end(epoch, _scalar_logs(record))
        epoch += 1
        if getattr(run.core, "stop_training", False):
            break
    cb_list.on_train_end()
    return _result(run, model_name, method)


class NonFiniteError(FloatingPointError):
    """Training met a non-finite loss or gradient. `last_good` is the `FitResult` of the
    last good epoch (the model as it was before the failing epoch)."""

    def __init__(self, message: str, last_good: "FitResult") -> None:
        super().__init__(message)
        self.last_good = last_good


def _result(run: "_Run", model_name: str, method: str) -> FitResult:
    gated_full = _full_model(run.core, run.features, run.input_shape, name=f"{model_name}_{method}")
    stripped = strip(gated_full) if method != "dense" else gated_full
    return FitResult(model=stripped, gated_model=gated_full, history=run.state.history, state=run.state)


def _result_from(snapshot: tuple[dict[str, np.ndarray], dict[str, Any]], run: "_Run", model_name: str, method: str) -> FitResult:
    run.restore(*snapshot)
    return _result(run, model_name, method)


def _model_signature(chain: Any) -> dict[str, Any]:
    return {
        "input_shape": list(chain.input_shape),
        "layers": [
            [type(layer).__name__, int(getattr(layer, "units", getattr(layer, "filters", 0))), str(getattr(getattr(layer, "activation", None), "__name__", ""))]
            for layer in chain.body
        ],
    }


def _data_fingerprint(x: np.ndarray, y: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(memoryview(np.ascontiguousarray(x)).cast("B"))
    h.update(memoryview(np.ascontiguousarray(y)).cast("B"))
    return f"{len(x)} examples, sha256 {h.hexdigest()[:16]}"


def _check_settings(path: Any, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuses a checkpoint made by another model, data set or hyper-parameters."""
    for key in sorted(set(saved) | set(current)):
        if json.dumps(saved.get(key), sort_keys=True) != json.dumps(current.get(key), sort_keys=True, default=str):
            raise ValueError(
                f"Checkpoint {path} was made with {key}={saved.get(key)!r}; this run has "
                f"{key}={current.get(key)!r}. Resume with the same settings, or use another checkpoint_dir."
            )


class _Run:
    """The mutable part of a fit: current core model, its compiled functions, features, state."""

    def __init__(self, core, features, input_shape, state, steps_per_execution, alpha_bs, growth, loss_fn, data_spec, trace_once=True) -> None:
        self.input_shape = tuple(input_shape)
        self.data_spec = data_spec
        self.state = state
        self.steps_per_execution = steps_per_execution
        self.alpha_bs = alpha_bs
        self.growth = growth
        self.loss_fn = loss_fn
        self.features = features
        self.trace_once = trace_once
        self.shared = False  # the traced functions run on storage the next core takes over
        self.needs_trace = True
        self.traced_before = 0
        self.trace_seconds = 0.0
        self.runner = None
        self.y_all = self.x_fed = self.fed_features = None
        self.set_core(core)

    # -- model and compiled functions
    def set_core(self, core: GatedModel) -> None:
        """Makes `core` the model trained: on the traced functions' storage when they
        share it (`tf_dynhp.storage`: no retrace), else with new functions to trace."""
        core.track_variance = self.state.method == "dynhp"
        core.loss_fn = self.loss_fn
        core.gate_kernel = self.state.gate_kernel
        old, self.core = getattr(self, "core", None), core
        if self.shared:
            storage.rebind(old.variables, core.variables, "model")
            storage.rebind(old.optimizer.variables, core.optimizer.variables, "optimizer")
            storage.reindex(core.optimizer)
            self.acc.resize(core)
            self.select_features()
            return
        if self.runner is not None:
            self.traced_before += _tracing_count(self.runner, self.evaluator)
        variables = list(core.variables) + list(core.optimizer.variables)
        # Only hard pruning rebuilds: dense and SP keep the variables as Keras made them.
        self.shared = self.trace_once and self.state.method in ("hp", "dynhp") and storage.supported(variables)
        if self.shared:
            storage.relax(variables)
            storage.reindex(core.optimizer)
        self.acc = _Accumulators(core)
        self.runner = _make_epoch_runner(core, self.acc, self.steps_per_execution, self.alpha_bs, self.growth)
        self.evaluator = _make_evaluator(core)
        self.needs_trace = True
        self.select_features()

    def set_data(self, x_all: tf.Tensor, y_all: tf.Tensor) -> None:
        """The training set, all features (flattened) or images."""
        self.y_all = y_all
        self.x_fed, self.fed_features = x_all, None
        self.select_features()

    def select_features(self) -> None:
        """`x_fed`: the training inputs with only the kept features, selected when they
        change (not per step: a column gather is an extra copy of every batch) from the
        previous selection, which holds them all (kept features only ever shrink, and a
        rollback or resume restores features of this run). Only the selection is kept
        in memory, not the full inputs beside it."""
        if self.x_fed is None:
            return
        want = None if self.features is None else np.asarray(self.features, dtype=np.int64)
        have = self.fed_features
        if (want is None and have is None) or (want is not None and have is not None and np.array_equal(want, have)):
            return
        if have is None:
            have = np.arange(int(self.x_fed.shape[1]))
        if want is None or not np.isin(want, have).all():
            raise RuntimeError(
                f"Cannot select input features {want if want is None else want.tolist()[:8]} from the "
                f"{len(have)} features the training data still holds: kept features only shrink."
            )
        position = {int(f): i for i, f in enumerate(have)}
        self.x_fed = tf.gather(self.x_fed, tf.constant([position[int(f)] for f in want], tf.int32), axis=1)
        self.fed_features = want

    def trace(self) -> None:
        """Traces the functions of a new core (nothing to do when it took over the storage)."""
        if not self.needs_trace:
            return
        seconds, concretes = _trace_ahead(self.runner, self.evaluator, self.core, self.data_spec)
        self.trace_seconds += seconds
        self.needs_trace = False
        if self.shared:
            stray = _stray_captures(self, concretes)
            if stray:  # a variable the next core would not take over: trace again after each rebuild
                self.shared = self.trace_once = False
                warnings.warn(
                    f"The train step reads variables outside the model and optimizer ({', '.join(stray)}); "
                    "it will be traced again after every rebuild.", RuntimeWarning, stacklevel=2,
                )

    def weights(self) -> int:
        return memory.weight_count(self.core.weighted_layers)

    def input_dim(self) -> int:
        """Input floats per example (selected features, or the whole image)."""
        return int(math.prod(int(d) for d in self.core.inputs[0].shape[1:]))

    def retraces(self) -> int:
        return self.traced_before + _tracing_count(self.runner, self.evaluator)

    # -- one epoch
    def train_epoch(self, epoch: int) -> dict[str, Any]:
        self.acc.reset()
        x_all, y_all = self.x_fed, self.y_all
        order = tf.constant(_epoch_order(self.state.seed, epoch, int(x_all.shape[0])).astype(np.int64))
        batch = tf.constant(self.state.batch_size, tf.int64)
        start = 0
        while int(self.runner(x_all, y_all, order, tf.constant(start, tf.int64), batch)) == self.steps_per_execution:
            start += self.steps_per_execution * self.state.batch_size
        return self.acc.read()

    def end_epoch(self, stats, epoch, val, method, gamma, budget_kb, budget_on, alpha_bs) -> dict[str, Any]:
        """Evaluation, pruning (Eq. 6-7), rebuild, batch size (Eq. 8-10): the epoch's record."""
        state, count = self.state, stats["count"]
        record: dict[str, Any] = {"epoch": epoch + 1}
        record["loss"] = stats["loss"] / count
        record["data_loss"] = stats["data_loss"] / count
        record["accuracy"] = stats["correct"] / count
        record["val_loss"], record["val_error"] = (None, None)
        if val is not None:
            record["val_loss"], record["val_error"] = _evaluate(self.evaluator, val[0], val[1], self.features)
        # Memory of this epoch, measured from the variables that exist and the batches fed.
        record["memory_kb"] = memory.mo_kb_from_counts(self.weights(), int(stats["max_batch"]), int(stats["width"]))
        record["memory_full_kb"] = memory.memory_full_kb(self.core, int(stats["max_batch"]), self.core.optimizer, int(stats["width"]))
        record["batch_size"] = state.batch_size
        record["variance_ratio"] = stats["ratio"] / stats["steps"] if self.core.track_variance else None
        rebuild_seconds = 0.0
        axes, _ = unit_axes(self.core.body)
        n_axes = len(axes) - 1
        pruned, floors = [0] * n_axes, [False] * n_axes
        if method in ("hp", "dynhp"):
            keep, pruned, floors = _prune_plan(self.core, stats["gate_open"], count, gamma)
            if any(k is not None for k in keep):
                t_rebuild = time.perf_counter()
                for i, k in enumerate(keep):
                    if k is not None:
                        state.alive[i] = [state.alive[i][j] for j in k]
                if keep[0] is not None:
                    self.features = np.asarray(state.alive[0], dtype=np.int64)
                self.set_core(_rebuild_core(self.core, keep))
                rebuild_seconds = time.perf_counter() - t_rebuild
                self.trace()
        if method == "sp":  # expected open gates per unit axis (its size where no gate sits)
            open_of = {id(layer): float(np.sum(g)) / count for layer, g in zip(self.core.gated_layers, stats["gate_open"])}
            record["active_units"] = [
                open_of[id(axis.gated_by[0])] if axis.gated_by else float(axis.size) for axis in axes[:-1]
            ]
        else:
            record["active_units"] = [len(a) for a in state.alive]
        record["pruned_units"] = pruned
        record["at_floor"] = floors
        if method == "dynhp":
            if self.growth == "epoch":
                increment = batching.batch_increment(stats["ratio"] / max(stats["steps"], 1.0), 1.0, alpha_bs)
            else:
                increment = int(stats["increment"])
            candidate = state.batch_size + increment
            if budget_on == "paper":
                cap = memory.max_batch_for_mo(budget_kb, self.weights(), self.input_dim())
            else:
                cap = memory.max_batch_for_full(budget_kb, self.core, self.core.optimizer)
            state.candidate_batch_size = candidate
            state.batch_size = batching.next_batch_size(state.batch_size, candidate, cap)
        record["candidate_batch_size"] = state.candidate_batch_size
        record["model_kb"] = memory.floats_to_kb(self.weights())
        record["budget_kb"] = budget_kb
        record["retraces"] = self.retraces()
        record["rebuild_seconds"] = rebuild_seconds
        record["trace_seconds"] = self.trace_seconds
        self.trace_seconds = 0.0
        state.epoch = epoch + 1
        state.retraces = record["retraces"]
        return record

    # -- snapshots (checkpoints and rollback)
    def snapshot(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {f"model/{i:04d}": np.array(v.numpy()) for i, v in enumerate(self.core.variables)}
        arrays.update({f"optimizer/{i:04d}": np.array(v.numpy()) for i, v in enumerate(self.core.optimizer.variables)})
        meta = {
            "core": keras.saving.serialize_keras_object(self.core),
            "optimizer": keras.optimizers.serialize(self.core.optimizer),
            "features": None if self.features is None else [int(i) for i in self.features],
            "state": json.loads(self.state.to_json()),
        }
        return arrays, meta

    def restore(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        # Keras' deserialization edits the config it is given: work on a copy.
        core = keras.saving.deserialize_keras_object(copy.deepcopy(meta["core"]))
        model_keys = sorted(k for k in arrays if k.startswith("model/"))
        if len(model_keys) != len(core.variables):
            raise ckpt.CheckpointError(f"checkpoint has {len(model_keys)} model variables, the model {len(core.variables)}")
        for key, var in zip(model_keys, core.variables):
            var.assign(arrays[key])
        optimizer = keras.optimizers.deserialize(copy.deepcopy(meta["optimizer"]))
        optimizer.build(core.trainable_variables)
        opt_keys = sorted(k for k in arrays if k.startswith("optimizer/"))
        for key, var in zip(opt_keys, optimizer.variables):
            var.assign(arrays[key])
        core.compile(optimizer=optimizer, jit_compile=False)
        self.features = None if meta["features"] is None else np.asarray(meta["features"], dtype=np.int64)
        self.state = TrainerState(**meta["state"])
        self.set_core(core)
        # Tracing the restored model is not a retrace of the run: continue its count.
        self.traced_before = self.state.retraces - _tracing_count(self.runner, self.evaluator)


def _stray_captures(run: "_Run", concretes: Sequence[Any]) -> list[str]:
    """Names of the variables the traced functions capture that are not shared storage
    (model, optimizer) or the accumulators."""
    known = {id(v._value) for v in list(run.core.variables) + list(run.core.optimizer.variables)}
    known.update(id(v) for v in run.acc.variables())
    return sorted({v.name for concrete in concretes for v in concrete.variables if id(v) not in known})


def _tracing_count(*functions: Any) -> int:
    return int(sum(f.experimental_get_tracing_count() for f in functions))
