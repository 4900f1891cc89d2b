"""Variable storage shared by the rebuilt models of a run: one trace of the step for every pruned shape.

Hard pruning (Sec. 4.1) rebuilds the model with smaller layers after every epoch
that pruned something. A `tf.function` captures the variables it reads, with their
shapes, so each rebuilt model would need its own trace of the train-step loop plus
TensorFlow's graph set-up at its first call: more than the issue's 10% of a 20-epoch
DynHP run on MNIST (`tools/benchmark_step.py --parts=2` times both ways side by side;
figures in WORKSPACE.md).

Here the step is traced once, on variables whose dimensions are left unknown
(`relax`); after a rebuild, every variable of the new model takes over the
*storage* (the `tf.Variable`) of the matching variable of the old one, which is
first assigned the new, smaller value (`rebind`). The traced step reads and
updates the same storage, now of the new shape: nothing is traced again, and the
memory really shrinks (assigning a smaller value replaces the buffer). The Keras
model is still rebuilt, with smaller layers (its variables have the new static
shapes); only the buffers underneath are shared.

What the traced step may use is therefore limited to what does not change with
pruning: layer types, hyper-parameters, kernel sizes. Sizes that pruning changes
(units, gates, channels) must be read from the values read from the storage
(`tf_dynhp.layers._dynamic_dim`), never from Python attributes nor from a Keras
variable's `.shape` (its static shape at trace time, which is also what `ops.shape`
of a Keras variable returns); a conv runs `tf.nn.convolution` directly
(`tf_dynhp.layers.conv2d`). `tests/test_storage.py` runs a pruned fit both ways (one trace,
and a new trace per rebuild) and requires the same result to the bit.

This reaches two private attributes of Keras 3: the `tf.Variable` a
`keras.Variable` wraps on the TensorFlow backend (`_value`; Keras' own
`_initialize` accepts a `tf.Variable` there), checked by `supported`, and the
optimizer's map from that `tf.Variable` to its slots (`reindex`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

__all__ = ["supported", "relax", "is_relaxed", "rebind", "reindex"]


def supported(variables: Sequence[Any]) -> bool:
    """True when every variable is a Keras variable over a `tf.Variable` (TensorFlow backend)."""
    return keras.backend.backend() == "tensorflow" and all(
        isinstance(v, keras.Variable) and isinstance(getattr(v, "_value", None), tf.Variable) for v in variables
    )


def is_relaxed(variable: keras.Variable) -> bool:
    """True when `variable`'s storage has no known dimension (it can take any shape of its rank)."""
    shape = variable._value.shape
    return shape.rank is not None and all(d is None for d in shape.as_list())


def relax(variables: Sequence[keras.Variable]) -> None:
    """Gives each variable a storage of unknown dimensions (same rank, dtype and value).

    Call it before tracing a function on them; already relaxed variables are left as they are.
    """
    for v in variables:
        if is_relaxed(v):
            continue
        old = v._value
        v._value = tf.Variable(
            old,
            shape=tf.TensorShape([None] * old.shape.rank),
            trainable=old.trainable,
            name=old.name.split(":")[0],
            dtype=old.dtype,
        )


def rebind(old: Sequence[keras.Variable], new: Sequence[keras.Variable], what: str = "model") -> None:
    """Moves each `new` variable onto the storage of the matching `old` one.

    The storage of `old[i]` (relaxed) is assigned `new[i]`'s value, then `new[i]`
    reads and writes that storage; its own buffer is dropped. `old[i]` must not be
    used afterwards (its static shape is stale).

    Raises:
        ValueError: the two lists do not match one to one (count, dtype or rank),
            naming `what` and the first variable at fault.
    """
    old, new = list(old), list(new)
    if len(old) != len(new):
        raise ValueError(f"Cannot share the {what}'s variable storage: the old {what} has {len(old)} variables, the new one {len(new)}.")
    for i, (o, n) in enumerate(zip(old, new)):
        if not is_relaxed(o):
            raise ValueError(f"Cannot share the storage of {what} variable {i} ({o.path}): it was not relaxed (see `relax`).")
        if o.dtype != n.dtype or len(o.shape) != len(n.shape):
            raise ValueError(
                f"Cannot share the storage of {what} variable {i}: the old one is {o.path} {o.dtype} of rank "
                f"{len(o.shape)}, the new one {n.path} {n.dtype} of rank {len(n.shape)}."
            )
    for o, n in zip(old, new):
        storage = o._value
        storage.assign(n._value)
        n._value = storage


def reindex(optimizer: keras.optimizers.Optimizer) -> None:
    """Re-keys a built optimizer's variable index on its variables' current storage.

    Keras' TensorFlow optimizer finds a variable's slots by the id of the
    `tf.Variable` under it, which `relax` and `rebind` replace; call this after them.
    """
    variables = list(optimizer._trainable_variables)
    optimizer._trainable_variables_indices = {optimizer._var_key(v): i for i, v in enumerate(variables)}
