"""`tf_dynhp.fit`: dense, SP, HP and DynHP training (paper Sec. 3-4).

Data flow of one run (one module per step)::

    fit (this module): check every argument, resolve names, make the core
        user model --to_l0 (convert)--> gated model --core_from (pruning)--> GatedModel core
        data (data.as_arrays): arrays or tf.data -> float32 (N, features), int32 labels
    Trainer (trainer): the epoch loop, callbacks, checkpoints
        epoch:    [augment: the epoch's images (augment.epoch_rng), kept features taken]
                  seeded order (data.epoch_order) -> compiled runner (loop): gather batch b_i
                  (and kept features), train_stats -> accumulated losses, open-gate counts
                  (Eq. 6), Eq. 8 increments (batching.growth)
        boundary: evaluate; prune (pruning.prune_plan, Eq. 7; hp/dynhp) -> rebuild core +
                  optimizer on the traced storage (storage); batch b_{i+1} = min(cap from
                  the budget (memory, Eq. 9), candidate (Eq. 8))  (batching, Eq. 10)
    end:    result.model = strip(gated model)

The methods:

* ``"dense"``: plain training of the user's Dense model (the reference).
* ``"sp"``: L0 soft pruning (Louizos et al. 2018), fixed batch; nothing removed.
* ``"hp"``: hard pruning (Sec. 4.1), fixed batch.
* ``"dynhp"``: hard pruning plus the dynamic batch size under `budget_kb` (Sec. 4.2).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import warnings
from typing import Any, Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from tf_dynhp import augment as augment_lib
from tf_dynhp import batching, fused, losses, memory, target
from tf_dynhp import checkpoint as ckpt
from tf_dynhp._checks import invalid as _invalid
from tf_dynhp._checks import positive_int as _positive_int
from tf_dynhp._checks import real_number
from tf_dynhp.chain import parse_chain
from tf_dynhp.convert import layer_lambdas, to_l0
from tf_dynhp.data import as_arrays, example_weights, fingerprint, require_some_weight, unwrap_structure
from tf_dynhp.kinds import CONV_TYPES, GATED_TYPES, PLAIN_SETTINGS
from tf_dynhp.layers import L0Dense
from tf_dynhp.model import classifier_head
from tf_dynhp.optim import check_weight_decay_exclusions, clone_optimizer, uncopyable, weight_decay_exclusions
from tf_dynhp.pruning import compile_core, core_from
from tf_dynhp.state import TrainerState
from tf_dynhp.surgery import check_prunable_optimizer, io_structure
from tf_dynhp.trainer import FitConfig, FitResult, NonFiniteError, Trainer, check_settings
from tf_dynhp.units import axis_names, unit_axes

__all__ = ["fit", "FitResult", "METHODS", "DEFAULT_ALPHA_BS", "NonFiniteError", "TIMING_KEYS", "RUNTIME_KEYS"]

METHODS = ("dense", "sp", "hp", "dynhp")
#: alpha_bs of DynHP when none is given: the paper's best on MNIST (Table 2).
DEFAULT_ALPHA_BS = 0.972
#: Layer settings that the rebuilds (to_l0, pruning, strip) do not carry over.
TIMING_KEYS = ("epoch_seconds", "rebuild_seconds", "trace_seconds")
#: Keys that describe the run's execution, not its result: timings and the trace
#: counter (TensorFlow may trace once more or less across processes). A resumed
#: or repeated run with the same seed matches an uninterrupted one on every other key.
RUNTIME_KEYS = TIMING_KEYS + ("retraces",)


# --------------------------------------------------------------------------- resolvers
#: Keras losses of one-hot labels (names, classes, functions); fit trains on integer class labels.
_ONE_HOT_LOSSES = frozenset({
    "categorical_crossentropy", "CategoricalCrossentropy", "categorical_focal_crossentropy", "CategoricalFocalCrossentropy",
    "categorical_hinge", "CategoricalHinge", "kl_divergence", "KLDivergence", "kld", "KLD",
})


def _resolve_loss(loss: Any) -> Callable | None:
    if loss is None or loss == "sparse_categorical_crossentropy":
        return None
    if isinstance(loss, str):
        name = loss
    elif isinstance(loss, keras.losses.Loss):  # Keras' own classes: a user's may share a name
        name = type(loss).__name__ if (type(loss).__module__ or "").startswith("keras") else None
    else:
        name = getattr(loss, "__name__", None) if (getattr(loss, "__module__", None) or "").startswith("keras") else None
    if name in _ONE_HOT_LOSSES:
        raise _invalid("loss", "a loss of integer class labels (fit trains on them: y holds class indices), e.g. "
                       "'sparse_categorical_crossentropy' or tf_dynhp.losses.SparseCategoricalCrossentropy", loss)
    fn = keras.losses.get(loss)
    if isinstance(fn, keras.losses.Loss):
        _check_loss_reduction(fn)
        return fn.call  # unreduced, per example
    if callable(fn):
        if isinstance(fn, functools.partial):
            _refuse_ignore_class(f"a partial of {getattr(fn.func, '__name__', fn.func)!r} with ", fn.keywords)
        return fn
    raise _invalid("loss", "None, a loss name or a callable returning per-example losses", loss)


#: Reductions of a `keras.losses.Loss` that give a batch the mean of its per-example
#: losses, as the step computes it ("none" / None: per-example values, which it averages).
_MEAN_REDUCTIONS = ("sum_over_batch_size", "mean", "none", None)


def _check_loss_reduction(fn: keras.losses.Loss) -> None:
    """A Loss object's reduction and mask are dropped by the step, which takes its
    per-example values (`Loss.call`) and averages them over the batch (Eq. 8's F is that
    mean; sample weights multiply them first). So a reduction other than the mean, and
    `ignore_class` (Keras averages over the examples not ignored), are refused by name
    rather than trained as another loss than the one given."""
    reduction = getattr(fn, "reduction", "sum_over_batch_size")
    if reduction not in _MEAN_REDUCTIONS:
        raise ValueError(
            f"`loss` is {type(fn).__name__}(reduction={reduction!r}); tf_dynhp.fit trains on the mean of the "
            "per-example losses over the batch (Eq. 8's F is that mean): use reduction='sum_over_batch_size' (Keras' "
            "default), and scale the learning rate for a sum.")
    _refuse_ignore_class(f"{type(fn).__name__}(", getattr(fn, "_fn_kwargs", None) or {}, ")")


def _refuse_ignore_class(described: str, kwargs: dict[str, Any], closing: str = "") -> None:
    """A loss masking a class (`ignore_class` in a Loss' or a partial's arguments): Keras
    averages over the examples not ignored, the step over all of them."""
    ignored = kwargs.get("ignore_class")
    if ignored is not None:
        raise ValueError(
            f"`loss` is {described}ignore_class={ignored!r}{closing}; tf_dynhp.fit averages the loss over every example of "
            "a batch and does not mask classes: drop `ignore_class`, and give those examples sample_weight 0 (or leave "
            "them out of the data).")


def _warn_compiled_settings(model: Any, given: Any, optimizer: keras.optimizers.Optimizer, loss: Any) -> None:
    """A model compiled before `fit` (a Keras habit) keeps its optimizer and loss to
    itself: `fit` trains with its own arguments. Says so when they differ and the user
    named no optimizer object (`given` a name such as the default "adam") or no loss,
    rather than train silently with another optimizer or loss than the one compiled."""
    compiled = getattr(model, "optimizer", None)

    def config(opt: keras.optimizers.Optimizer) -> tuple[str, Any]:
        return type(opt).__name__, {k: v for k, v in opt.get_config().items() if k != "name"}

    if isinstance(given, str) and isinstance(compiled, keras.optimizers.Optimizer) and config(compiled) != config(optimizer):
        warnings.warn(
            f"The model was compiled with {type(compiled).__name__} (learning rate {_rate(compiled)}); tf_dynhp.fit trains "
            f"with its own `optimizer` argument, here {type(optimizer).__name__} (learning rate {_rate(optimizer)}), not "
            "the compiled one. Pass optimizer=model.optimizer to train with it (an optimizer object chooses).",
            RuntimeWarning, stacklevel=3)
    compiled_loss = getattr(model, "loss", None)
    if compiled_loss is not None and loss is None and not _is_plain_sparse_ce(compiled_loss):
        warnings.warn(
            f"The model was compiled with loss {compiled_loss!r}; tf_dynhp.fit trains with its own `loss` argument (None: "
            "sparse categorical cross-entropy). Pass loss=... to train with another.", RuntimeWarning, stacklevel=3)


def _is_plain_sparse_ce(loss: Any) -> bool:
    """Whether a compiled loss is what `fit` trains with by default: sparse categorical
    cross-entropy (on probabilities or logits: fit takes the logits either way), without
    label smoothing or an ignored class; also one wrapped for a dict or list output."""
    if isinstance(loss, dict) and len(loss) == 1:
        loss = next(iter(loss.values()))
    elif isinstance(loss, (list, tuple)) and len(loss) == 1:
        loss = loss[0]
    if isinstance(loss, str):
        return loss == "sparse_categorical_crossentropy"
    if loss is keras.losses.sparse_categorical_crossentropy:
        return True
    if isinstance(loss, (keras.losses.SparseCategoricalCrossentropy, losses.SparseCategoricalCrossentropy)):
        return getattr(loss, "ignore_class", None) is None and not getattr(loss, "label_smoothing", 0.0)
    return False


def _rate(optimizer: keras.optimizers.Optimizer) -> str:
    rate = optimizer.get_config().get("learning_rate")
    return f"{rate:g}" if isinstance(rate, (int, float)) else "scheduled"


def _check_loss_on_labels(loss: Any, loss_fn: Callable | None, num_classes: int, dtype: str = "float32") -> None:
    """Calls the loss once, eagerly, as the step will: integer class labels (batch,) and the
    model's outputs (batch, classes) in the output layer's dtype, one value per example
    back. A loss of other labels ("mse", "binary_crossentropy", ...) failed in the compiled
    step with a graph error, or broadcast to a wrong loss; the batch is `num_classes + 1`
    so that (batch,) does not broadcast against (batch, classes)."""
    if loss_fn is None:
        return
    batch = num_classes + 1
    labels = np.arange(batch, dtype="int32") % num_classes
    outputs = np.full((batch, num_classes), 1.0 / num_classes, dtype=dtype)
    try:
        values = loss_fn(keras.ops.convert_to_tensor(labels), keras.ops.convert_to_tensor(outputs))
    except Exception as err:  # noqa: BLE001 - whatever the loss raises, it cannot train here
        raise ValueError(
            f"`loss` {loss!r} fails when called as the training step calls it: integer class labels, shape (batch,), "
            f"and the model's outputs, shape (batch, {num_classes}), {dtype} (tried with batch {batch}). fit trains "
            f"on integer labels: use a loss of them, e.g. 'sparse_categorical_crossentropy'. It raised "
            f"{type(err).__name__}: {_first_line(err)}"
        ) from None
    shape = tuple(getattr(values, "shape", ()))
    if shape != (batch,):
        raise ValueError(
            f"`loss` must return one value per example, shape (batch,); it returned shape {shape} for integer labels of "
            f"shape ({batch},) and outputs of shape ({batch}, {num_classes}). Return the unreduced losses (a "
            "keras.losses.Loss object is reduced by fit itself)."
        )


def _first_line(err: Exception) -> str:
    """An exception's first line, without TensorFlow's `{{function_node ...}}` prefix."""
    lines = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", str(err)).strip().splitlines()
    return lines[0] if lines else ""


def _resolve_optimizer(optimizer: Any, learning_rate: float) -> keras.optimizers.Optimizer:
    if isinstance(optimizer, str):
        try:
            opt = keras.optimizers.get({"class_name": optimizer, "config": {"learning_rate": learning_rate}})
        except ValueError as err:
            raise _invalid("optimizer", "a Keras optimizer or its name ('adam', 'sgd', ...)", optimizer) from err
        return opt
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        raise ValueError(
            "optimizer: a LossScaleOptimizer scales the loss for mixed precision, which tf_dynhp.fit does not "
            f"support; pass the optimizer it wraps (optimizer.inner_optimizer, a {type(optimizer.inner_optimizer).__name__})."
        )
    if isinstance(optimizer, keras.optimizers.Optimizer):
        check_weight_decay_exclusions(optimizer)
        # Always a copy: fit builds its optimizer on the gated model's variables, and the
        # user's object (often `model.optimizer`, as the compiled-settings warning advises)
        # built on them refused the user's own `model.fit` afterwards ("Unknown variable").
        try:
            return clone_optimizer(optimizer)
        except Exception as err:  # a subclass whose get_config lacks an argument of its __init__, ...
            if not optimizer.built:  # trained as given, as before copies were made (the removing methods copy it
                return optimizer     # at every prune: `surgery.check_prunable_optimizer` says why it cannot)
            raise uncopyable(optimizer, err, "fit trains a copy of a built optimizer (an unbuilt one that cannot be copied is "
                                             "trained as given), made from its config") from err
    raise _invalid("optimizer", "a Keras optimizer or its name ('adam', 'sgd', ...)", optimizer)


def _check_optimizer_for_one_trace(opt: keras.optimizers.Optimizer, method: str, trace_once: bool) -> None:
    """Refuses, for the methods that remove units with `trace_once=True`, what does not go
    through the one-trace storage (variables of a size unknown at trace time, rebound at
    every rebuild): Keras' gradient accumulators, which the rebind does not carry (a shape
    error after the first pruning), and Muon, whose Python shape checks need known shapes."""
    if method not in ("hp", "dynhp") or not trace_once:
        return
    steps = getattr(opt, "gradient_accumulation_steps", None)
    problem = None
    if steps:
        problem = f"gradient_accumulation_steps={steps}: its accumulators are not carried through the rebuilds"
    elif type(opt).__name__ == "Muon":
        problem = "Muon reads each variable's shape in Python, and the one-trace step leaves it unknown"
    if problem:
        raise ValueError(
            f"optimizer: {type(opt).__name__} with {problem} of method='{method}' with trace_once=True. Pass "
            "trace_once=False (one trace per pruned model), or another optimizer setting."
        )


def _check_environment(model: keras.Model) -> None:
    """Refuses what the compiled step does not go through: a `tf.distribute` strategy
    (the raw Adam kernel and the storage swap bypass it) and mixed precision (the step
    would need loss scaling, which it does not do)."""
    if tf.distribute.has_strategy():
        raise ValueError(
            f"tf_dynhp.fit does not run under a tf.distribute strategy (active: "
            f"{type(tf.distribute.get_strategy()).__name__}): call it outside `strategy.scope()`."
        )
    policy = keras.mixed_precision.global_policy()
    if policy.compute_dtype != policy.variable_dtype:
        raise ValueError(
            f"tf_dynhp.fit does not support mixed precision: the global dtype policy is '{policy.name}'. "
            "Call keras.mixed_precision.set_global_policy('float32') before building the model."
        )
    for layer in model.layers:
        p = layer.dtype_policy
        if p.compute_dtype != p.variable_dtype:
            raise ValueError(
                f"tf_dynhp.fit does not support mixed precision: layer '{layer.name}' has dtype policy "
                f"'{p.name}'. Build the model with a float32 (or float64) policy."
            )


def _integer_input(model: keras.Model) -> str | None:
    """The dtype of the model's input when it is an integer type (`keras.Input(dtype="uint8")`), else None."""
    dtype = str(model.inputs[0].dtype)
    return dtype if dtype.startswith(("int", "uint")) else None


