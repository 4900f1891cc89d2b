"""The `Trainer`: the epoch loop of `tf_dynhp.fit`, between the compiled calls.

One epoch (`Trainer.fit_epochs`)::

    callbacks.on_epoch_begin
    train_epoch      the compiled runner (`tf_dynhp.loop`) over the seeded order
    evaluate         validation loss and error
    prune            Eq. 6-7 plan, rebuild the core on the traced storage (hp, dynhp)
    grow_batch       b_{i+1} = min(cap from the budget (Eq. 9), candidate (Eq. 8))  (Eq. 10)
    record           history, checkpoint, epoch line, callbacks.on_epoch_end

The `Trainer` holds the mutable part of a run: the current core model, its compiled
functions (traced once for every pruned model when the variables' storage is shared,
`tf_dynhp.storage`), the kept input features, and the `TrainerState`. Everything it
is configured with comes from `FitConfig`, checked once by `tf_dynhp.fit`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
import time
import warnings
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from tf_dynhp import batching, loop, memory, optim, storage, target
from tf_dynhp import checkpoint as ckpt
from tf_dynhp.convert import strip
from tf_dynhp.data import FeatureSelection, epoch_order
from tf_dynhp.logs import DERIVED, format_line, scalar_logs
from tf_dynhp.model import GatedModel
from tf_dynhp.pruning import compile_core, full_model, prune_plan, rebuild_core
from tf_dynhp.state import TrainerState
from tf_dynhp.units import unit_axes

__all__ = ["FitConfig", "FitResult", "NonFiniteError", "Trainer", "check_settings", "graph_constants"]


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """The resolved, checked arguments of `tf_dynhp.fit` the epoch loop needs."""

    method: str
    epochs: int
    gamma: float
    budget_kb: float | None
    budget_on: str
    alpha_bs: float  # 0.0 where Eq. 8 is not used
    batch_growth: str
    steps_per_execution: int
    loss_fn: Callable | None
    trace_once: bool
    on_nonfinite: str
    verbose: int
    checkpoint_dir: Any = None
    target_kb: float | None = None  # fit(target_kb=...): see tf_dynhp.target
    lambda_step: float = 0.05
    lambda_floor: float = 0.0
    size_penalty: str = "coupled"  # tf_dynhp.target.SIZE_PENALTIES
    size_shares: tuple[float, ...] | None = None  # per-layer shares of the multiplier (tf_dynhp.target.relative_lambdas)
    target_schedule: str = "constant"  # tf_dynhp.target.TARGET_SCHEDULES
    start_kb: float = 0.0  # the model's size before any pruning (where a "cubic" schedule starts)
    target_epoch: int = 0  # from the end of this epoch (1-based) on, the target is forced
    augment: Callable | None = None  # fit(augment=...): see tf_dynhp.augment
    augment_epochs: int | None = None  # fit(augment_until=...): epochs (from the first) that augment transforms
    weighted: bool = False  # fit(sample_weight= / class_weight=): the step gathers (labels, weights)
    input_name: str | None = None  # the user's model's Input name, kept by result.model and gated_model
    structure: tuple[Any, Any] = (None, None)  # how the user's model wraps its input and output (surgery.io_structure)
    shuffle: bool = True  # fit(shuffle=...): False trains every epoch in the order given
    deterministic_epoch: int | None = None  # fit(deterministic_from=...): from the epoch after this many, test-time gates
    validation_freq: int | tuple[int, ...] = 1  # fit(validation_freq=...): every N-th epoch, or these 1-based epochs


def validates(epoch: int, validation_freq: int | tuple[int, ...]) -> bool:
    """Whether the epoch (0-based) ends with a validation, as `keras.Model.fit` reads
    `validation_freq`: every N-th epoch for an int, the listed 1-based epochs otherwise."""
    if isinstance(validation_freq, int):
        return (epoch + 1) % validation_freq == 0
    return epoch + 1 in validation_freq


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


class NonFiniteError(FloatingPointError):
    """Training met a non-finite loss or gradient, or an epoch left non-finite weights or
    optimizer state. `last_good` is the `FitResult` of the last good epoch (the model as
    it was before the failing epoch)."""

    def __init__(self, message: str, last_good: FitResult) -> None:
        super().__init__(message)
        self.last_good = last_good

    def __reduce__(self):  # pickle / copy (a worker process reporting the failure) rebuild it with both arguments
        return type(self), (str(self), self.last_good)


#: Prefix of the arrays, in a finished run's last checkpoint, of the model the run ended
#: with when that is not its last epoch's: EarlyStopping's restored best, or the model cut
#: to the size target (`Trainer.fit_epochs`, `Trainer.write_final`).
ENDED_WITH = "ended_with/"

#: Config keys that pruning changes and the traced step reads from tensors, not as constants.
_SIZE_KEYS = frozenset({"units", "filters", "name"})


class _SeenLogs(keras.callbacks.Callback):
    """Last in fit's CallbackList: the epoch logs as the callbacks left them. Keras'
    CallbackList hands every callback one copy of the logs, so what a callback adds (a
    `learning_rate` of LearningRateScheduler, a metric of its own) is in it, not in the
    dict fit passed; `keras.Model.fit`'s History, a callback too, records those keys."""

    def __init__(self) -> None:
        super().__init__()
        self.logs: dict[str, Any] = {}

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.logs = logs if logs is not None else {}


def _callback_logs(seen: dict[str, Any], given: dict[str, Any]) -> dict[str, float]:
    """The scalar logs the callbacks added to `given` (the others, e.g. arrays, are left out),
    and a log of `logs.DERIVED` (in the callbacks' logs only, not in fit's history) that a
    callback set to a value of its own, which is then its column, as before fit logged it."""
    extra = {}
    for key, value in seen.items():
        try:
            number = float(np.asarray(value).item())
        except (TypeError, ValueError):  # not one number
            continue
        if key in given and not (key in DERIVED and number != given[key]):
            continue
        extra[key] = number
    return extra


