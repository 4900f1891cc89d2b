"""Losses for `tf_dynhp.fit(loss=...)`, which trains on integer class ids.

`SparseCategoricalCrossentropy` is Keras' loss of that name with the argument Keras
gives only its one-hot twin: `label_smoothing` (Szegedy et al. 2016, "Rethinking the
Inception Architecture for Computer Vision", Sec. 7): the target puts
`1 - label_smoothing` on the true class plus `label_smoothing / C` on each of the C
classes, which keeps a small model from growing ever more confident on its training
set. Not in the paper, nor in Louizos et al. (2018).

`describe(loss)` is what a checkpoint's settings record of a loss: stable across
processes (a Keras loss' `repr` holds a memory address, which would refuse every
resume).
"""

from __future__ import annotations

import functools
import numbers
from typing import Any

import keras
import tensorflow as tf
from keras import ops

from tf_dynhp import augment

__all__ = ["SparseCategoricalCrossentropy", "describe"]


@keras.saving.register_keras_serializable(package="tf_dynhp")
class SparseCategoricalCrossentropy(keras.losses.Loss):
    """Cross-entropy of integer class ids against predicted probabilities (or logits
    with `from_logits=True`), with label smoothing.

    `fit(model, x, y, loss=tf_dynhp.losses.SparseCategoricalCrossentropy(label_smoothing=0.1))`.
    With `label_smoothing=0` it equals `keras.losses.SparseCategoricalCrossentropy`.

    Args:
        label_smoothing: in [0, 1): the share of the target spread over all classes.
        from_logits: whether `y_pred` are logits (else probabilities, e.g. a softmax output).
    """

    def __init__(self, label_smoothing: float = 0.0, from_logits: bool = False, reduction: str = "sum_over_batch_size",
                 name: str = "sparse_categorical_crossentropy", dtype: Any = None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real) or not 0 <= label_smoothing < 1:
            raise ValueError(f"`label_smoothing` must be a number in [0, 1); received {label_smoothing!r}.")
        self.label_smoothing = float(label_smoothing)
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        """Per-example losses, shape `y_pred.shape[:-1]` (labels of that shape, or with a
        trailing axis of 1, as Keras takes them). A label outside [0, classes) is an
        error, as in Keras' loss (one-hot encoding made it a row of zeros: a loss of 0)."""
        classes = ops.shape(y_pred)[-1]
        labels = ops.cast(y_true, "int32")
        if len(labels.shape) == len(y_pred.shape):  # (..., 1) labels
            labels = ops.squeeze(labels, axis=-1)
        checks = [tf.debugging.assert_non_negative(labels, message="label values must be in [0, classes)"),
                  tf.debugging.assert_less(labels, tf.cast(classes, labels.dtype), message="label values must be in [0, classes)")]
        with tf.control_dependencies(checks):
            labels = tf.identity(labels)
        target = ops.one_hot(labels, classes, dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(
            target, y_pred, from_logits=self.from_logits, label_smoothing=self.label_smoothing)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "label_smoothing": self.label_smoothing, "from_logits": self.from_logits}


def describe(loss: Any) -> Any:
    """What a checkpoint's settings record of `fit`'s `loss`: the `repr` of None or of a
    name (as checkpoints always did), a Keras loss' class and config, a
    `functools.partial`'s function and arguments, else a function's module and qualified
    name (as checkpoints always did for a named function), with a lambda's code, a
    closure's values or a callable object's attributes (`augment.describe_callable`)."""
    if loss is None or isinstance(loss, str):
        return repr(loss)
    if isinstance(loss, keras.losses.Loss):
        return {"class_name": type(loss).__qualname__, "config": loss.get_config()}
    if isinstance(loss, functools.partial):
        return augment.describe_partial(loss, describe)
    return augment.describe_callable(loss, f"{getattr(loss, '__module__', '')}.{getattr(loss, '__qualname__', type(loss).__qualname__)}")