def _check_integer_input_convolution(model: keras.Model, body: Sequence[keras.layers.Layer]) -> None:
    """Refuses a convolution on an integer input (`keras.Input(..., dtype="uint8")`): Keras'
    Conv2D does not take one (the user's model cannot predict either), and the stripped
    model fit returns would fail the same way; a Dense-first model casts it and is taken."""
    dtype = _integer_input(model)
    if dtype is None:
        return
    conv = next((layer for layer in body if isinstance(layer, CONV_TYPES)), None)
    if conv is not None:
        raise ValueError(
            f"Layer '{conv.name}' of class {type(conv).__name__} reads the model's {dtype} input; Keras' Conv2D "
            f"takes float inputs only (the model's own predict fails on them too). Build the model on a float "
            "keras.Input and pass the images as floats (e.g. pixels / 255)."
        )


def _check_integer_input_values(model: keras.Model, x: np.ndarray, name: str) -> None:
    """Refuses values that are not whole numbers for a model on an integer input: fit would
    train on them as given, and the model returned casts its inputs (pixels scaled to
    [0, 1] become zeros and ones), so it would not compute what was trained."""
    dtype = _integer_input(model)
    if dtype is not None and not np.all(x == np.round(x)):
        raise ValueError(
            f"`{name}` holds values that are not whole numbers (e.g. pixels scaled to [0, 1]); the model's input "
            f"is {dtype}, and the model fit returns casts its inputs to it. Pass the values as stored (e.g. uint8 "
            "pixels), or build the model on a float keras.Input."
        )