def _finite(arrays: dict[str, np.ndarray]) -> bool:
    """Whether every float array of a snapshot is finite."""
    return all(bool(np.all(np.isfinite(a))) for a in arrays.values() if a.dtype.kind in "fc" or a.dtype.name == "bfloat16")


def graph_constants(core: GatedModel) -> list[Any]:
    """What the traced step bakes in as constants: each body layer's class and config
    but its size (`units`/`filters`, read from the variables' storage), and whether the
    gates are sampled (`deterministic_gates`). A rebuilt core with other constants (a
    `SelectFeatures` inserted after a conv's `Flatten` when single flattened rows are
    pruned, or new indices in it; a `Reshape` to another shape) cannot run on the traced
    functions: it is traced again."""
    return [
        (type(layer).__name__, json.dumps({k: v for k, v in layer.get_config().items() if k not in _SIZE_KEYS}, sort_keys=True, default=str))
        for layer in core.body
    ] + ([("deterministic_gates", True)] if core.deterministic_gates else [])


#: Settings named first when several differ: what a user changes on purpose.
_FIRST = ("method", "model", "data")
#: Epoch logs that score the model before the boundary's prune (the epoch's training and
#: its evaluation); the others (model_kb, active_units, batch_size, ...) describe the model
#: after it. An EarlyStopping restoring the best by one of these gets the model before the
#: prune (`Trainer.track_best`).
SCORED_BEFORE_PRUNE = ("loss", "data_loss", "accuracy", "error", "val_loss", "val_error", "val_accuracy", "memory_kb", "memory_full_kb")

#: Recorded in the checkpoint settings but not compared: whether the caller passed the
#: seed (`fit` seeds Keras and TF op determinism then; a resume without `seed` from such a
#: checkpoint does the same), not a choice that makes another run.
_UNCOMPARED = ("seeded",)
#: Settings added after checkpoints were written without them: compared only when saved.
_WHEN_SAVED = ("validation", "weight_decay_exclusions")  # compared when a checkpoint has them: older ones resume unchanged


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _difference(key: str, saved: Any, current: Any) -> tuple[str, str]:
    """How one differing setting reads in the refusal: a dict (the optimizer's config,
    the model) by the fields that differ only."""
    if isinstance(saved, dict) and isinstance(current, dict):
        fields = [k for k in sorted(set(saved) | set(current)) if _json(saved.get(k)) != _json(current.get(k))]
        if fields:
            return (", ".join(f"{key}.{k}={_shown(saved.get(k))}" for k in fields),
                    ", ".join(f"{key}.{k}={_shown(current.get(k))}" for k in fields))
    return f"{key}={_shown(saved)}", f"{key}={_shown(current)}"


def check_settings(path: Any, saved: dict[str, Any], current: dict[str, Any], hints: dict[str, str] | None = None) -> None:
    """Refuses a checkpoint made by another model, data set or hyper-parameters, naming
    every setting that differs (the method, model and data first), with `hints[key]`
    for the first one when the caller knows a likely cause."""
    keys = sorted((set(saved) | set(current)) - set(_UNCOMPARED) - {k for k in _WHEN_SAVED if k not in saved},
                  key=lambda k: (_FIRST.index(k) if k in _FIRST else len(_FIRST), k))
    differ = [k for k in keys if _json(saved.get(k)) != _json(current.get(k))]
    if differ:
        was, has = _difference(differ[0], saved.get(differ[0]), current.get(differ[0]))
        also = f" Also different: {', '.join(differ[1:])}." if differ[1:] else ""
        hint = f" {hints[differ[0]]}" if hints and differ[0] in hints else ""
        raise ValueError(
            f"Checkpoint {path} was made with {was}; this run has {has}.{also}{hint} Resume with the same settings, "
            "or use another checkpoint_dir."
        )


def _shown(value: Any) -> str:
    """A setting as `check_settings` names it: None is what the settings hold for an
    argument at its default (e.g. augment_until=1), so it says so."""
    return "None (the default)" if value is None else repr(value)


