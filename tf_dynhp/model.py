"""`GatedModel`: the Keras model tf_dynhp trains, with its own `train_step`.

A functional model `Input(features) -> dense chain` (the head that flattens and
selects input features is done by the data pipeline) or `Input(image) -> conv chain`
(conv/pool layers, Flatten, dense part). Its training step samples per-example gates
(the test-time gates in `fit(deterministic_from=...)`'s final phase, `deterministic_gates`),
adds the expected-L0 penalty (Eq. 5), counts open gates for the activation rate of
Eq. 6 (per input of an `L0Dense`, per output channel of an `L0Conv2D`), and, when
asked, computes the exact per-example gradient variance `||S||_1` and the data loss
`F` of Eq. 8 in the same pass.
`keras.Model.fit` and `evaluate` work on it too (SP training with Keras' own loop;
`train_step`/`test_step` follow a compiled loss, compiled metrics, `sample_weight`, one-hot
labels, and for Dense chains a mixed policy's loss scaling).
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf
from keras import ops

from tf_dynhp import optim, target
from tf_dynhp.kinds import CONV_TYPES, DENSE_TYPES, GATED_TYPES, WEIGHTED_TYPES, refuse_plain_settings
from tf_dynhp.layers import L0Conv2D, L0Dense, conv2d
from tf_dynhp.variance import conv_variance_l1, dense_variance_l1

__all__ = ["GatedModel", "classifier_head"]


def _activation_name(fn: Any) -> str:
    return getattr(fn, "__name__", str(fn))


def classifier_head(body: list[keras.layers.Layer]) -> tuple[int, bool]:
    """Checks that the chain ends in a classifier and says how its outputs are read.

    The last dense layer must have a `softmax` or linear activation, optionally
    followed by `Activation("softmax")`/`Dropout` layers.

    Returns:
        `(num_classes, outputs_are_probabilities)`.

    Raises:
        ValueError: the last layers are not a classifier head.
    """
    dense = [layer for layer in body if isinstance(layer, DENSE_TYPES)]
    last = dense[-1]
    tail = body[body.index(last) + 1 :]
    names = [_activation_name(last.activation)]
    for layer in tail:
        if isinstance(layer, keras.layers.Activation):
            names.append(_activation_name(layer.activation))
        elif not isinstance(layer, keras.layers.Dropout):
            names.append(type(layer).__name__)
    bad = [n for n in names if n not in ("softmax", "linear")]
    if bad or names.count("softmax") > 1 or last.units < 2:
        raise ValueError(
            f"The last dense layer '{last.name}' must be a classifier head: units >= 2 and a "
            "'softmax' or linear (logits) activation, optionally followed by "
            f"Activation('softmax'). Received: units={last.units}, activations={names}"
        )
    return int(last.units), "softmax" in names


def _one_hot(y, outputs) -> bool:
    """True when the labels `y` are one-hot rows (as many columns as `outputs`), not ids."""
    return len(y.shape) == len(outputs.shape) and y.shape[-1] not in (None, 1)


@keras.saving.register_keras_serializable(package="tf_dynhp")
class GatedModel(keras.Model):
    """Functional dense or conv chain with the DynHP training step (see module docstring).

    Build it like a functional model, `GatedModel(inputs, outputs)`. Attributes set
    by `tf_dynhp.fit` (not serialized): `track_variance`, `loss_fn`, `gate_kernel`
    ("tf" by default, or "fused": see `L0Dense.forward`), `deterministic_gates` (the
    training step uses the test-time gates: `fit(deterministic_from=...)`).
    """

    def __init__(self, inputs: Any, outputs: Any, name: str | None = None, **kwargs: Any) -> None:
        # A functional-like signature, so that Keras serializes it as a functional model.
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)
        self.body = [layer for layer in self.layers if not isinstance(layer, keras.layers.InputLayer)]
        refuse_plain_settings(  # the step's loss is the data loss + the gates' penalty: it would drop them
            self.body, "which GatedModel's training step does not apply (its loss is the data loss plus the gates' "
            "penalty). Remove it; for an L2 penalty give the gated layers weight_decay.")
        self.num_classes, self.outputs_are_probabilities = classifier_head(self.body)
        self.track_variance = False
        self.loss_fn = None
        self.gate_kernel = "tf"
        # fit(deterministic_from=...): in its final phase the training step uses the
        # test-time gates (Eq. 4's deterministic values), no samples.
        self.deterministic_gates = False
        # fit(target_kb=...): the multiplier λ (a tf.Variable the trainer updates) and N;
        # the penalty then adds λ / N x the expected weights (`tf_dynhp.target`).
        self.size_lambda = None
        self.size_shares = None  # per-layer shares of the multiplier (tf_dynhp.target.relative_lambdas)
        self.dataset_size = None
        self._loss_tracker = keras.metrics.Mean(name="loss")
        self._accuracy_tracker = keras.metrics.Mean(name="accuracy")

    @property
    def gated_layers(self) -> list[L0Dense | L0Conv2D]:
        return [layer for layer in self.body if isinstance(layer, GATED_TYPES)]

    @property
    def dense_layers(self) -> list[keras.layers.Layer]:
        return [layer for layer in self.body if isinstance(layer, DENSE_TYPES)]

    @property
    def weighted_layers(self) -> list[keras.layers.Layer]:
        """Dense and conv layers, in order (what `train_stats`' per-layer lists follow)."""
        return [layer for layer in self.body if isinstance(layer, WEIGHTED_TYPES)]

    @property
    def metrics(self):
        """The step's trackers, then the compiled metrics (`tf_dynhp.pruning.compile_core`
        compiles `accuracy`, whose direction callbacks such as EarlyStopping look up)."""
        compiled = getattr(self, "_compile_metrics", None)
        return [self._loss_tracker, self._accuracy_tracker] + ([compiled] if compiled is not None else [])

    def forward(self, x, training: bool = True, noise: list | None = None):
        """Forward pass through the chain, keeping what the step needs.

        Args:
            x: (batch, features) or (batch, height, width, channels) inputs.
            training: per-example gate samples (True) or deterministic gates (also
                in training when `deterministic_gates` is set: fit's final phase).
            noise: optional uniforms per gated layer (tests inject them).

        Returns:
            `(outputs, logits, per_layer)`: logits are the last dense layer's
            pre-activation; per_layer lists `(inputs_to_kernel, pre_activation,
            open_count or None)` for every weighted layer (open_count: per gate,
            the examples whose sample is non-zero; for a conv layer the
            pre-activation is `conv(x) + b` before its gate).
        """
        h = x
        per_layer = []
        logits = None
        k = 0
        fixed = training and self.deterministic_gates  # the final phase: test-time gates, trained through
        for layer in self.body:
            if isinstance(layer, GATED_TYPES):
                r = layer.forward(
                    h, training=training and not fixed, noise=None if noise is None else noise[k], gate_kernel=self.gate_kernel
                )
                open_count = r.open_count
                if fixed:  # Eq. 6 counts examples: every example of the batch sees the one gate value
                    open_count = open_count * ops.cast(ops.shape(h)[0], open_count.dtype)
                per_layer.append((r.gated_inputs, r.pre_activation, open_count))
                h, logits = r.outputs, r.pre_activation
                k += 1
            elif isinstance(layer, keras.layers.Dense):
                pre = ops.matmul(h, layer.kernel)
                if layer.use_bias:
                    pre = pre + layer.bias
                per_layer.append((h, pre, None))
                h, logits = layer.activation(pre), pre
            elif isinstance(layer, keras.layers.Conv2D):
                h = ops.cast(h, layer.compute_dtype)  # float32 data into a float64 layer (conv2d does not promote)
                pre = conv2d(h, layer.kernel, layer.strides, layer.padding)
                if layer.use_bias:
                    pre = pre + layer.bias
                per_layer.append((h, pre, None))
                h, logits = layer.activation(pre), pre
            else:
                h = layer(h, training=training)
        return h, logits, per_layer

    def per_example_loss(self, y, outputs, logits):
        if self.loss_fn is not None:
            values = self.loss_fn(y, outputs)
            if len(getattr(values, "shape", ())) != 1:
                # A mean would train, but the gradient variance of Eq. 8 (per example) would be wrong.
                raise ValueError(
                    "`loss` must return one value per example, shape (batch,); it returned shape "
                    f"{tuple(getattr(values, 'shape', ()))}. Return the unreduced losses (a keras.losses.Loss "
                    "object is reduced by fit itself).")
            return values
        return ops.sparse_categorical_crossentropy(y, logits, from_logits=True)

    def penalty(self):
        """Eq. 5 of every gated layer, plus, under a size target, λ / N x the expected
        weight count across coupled axes (`tf_dynhp.target.expected_weights`)."""
        terms = [layer.penalty() for layer in self.gated_layers]
        if getattr(self, "size_lambda", None) is not None and terms:
            dtype = terms[0].dtype
            expected = ops.cast(target.expected_weights(
                self.body, getattr(self, "size_penalty", "coupled"), getattr(self, "size_shares", None)), dtype)
            terms.append(ops.cast(self.size_lambda, dtype) * expected / float(self.dataset_size))
        return ops.sum(ops.stack(terms)) if terms else 0.0

    @staticmethod
    def _data_gradients(layer, grad_of):
        """Kernel and bias gradients of the mean *data* loss: the total gradient minus
        the L0 penalty's weight-decay share (Eq. 5), which is zero when weight_decay=0."""
        g_kernel = grad_of[id(layer.kernel)]
        g_bias = grad_of[id(layer.bias)] if layer.use_bias else None
        if isinstance(layer, L0Dense) and layer.weight_decay:
            scale = layer.weight_decay / float(layer.dataset_size)
            g_kernel = g_kernel - scale * ops.expand_dims(layer.prob_open(), 1) * layer.kernel
            if g_bias is not None:
                g_bias = g_bias - scale * layer.bias
        elif isinstance(layer, L0Conv2D) and layer.weight_decay:
            # The conv penalty's decay is gated per output channel, bias included.
            scaled = (layer.weight_decay / float(layer.dataset_size)) * layer.prob_open()
            g_kernel = g_kernel - scaled * layer.kernel
            if g_bias is not None:
                g_bias = g_bias - scaled * layer.bias
        return g_kernel, g_bias

    def train_stats(self, x, y, noise: list | None = None, apply: bool = True) -> dict[str, Any]:
        """One optimizer step; returns the batch statistics the DynHP loop accumulates.

        `y` is the labels, or (labels, weights) for weighted examples: each example's
        loss is multiplied by its weight, so F and the per-example gradients of Eq. 8
        are those of the weighted loss.

        Returns:
            dict with `loss` (data loss + penalty), `data_loss` (F), `correct`,
            `count`, `variance_l1` (||S||_1 of the per-example gradients, 0 when
            `track_variance` is off) and `gate_open` (list, per gated layer, of
            the number of examples whose gate j was open: per input of an
            `L0Dense`, per output channel of an `L0Conv2D`).
        """
        weights = None
        if isinstance(y, (tuple, list)):  # (labels, weights): fit(sample_weight=... / class_weight=...)
            y, weights = y
        pre_tensors = []
        with tf.GradientTape() as tape:
            outputs, logits, per_layer = self.forward(x, training=True, noise=noise)
            pre_tensors = [pre for _, pre, _ in per_layer]
            per_example = self.per_example_loss(y, outputs, logits)
            if weights is not None:  # Keras' weighting: the mean of the weighted losses (F of Eq. 8 too)
                per_example = per_example * ops.cast(weights, per_example.dtype)
            data_loss = ops.mean(per_example)
            loss = data_loss + self.penalty()
        variables = self.trainable_variables
        targets = list(variables) + (pre_tensors if self.track_variance else [])
        grads = tape.gradient(loss, targets)
        var_grads = grads[: len(variables)]
        if apply:
            optim.apply_gradients(self.optimizer, var_grads, variables)
        batch = ops.cast(ops.shape(x)[0], x.dtype)
        variance_l1 = ops.zeros((), dtype=x.dtype)
        if self.track_variance:
            grad_of = {id(v): g for v, g in zip(variables, var_grads)}
            for (a, _, _), layer, g_pre in zip(per_layer, self.weighted_layers, grads[len(variables) :]):
                # d(mean loss)/dY = D / B, so D = B * g_pre; the mean gradients are the
                # step's own kernel/bias gradients without the penalty's share.
                g_kernel, g_bias = self._data_gradients(layer, grad_of)
                d = g_pre * ops.cast(batch, g_pre.dtype)  # in the layer's dtype (float64 models)
                if isinstance(layer, CONV_TYPES):
                    term = conv_variance_l1(a, d, layer.kernel.shape[:2], layer.strides, layer.padding, g_kernel, g_bias)
                else:
                    term = dense_variance_l1(a, d, g_kernel, g_bias)
                variance_l1 = variance_l1 + ops.cast(term, x.dtype)
        predicted = ops.argmax(logits, axis=-1)
        correct = ops.sum(ops.cast(ops.equal(ops.cast(predicted, "int64"), ops.cast(y, "int64")), x.dtype))
        gate_open = [c for _, _, c in per_layer if c is not None]
        return {
            "loss": loss,
            "data_loss": data_loss,
            "correct": correct,
            "count": batch,
            "variance_l1": variance_l1,
            "gate_open": gate_open,
            "grads": var_grads,
        }

    def _data_loss(self, y, outputs, logits, sample_weight):
        """The compiled loss (Keras' own weighting), else the per-example loss (fit's, or
        sparse cross-entropy from the logits) weighted by `sample_weight` and averaged over
        the batch, as Keras weighs it; in float32 at least (a float16 output under a
        mixed policy would round Eq. 5's penalty away)."""
        compiled_loss = getattr(self, "_compile_loss", None)
        if compiled_loss is not None:
            loss = compiled_loss(y, outputs, sample_weight)
        else:
            if self.loss_fn is None and _one_hot(y, outputs):
                per_example = ops.categorical_crossentropy(ops.cast(y, logits.dtype), logits, from_logits=True)
            else:
                per_example = self.per_example_loss(y, outputs, logits)
            if sample_weight is not None:
                per_example = per_example * ops.reshape(ops.cast(sample_weight, per_example.dtype), ops.shape(per_example))
            loss = ops.mean(per_example)
        return ops.cast(loss, "float64" if outputs.dtype == "float64" else "float32")

    def _update_metrics(self, loss, y, outputs, sample_weight):
        """The loss and accuracy trackers, then the compiled metrics, as Keras updates
        them; labels may be class ids or one-hot rows."""
        predicted = ops.cast(ops.argmax(outputs, axis=-1), "int64")
        if _one_hot(y, outputs):
            labels = ops.cast(ops.argmax(y, axis=-1), "int64")
        else:
            labels = ops.cast(ops.reshape(y, ops.shape(predicted)), "int64")
        correct = ops.cast(ops.equal(predicted, labels), "float32")
        count = ops.cast(ops.shape(correct)[0], "float32")
        self._loss_tracker.update_state(loss, sample_weight=count)
        self._accuracy_tracker.update_state(ops.mean(correct), sample_weight=count)
        compiled = getattr(self, "_compile_metrics", None)
        if compiled is not None:
            compiled.update_state(y, outputs, sample_weight)
        return self.get_metrics_result()

    def train_step(self, data):
        """`keras.Model.fit`'s step (`tf_dynhp.fit` runs `train_stats` in its own loop):
        per-example gates (test-time ones with `deterministic_gates`), the data loss (`_data_loss`: the compiled loss, else fit's or
        sparse cross-entropy, with `sample_weight` as Keras weighs it) plus Eq. 5's
        penalty; the loss scaled for a `LossScaleOptimizer` (Keras' `compile` wraps the
        optimizer in one under a mixed policy) as Keras' own step does; compiled metrics
        updated with the step's outputs."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        self._check_policy_for_keras_step()
        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            outputs, logits, _ = self.forward(x, training=True)
            data_loss = self._data_loss(y, outputs, logits, sample_weight)
            loss = data_loss + ops.cast(self.penalty(), data_loss.dtype)
            scaled = self.optimizer.scale_loss(loss)
        # Keras' own update (not tf_dynhp.fit's fused Adam): it sums the replicas' gradients
        # under a distribution strategy.
        self.optimizer.apply(tape.gradient(scaled, variables), variables)
        return self._update_metrics(loss, y, outputs, sample_weight)

    def _check_policy_for_keras_step(self) -> None:
        """The steps run `forward` outside Keras' autocast: a conv layer whose compute
        dtype is not its variables' (a mixed policy) would mix float16 inputs with float32
        kernels and gates. Refused by name; dense chains take the mixed policy."""
        for layer in self.body:
            if isinstance(layer, CONV_TYPES) and layer.compute_dtype != layer.variable_dtype:
                raise ValueError(
                    f"Layer '{layer.name}' of class {type(layer).__name__} computes in {layer.compute_dtype} on "
                    f"{layer.variable_dtype} variables (a mixed dtype policy): GatedModel's Keras step takes mixed "
                    "policies for Dense chains only. Build the convolutional model under the float32 policy."
                )

    def test_step(self, data):
        """`keras.Model.evaluate`'s step and `fit`'s validation: deterministic gates, the
        data loss as in `train_step` (no penalty: the gated layers add it in training
        calls only), the same metrics."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        self._check_policy_for_keras_step()
        outputs, logits, _ = self.forward(x, training=False)
        return self._update_metrics(self._data_loss(y, outputs, logits, sample_weight), y, outputs, sample_weight)