def _check_layer_settings(body: Sequence[keras.layers.Layer], prunes: bool = False) -> None:
    """Refuses what the rebuilt layers would silently lose or change: regularizers and
    constraints, a frozen layer (`trainable=False`: `fit` trains and prunes every
    weighted layer), an activation
    or initializer Keras cannot rebuild from its config (a plain Python function or lambda,
    a class not registered as serializable), and layers of different dtypes (the penalties
    of all layers are summed in one). With `prunes` (hp/dynhp: layers are rebuilt with
    fewer units), also the settings bound to the number of units, which failed at the
    first prune, an epoch's work lost: a Dropout `noise_shape` fixing its last axis, and a
    `Constant` initializer of an array. (`sp` prunes nothing, but the final `strip`
    rebuilds the layers of closed units narrower too.)"""
    dtypes = {}
    weighted = [layer for layer in body if layer.weights]
    for layer in weighted:
        dtypes.setdefault(str(layer.dtype_policy.variable_dtype), layer.name)
    if len(dtypes) > 1:
        found = ", ".join(f"{dtype} (first in layer '{name}')" for dtype, name in dtypes.items())
        raise ValueError(f"The model's weighted layers have different dtypes: {found}. tf_dynhp.fit trains them as one "
                         "(their penalties are summed): give every layer one dtype.")
    for layer in body:
        if not layer.trainable and layer.weights:
            raise ValueError(
                f"Layer '{layer.name}' is frozen (trainable=False); tf_dynhp.fit trains and prunes every layer "
                "with weights and would change it. Unfreeze it, or train the rest of the model apart."
            )
        activation = getattr(layer, "activation", None)
        cannot = (f"Layer '{layer.name}' has activation {_describe(activation)}, which Keras "
                  "cannot rebuild from the layer's config, and tf_dynhp rebuilds every layer it prunes. Use a Keras "
                  "activation, or register the function with @keras.saving.register_keras_serializable() (model.save "
                  "needs that too).")
        try:  # a partial or a NumPy ufunc fails in get_config already
            config = layer.get_config() if activation is not None or layer.weights else {}
        except Exception as err:  # noqa: BLE001 - any failure to describe the layer is the user's to mend
            said = f"Keras said: {type(err).__name__}: {_first_line(err)}"
            try:
                activation_fails = activation is not None and not keras.activations.serialize(activation)
            except Exception:  # noqa: BLE001 - the activation is what get_config cannot describe
                activation_fails = True
            if activation_fails:
                raise ValueError(f"{cannot} {said}") from None
            raise ValueError(
                f"Layer '{layer.name}' cannot give its config (get_config failed), and tf_dynhp rebuilds every layer it "
                "prunes from its config. Give it settings Keras can serialize (initializers, activations: Keras' own, or "
                f"registered with @keras.saving.register_keras_serializable()). {said}"
            ) from None
        if activation is not None and "activation" in config:
            try:  # as the rebuild reads it: the layer's config, through keras.activations.get
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # Keras' lambda warning: the error below says more
                    rebuilt = keras.activations.get(config["activation"])
            except (TypeError, ValueError) as err:
                raise ValueError(f"{cannot} Keras said: {err}") from None
            _check_same_activation(layer.name, activation, rebuilt)
        for key in ("kernel_initializer", "bias_initializer"):
            if config.get(key) is None:
                continue
            try:  # the rebuilt layer reads it from the config, as keras.initializers.get does
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    keras.initializers.get(config[key])
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"Layer '{layer.name}' has a `{key}` that Keras cannot rebuild from the layer's config, and tf_dynhp "
                    "rebuilds every layer it prunes. Use a Keras initializer, or register the class with "
                    f"@keras.saving.register_keras_serializable() (model.save needs that too). Keras said: {err}"
                ) from None
        if prunes:
            _check_unit_bound_settings(layer, classifier=layer is weighted[-1])
        for setting in PLAIN_SETTINGS:  # fit's step applies neither losses of layers nor constraints
            if getattr(layer, setting, None) is not None:
                raise ValueError(
                    f"Layer '{layer.name}' has `{setting}`={getattr(layer, setting)!r}, which tf_dynhp does not "
                    "keep when it rebuilds the model (the trained model would silently lose it). Remove it; "
                    "for an L2 penalty use fit(weight_decay=...)."
                )


def _check_unit_bound_settings(layer: keras.layers.Layer, classifier: bool = False) -> None:
    """Settings that hold only at the layer's first width; pruning rebuilds it narrower
    (the classifier keeps its units: its bias may be any array of their number, e.g. the
    log class priors)."""
    noise_shape = getattr(layer, "noise_shape", None)
    if noise_shape is not None and noise_shape[-1] not in (None, 1):
        fixed = tuple(noise_shape[:-1]) + (None,)
        raise ValueError(
            f"Layer '{layer.name}' has noise_shape={tuple(noise_shape)!r}, which fixes its last axis at "
            f"{noise_shape[-1]} units; pruning and the final strip remove units, and the rebuilt layer would fail. "
            f"Leave that axis to the input: noise_shape={fixed!r} drops the same way.")
    for key in ("kernel_initializer",) if classifier else ("kernel_initializer", "bias_initializer"):
        init = getattr(layer, key, None)
        if isinstance(init, keras.initializers.Constant) and np.size(init.value) > 1:
            raise ValueError(
                f"Layer '{layer.name}' has {key}=Constant of an array of shape {np.shape(init.value)}; pruning and the "
                "final strip rebuild the layer with fewer units, where that array no longer fits. Use a scalar "
                "Constant, or set the values after building the model (`layer.set_weights`).")


def _describe(function: Any) -> str:
    """`module.name` of a function (`numpy.tanh`, not a bare 'tanh' that reads as Keras'),
    else its repr (a partial)."""
    name = getattr(function, "__name__", None)
    if name is None:
        return repr(function)
    module = getattr(function, "__module__", None)
    return f"{module}.{name}" if module else name


def _check_same_activation(name: str, activation: Any, rebuilt: Any) -> None:
    """The activation Keras rebuilds from a layer's config must compute what the layer's
    does: config names a function by its name only, so `keras.ops.gelu` (tanh
    approximation) comes back as `keras.activations.gelu` (exact), 4e-4 apart."""
    probe = np.linspace(-4.0, 4.0, 33, dtype="float32").reshape(3, 11)
    try:
        before = keras.ops.convert_to_numpy(activation(probe))
        after = keras.ops.convert_to_numpy(rebuilt(probe))
    except Exception:  # noqa: BLE001 - not a function of one float tensor: nothing to compare here
        return
    if before.shape != after.shape or not np.allclose(before, after, rtol=1e-6, atol=1e-7):
        gap = float(np.max(np.abs(before - after))) if before.shape == after.shape else float("nan")
        raise ValueError(
            f"Layer '{name}' has activation {_describe(activation)}, which Keras rebuilds from the layer's config as "
            f"{_describe(rebuilt)}, "
            f"another function (up to {gap:.2g} apart on [-4, 4]); tf_dynhp rebuilds every layer it prunes. Use the "
            "Keras activation (e.g. activation='gelu' or keras.activations.gelu) or a registered function of your own."
        )


#: fit's own epoch logs (without "val_") whose lower values are better: what a Keras
#: monitoring callback in mode "auto" is told (Keras knows only "loss" and compiled metrics).
LOWER_IS_BETTER = ("loss", "data_loss", "error", "model_kb", "memory_kb", "memory_full_kb", "expected_kb")
#: The logs Keras' mode "auto" reads itself: "loss", and the step's compiled `accuracy`.
_KERAS_KNOWS = ("loss", "accuracy")


def _tell_monitor_direction(cb: Any) -> None:
    """A monitoring callback (EarlyStopping, ModelCheckpoint, ReduceLROnPlateau) in mode
    "auto" on one of fit's own lower-is-better logs (`val_error`, `model_kb`, ...) gets
    mode "min": Keras tells the direction only of "loss" and compiled metrics, and raised
    at the end of the first epoch, its work lost. A monitor whose direction neither knows
    is refused before any work, with Keras' advice."""
    if not (hasattr(cb, "monitor_op") and hasattr(cb, "_set_monitor_op")) or cb.monitor_op is not None:
        return
    if getattr(cb, "mode", None) != "auto" or not isinstance(getattr(cb, "monitor", None), str):
        return
    name = cb.monitor.removeprefix("val_")
    if name in LOWER_IS_BETTER and name != "loss":
        cb.mode = "min"
    elif name not in _KERAS_KNOWS:
        raise ValueError(
            f"{type(cb).__name__}(monitor={cb.monitor!r}, mode='auto'): neither Keras nor tf_dynhp knows whether "
            f"{cb.monitor!r} should rise or fall (Keras would raise at the end of the first epoch). Pass mode='min' "
            "or mode='max'. fit logs loss, accuracy, val_loss, val_accuracy, val_error, model_kb, memory_kb, "
            "batch_size, ... (see fit's `Returns`).")