class Trainer:
    """The mutable part of a fit: current core model, its compiled functions, features, state."""

    def __init__(self, config: FitConfig, core: GatedModel, features, input_shape, state: TrainerState, data_spec: tf.TensorSpec) -> None:
        self.config = config
        self.input_shape = tuple(input_shape)
        self.data_spec = data_spec
        self.state = state
        self.features = features
        self.trace_once = config.trace_once
        self.shared = False  # the traced functions run on storage the next core takes over
        self.needs_trace = True
        self.traced_before = 0
        self.recount = False  # `restore` sets it: the next trace is of a restored model
        self.trace_seconds = 0.0
        self.runner = None
        self.data = FeatureSelection()
        # A finished run's checkpoint may hold the model it ended with, when that is not
        # its last epoch's (EarlyStopping restored the best): (arrays, meta), or None.
        self.ended_with = None
        # With an EarlyStopping(restore_best_weights=True) (`keep_scored`), an epoch that
        # prunes keeps here the model its logs scored, the one before the boundary's
        # prune (`prune`): (arrays, meta) of the end of that epoch, or None.
        self.keep_scored = False
        self.scored = None
        # The multiplier of the size target, read by the traced step (a variable, so one
        # trace sees every update); its value is part of the TrainerState.
        self.size_lambda = None
        if config.target_kb is not None:
            self.size_lambda = tf.Variable(float(state.l0_lambda), dtype="float64", trainable=False, name="size_lambda")
        # fit(deterministic_from=...): whether the step uses the test-time gates (set per
        # epoch by `gates_for_epoch`, given to every core by `set_core`).
        self.deterministic = False
        self.traced_constants = None  # graph_constants of the core the functions were traced for
        self.set_core(core)

    # -- model and compiled functions
    def set_core(self, core: GatedModel) -> None:
        """Makes `core` the model trained: on the traced functions' storage when they
        share it (`tf_dynhp.storage`: no retrace), else with new functions to trace."""
        core.track_variance = self.state.method == "dynhp"
        core.loss_fn = self.config.loss_fn
        core.gate_kernel = self.state.gate_kernel
        core.size_lambda = self.size_lambda
        core.size_penalty = self.config.size_penalty
        core.size_shares = self.config.size_shares
        core.deterministic_gates = self.deterministic
        if self.size_lambda is not None:
            core.dataset_size = core.gated_layers[0].dataset_size
        old, self.core = getattr(self, "core", None), core
        # A CNN's expected size under a target reads its flattened-row maps from the
        # model's shapes: constants of the trace, like the layers' own.
        baked = self.size_lambda is not None and len(core.inputs[0].shape) > 2
        if self.shared and (baked or graph_constants(core) != self.traced_constants):
            # The traced step holds constants of the old structure: new functions on the
            # same (relaxed) storage scheme. Variables are created afresh, so relax them.
            self.shared = False
        if self.shared:
            storage.rebind(old.variables, core.variables, "model")
            storage.rebind(old.optimizer.variables, core.optimizer.variables, "optimizer")
            storage.reindex(core.optimizer)
            self.acc.resize(core)
            self.data.select(self.features)
            return
        if self.runner is not None:
            self.traced_before += loop.tracing_count(self.runner, self.evaluator)
        variables = list(core.variables) + list(core.optimizer.variables)
        # Only hard pruning rebuilds: dense and SP keep the variables as Keras made them.
        self.shared = self.trace_once and self.state.method in ("hp", "dynhp") and storage.supported(variables)
        if self.shared:
            storage.relax(variables)
            storage.reindex(core.optimizer)
        self.traced_constants = graph_constants(core) if self.shared else None  # what a rebuilt core must match
        self.acc = loop.Accumulators(core)
        self.runner = loop.make_epoch_runner(core, self.acc, self.config.steps_per_execution, self.config.alpha_bs, self.config.batch_growth)
        self.evaluator = loop.make_evaluator(core)
        self.needs_trace = True
        self.data.select(self.features)

    def gates_for_epoch(self, epoch: int) -> None:
        """From epoch `config.deterministic_epoch` (0-based) on, the step trains with the
        test-time gates (`fit(deterministic_from=...)`): the first such epoch traces the
        step again (the gates' sampling is a constant of the trace)."""
        want = self.config.deterministic_epoch is not None and epoch >= self.config.deterministic_epoch
        if want != self.deterministic:
            self.deterministic = want
            self.set_core(self.core)
            self.trace()

    def set_data(self, x_all: tf.Tensor, y_all: tf.Tensor, weights: tf.Tensor | None = None) -> None:
        """The training set, all features (flattened) or images, and the examples'
        weights (None: unweighted; `config.weighted` says which the step was traced for)."""
        self.data.set_data(x_all, y_all, self.features, augment=self.config.augment,
                           image_shape=self.input_shape, seed=self.state.seed,
                           augment_epochs=self.config.augment_epochs, weights=weights)

    def trace(self) -> None:
        """Traces the functions of a new core (nothing to do when it took over the storage)."""
        if not self.needs_trace:
            return
        seconds, concretes = loop.trace_ahead(self.runner, self.evaluator, self.core, self.data_spec, self.config.weighted)
        self.trace_seconds += seconds
        self.needs_trace = False
        if self.recount:  # a restored model: its traces continue the restored count
            self.traced_before = self.state.retraces - loop.tracing_count(self.runner, self.evaluator)
            self.recount = False
        if self.shared:
            variables = list(self.core.variables) + list(self.core.optimizer.variables)
            extra = [] if self.size_lambda is None else [self.size_lambda]
            stray = loop.stray_captures(variables, self.acc, concretes, extra)
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
        return self.traced_before + loop.tracing_count(self.runner, self.evaluator)

    # -- one epoch
    def steps_per_epoch(self) -> int:
        return -(-len(self.data) // self.state.batch_size)

    def train_epoch(self, epoch: int, on_call: Callable[[int, int], None] | None = None,
                    before_call: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Runs the compiled steps of epoch `epoch`; returns the accumulated statistics.

        `before_call(steps)` and `on_call(call, steps)`, if given, run before and after
        each compiled call (`steps`: the epoch's steps before it, or so far): the batch
        hooks of callbacks and the progress bar. A `stop_training` set on the model
        during the epoch ends it after the current call, as `keras.Model.fit` does."""
        self.acc.reset()
        x_all, y_all = self.data.epoch_inputs(epoch), self.data.targets
        spe = self.config.steps_per_execution
        order = tf.constant(epoch_order(self.state.seed, epoch, int(x_all.shape[0]), self.config.shuffle).astype(np.int64))
        batch = tf.constant(self.state.batch_size, tf.int64)
        start, call, steps = 0, 0, 0
        while True:
            if before_call is not None and start < int(x_all.shape[0]):
                before_call(steps)
            done = int(self.runner(x_all, y_all, order, tf.constant(start, tf.int64), batch))
            steps += done
            if on_call is not None and done:
                on_call(call, steps)
            call += 1
            if done != spe or getattr(self.core, "stop_training", False):
                break
            start += spe * self.state.batch_size
        stats = self.acc.read()
        if not stats["nonfinite"] and not self.state_is_finite():
            # Finite losses and gradients can still overflow an update (Adam's second
            # moments, huge inputs): such an epoch is not good and is not kept.
            stats["nonfinite"] = max(steps, 1)
            stats["nonfinite_state"] = True
        return stats

    def state_is_finite(self) -> bool:
        """True when every weight and optimizer variable of the core is finite (once per
        epoch: the step checks only its loss and gradients, computed before its update)."""
        variables = list(self.core.variables) + list(self.core.optimizer.variables)
        return all(bool(np.all(np.isfinite(np.asarray(v.numpy(), np.float64)))) for v in variables
                   if tf.as_dtype(v.dtype).is_floating)  # bfloat16 too (NumPy does not call it floating)

    def running_logs(self) -> dict[str, float]:
        """Mean loss and accuracy of the epoch so far (Keras' batch-hook logs)."""
        sums = self.acc.sums.numpy()
        names = loop.Accumulators.SUMS
        count = max(float(sums[names.index("count")]), 1.0)
        return {"loss": float(sums[names.index("loss")]) / count, "accuracy": float(sums[names.index("correct")]) / count}

    def evaluate(self, val: tuple[np.ndarray, np.ndarray] | None, callbacks: Any = None) -> tuple[float | None, float | None, float | None]:
        """(val_loss, val_error %, val_accuracy) of the current model, or Nones without
        validation data; `callbacks` (a CallbackList) get `on_test_begin` / `on_test_end`
        around it, as in keras.Model.fit's validation (no per-batch test hooks)."""
        if val is None:
            return None, None, None
        if callbacks is not None:
            callbacks.on_test_begin()
        loss, error, accuracy = loop.evaluate_split(self.evaluator, val[0], val[1], self.features)
        if callbacks is not None:
            callbacks.on_test_end({"loss": loss, "accuracy": accuracy})
        return loss, error, accuracy

    def prune(self, stats: dict[str, Any], epoch: int = 0) -> tuple[list[int], list[bool], float]:
        """Eq. 6-7 for hp/dynhp: removes the units whose gates were open less than `gamma`
        of the epoch and rebuilds the core; under a size target only down to the target,
        and from `config.target_epoch` on down to it whatever the rates
        (`tf_dynhp.target.plan_to_target`). Returns (pruned per axis, at floor per axis,
        rebuild seconds)."""
        axes, _ = unit_axes(self.core.body)
        n_axes = len(axes) - 1
        if self.state.method not in ("hp", "dynhp"):
            return [0] * n_axes, [False] * n_axes, 0.0
        cfg = self.config
        if cfg.target_kb is not None:
            target_weights = memory.kb_to_floats(self.aim_kb(epoch))
            keep, pruned, floors = target.plan_to_target(
                self.core.body, self.core.gated_layers, stats["gate_open"], stats["count"], cfg.gamma,
                target_weights, force=epoch + 1 >= cfg.target_epoch,
            )
        else:
            keep, pruned, floors = prune_plan(self.core, stats["gate_open"], stats["count"], cfg.gamma)
        if not any(k is not None for k in keep):
            return pruned, floors, 0.0
        if self.keep_scored and cfg.target_kb is None:  # the model the epoch's logs scored (track_best)
            arrays, meta = self.snapshot()
            meta["state"]["epoch"] = epoch + 1
            self.scored = (arrays, meta)
        t_rebuild = time.perf_counter()
        self.keep_units(keep)
        rebuild_seconds = time.perf_counter() - t_rebuild
        self.trace()
        return pruned, floors, rebuild_seconds

    def keep_units(self, keep: list[np.ndarray | None]) -> None:
        """Rebuilds the core with the units `keep` names per unit axis (None: all)."""
        for i, k in enumerate(keep):
            if k is not None:
                self.state.alive[i] = [self.state.alive[i][j] for j in k]
        if keep[0] is not None:
            self.features = np.asarray(self.state.alive[0], dtype=np.int64)
        self.set_core(rebuild_core(self.core, keep))

    def cut_to_target(self) -> float | None:
        """A run that ends above `target_kb` (stopped by a callback before the deadline
        epoch, where the size is forced) is cut to it here, as the deadline would: the
        units least likely open go first (by P(z > 0) of Eq. 4: the epoch's activation
        rates are of the model before its last prune), with no training after the cut.
        Keeps the guarantee that `result.model` fits the target. Returns the size before
        the cut in KB, or None when nothing was cut."""
        cfg = self.config
        before = memory.floats_to_kb(self.weights())
        if cfg.target_kb is None or self.state.method not in ("hp", "dynhp") or before <= cfg.target_kb:
            return None
        rates = [np.asarray(keras.ops.convert_to_numpy(layer.prob_open()), dtype=np.float64) for layer in self.core.gated_layers]
        keep, _, _ = target.plan_to_target(self.core.body, self.core.gated_layers, rates, 1.0, cfg.gamma,
                                           memory.kb_to_floats(cfg.target_kb), force=True)
        self.keep_units(keep)
        return before

    def aim_kb(self, epoch: int) -> float:
        """The size the boundary ending epoch `epoch` (0-based) prunes to and λ follows:
        `target_kb`, or on a "cubic" schedule a size falling to it by `target_epoch`."""
        cfg = self.config
        return target.scheduled_kb(cfg.target_kb, cfg.start_kb, epoch, cfg.target_epoch, cfg.target_schedule)

    def grow_batch(self, stats: dict[str, Any]) -> None:
        """DynHP's batch for the next epoch: the candidate of Eq. 8, capped by what the
        budget leaves after the (pruned) model (Eq. 9), never shrinking (Eq. 10)."""
        cfg, state = self.config, self.state
        if state.method != "dynhp":
            return
        if cfg.batch_growth == "epoch":
            increment = batching.batch_increment(stats["ratio"] / max(stats["steps"], 1.0), 1.0, cfg.alpha_bs)
        else:
            increment = int(stats["increment"])
        candidate = state.batch_size + increment
        if cfg.budget_on == "paper":
            cap = memory.max_batch_for_mo(cfg.budget_kb, self.weights(), self.input_dim())
        else:
            cap = memory.max_batch_for_full(cfg.budget_kb, self.core, self.core.optimizer)
        state.candidate_batch_size = candidate
        state.batch_size = batching.next_batch_size(state.batch_size, candidate, cap)

    def end_epoch(self, stats: dict[str, Any], epoch: int, val, callbacks: Any = None) -> dict[str, Any]:
        """Evaluation, pruning (Eq. 6-7), rebuild, batch size (Eq. 8-10): the epoch's record."""
        state, count = self.state, stats["count"]
        record: dict[str, Any] = {"epoch": epoch + 1}
        record["loss"] = stats["loss"] / count
        record["data_loss"] = stats["data_loss"] / count
        record["accuracy"] = stats["correct"] / count
        due = val if validates(epoch, self.config.validation_freq) else None
        record["val_loss"], record["val_error"], record["val_accuracy"] = self.evaluate(due, callbacks)
        # Memory of this epoch, measured from the variables that exist and the batches fed.
        record["memory_kb"] = memory.mo_kb_from_counts(self.weights(), int(stats["max_batch"]), int(stats["width"]))
        record["memory_full_kb"] = memory.memory_full_kb(self.core, int(stats["max_batch"]), self.core.optimizer, int(stats["width"]))
        record["batch_size"] = state.batch_size
        record["variance_ratio"] = stats["ratio"] / stats["steps"] if self.core.track_variance else None
        pruned, floors, rebuild_seconds = self.prune(stats, epoch)
        if self.size_lambda is not None:  # the multiplier follows the size the user gets
            record["l0_lambda"] = state.l0_lambda
            cfg = self.config
            size_kb = memory.floats_to_kb(self.weights())
            state.l0_lambda = target.update_lambda(state.l0_lambda, size_kb, self.aim_kb(epoch), cfg.lambda_step, cfg.lambda_floor)
            self.size_lambda.assign(state.l0_lambda)
            record["expected_kb"] = memory.floats_to_kb(float(target.expected_weights(self.core.body)))  # always the coupled count: a size
            record["target_kb"] = self.config.target_kb
        if state.method == "sp":  # expected open gates per unit axis (its size where no gate sits)
            axes, _ = unit_axes(self.core.body)
            open_of = {id(layer): g for layer, g in zip(self.core.gated_layers, stats["gate_open"])}
            # A unit gated by two layers (a conv's channels and the Dense after a global
            # pooling) is open as often as its less open gate, as Eq. 7's pruning reads it.
            record["active_units"] = [
                float(np.sum(np.min(np.stack([open_of[id(layer)] for layer in axis.gated_by]), axis=0))) / count
                if axis.gated_by else float(axis.size) for axis in axes[:-1]
            ]
        else:
            record["active_units"] = [len(a) for a in state.alive]
        record["pruned_units"] = pruned
        record["at_floor"] = floors
        self.grow_batch(stats)
        record["candidate_batch_size"] = state.candidate_batch_size
        record["model_kb"] = memory.floats_to_kb(self.weights())
        record["budget_kb"] = self.config.budget_kb
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
        # What get_config leaves out, AdamW's exclude_from_weight_decay(var_names=...): the
        # run's own optimizer has it (a checkpoint setting: a resume with others is refused).
        optim.set_weight_decay_exclusions(optimizer, optim.weight_decay_exclusions(self.core.optimizer))
        optimizer.build(core.trainable_variables)
        opt_keys = sorted(k for k in arrays if k.startswith("optimizer/"))
        for key, var in zip(opt_keys, optimizer.variables):
            var.assign(arrays[key])
        compile_core(core, optimizer)
        self.features = None if meta["features"] is None else np.asarray(meta["features"], dtype=np.int64)
        self.state = TrainerState(**meta["state"])
        ended = {k[len(ENDED_WITH):]: v for k, v in arrays.items() if k.startswith(ENDED_WITH)}
        self.ended_with = (ended, meta["ended_with"]) if "ended_with" in meta else None
        if self.size_lambda is not None:
            self.size_lambda.assign(float(self.state.l0_lambda))
        self.set_core(core)
        # Tracing the restored model is not a retrace of the run: the count goes on from the
        # restored one once it is traced (`trace`).
        self.traced_before = self.state.retraces - loop.tracing_count(self.runner, self.evaluator)
        self.recount = self.needs_trace  # a core that took over the storage is not traced again

    # -- results
    def result(self, model_name: str) -> FitResult:
        method = self.state.method
        gated_full = full_model(self.core, self.features, self.input_shape, name=f"{model_name}_{method}",
                                input_name=self.config.input_name, structure=self.config.structure)
        stripped = strip(gated_full) if method != "dense" else gated_full
        return FitResult(model=stripped, gated_model=gated_full, history=self.state.history, state=self.state)

    def result_from(self, snapshot: tuple[dict[str, np.ndarray], dict[str, Any]], model_name: str) -> FitResult:
        self.restore(*snapshot)
        return self.result(model_name)

    # -- the epoch loop
    def fit_epochs(self, val, callbacks: list[keras.callbacks.Callback], settings: dict[str, Any], model_name: str) -> FitResult:
        """Trains from `state.epoch` to `config.epochs`, with callbacks, checkpoints
        (`settings` are written into each) and the non-finite policy; returns the result.

        Callbacks follow Keras' contract: `set_params` at the start (again at an epoch's
        begin when DynHP's batch changed the step count), `set_model` whenever the
        model changes (a rebuild), batch hooks around every compiled call, epoch logs
        under Keras' names (`loss`, `accuracy`, `val_loss`, `val_accuracy`) plus ours.
        `callback.model` is the model being trained: the core (`GatedModel`) on the
        flattened, selected input features (dense-first chains) or on the images, not
        the user's model; it is compiled with an `accuracy` metric. An
        `EarlyStopping(restore_best_weights=True)` gets the best epoch's model back,
        possibly larger than the last (restored from a snapshot: shapes change); under
        `target_kb` the best epoch whose model fits the target (`track_best`).
        """
        cfg = self.config
        last_good = self.snapshot()
        seen = _SeenLogs()
        cb_list = keras.callbacks.CallbackList(list(callbacks) + [seen], add_history=False, add_progbar=False, model=self.core)
        # A ProgbarLogger of the user's draws the bar (as keras.Model.fit, which adds none then)
        own_bar = not any(isinstance(cb, keras.callbacks.ProgbarLogger) for cb in callbacks)
        cb_list.set_params({"verbose": cfg.verbose, "epochs": cfg.epochs, "steps": self.steps_per_epoch()})
        restorers = [cb for cb in callbacks if isinstance(cb, keras.callbacks.EarlyStopping) and cb.restore_best_weights]
        for cb in restorers:  # we restore the best epoch ourselves (its shapes may differ)
            cb.restore_best_weights = False
        self.keep_scored = bool(restorers)
        best: dict[int, tuple[int, Any, Any, bool]] = {}
        model_seen = self.core
        final_logs = None  # the last epoch's logs, for on_train_end (None: no epoch trained)
        # A finished run resumed (all its epochs, or ended by EarlyStopping) trains nothing
        # and ends with the model its first call ended with.
        ended_with = self.ended_with if self.state.early_stopped or self.state.epoch >= cfg.epochs else None
        stopped = False
        try:
            cb_list.on_train_begin()
            tries, retry = 0, ""
            epoch = self.state.epoch
            while epoch < cfg.epochs and not self.state.early_stopped:
                t0 = time.perf_counter()
                self.gates_for_epoch(epoch)
                if cb_list.params["steps"] != self.steps_per_epoch():  # DynHP grew the batch: fewer steps
                    cb_list.set_params({**cb_list.params, "steps": self.steps_per_epoch()})
                cb_list.on_epoch_begin(epoch)
                if tries:  # a retry: half the rate of the previous try, after a scheduler's on_epoch_begin has set it
                    lr = self.core.optimizer.learning_rate
                    lr.assign(lr * 0.5**tries)
                    warnings.warn(f"{retry}, learning rate halved to {float(lr.numpy()):.3g} (try {tries} of 3).", RuntimeWarning, stacklevel=2)
                bar = None
                if cfg.verbose == 1 and own_bar:
                    print(f"Epoch {epoch + 1}/{cfg.epochs}", flush=True)
                    bar = keras.utils.Progbar(self.steps_per_epoch(), stateful_metrics=["loss", "accuracy"])

                def on_call(call: int, steps: int, bar=bar) -> None:
                    logs = self.running_logs()
                    cb_list.on_train_batch_end(steps - 1, logs)  # as Keras: the call's last step (0-based)
                    if bar is not None:
                        bar.update(min(steps, bar.target), values=list(logs.items()))

                def before_call(steps: int) -> None:
                    cb_list.on_train_batch_begin(steps)  # as Keras: the call's first step

                stats = self.train_epoch(epoch, on_call, before_call)
                stopped = bool(getattr(self.core, "stop_training", False))  # a batch hook's; a prune makes a new core
                if stats["nonfinite"]:
                    step = int(stats["nonfinite"])
                    message = (f"Non-finite weights or optimizer state at the end of epoch {epoch + 1} (its {step} steps had finite "
                               "losses and gradients; an update overflowed)" if stats.get("nonfinite_state")
                               else f"Non-finite loss or gradient in epoch {epoch + 1}, step {step}")
                    if cfg.on_nonfinite == "rollback" and tries < 3:
                        tries += 1
                        self.restore(*last_good)  # a new core: the callbacks must see it (their stop_training lands on it)
                        cb_list.set_model(self.core)
                        model_seen = self.core
                        if stopped:  # a callback asked to stop during the failed epoch: no retry
                            warnings.warn(f"{message}: rolled back to the end of epoch {epoch}; a callback stopped training during the failed epoch, so it is not retried.", RuntimeWarning, stacklevel=2)
                            break
                        self.trace()
                        retry = f"{message}: rolled back to the end of epoch {epoch}"  # the rate is cut when the retry begins
                        continue
                    failed = self.result_from(last_good, model_name)
                    checkpoint_dir = cfg.checkpoint_dir
                    raise NonFiniteError(
                        f"{message}{' after 3 rollbacks' if cfg.on_nonfinite == 'rollback' else ''}; training stopped. "
                        f"The last good model (end of epoch {failed.state.epoch}; 0 is the initial model) is in the "
                        "exception's `last_good`" + (f" and in the checkpoints of {checkpoint_dir}." if checkpoint_dir and failed.state.epoch else "."),
                        last_good=failed,
                    )
                tries = 0  # a good epoch: the next failure starts from its snapshot, with 3 tries of its own
                self.scored = None
                record = self.end_epoch(stats, epoch, val, cb_list)
                if self.scored is not None:  # the state after the boundary but the model's own (alive units, features)
                    self.scored[1]["state"].update(batch_size=self.state.batch_size, retraces=self.state.retraces,
                                                   candidate_batch_size=self.state.candidate_batch_size)
                if self.core is not model_seen:
                    cb_list.set_model(self.core)
                    model_seen = self.core
                record["epoch_seconds"] = time.perf_counter() - t0
                for key, value in record.items():
                    self.state.history.setdefault(key, []).append(value)
                self.pad_callback_columns(record)  # None until a callback logs them (aligned in every snapshot)
                line = format_line(record, cfg.epochs, self.state.gate_kernel if self.state.method != "dense" else None)
                if cfg.verbose and own_bar:
                    print(line, file=sys.stdout, flush=True)
                logs = scalar_logs(record)
                # The epoch's checkpoint and rollback point come after the callbacks' on_epoch_end,
                # with what they changed (a rate, clipped weights) and logged; a callback that
                # raises there leaves the epoch's checkpoint as it was before them.
                before_callbacks = self.snapshot() if callbacks else None
                try:
                    cb_list.on_epoch_end(epoch, logs)
                except BaseException:
                    if before_callbacks is not None and cfg.checkpoint_dir is not None:
                        arrays, meta = before_callbacks
                        ckpt.write_checkpoint(cfg.checkpoint_dir, self.state.epoch, arrays, {**meta, "settings": settings})
                    raise
                if cfg.verbose and not own_bar:  # after the user's bar has ended its line
                    print(line, file=sys.stdout, flush=True)
                final_logs = logs  # as Keras: on_train_end gets fit's own logs, not a callback's copy
                added = {k: v for k, v in _callback_logs(seen.logs, logs).items() if k not in record}  # not ours (`epoch`)
                self.add_callback_logs(added)
                last_good = self.snapshot()
                broken = before_callbacks is not None and not _finite(last_good[0])
                if broken:  # a callback left NaN/inf (a fault injected, a bad assign): the epoch's good state
                    last_good = before_callbacks  # is the one before it; the next epoch's first step finds the fault
                if cfg.checkpoint_dir is not None:
                    arrays, meta = last_good
                    ckpt.write_checkpoint(cfg.checkpoint_dir, self.state.epoch, arrays, {**meta, "settings": settings})
                if broken and (epoch + 1 >= cfg.epochs or stopped or getattr(self.core, "stop_training", False)):
                    raise NonFiniteError(  # no next epoch would find it: the run would return that model
                        f"A callback left non-finite weights or optimizer state at the end of epoch {epoch + 1}, the "
                        "run's last; training stopped. The model before the callbacks' on_epoch_end is in the exception's "
                        "`last_good`" + (f" and in the checkpoints of {cfg.checkpoint_dir}." if cfg.checkpoint_dir else "."),
                        last_good=self.result_from(before_callbacks, model_name),
                    )
                # the model the logs scored: before the callbacks' changes (EarlyStopping keeps those
                # of the callbacks listed before it in Keras; its logs never see any)
                self.track_best(restorers, best, epoch, {**logs, **added}, before_callbacks or last_good,
                                pruned=any(record.get("pruned_units") or []))
                epoch += 1
                if stopped or getattr(self.core, "stop_training", False):
                    stopped = True
                    break
            # As keras.Model.fit: an optimizer with `use_ema` leaves the moving averages in
            # the model at the end (checkpoints keep the raw weights and the averages, so a
            # resumed run ends the same), before `on_train_end` (EarlyStopping may restore).
            self.core.optimizer.finalize_variable_values(self.core.trainable_variables)
            # The model the run ends with (EarlyStopping's best, the cut to the target) and its
            # final checkpoint come before `on_train_end`, as in Keras, where EarlyStopping
            # restores in its own on_train_end: the callbacks after it see that model, and one
            # that raises there loses no early stop.
            self.finish(ended_with, restorers, best, stopped, callbacks, last_good, settings)
            if self.core is not model_seen:
                cb_list.set_model(self.core)
                model_seen = self.core
            cb_list.on_train_end(final_logs)  # as Keras: the last epoch's logs
        finally:
            for cb in restorers:
                cb.restore_best_weights = True
        return self.result(model_name)

    def pad_callback_columns(self, record: dict[str, Any]) -> None:
        """The history's columns of callbacks' logs (keys not `record`'s) get None for this
        epoch, until `add_callback_logs` sets what a callback logged: every column has one
        entry per epoch in every snapshot, also one taken before the callbacks ran."""
        history = self.state.history
        n = len(history.get("epoch", []))
        ours = set(record)
        for key, column in history.items():
            if key not in ours and len(column) < n:
                column.append(None)

    def add_callback_logs(self, added: dict[str, float]) -> None:
        """The logs the callbacks added this epoch join the history, as keras.Model.fit's
        History records them; a column begun later is None for the epochs before."""
        history = self.state.history
        n = len(history.get("epoch", []))
        for key, value in added.items():
            column = history.setdefault(key, [None] * n)
            column[n - 1] = value

    def finish(self, ended_with: Any, restorers: list[Any], best: dict[int, tuple[int, Any, Any, bool]], stopped: bool,
               callbacks: list[keras.callbacks.Callback], last_good: Any, settings: dict[str, Any]) -> None:
        """The model the run ends with: a finished run resumed, the model it ended with;
        EarlyStopping's restored best; the cut to the target of a run that ended before its
        deadline; and the final checkpoint saying so (`write_final`)."""
        early_stopped = stopped and any(isinstance(cb, keras.callbacks.EarlyStopping) and cb.stopped_epoch > 0
                                        for cb in callbacks)
        if ended_with is not None:
            self.data = FeatureSelection()  # training is over; that model may read more features
            self.restore(*ended_with)
        restored = False
        # As Keras, where each EarlyStopping restores its best in its on_train_end, in the
        # callbacks' order: the last one that scored decides (its best may be the last
        # epoch's model, which then stays). The last epoch's best is restored too when it
        # is the model before that epoch's prune.
        scored = [cb for cb in restorers if id(cb) in best]
        if scored:
            cb = scored[-1]
            if best[id(cb)][0] + 1 != self.state.epoch or best[id(cb)][3]:
                self.restore_best(*best[id(cb)][:2], cb.monitor, before_prune=best[id(cb)][3])
                restored = True
        cut_from = self.cut_to_target()
        if cut_from is not None:
            deadline = self.config.target_epoch
            warnings.warn(
                f"Training ended after epoch {self.state.epoch}, before the size target's deadline (the end of epoch "
                f"{deadline}), with a model of {cut_from:.1f} KB: it was cut to target_kb={self.config.target_kb:g} "
                f"({memory.floats_to_kb(self.weights()):.1f} KB) by removing the units least likely open, with no "
                "training after the cut, so expect a lower accuracy than a run that reaches its deadline. The history's "
                "last record (model_kb, active_units) is of the model before the cut."
                + (" Resume the run from checkpoint_dir to go on from that model." if self.config.checkpoint_dir
                   and not early_stopped else ""), RuntimeWarning, stacklevel=4)
        if early_stopped or restored:
            self.state.early_stopped = early_stopped
            self.write_final(last_good, restored or cut_from is not None, settings)

    def write_final(self, last: tuple[dict[str, np.ndarray], dict[str, Any]], restored: bool, settings: dict[str, Any]) -> None:
        """Writes the last epoch's checkpoint again, so that resuming a finished run trains
        nothing more and ends as it did: with `state.early_stopped` when EarlyStopping ended
        the run, and the model the run ended with (EarlyStopping's restored best, or the
        last model cut to the target) under `ENDED_WITH`. The last epoch's own model and state stay the checkpoint's: a
        resume with more `epochs` of a run that was not stopped trains on from them."""
        if self.config.checkpoint_dir is None:
            return
        arrays, meta = last
        meta = {**meta, "state": {**meta["state"], "early_stopped": self.state.early_stopped}, "settings": settings}
        if restored:
            ended_arrays, ended_meta = self.snapshot()
            arrays = {**arrays, **{ENDED_WITH + k: v for k, v in ended_arrays.items()}}
            meta["ended_with"] = {**ended_meta, "state": {**ended_meta["state"], "early_stopped": self.state.early_stopped}}
        ckpt.write_checkpoint(self.config.checkpoint_dir, meta["state"]["epoch"], arrays, meta)

    def track_best(self, restorers: list[keras.callbacks.EarlyStopping], best: dict[int, tuple[int, Any, Any, bool]],
                   epoch: int, logs: dict[str, Any], snapshot: tuple[dict[str, np.ndarray], dict[str, Any]],
                   pruned: bool = False) -> None:
        """Keeps, per `EarlyStopping(restore_best_weights=True)`, the epoch to restore:
        the callback's best epoch (only an epoch it scored: with its metric logged and
        from `start_from_epoch` on, as Keras); under `target_kb`, the best among the
        epochs whose model fits the target and was not pruned at that epoch's end (the
        logs score the model before the boundary's prune: the snapshot must be that
        model), by the callback's own comparison, `min_delta` included, so the restored
        model keeps the size guarantee. (Above the target the penalty weight rises and
        the logged `loss` with it: by `loss`, the largest early model would always be
        the best.) Without a target, the model of a pruned epoch is the one the monitored
        log describes: before the prune (`Trainer.scored`) for the losses, accuracies and
        errors (`SCORED_BEFORE_PRUNE`), after it (`snapshot`) for the sizes and the batch.
        Entries: (epoch, snapshot, value, whether it is the model before the prune)."""
        target_kb = self.config.target_kb
        fits = target_kb is None or (memory.floats_to_kb(self.weights()) <= target_kb and not pruned)
        for cb in restorers:
            value = logs.get(cb.monitor)
            # `best` None: it never scored (its log missing where it stands in the list)
            if not fits or value is None or epoch < cb.start_from_epoch or getattr(cb, "best", None) is None:
                continue
            if target_kb is None:
                if cb.best_epoch == epoch:
                    before = self.scored is not None and cb.monitor in SCORED_BEFORE_PRUNE
                    best[id(cb)] = (epoch, self.scored if before else snapshot, None, before)
                continue
            if id(cb) not in best or bool(cb._is_improvement(value, best[id(cb)][2])):
                best[id(cb)] = (epoch, snapshot, value, False)

    def restore_best(self, epoch: int, snapshot: tuple[dict[str, np.ndarray], dict[str, Any]], monitor: str,
                     before_prune: bool = False) -> None:
        """EarlyStopping(restore_best_weights=True): the model and state of the end of
        epoch `epoch` (0-based; `before_prune`: the model before that boundary's prune),
        with the whole history kept; says so when it is larger."""
        history, last_kb = self.state.history, memory.floats_to_kb(self.weights())
        self.data = FeatureSelection()  # training is over; the best model may read more features
        self.restore(*snapshot)
        self.state.history = history
        best_kb = memory.floats_to_kb(self.weights())
        if self.config.verbose:
            larger = f", larger than the last epoch's {last_kb:.1f} KB" if best_kb > last_kb else ""
            among = "" if self.config.target_kb is None else f" among the models within target_kb={self.config.target_kb:g}"
            before = " (before its prune, the model its logs scored)" if before_prune else ""
            print(f"Restored the model of the end of epoch {epoch + 1}{before}, the best by {monitor}{among}: "
                  f"{best_kb:.1f} KB{larger}.", flush=True)
