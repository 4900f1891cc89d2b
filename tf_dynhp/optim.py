"""Optimizer update of the DynHP step: Keras' own, or a fused Adam kernel when it is equivalent.

Keras 3's `Adam.update_step` is written with generic ops: about a dozen elementwise
passes over every variable per step (0.45 ms a step for the paper's gated
784-300-100-10 MLP on this 2-core CPU, about a fifth of a DynHP step at batch 100).
TensorFlow's `ResourceApplyAdam` does the same update in one kernel per variable
(0.22 ms; both timed by part 3 of `tools/benchmark_step.py`, WORKSPACE.md). Its formula is
Keras' (Kingma & Ba's "epsilon hat" form):

    alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)
    m <- beta_1 m + (1 - beta_1) g ;  v <- beta_2 v + (1 - beta_2) g^2
    w <- w - alpha m / (sqrt(v) + epsilon)

and it updates Keras' own slot variables, so checkpoints, optimizer transfer
across rebuilds and `keras.Model.fit` see the same state. It is used only when the
optimizer is a plain `keras.optimizers.Adam` on the TensorFlow backend without any
option the kernel does not do (amsgrad, weight decay, gradient clipping, EMA, loss
scaling, gradient accumulation); otherwise `optimizer.apply` runs as usual.
Variable constraints (the gate logits' clip) are applied after the update, as Keras
does. `tests/test_optim.py` checks the two paths against each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

__all__ = ["fused_adam_supported", "apply_gradients", "clone_optimizer", "uncopyable", "check_weight_decay_exclusions",
           "weight_decay_exclusions", "set_weight_decay_exclusions"]


def check_weight_decay_exclusions(optimizer: Any) -> None:
    """Refuses `exclude_from_weight_decay(var_list=...)`: it names variables by identity,
    and `fit` trains new ones (the gated layers, then every rebuild), so the exclusion
    would silently stop applying. `var_names=[...]` (matched on variable names) is kept."""
    if getattr(optimizer, "_exclude_from_weight_decay", None):
        raise ValueError(
            f"Invalid value received for argument `optimizer`: {type(optimizer).__name__} excludes variables from "
            "weight decay by identity (`exclude_from_weight_decay(var_list=...)`), but tf_dynhp.fit trains new "
            "variables (gated layers, rebuilt after every prune), which that list would not name. Expected "
            "`exclude_from_weight_decay(var_names=[...])`, e.g. var_names=['log_alpha'] for the gates, ['bias']."
        )


def clone_optimizer(optimizer: Any) -> Any:
    """A fresh, unbuilt copy of `optimizer`: its config, plus what `get_config` leaves out
    and a rebuilt model must keep, the `exclude_from_weight_decay(var_names=...)` pattern
    (AdamW and every optimizer with `weight_decay`)."""
    config = optimizer.get_config()
    rate = getattr(optimizer, "_learning_rate", None)
    if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule) or (callable(rate) and not isinstance(rate, keras.Variable)):
        # the schedule itself (stateless: called with the step), not its serialized form,
        # which from_config cannot rebuild for a class or function not registered with Keras
        config["learning_rate"] = rate
    new = type(optimizer).from_config(config)
    pattern = getattr(optimizer, "_exclude_from_weight_decay_pattern", None)
    if pattern is not None:
        new._exclude_from_weight_decay_pattern = pattern
    return new


def uncopyable(optimizer: Any, err: Exception, why: str) -> ValueError:
    """The error for an optimizer `clone_optimizer` could not copy (`err`), `why` saying
    who copies it: what failed and how to make its config rebuild it."""
    return ValueError(
        f"optimizer: {why} (type(optimizer).from_config(optimizer.get_config())), and {type(optimizer).__name__}'s "
        f"failed: {type(err).__name__}: {err}. Make its get_config return every argument of its __init__ (and register "
        "a custom class with keras.saving.register_keras_serializable)"
    )


def weight_decay_exclusions(optimizer: Any) -> str | None:
    """The `exclude_from_weight_decay(var_names=...)` pattern of `optimizer` as text (what
    a checkpoint keeps: `get_config` leaves it out), or None."""
    pattern = getattr(optimizer, "_exclude_from_weight_decay_pattern", None)
    return None if pattern is None else pattern.pattern


def set_weight_decay_exclusions(optimizer: Any, pattern: str | None) -> None:
    """Gives `optimizer` the `weight_decay_exclusions` text of another (None: nothing excluded by name)."""
    import re

    optimizer._exclude_from_weight_decay_pattern = None if pattern is None else re.compile(pattern)
    optimizer._exclude_from_weight_decay_cache = {}


def fused_adam_supported(optimizer: Any) -> bool:
    """True when `optimizer`'s update is exactly what `ResourceApplyAdam` computes."""
    return (
        keras.backend.backend() == "tensorflow"
        and type(optimizer) is keras.optimizers.Adam
        and not optimizer.amsgrad
        and optimizer.weight_decay is None
        and optimizer.clipnorm is None
        and optimizer.clipvalue is None
        and optimizer.global_clipnorm is None
        and not optimizer.use_ema
        and optimizer.loss_scale_factor is None
        and not optimizer.gradient_accumulation_steps
    )


def _handle(variable: Any) -> Any:
    value = variable.value if isinstance(variable, keras.Variable) else variable
    return value.handle


def apply_gradients(optimizer: keras.optimizers.Optimizer, grads: Sequence[Any], variables: Sequence[Any]) -> None:
    """`optimizer.apply(grads, variables)`, through one fused kernel per variable when equivalent.

    Args:
        optimizer: a built Keras optimizer.
        grads: one gradient (or None) per variable.
        variables: the variables the optimizer was built on (or a subset).
    """
    if not (fused_adam_supported(optimizer) and hasattr(optimizer, "_momentums") and hasattr(optimizer, "_velocities")):
        optimizer.apply(list(grads), list(variables))
        return
    step = tf.cast(optimizer.iterations + 1, "float32")
    learning_rate = optimizer.learning_rate
    scalars: dict[Any, dict[str, Any]] = {}  # per dtype, built once: fewer ops to trace
    for grad, variable in zip(grads, variables):
        if grad is None:
            continue
        dtype = variable.dtype
        if dtype not in scalars:
            t = tf.cast(step, dtype)
            # The moments' factors exactly in the variable's dtype (tf.cast of a Python
            # float goes through float32: 0.999 -> 0.9990000128746 in float64); the
            # bias-correction powers as Keras' Adam computes them.
            beta_1, beta_2 = tf.constant(optimizer.beta_1, dtype), tf.constant(optimizer.beta_2, dtype)
            scalars[dtype] = dict(
                beta1_power=tf.pow(tf.cast(optimizer.beta_1, dtype), t), beta2_power=tf.pow(tf.cast(optimizer.beta_2, dtype), t),
                lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2, epsilon=tf.constant(optimizer.epsilon, dtype),
            )
        index = optimizer._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable),
            m=_handle(optimizer._momentums[index]),
            v=_handle(optimizer._velocities[index]),
            grad=tf.cast(grad, dtype),
            **scalars[dtype],
        )
    for variable in variables:
        if variable.constraint is not None:
            variable.assign(variable.constraint(variable))
    optimizer.iterations.assign_add(1)