def _check_callbacks(callbacks: Any, method: str) -> list[Any]:
    """`callbacks` as a list: a list or tuple of callbacks, one callback, or a Keras
    `CallbackList` (as `keras.Model.fit` takes them), each checked."""
    if isinstance(callbacks, keras.callbacks.CallbackList):
        callbacks = callbacks.callbacks
    elif isinstance(callbacks, keras.callbacks.Callback):
        callbacks = [callbacks]
    elif callbacks is not None and not isinstance(callbacks, (list, tuple)):
        raise _invalid("callbacks", "a list of keras.callbacks.Callback (or one, or a CallbackList)", callbacks)
    callbacks = list(callbacks or [])
    for cb in callbacks:
        if not isinstance(cb, keras.callbacks.Callback):
            raise TypeError(f"`callbacks` must hold keras.callbacks.Callback instances, received {type(cb).__name__}.")
        if isinstance(cb, keras.callbacks.TerminateOnNaN):
            raise ValueError(
                "TerminateOnNaN has no effect in tf_dynhp.fit: a non-finite loss or gradient is found inside the "
                "compiled steps, and `on_nonfinite` decides: 'raise' (default) stops with a NonFiniteError holding "
                "the last good model (`.last_good`), 'rollback' goes back an epoch with a smaller learning rate."
            )
        if isinstance(cb, keras.callbacks.BackupAndRestore):
            raise ValueError(
                "BackupAndRestore cannot restore a tf_dynhp run (its layer shapes, batch size and pruning "
                "state change between epochs): use fit(checkpoint_dir=..., resume=True), which checkpoints "
                "all of it atomically after every epoch."
            )
        _tell_monitor_direction(cb)
        if isinstance(cb, keras.callbacks.ModelCheckpoint) and cb.save_best_only and method in ("hp", "dynhp"):
            warnings.warn(
                f"ModelCheckpoint(save_best_only=True) with method={method!r}: it saves `callback.model` at the end of "
                "each epoch, the model after the epoch's prune, while the epoch's val_ logs it compares score the model "
                "before it (pruning removes the units whose gates were open less than `gamma`): the file kept may "
                "score a little differently than its logs. For the best model use EarlyStopping(restore_best_weights="
                "True), which restores the model its logs scored.", RuntimeWarning, stacklevel=3)
    return callbacks


def _model_signature(chain: Any) -> dict[str, Any]:
    return {
        "input_shape": list(chain.input_shape),
        "layers": [
            [type(layer).__name__, int(getattr(layer, "units", getattr(layer, "filters", 0))), str(getattr(getattr(layer, "activation", None), "__name__", ""))]
            for layer in chain.body
        ],
    }


def _check_validation_freq(validation_freq: Any) -> int | tuple[int, ...]:
    """`fit(validation_freq=...)` as Keras reads it: a positive int, or a list (any
    sequence) of positive 1-based epochs; returned as an int or a tuple."""
    def positive(v: Any) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and v >= 1

    if positive(validation_freq):
        return int(validation_freq)
    if isinstance(validation_freq, (list, tuple)) and validation_freq and all(positive(v) for v in validation_freq):
        return tuple(int(v) for v in validation_freq)
    raise _invalid("validation_freq", "a positive int (validate every N epochs) or a non-empty list of positive epochs",
                   validation_freq)


def fit(
    model: keras.Model,
    x: Any,
    y: Any = None,
    *,
    method: str | None = None,
    epochs: int = 200,
    batch_size: int | None = None,
    l0_lambda: float | Sequence[float] | dict[str, float] = 0.01,
    alpha_bs: float | None = None,
    gamma: float = 0.5,
    budget_kb: float | None = None,
    budget_on: str = "paper",
    batch_growth: str = "step_mean",
    optimizer: Any = "adam",
    learning_rate: float = 1e-3,
    loss: Any = None,
    validation_data: Any = None,
    validation_split: float = 0.0,
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
    target_kb: float | None = None,
    lambda_step: float = 0.05,
    lambda_floor: float = 0.0,
    size_penalty: str = "coupled",
    target_schedule: str = "constant",
    target_deadline: float = 0.25,
    augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
    augment_until: float = 1.0,
    sample_weight: Any = None,
    class_weight: dict[int, float] | None = None,
    shuffle: bool = True,
    deterministic_from: float | None = None,
    validation_freq: int | list[int] = 1,
) -> FitResult:
    """Trains `model` with dense, SP, HP or DynHP training and returns it stripped.

    Args:
        model: a Keras MLP (Sequential or functional chain of Flatten/Reshape,
            Dense, Dropout, Activation; `L0Dense`/`SelectFeatures` accepted) or a
            CNN (Conv2D/`L0Conv2D`, MaxPooling2D/AveragePooling2D, channels_last,
            then Flatten or GlobalAveragePooling2D/GlobalMaxPooling2D and the dense
            part; see `tf_dynhp.parse_chain`).
            It is not modified.
        x: inputs (NumPy array shaped like the model input, `{input name: array}`,
            or `[array]` as Keras takes them) or a `tf.data.Dataset` of `(features, label)`
            pairs or `(features, label, sample_weight)` triples, examples or
            batches, features also as `{input name: tensor}` (then `y` is None).
        y: integer labels.
        method: "dense", "sp" (L0 soft pruning), "hp" (hard pruning, Sec. 4.1) or
            "dynhp" (hard pruning + dynamic batch, Sec. 4.2). Default (None): "dynhp"
            when `budget_kb` is given, else "sp".
        epochs: number of epochs.
        batch_size: (initial) mini-batch size; default 16 for "dynhp" (the
            paper's), 100 otherwise.
        l0_lambda: lambda of Eq. 5, on the reference scale (see `L0Dense`): a number,
            or per layer a list (one per dense / conv layer) or a dict from layer names
            to numbers (the others 0.01), to push one layer harder. With `target_kb`: a
            number is the start of the multiplier; per layer, the largest value is its
            start and each layer's gates are pressed with the multiplier times the
            layer's ratio to the largest (the controller works on the total;
            `tf_dynhp.target.relative_lambdas`). The layers a dict does not name
            count with 0.01 there too.
        alpha_bs: smoothing parameter of Eq. 8 in [0, 1], used by "dynhp"
            (default `DEFAULT_ALPHA_BS` = 0.972, the paper's best on MNIST; 0.980 is
            its best on Fashion-MNIST).
        gamma: threshold of Eq. 7 in (0, 1); gates open less often are pruned.
        budget_kb: memory budget C of Eq. 9 in KB; required for "dynhp"; with
            "sp"/"hp" only checked (None: unconstrained).
        budget_on: "paper" (MO: weights + batch) or "full" (`memory_full_kb`).
        batch_growth: reading of Eq. 8: "step_mean" (default), "step" or "epoch"
            (see `tf_dynhp.batching`).
        optimizer: name or Keras optimizer (default Adam, as the reference L0 code).
            An optimizer object is copied from its config (its learning-rate schedule
            itself kept), so the object given, e.g. `model.optimizer`, stays unbuilt for
            the user's own `model.fit`.
        learning_rate: used when `optimizer` is a name; fixed, as in the paper.
        loss: None for sparse categorical cross-entropy on the logits (the last
            layer may be softmax or linear), or a loss giving per-example values.
        validation_data: `(x_val, y_val)` or a `tf.data.Dataset` of pairs (validation
            is unweighted: `(x, y, w)` is refused); gives
            `val_loss`/`val_error` (misclassification %, the paper's ERR).
        validation_split: without `validation_data`, the fraction of the training
            examples (the last ones, before shuffling, as `keras.Model.fit`) held out as
            validation data: what an EarlyStopping may select on without touching the
            test set.
        validation_freq: as `keras.Model.fit`: an int N validates after every N-th
            epoch (default 1: every epoch), a list the (1-based) epochs to validate
            after. The other epochs' records hold None for val_loss, val_error and
            val_accuracy, and their callback logs lack them.
        seed: makes two runs identical (sets Keras' seeds and TF op determinism)
            from the model's weights as given: they were drawn when the model was
            built, so call `keras.utils.set_random_seed` before building it for them
            to repeat too.
            None: drawn at random (recorded in `FitResult.state.seed`) and Keras'
            seeds and op determinism left as they are, so a rerun with that seed is
            close to the unseeded run but not bit-identical (weights within ~1e-7);
            for runs to repeat, pass a seed. `resume=True` goes on with the seed its
            checkpoint was made with (and seeds Keras and op determinism if that
            run was given its seed).
        verbose: 0 silent; 1 (or "auto") a Keras progress bar inside each epoch, then the
            epoch line; 2 the epoch line only, as `keras.Model.fit`.
        callbacks: Keras callbacks, called as `keras.Model.fit` calls them (`set_params`,
            `set_model` when a rebuild makes a new model, batch hooks around every
            compiled call (indices of its first and last step, as Keras), epoch logs `loss`, `accuracy`, `val_loss`, `val_accuracy`
            and ours, per-layer lists as `key_0`, `key_1`, ...). `callback.model` is the
            model trained: the core `GatedModel` (on the flattened, selected features of
            a dense-first chain, on the images of a CNN), not the user's model; a
            `ModelCheckpoint` saves that core. For files to ship, use `result.model`.
            `EarlyStopping(restore_best_weights=True)` gets the best epoch's model back
            (a snapshot, possibly larger than the last; the log says so; with
            `target_kb`, the best among the epochs whose model fits it). Data used to
            select an epoch is validation data: never pass the test set here if you
            report on it. `BackupAndRestore` is refused: use `checkpoint_dir`/`resume`.
        steps_per_execution: train steps per compiled call.
        weight_decay, droprate_init, input_droprate_init: `L0Dense` arguments.
        checkpoint_dir: folder for an atomic checkpoint after every epoch (the last
            two are kept; see `tf_dynhp.checkpoint`). Checked for writability first,
            and locked while `fit` runs: a second `fit` on it raises
            `tf_dynhp.checkpoint.FolderInUseError` before touching it.
        resume: continue from the newest valid checkpoint in `checkpoint_dir` (a
            checkpoint of other settings, model, data or validation data is refused,
            naming the setting).
            A finished run, one that reached `epochs` or that
            `keras.callbacks.EarlyStopping` ended, trains nothing when resumed and
            returns the model it ended with, a restored best included (a run that
            reached its epochs goes on to a larger `epochs`). A stop by any other
            callback is a pause: the resume trains on.
        on_nonfinite: "raise" (stop with `NonFiniteError`, whose `last_good` holds the
            model of the last good epoch) or "rollback" (restore the last good epoch and
            retry it at half the rate of the previous try, the rate a scheduler's
            `on_epoch_begin` sets included; give up after 3 failed tries in a row, the
            count starting again after a good epoch; a callback that set
            `stop_training` during the failed epoch ends the run at the last good epoch).
        gate_kernel: how `L0Dense` samples its per-example gates in training:
            "fused" (one compiled CPU kernel, `tf_dynhp.fused`; float32 models),
            "tf" (TensorFlow ops, `tf_dynhp.gates.gated_product`) or "auto" (default:
            "fused" when it builds here and the model is float32, else "tf"). The
            two draw different noise: identical seeds give identical runs with the
            same resolved kernel, recorded in `FitResult.state.gate_kernel`.
        trace_once: trace the compiled step once for all the pruned models of the run
            (default): each rebuilt model takes over the storage of the traced one's
            variables (`tf_dynhp.storage`). False traces it again after every rebuild
            (what `retraces` then counts, with the one trace of a `deterministic_from` phase); the results are the same to the bit.

        target_kb: the size the stripped model must have at most, in KB (weights +
            biases x 4 bytes / 1024, `memory.weight_count`), for "hp" and "dynhp".
            `l0_lambda` is then the start of a multiplier that rises while the model is
            above the target and decays below it (`tf_dynhp.target`; per layer, the
            largest value starts it and each layer's penalty is the multiplier times
            its value's ratio to the largest); units below
            `gamma` are removed only down to the target, lowest activation rate first.
            `result.model` is never larger: from the epoch `target_deadline` names on,
            the units with the lowest rates are removed until the model fits (a run a
            callback stops before that epoch is cut at its end, with a warning). A
            target below the smallest model pruning can leave (one unit per axis) is
            refused, naming that size; one at or above the model's size is a warning,
            and the run is plain `method` training with `l0_lambda` as Eq. 5's λ.
            History: `l0_lambda`, `expected_kb`, `target_kb` per epoch.
        lambda_step: step of the multiplier's update per epoch (see `tf_dynhp.target`).
        lambda_floor: the multiplier never falls below this (default 0: it decays
            toward 0 once the model is at the target; > 0 keeps that much L0 penalty,
            and the gates' noise, on the model at its size). λ starts at
            max(`l0_lambda`, `lambda_floor`); with per-layer values the floor bounds
            the multiplier, so layer k's gates are pressed with at least floor x its share.
        size_penalty: the differentiable size λ multiplies under a target
            (`tf_dynhp.target.expected_weights`): "coupled" (default; a unit's
            incoming and outgoing weights) or "outgoing" (Eq. 5's and Louizos et al.'s
            count: a gate weighs the weights it feeds).
        target_schedule: the size the controller aims at over the run
            (`tf_dynhp.target.scheduled_kb`): "constant" (default; `target_kb` from the
            first epoch) or "cubic" (Zhu & Gupta's gradual schedule, as tfmot's
            `PolynomialDecay`: from the model's size down to `target_kb` by the
            `target_deadline`).
        target_deadline: fraction of `epochs` (in (0, 1]) after which every epoch
            boundary forces the model to the target (default a quarter: reaching the
            size early also keeps the training memory low). One that leaves no epoch
            after it warns: the model returned would never be trained at its size.
        augment: None, or a function `augment(images, rng) -> images` called at the
            start of every augmented epoch (all of them, or the first ones with
            `augment_until`) on the whole training set (images shaped like the model's
            input: a read-only float32 NumPy array, uint8 data as 0-255 values) with
            `tf_dynhp.augment.epoch_rng(seed, epoch)`; the epoch trains on the new
            array it returns (same shape; float32 after the cast). E.g.
            `tf_dynhp.augment.RandomShift(2, flip=True)`. The images of an epoch depend
            on (seed, epoch) only: identical seeds give identical runs, and a resume
            is exact. Not in the paper. Needs image inputs (rank >= 2).
        augment_until: fraction of `epochs` (in (0, 1]) that `augment` transforms,
            from the first: the first `ceil(augment_until * epochs)` epochs train on
            `augment`'s images, the rest on the images as they are (default 1: every
            epoch). A final phase on the images as they are fits the small model to
            the undistorted images the test set holds (WORKSPACE.md, "Data
            augmentation"). Without `augment` it changes nothing. A fraction, like
            `target_deadline`: a run resumed with more `epochs` moves the switch.
        sample_weight: one weight per training example (NumPy `x`; shape (n,)), or
            None; a `tf.data.Dataset` `x` carries its weights as the third part of
            `(x, y, w)` elements instead. As `keras.Model.fit`: each example's loss is multiplied by its
            weight and a batch's loss is their mean, so Eq. 8's F and per-example
            gradient variance are those of the weighted loss; `accuracy` and the
            validation figures stay unweighted (Keras' `metrics`); with
            `validation_split` the held-out examples' weights are not used.
        class_weight: `{class id: weight}` (classes left out weigh 1.0), the same
            weighting by label; not with `sample_weight`.
        deterministic_from: None (default: the gates are sampled in every training
            step, Eq. 4), or a fraction of `epochs` in (0, 1): after the first
            `ceil(deterministic_from * epochs)` epochs the step trains with the test-time
            gates (Eq. 4's deterministic values, through which log_alpha still
            learns), a final phase without the gates' noise (issue 16's "final phase
            with deterministic gates"); Eq. 6 then counts a gate open for every
            example or none, so pruning removes only gates at 0 (and a size target
            holds: with `target_kb` the phase starts at or after `target_deadline`,
            whose forced cut ranks units by their sampled rates). The phase's first
            epoch traces the step again. Like `augment_until`, a fraction: a resume
            with more `epochs` moves it. `memory_full_kb` still counts per-example
            gates in the phase. Not with method "dense".
        shuffle: as `keras.Model.fit`: True (default) trains each epoch in a new
            order, drawn from (seed, epoch) (`tf_dynhp.data.epoch_order`); False in
            the order given, every epoch. Keras' "batch" is not supported.

    Returns:
        A `FitResult`: `.model` (stripped plain Keras model), `.history` (per-epoch
        lists: epoch, loss, data_loss (without the penalty), accuracy, val_loss, val_error,
        val_accuracy, batch_size, candidate_batch_size, with a target l0_lambda, expected_kb, target_kb,
        active_units, pruned_units, at_floor (one entry per unit axis: the inputs of
        each dense layer; for a CNN also the input channels, each conv layer's output
        channels and the flattened features, see `tf_dynhp.units.unit_axes`), model_kb, memory_kb, memory_full_kb,
        budget_kb, variance_ratio, retraces, rebuild_seconds (surgery and optimizer
        transfer), trace_seconds (tracing the step for a new model, or for a `deterministic_from` phase; epoch 1 includes the
        first trace), epoch_seconds),
        `.gated_model`, `.state`.

    Raises:
        ValueError / TypeError: for bad arguments or data, before any training.
    """
    # ---------------------------------------------------------------- arguments
    if method is None:
        method = "sp" if budget_kb is None else "dynhp"
    if method not in METHODS:
        raise _invalid("method", f"one of {list(METHODS)} or None", method)
    epochs = _positive_int("epochs", epochs)
    if batch_size is None:
        batch_size = 16 if method == "dynhp" else 100
    batch_size = _positive_int("batch_size", batch_size, 2**62)  # an int64 tensor in the traced step (start + batch)
    steps_per_execution = _positive_int("steps_per_execution", steps_per_execution, 2**31 - 1)  # an int32 step counter
    per_layer = isinstance(l0_lambda, (list, tuple, dict))
    values = list(l0_lambda.values()) if isinstance(l0_lambda, dict) else (list(l0_lambda) if per_layer else [l0_lambda])
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)) or not v >= 0 or not math.isfinite(v):
            raise _invalid("l0_lambda", "a float >= 0, or a list / dict of them per layer", l0_lambda)
    l0_lambda = {str(k): float(v) for k, v in l0_lambda.items()} if isinstance(l0_lambda, dict) else ([float(v) for v in l0_lambda] if per_layer else float(l0_lambda))
    gamma = real_number("gamma", gamma, "a float in (0, 1)", lambda v: 0.0 < v < 1.0)
    # The gate settings are checked here under fit's names (`to_l0` passes
    # input_droprate_init to the input layer as its `droprate_init`).
    weight_decay = real_number("weight_decay", weight_decay, "a float >= 0", lambda v: v >= 0)
    droprate_init = real_number("droprate_init", droprate_init, "a float in (0, 1)", lambda v: 0 < v < 1)
    input_droprate_init = real_number("input_droprate_init", input_droprate_init, "a float in (0, 1)", lambda v: 0 < v < 1)
    if budget_on not in ("paper", "full"):
        raise _invalid("budget_on", "'paper' or 'full'", budget_on)
    if batch_growth not in batching.BATCH_GROWTH_MODES:
        raise _invalid("batch_growth", f"one of {list(batching.BATCH_GROWTH_MODES)}", batch_growth)
    if budget_kb is not None:
        budget_kb = real_number("budget_kb", budget_kb, "a positive number of KB (1024 bytes) or None", lambda v: v > 0)
    learning_rate = real_number("learning_rate", learning_rate, "a positive float", lambda v: v > 0)
    if method == "dynhp":
        if alpha_bs is None:
            alpha_bs = DEFAULT_ALPHA_BS
        if budget_kb is None:
            raise ValueError(
                "method='dynhp' needs `budget_kb`, the memory budget C of Eq. 9 in KB; e.g. "
                "tf_dynhp.memory.mo_kb(model, batch_size=512) for the paper's MNIST setting."
            )
        alpha_bs = batching.check_alpha_bs(alpha_bs)
    elif alpha_bs is not None:
        alpha_bs = batching.check_alpha_bs(alpha_bs)
    if isinstance(verbose, str) and verbose == "auto":
        verbose = 1
    if isinstance(verbose, (bool, np.bool_)):  # Keras reads True / False as 1 / 0
        verbose = int(verbose)
    if not isinstance(verbose, (int, np.integer)) or verbose not in (0, 1, 2):
        raise _invalid("verbose", "0 (silent), 1 (progress bar), 2 (one line per epoch) or 'auto'", verbose)
    verbose = int(verbose)
    _check_environment(model)
    callbacks = _check_callbacks(callbacks, method)
    if gate_kernel not in fused.GATE_KERNELS:
        raise _invalid("gate_kernel", f"one of {list(fused.GATE_KERNELS)}", gate_kernel)
    validation_split = real_number("validation_split", validation_split, "a float in [0, 1)", lambda v: 0 <= v < 1)
    if target_kb is not None:
        if method not in ("hp", "dynhp"):
            raise ValueError(f"`target_kb` needs a method that removes units ('hp' or 'dynhp'); received method={method!r}.")
        target_kb = real_number("target_kb", target_kb, "a positive number of KB (1024 bytes) or None", lambda v: v > 0)
        lambda_step = real_number("lambda_step", lambda_step, "a float > 0", lambda v: v > 0)
        lambda_floor = real_number("lambda_floor", lambda_floor, "a float >= 0", lambda v: v >= 0)
        if target_schedule not in target.TARGET_SCHEDULES:
            raise _invalid("target_schedule", f"one of {list(target.TARGET_SCHEDULES)}", target_schedule)
        if size_penalty not in target.SIZE_PENALTIES:
            raise _invalid("size_penalty", f"one of {list(target.SIZE_PENALTIES)}", size_penalty)
    # Checked with or without a target, as augment_until is: a bad value fails here, naming it.
    target_deadline = real_number("target_deadline", target_deadline, "a float in (0, 1]", lambda v: 0 < v <= 1)
    if augment is not None and not callable(augment):
        raise _invalid("augment", "None or a function (images, rng) -> images, e.g. tf_dynhp.augment.RandomShift(2)", augment)
    augment_until = real_number("augment_until", augment_until, "a float in (0, 1]", lambda v: 0 < v <= 1)
    final_phase = augment is not None and augment_until < 1  # some last epochs train on the images as they are
    if not isinstance(trace_once, bool):
        raise _invalid("trace_once", "True or False", trace_once)
    if deterministic_from is not None:
        deterministic_from = real_number("deterministic_from", deterministic_from, "None or a float in (0, 1)",
                                         lambda v: 0 < v < 1)
        if method == "dense":
            raise ValueError("`deterministic_from` sets when the gates stop being sampled; method='dense' has no gates.")
    # The epochs before the phase (Trainer.gates_for_epoch); None: the gates are sampled throughout.
    deterministic_epoch = None if deterministic_from is None else augment_lib.augmented_epochs(deterministic_from, epochs)
    validation_freq = _check_validation_freq(validation_freq)
    if not isinstance(shuffle, (bool, np.bool_)):
        raise _invalid("shuffle", "True or False (Keras' 'batch' is not supported)", shuffle)
    shuffle = bool(shuffle)
    if seed is not None and (isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer))
                             or not 0 <= seed < 2**32):
        raise _invalid("seed", "None or an integer in [0, 2**32)", seed)  # 1.5 was cut to 1, -1 failed in NumPy
    if checkpoint_dir is not None and not os.fspath(checkpoint_dir):
        raise _invalid("checkpoint_dir", "None or the path of a folder", checkpoint_dir)
    loss_fn = _resolve_loss(loss)
    opt = _resolve_optimizer(optimizer, learning_rate)
    _warn_compiled_settings(model, optimizer, opt, loss)
    _check_optimizer_for_one_trace(opt, method, trace_once)
    if method in ("hp", "dynhp"):  # the methods that remove units slice the optimizer's state
        check_prunable_optimizer(opt)

    # ------------------------------------------------------------------- model
    chain = parse_chain(model)  # raises on unsupported layers before anything else
    layer_values = layer_lambdas(chain.weighted_layers, l0_lambda) if per_layer else None  # checked before any work
    _check_layer_settings(chain.body, prunes=method != "dense")  # sp too: strip rebuilds the layers narrower
    _check_integer_input_convolution(model, chain.body)
    if method == "dense" and any(isinstance(layer, GATED_TYPES) for layer in chain.body):
        raise ValueError("method='dense' trains plain Dense/Conv2D layers; this model has gated (L0Dense/L0Conv2D) layers: pass tf_dynhp.strip(model).")
    num_classes, _ = classifier_head(chain.body)
    _check_loss_on_labels(loss, loss_fn, num_classes, chain.body[-1].compute_dtype)
    if augment is not None and len(chain.input_shape) < 2:
        raise ValueError(
            f"`augment` transforms images; this model's input has shape {tuple(chain.input_shape)}. Give the "
            "model image inputs (e.g. keras.Input((28, 28)) then Flatten), or pass augment=None."
        )

    # -------------------------------------------------------------------- data
    input_name = model.inputs[0].name  # x may be {input_name: images}, as keras.Model.fit takes it
    in_form, out_form = io_structure(model)  # and [x] / [y] for keras.Model([inp], [out]), as Keras
    rank = len(chain.input_shape)  # [x] for a model on a bare tensor too, as Keras takes it (it was one example of n images)
    x, y = unwrap_structure(x, in_form, rank), unwrap_structure(y, out_form, 0)
    sample_weight = unwrap_structure(sample_weight, out_form, 0)  # Keras nests the weights as the outputs
    x_train, y_train, w_data = as_arrays(x, y, chain.input_shape, num_classes, "x", input_name, (in_form, out_form))
    _check_integer_input_values(model, x_train, "x")
    w_train = example_weights(sample_weight, class_weight, x, y_train, num_classes, w_data)
    weights_named = ("the sample weights of `x`" if w_data is not None else
                     "`sample_weight`" if sample_weight is not None else "`class_weight`")
    val = None
    if validation_data is not None:
        if isinstance(validation_data, tf.data.Dataset):
            x_val, y_val, w_val = as_arrays(validation_data, None, chain.input_shape, num_classes, "validation_data", input_name,
                                            (in_form, out_form))
            val = (x_val, y_val)
            if w_val is not None:
                raise ValueError("`validation_data` is a tf.data.Dataset of (features, label, sample_weight); fit scores "
                                 "validation unweighted (val_loss, val_accuracy count every example once): give "
                                 "(features, label) pairs, e.g. `.map(lambda x, y, w: (x, y))`.")
        elif isinstance(validation_data, (tuple, list)) and len(validation_data) == 2:
            val = as_arrays(unwrap_structure(validation_data[0], in_form, rank), unwrap_structure(validation_data[1], out_form, 0),
                            chain.input_shape, num_classes, "validation_data", input_name)[:2]
        elif isinstance(validation_data, (tuple, list)) and len(validation_data) == 3:
            raise ValueError("`validation_data` is a tuple of 3, (x_val, y_val, sample_weight_val); fit scores validation "
                             "unweighted (val_loss, val_accuracy count every example once): give (x_val, y_val).")
        else:
            raise _invalid("validation_data", "(x_val, y_val) or a tf.data.Dataset", type(validation_data).__name__)
    elif validation_split:
        n_val = int(len(x_train) * validation_split)
        if n_val < 1 or n_val >= len(x_train):
            raise ValueError(
                f"`validation_split`={validation_split} leaves {n_val} of the {len(x_train)} training examples for "
                "validation; expected at least one on each side."
            )
        # As keras.Model.fit: the last examples, before any shuffling.
        x_train, y_train, val = x_train[:-n_val], y_train[:-n_val], (x_train[-n_val:], y_train[-n_val:])
        if w_train is not None:  # the validation examples are scored unweighted (val_error counts mistakes)
            w_train = w_train[:-n_val]
            require_some_weight(w_train, weights_named, "validation_split")
    if val is not None:
        _check_integer_input_values(model, val[0], "validation_data")
    n_train = len(x_train)

    # ------------------------------------------------------------- seeds, core
    found = None  # the checkpoint a resume starts from, read once
    if seed is None and resume and checkpoint_dir is not None:
        # An unseeded run drew its seed at random: its resume goes on with that seed.
        seen = ckpt.listing(checkpoint_dir)
        found = ckpt.latest_checkpoint(checkpoint_dir)
    seeded = seed is not None
    if seed is None:
        saved = {} if found is None else found[2].get("settings", {})
        drawn = saved.get("seed")
        # A checkpoint of a run its caller seeded: go on seeded the same way (older
        # checkpoints do not say, and go on as unseeded runs, as before).
        seeded = bool(saved.get("seeded"))
        seed = int(drawn) if drawn is not None else int(np.random.SeedSequence().entropy % (2**31 - 1))
    if seeded:
        seed = int(seed)
        keras.utils.set_random_seed(seed)
        tf.config.experimental.enable_op_determinism()
    have_kb = memory.floats_to_kb(memory.weight_count(chain.weighted_layers))
    if target_kb is not None and target_kb >= have_kb:  # decided before gating: to_l0 then gets the λ given
        warnings.warn(
            f"`target_kb`={target_kb} is not below the model's size ({have_kb:.1f} KB): plain "
            f"method={method!r} training, no size target.", RuntimeWarning, stacklevel=2,
        )
        target_kb = None
    if method == "dense":
        gated = model
    else:
        gated = to_l0(  # under a target the size penalty replaces Eq. 5's λ term (tf_dynhp.target)
            model, 0.0 if target_kb is not None else l0_lambda, weight_decay=weight_decay, droprate_init=droprate_init,
            input_droprate_init=input_droprate_init, dataset_size=n_train, seed=seed,
        )
    core, features, input_shape = core_from(gated)
    lambda_start, size_shares = (l0_lambda if not per_layer else None), None  # the multiplier's start under a target
    if target_kb is not None:
        least = target.smallest_weights(core.body)
        least_kb = memory.floats_to_kb(least)
        if target_kb < least_kb:
            raise ValueError(
                f"`target_kb`={target_kb} is smaller than the smallest model hard pruning can leave of "
                f"'{getattr(model, 'name', 'model')}' (one unit per layer): {least} weights, {least_kb:.4g} KB."
            )
        if per_layer:  # each layer's share of the one multiplier (tf_dynhp.target.relative_lambdas)
            lambda_start, size_shares = target.relative_lambdas(layer_values)
        if target.deadline_epoch(target_deadline, epochs) >= epochs:
            warnings.warn(
                f"`target_deadline`={target_deadline:g} of {epochs} epochs forces the size only at the end of the "
                "last epoch: the returned model is never trained at that size, and the last epoch's logs score "
                "the model before the cut. Leave epochs after the deadline (the default is 0.25).",
                RuntimeWarning, stacklevel=2,
            )
        if deterministic_epoch is not None and deterministic_epoch < target.deadline_epoch(target_deadline, epochs):
            raise ValueError(
                f"`deterministic_from`={deterministic_from:g} starts the deterministic gates before `target_deadline`="
                f"{target_deadline:g}'s forced cut: their activation rates are all 1 there, so the cut could not rank "
                "the units. Give deterministic_from >= target_deadline.")
    if deterministic_epoch is not None and deterministic_epoch >= epochs:
        warnings.warn(
            f"`deterministic_from`={deterministic_from:g} of {epochs} epochs leaves no epoch after it: the gates are "
            "sampled in every step of this run.", RuntimeWarning, stacklevel=2)
    dense_gated = [] if method == "dense" else [layer for layer in core.gated_layers if isinstance(layer, L0Dense)]
    gate_kernel = fused.resolve_gate_kernel(gate_kernel, announce=print if verbose else None, layers=dense_gated)
    for layer in core.gated_layers:
        if layer.dataset_size is None:
            layer.dataset_size = n_train
    compile_core(core, opt)
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
        l0_lambda=max(float(lambda_start), float(lambda_floor)) if target_kb is not None else None,
        axis_names=axis_names(axes[:-1]),
    )
    if features is not None:
        state.alive[0] = [int(i) for i in features]
        state.original_inputs[0] = int(math.prod(input_shape))

    settings = {
        # per layer as resolved (`convert.layer_lambdas`): a dict and the list it means are one run
        "method": method, "batch_size": batch_size, "l0_lambda": layer_values if per_layer else l0_lambda, "alpha_bs": alpha_bs,
        "gamma": float(gamma), "budget_kb": budget_kb, "budget_on": budget_on, "batch_growth": batch_growth,
        "optimizer": {k: v for k, v in core.optimizer.get_config().items() if k != "name"}, "seed": seed, "seeded": seeded, "loss": losses.describe(loss),
        # what get_config leaves out; compared only when a checkpoint has it (trainer._WHEN_SAVED): older ones resume unchanged
        "weight_decay_exclusions": weight_decay_exclusions(core.optimizer),
        "weight_decay": float(weight_decay), "droprate_init": float(droprate_init),
        "input_droprate_init": float(input_droprate_init), "model": _model_signature(chain),
        "gate_kernel": gate_kernel,
        "target_kb": target_kb,
        "lambda_step": float(lambda_step) if target_kb is not None else None,
        # Only when set: checkpoints written before the floor existed resume unchanged.
        "lambda_floor": float(lambda_floor) if target_kb is not None and lambda_floor else None,
        "size_penalty": size_penalty if target_kb is not None and size_penalty != "coupled" else None,
        "target_schedule": target_schedule if target_kb is not None and target_schedule != "constant" else None,
        "target_deadline": float(target_deadline) if target_kb is not None else None,
        "augment": augment_lib.describe(augment),
        # Only when it shortens the augmentation: checkpoints written before it resume unchanged.
        "augment_until": augment_until if final_phase else None,
        "shuffle": False if not shuffle else None,  # only when off: checkpoints written before it resume unchanged
        "deterministic_from": deterministic_from,  # None unless set: checkpoints written before it resume unchanged
        # Hashing the data costs ~0.3 s per 60k images: only runs that checkpoint need it.
        "data": fingerprint(x_train, y_train, w_train) if checkpoint_dir is not None else None,
        # The val_ history of a resumed run must be of one validation set ("none": no
        # validation); checkpoints written before this key resume unchecked.
        "validation": (fingerprint(*val) if val is not None else "none") if checkpoint_dir is not None else None,
    }
    # Flat inputs of any width (pruning drops input features); images as they are.
    data_spec = tf.TensorSpec((None,) + (x_train.shape[1:] if chain.spatial else (None,)), tf.as_dtype(x_train.dtype))
    if on_nonfinite not in ("raise", "rollback"):
        raise _invalid("on_nonfinite", "'raise' or 'rollback'", on_nonfinite)
    if on_nonfinite == "rollback" and not hasattr(opt.learning_rate, "assign"):
        raise ValueError(
            "on_nonfinite='rollback' retries a failed epoch with half the optimizer's learning rate, but the "
            f"optimizer's learning rate is a schedule ({type(getattr(opt, '_learning_rate', None)).__name__}), which "
            "has no value to halve. Give a constant learning rate (a keras.callbacks.LearningRateScheduler may set "
            "it each epoch; the retry halves what it set), or on_nonfinite='raise'.")
    config = FitConfig(
        method=method, epochs=epochs, gamma=float(gamma), budget_kb=budget_kb, budget_on=budget_on,
        alpha_bs=alpha_bs or 0.0, batch_growth=batch_growth, steps_per_execution=steps_per_execution,
        loss_fn=loss_fn, trace_once=trace_once, on_nonfinite=on_nonfinite, verbose=verbose, checkpoint_dir=checkpoint_dir,
        target_kb=target_kb, lambda_step=float(lambda_step), lambda_floor=float(lambda_floor),
        size_penalty=size_penalty, size_shares=size_shares,
        target_schedule=target_schedule, start_kb=have_kb, target_epoch=target.deadline_epoch(target_deadline, epochs),
        augment=augment,
        augment_epochs=augment_lib.augmented_epochs(augment_until, epochs) if final_phase else None,
        input_name=model.inputs[0].name, structure=(in_form, out_form), weighted=w_train is not None, shuffle=shuffle,
        deterministic_epoch=deterministic_epoch, validation_freq=validation_freq,
    )
    run = Trainer(config, core, features, input_shape, state, data_spec)

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
    if resume and checkpoint_dir is None:
        raise ValueError("`resume=True` needs `checkpoint_dir`, the folder the checkpoints were written to.")
    lock = contextlib.nullcontext()
    first_images = None  # epoch 0's augmented images, when a check computed them before training
    if checkpoint_dir is not None:
        ckpt.probe_writable(checkpoint_dir)  # a clear error now, not after an hour
        # One writer at a time: a second fit here would remove or interleave this one's checkpoints.
        lock = ckpt.folder_lock(checkpoint_dir, f"checkpoint_dir {checkpoint_dir} is in use: another fit is writing its "
                                "checkpoints there. Wait for it to end, or choose another folder.")
    with lock:
        if checkpoint_dir is not None:
            if resume:
                if found is not None and ckpt.listing(checkpoint_dir) != seen:
                    found = None  # read before the lock, and another fit has written since: read again
                found = found or ckpt.latest_checkpoint(checkpoint_dir)
                if found is not None:
                    path, arrays, meta = found
                    shuffled = ("`x` is a tf.data.Dataset: one with `.shuffle()` holds the examples in another order at "
                                "every read; fit shuffles each epoch itself, so drop the `.shuffle()`.")
                    other_validation = ("The validation data differ from the run's: its history's val_ values would "
                                        "come from two validation sets. Pass the same validation_data or validation_split.")
                    if isinstance(validation_data, tf.data.Dataset):
                        other_validation += " A validation Dataset with `.shuffle()` holds its examples in another order at every read."
                    hints = {"validation": other_validation, **({"data": shuffled} if isinstance(x, tf.data.Dataset) else {})}
                    saved = dict(meta["settings"])
                    if isinstance(saved.get("l0_lambda"), (dict, list)):  # as given, in checkpoints before they were resolved
                        with contextlib.suppress(ValueError):  # another model's names: the comparison says so
                            saved["l0_lambda"] = layer_lambdas(chain.weighted_layers, saved["l0_lambda"])
                    check_settings(path, saved, settings, hints=hints)
                    run.restore(arrays, meta)
                    if verbose:
                        print(f"Resumed from {path} (epoch {run.state.epoch})", flush=True)
                    stateful = [type(cb).__name__ for cb in callbacks or []
                                if isinstance(cb, (keras.callbacks.ReduceLROnPlateau, keras.callbacks.EarlyStopping))]
                    if run.state.early_stopped and verbose:
                        print(f"The run in {checkpoint_dir} was ended by EarlyStopping after epoch {run.state.epoch}: "
                              "nothing to train; the result is the model it ended with.", flush=True)
                    if stateful and 0 < run.state.epoch < epochs and not run.state.early_stopped:
                        warnings.warn(
                            f"Resuming after epoch {run.state.epoch} with {', '.join(stateful)}: their own state (best "
                            "value, epochs waited) is not in the checkpoint, as with Keras' BackupAndRestore, "
                            "and a learning rate ReduceLROnPlateau sets at an epoch's end reaches the next checkpoint "
                            "only: they start afresh, so the resumed run may differ from an uninterrupted one.",
                            RuntimeWarning, stacklevel=2)
                    if run.state.epoch > epochs and not run.state.early_stopped:  # (== epochs: a finished run resumed, e.g. by a grid; nothing to say)
                        warnings.warn(
                            f"Resumed from {path} after epoch {run.state.epoch}, past epochs={epochs}: nothing to "
                            f"train; the result is the model that run ended with, with its {run.state.epoch} epochs of history.",
                            RuntimeWarning, stacklevel=2)
                elif verbose:
                    print(f"No checkpoint in {checkpoint_dir} to resume from: training from the start.", flush=True)
            elif ckpt.list_checkpoints(checkpoint_dir):
                if augment is not None:  # a broken augment fails at epoch 0: fail before removing anything
                    first_images = augment_lib.epoch_images(augment, np.asarray(x_train).reshape((-1,) + tuple(input_shape)), seed, 0)
                # A new run: checkpoints of an earlier run here must not be resumed later by mistake.
                removed = ckpt.remove_checkpoints(checkpoint_dir)
                warnings.warn(
                    f"Starting a new run in {checkpoint_dir}: removed {removed} checkpoint(s) of an earlier run "
                    "(pass resume=True to continue it instead).", RuntimeWarning, stacklevel=2,
                )
        run.gates_for_epoch(run.state.epoch)  # a resume inside fit(deterministic_from=...)'s phase: traced once, so
        run.trace()  # the first model, or the one a resume restored
        if run.state.epoch == 0:
            run.state.first_trace_seconds = run.trace_seconds  # not a retrace: Keras' fit traces once too

        # -------------------------------------------------------------- epoch loop
        run.set_data(tf.constant(x_train), tf.constant(y_train), None if w_train is None else tf.constant(w_train))
        if first_images is not None:  # epoch 0's images, computed by the check above: not computed again
            run.data.prime(0, first_images)
        return run.fit_epochs(val, callbacks, settings, getattr(model, "name", "model"))
