"""Keras 3 layers: `L0Dense` (gated inputs, paper Sec. 3-4), `L0Conv2D` (gated output
channels) and `SelectFeatures`.

The two gated layers share their gate arguments, checks and math (`_HardConcreteLayer`
over `tf_dynhp.gates`); they differ in *where* the gates sit: on the inputs of a dense
layer (a closed gate removes a kernel row), on the output channels of a convolution (a
closed gate removes a filter). All three are registered under the package name ``tf_dynhp`` so that a `.keras` file
loads back once `tf_dynhp` is imported.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import keras
import numpy as np
from keras import ops
import tensorflow as tf

from tf_dynhp import fused, gates
from tf_dynhp._checks import invalid, positive_int

__all__ = ["L0Dense", "L0Conv2D", "SelectFeatures", "GatedForward"]


class GatedForward(NamedTuple):
    """Intermediate tensors of one gated forward pass, for the training step.

    Attributes:
        outputs: the layer's output.
        gated_inputs: what the kernel multiplies (A in Eq. 8's variance): for `L0Dense`
            the inputs times their per-example gates; for `L0Conv2D`, whose gates act
            on the outputs, the inputs themselves.
        pre_activation: `gated_inputs @ kernel + bias` (`L0Dense`) or `conv(inputs) + bias`
            *before* the gate (`L0Conv2D`); the gradient w.r.t. it is D.
        gate_open: 1.0 where a gate sample is non-zero (counted by Eq. 6), else 0.0;
            shape (batch, gates), (1, gates) at inference; None from the fused
            kernel, which counts without forming it.
        open_count: per gate, the number of examples whose sample is non-zero
            (gates,): the batch's share of Eq. 6's count.
    """

    outputs: Any
    gated_inputs: Any
    pre_activation: Any
    gate_open: Any
    open_count: Any


def _read(variable: Any) -> Any:
    """The tensor read from a Keras variable's storage (its shape is the storage's, see
    `_dynamic_dim`), or `variable` itself converted to a tensor."""
    return tf.convert_to_tensor(variable.value if isinstance(variable, keras.Variable) else variable)


def _dynamic_dim(variable: Any, axis: int) -> Any:
    """Size of `variable` along `axis` as the traced graph sees it.

    Not `ops.shape(variable)` (nor of `ops.convert_to_tensor(variable)`, which is the
    variable itself on the TensorFlow backend): that is the Keras variable's static
    shape at trace time, while a step traced once serves every pruned size
    (`tf_dynhp.storage`). The value read from the storage has the storage's shape.
    """
    return ops.shape(_read(variable))[axis]


def conv2d(inputs, kernel, strides: Sequence[int], padding: str):
    """`conv(inputs, kernel)`, channels_last, no dilation: `tf.nn.convolution` itself.

    Not `ops.conv`: Keras' TensorFlow conv compares the input channels with the Keras
    kernel's static shape and, when they differ (an unknown channel count, as in a step
    traced once for every pruned size, `tf_dynhp.storage`), runs the conv through XLA,
    which compiles again for every shape and rounds differently. The same op Keras runs
    otherwise, so the numbers are the same.
    """
    value = _read(kernel)
    # The kernel's spatial size never changes with pruning: keep it static, so that the
    # output's height and width are known (the conv variance of Eq. 8 needs them).
    value.set_shape(tuple(kernel.shape[:2]) + (None, None))
    return tf.nn.convolution(inputs, value, strides=tuple(strides), padding=padding.upper(), data_format="NHWC")


def _check_in(name: str, value: Any, low: float, high: float, *, closed_low: bool, closed_high: bool) -> None:
    """A real number (NumPy's included, bools and strings refused) in the interval."""
    expected = f"a float in {'[' if closed_low else '('}{low}, {high}{']' if closed_high else ')'}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise invalid(name, expected, value)
    ok_low = value >= low if closed_low else value > low
    ok_high = value <= high if closed_high else value < high
    if not (ok_low and ok_high):
        raise invalid(name, expected, value)


_positive_int = positive_int


def _int_pair(name: str, value: Any) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else value
    try:
        out = tuple(int(v) for v in pair)
        ok = len(out) == 2 and all(v >= 1 and v == w for v, w in zip(out, pair)) and not any(isinstance(v, bool) for v in pair)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a positive integer or a "
            f"tuple of 2 positive integers. Received: {name}={value!r}"
        )
    return out


class _HardConcreteLayer(keras.layers.Layer):
    """Gate arguments, checks and gate math shared by `L0Dense` and `L0Conv2D`.

    Subclasses create `self.log_alpha` (one logit per gate) with `_add_log_alpha`
    and call the gate functions of `tf_dynhp.gates` through the methods below.
    """

    def __init__(
        self,
        l0_lambda: float,
        weight_decay: float,
        droprate_init: float,
        temperature: float,
        limit_l: float,
        limit_r: float,
        dataset_size: int | None,
        seed: int | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_in("l0_lambda", l0_lambda, 0.0, float("inf"), closed_low=True, closed_high=False)
        _check_in("weight_decay", weight_decay, 0.0, float("inf"), closed_low=True, closed_high=False)
        _check_in("droprate_init", droprate_init, 0.0, 1.0, closed_low=False, closed_high=False)
        _check_in("temperature", temperature, 0.0, float("inf"), closed_low=False, closed_high=False)
        _check_in("limit_l", limit_l, float("-inf"), 0.0, closed_low=False, closed_high=False)  # finite: -inf gave NaN gates
        _check_in("limit_r", limit_r, 1.0, float("inf"), closed_low=False, closed_high=False)
        if dataset_size is not None and (isinstance(dataset_size, (bool, np.bool_)) or not isinstance(dataset_size, (int, np.integer))
                                         or dataset_size < 1):
            raise ValueError(
                "Invalid value received for argument `dataset_size`. Expected a positive "
                f"integer (the training-set size N) or None. Received: dataset_size={dataset_size!r}"
            )
        self.l0_lambda = float(l0_lambda)
        self.weight_decay = float(weight_decay)
        self.droprate_init = float(droprate_init)
        self.temperature = float(temperature)
        self.limit_l = float(limit_l)
        self.limit_r = float(limit_r)
        self.dataset_size = None if dataset_size is None else int(dataset_size)
        self.seed = seed

    def _make_seed_generator(self) -> None:
        # Called last by the subclasses' __init__: with seed=None the generator draws its
        # seed from Python's RNG, after the initializers did (the order L0Dense always had).
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    def _add_log_alpha(self, n: int):
        return self.add_weight(
            name="log_alpha",
            shape=(int(n),),
            initializer=keras.initializers.RandomNormal(
                mean=gates.log_alpha_init_mean(self.droprate_init), stddev=1e-2, seed=self.seed
            ),
            constraint=lambda w: ops.clip(w, gates.LOG_ALPHA_MIN, gates.LOG_ALPHA_MAX),
        )

    @property
    def num_gates(self) -> int:
        """Number of gates (inputs of `L0Dense`, output channels of `L0Conv2D`)."""
        return int(self.log_alpha.shape[0])

    def prob_open(self):
        """P(z_j > 0) for every gate (paper Eq. 4)."""
        return gates.prob_open(self.log_alpha, self.temperature, self.limit_l, self.limit_r)

    def deterministic_gates(self):
        """Test-time gate values, shape (num_gates,)."""
        return gates.deterministic_gates(self.log_alpha, self.limit_l, self.limit_r)

    def sample_noise(self, batch_size):
        """Uniform noise U(eps, 1 - eps) of shape (batch_size, num_gates) from the layer's seed."""
        # The gate count from the tensor, not `num_gates`: a step traced once serves
        # every pruned size (`tf_dynhp.storage`).
        return keras.random.uniform(
            (batch_size, _dynamic_dim(self.log_alpha, 0)),
            minval=gates.EPSILON,
            maxval=1.0 - gates.EPSILON,
            dtype=self.compute_dtype,
            seed=self.seed_generator,
        )

    def _gates(self, batch_size, training: bool, noise):
        """(batch, num_gates) gate samples in training, (1, num_gates) deterministic gates otherwise."""
        if training:
            if noise is None:
                noise = self.sample_noise(batch_size)
            return gates.sample_gates(noise, self.log_alpha, self.temperature, self.limit_l, self.limit_r)
        return ops.expand_dims(self.deterministic_gates(), 0)

    def _check_dataset_size(self) -> None:
        if self.dataset_size is None:
            raise ValueError(
                f"{type(self).__name__} '{self.name}': `dataset_size` (the training-set size N that scales "
                "the L0 penalty of Eq. 5) is None. Pass dataset_size=len(x_train), or train "
                "with tf_dynhp.fit, which sets it."
            )

    def _penalty_inputs(self):
        """(dtype, log_alpha, kernel, bias) for Eq. 5, in the variables' dtype: under a
        mixed policy `call` reads them as float16, where the penalty loses its digits
        (and a float16 loss cannot join Keras' float32 loss). Casts to the same dtype
        are no-ops, so float32 and float64 layers compute what they always did."""
        dtype = self.variable_dtype
        bias = ops.cast(self.bias, dtype) if self.use_bias else None
        return dtype, ops.cast(self.log_alpha, dtype), ops.cast(self.kernel, dtype), bias

    def call(self, inputs, training=None):
        result = self.forward(inputs, training=bool(training))
        if training:
            self.add_loss(self.penalty())
        return result.outputs

    def _gate_config(self) -> dict[str, Any]:
        return {
            "l0_lambda": self.l0_lambda,
            "weight_decay": self.weight_decay,
            "droprate_init": self.droprate_init,
            "temperature": self.temperature,
            "limit_l": self.limit_l,
            "limit_r": self.limit_r,
            "dataset_size": self.dataset_size,
        }


@keras.saving.register_keras_serializable(package="tf_dynhp")
class L0Dense(_HardConcreteLayer):
    """Dense layer whose *inputs* carry hard-concrete gates (Louizos et al. 2018).

    One gate per input unit: a closed gate removes a whole row of the kernel and,
    in the layer before, a whole unit, which is what hard pruning (paper Sec. 4.1)
    deletes for good.

    * ``training=True``: an independent gate sample per example,
      `z = clip(sigmoid((log u - log(1-u) + log_alpha) / T) * (r - l) + l, 0, 1)`.
    * ``training=False``: the deterministic gate
      `clip(sigmoid(log_alpha) * (r - l) + l, 0, 1)`.

    The expected-L0 penalty (paper Eq. 5, with P(z > 0) from Eq. 4) is added
    with `add_loss` in training calls, on the scale of the reference L0 code::

        (1 / N) * (sum_j P(z_j > 0) * (l0_lambda * units + 0.5 * weight_decay * ||W_j||^2)
                   + 0.5 * weight_decay * ||b||^2)

    where N is `dataset_size` (the training-set size) and `units` is the number
    of live weights that gate j controls (its kernel row). The paper's
    `l0_lambda=0.01` is read on this scale: per input gate the penalty weight is
    `0.01 * units / N`, i.e. 0.05 for the 784-300 layer of the MNIST MLP
    (300 weights, N = 60000) relative to a mean cross-entropy.

    Args:
        units: output dimension.
        activation: Keras activation (name or callable) applied after the affine map.
        use_bias: whether to add a bias.
        l0_lambda: strength of the expected-L0 penalty (lambda in Eq. 5), >= 0.
        weight_decay: L2 strength of the gated weights (reference code's prior precision).
        droprate_init: initial probability of a closed gate; `log_alpha` starts
            at `log(1 - d) - log(d)` with std 1e-2.
        temperature: hard-concrete temperature (2/3 in the reference code).
        limit_l, limit_r: stretch interval, `limit_l < 0 < 1 < limit_r`.
        dataset_size: N of Eq. 5's scale. Required for training calls.
        kernel_initializer, bias_initializer: as in `keras.layers.Dense`.
        seed: seed of the gate noise (a `keras.random.SeedGenerator`).
    """

    def __init__(
        self,
        units: int,
        activation: Any = None,
        use_bias: bool = True,
        l0_lambda: float = 0.01,
        weight_decay: float = 0.0,
        droprate_init: float = 0.5,
        temperature: float = gates.TEMPERATURE,
        limit_l: float = gates.LIMIT_L,
        limit_r: float = gates.LIMIT_R,
        dataset_size: int | None = None,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        units = _positive_int("units", units)
        super().__init__(l0_lambda, weight_decay, droprate_init, temperature, limit_l, limit_r, dataset_size, seed, **kwargs)
        self.units = units
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self._make_seed_generator()
        self.input_spec = keras.layers.InputSpec(ndim=2)  # gates per example and input: (batch, features) only

    # ----------------------------------------------------------------- weights
    def build(self, input_shape: Sequence[int | None]) -> None:
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(f"L0Dense '{self.name}': the last input dimension must be known, received shape {input_shape}")
        self.input_dim = int(input_dim)
        self.kernel = self.add_weight(
            name="kernel", shape=(self.input_dim, self.units), initializer=self.kernel_initializer
        )
        self.bias = (
            self.add_weight(name="bias", shape=(self.units,), initializer=self.bias_initializer)
            if self.use_bias
            else None
        )
        self.log_alpha = self._add_log_alpha(self.input_dim)
        self.input_spec = keras.layers.InputSpec(ndim=2, axes={-1: self.input_dim})
        self.built = True

    # ------------------------------------------------------------------- gates
    def penalty(self):
        """Expected-L0 penalty of Eq. 5 on the reference scale (see the class docstring)."""
        self._check_dataset_size()
        # `units` read from the kernel (pruning changes it; see `tf_dynhp.storage`), the
        # product in float64 as Python computed it.
        units = ops.cast(_dynamic_dim(self.kernel, 1), "float64")
        dtype, log_alpha, kernel, bias = self._penalty_inputs()
        per_row = ops.cast(self.l0_lambda * units, dtype)
        if self.weight_decay:
            per_row = per_row + 0.5 * self.weight_decay * ops.sum(ops.square(kernel), axis=1)
        total = ops.sum(gates.prob_open(log_alpha, self.temperature, self.limit_l, self.limit_r) * per_row)
        if self.weight_decay and self.use_bias:
            total = total + 0.5 * self.weight_decay * ops.sum(ops.square(bias))
        return total / float(self.dataset_size)

    # ----------------------------------------------------------------- forward
    def forward(self, inputs, training: bool = False, noise=None, gate_kernel: str = "tf") -> GatedForward:
        """Forward pass returning the intermediates the DynHP training step needs.

        Args:
            inputs: (batch, input_dim) tensor.
            training: sample per-example gates (True) or use deterministic gates.
            noise: optional uniforms (batch, input_dim) to use instead of drawing
                them (tests inject the same noise into two models); implies the
                TensorFlow-op path.
            gate_kernel: "tf" (`gates.gated_product` on `sample_noise`) or "fused"
                (`tf_dynhp.fused`: one kernel, its own counter-based noise keyed by
                this layer's seed generator; float32 only).

        Returns:
            A `GatedForward`.
        """
        # Integer inputs (a uint8 `keras.Input`) would cast the gates in [0, 1] to 0 below.
        inputs = ops.cast(inputs, self.compute_dtype)
        open_count = None
        if training and noise is None and gate_kernel == "fused":
            gated, open_count = fused.gated_product_fused(
                inputs, self.seed_generator.next(), self.log_alpha, self.temperature, self.limit_l, self.limit_r
            )
            gate_open = None
        elif training:
            if noise is None:
                noise = self.sample_noise(ops.shape(inputs)[0])
            gated, gate_open = gates.gated_product(
                inputs, noise, self.log_alpha, self.temperature, self.limit_l, self.limit_r
            )
        else:
            z = ops.cast(ops.expand_dims(self.deterministic_gates(), 0), inputs.dtype)
            gated, gate_open = inputs * z, ops.cast(z > 0, inputs.dtype)
        if open_count is None:
            open_count = ops.sum(gate_open, axis=0)
        pre = ops.matmul(gated, self.kernel)
        if self.use_bias:
            pre = pre + self.bias
        out = self.activation(pre) if self.activation is not None else pre
        return GatedForward(out, gated, pre, gate_open, open_count)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "units": self.units,
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            **self._gate_config(),
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "seed": self.seed,
        }


def _conv_output_length(length: int | None, kernel: int, stride: int, padding: str) -> int | None:
    if length is None:
        return None
    if padding == "same":
        return -(-int(length) // stride)
    return max(0, (int(length) - kernel) // stride + 1)


@keras.saving.register_keras_serializable(package="tf_dynhp")
class L0Conv2D(_HardConcreteLayer):
    """2D convolution whose *output channels* carry hard-concrete gates (Louizos et al. 2018).

    One gate per filter, applied to the pre-activation of every position of that
    channel: `outputs = activation((conv(inputs) + bias) * z)`, with `z` of shape
    (batch, 1, 1, filters). The gates are non-negative, so a relu commutes with
    them; this is the local-reparametrization conv gate of Louizos et al. A closed
    gate removes a whole filter (the last axis of the kernel, its bias, its gate)
    and, in the next layer, the matching input channel (or, after `Flatten`, the
    H x W rows it feeds; after a global pooling, its one row), which hard pruning deletes for good. The gate math is
    `tf_dynhp.gates`, as in `L0Dense`:

    * ``training=True``: an independent sample per example and channel.
    * ``training=False``: the deterministic gate.

    The expected-L0 penalty of Eq. 5, on the reference scale of `L0Dense`::

        (1 / N) * sum_c P(z_c > 0) * (l0_lambda * live_c
                                     + 0.5 * weight_decay * (||W_c||^2 + b_c^2))

    where `live_c = kernel_h * kernel_w * in_channels` is the number of weights
    gate c controls and `W_c = kernel[..., c]`. The bias of channel c sits under
    the gate too, so its decay is gated (as in the reference `L0Conv2d`); it is
    not counted in `live_c`.

    Only ``data_format="channels_last"`` is supported (the gates, the surgery and
    the flatten index mapping all read channels on the last axis); dilation and
    groups are not.

    Args:
        filters: number of output channels (>= 1).
        kernel_size: int or (height, width).
        strides: int or (height, width).
        padding: "valid" or "same".
        data_format: None (Keras' image data format, which must then be
            channels_last) or "channels_last".
        activation, use_bias, kernel_initializer, bias_initializer: as in
            `keras.layers.Conv2D`.
        l0_lambda, weight_decay, droprate_init, temperature, limit_l, limit_r,
            dataset_size, seed: as in `L0Dense`.
    """

    def __init__(
        self,
        filters: int,
        kernel_size: Any,
        strides: Any = (1, 1),
        padding: str = "valid",
        data_format: str | None = None,
        activation: Any = None,
        use_bias: bool = True,
        l0_lambda: float = 0.01,
        weight_decay: float = 0.0,
        droprate_init: float = 0.5,
        temperature: float = gates.TEMPERATURE,
        limit_l: float = gates.LIMIT_L,
        limit_r: float = gates.LIMIT_R,
        dataset_size: int | None = None,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        filters = _positive_int("filters", filters)
        kernel_size = _int_pair("kernel_size", kernel_size)
        strides = _int_pair("strides", strides)
        if not isinstance(padding, str) or padding.lower() not in ("valid", "same"):
            raise ValueError(
                "Invalid value received for argument `padding`. Expected 'valid' or 'same'. "
                f"Received: padding={padding!r}"
            )
        fmt = keras.config.image_data_format() if data_format is None else data_format
        if fmt != "channels_last":
            raise ValueError(
                "Invalid value received for argument `data_format`. Expected 'channels_last' (L0Conv2D "
                "gates, prunes and flattens channels on the last axis; channels_first is not supported). "
                f"Received: data_format={data_format!r}"
                + (f" (keras.config.image_data_format() is {fmt!r})" if data_format is None else "")
            )
        super().__init__(l0_lambda, weight_decay, droprate_init, temperature, limit_l, limit_r, dataset_size, seed, **kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.padding = padding.lower()
        self.data_format = "channels_last"
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self._make_seed_generator()
        self.input_spec = keras.layers.InputSpec(ndim=4)

    # ----------------------------------------------------------------- weights
    def build(self, input_shape: Sequence[int | None]) -> None:
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                f"L0Conv2D '{self.name}': expected inputs of shape (batch, height, width, channels) with a "
                f"known channel count, received shape {tuple(input_shape)}"
            )
        self.in_channels = int(input_shape[-1])
        self.kernel = self.add_weight(
            name="kernel", shape=self.kernel_size + (self.in_channels, self.filters), initializer=self.kernel_initializer
        )
        self.bias = (
            self.add_weight(name="bias", shape=(self.filters,), initializer=self.bias_initializer)
            if self.use_bias
            else None
        )
        self.log_alpha = self._add_log_alpha(self.filters)
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: self.in_channels})
        self.built = True

    # ------------------------------------------------------------------- gates
    def penalty(self):
        """Expected-L0 penalty of Eq. 5 on the reference scale (see the class docstring)."""
        self._check_dataset_size()
        in_channels = ops.cast(_dynamic_dim(self.kernel, 2), "float64")  # from the tensor: see L0Dense.penalty
        live = self.kernel_size[0] * self.kernel_size[1] * in_channels
        dtype, log_alpha, kernel, bias = self._penalty_inputs()
        per_channel = ops.cast(self.l0_lambda * live, dtype)
        if self.weight_decay:
            squares = ops.sum(ops.square(kernel), axis=(0, 1, 2))
            if self.use_bias:
                squares = squares + ops.square(bias)
            per_channel = per_channel + 0.5 * self.weight_decay * squares
        prob = gates.prob_open(log_alpha, self.temperature, self.limit_l, self.limit_r)
        return ops.sum(prob * per_channel) / float(self.dataset_size)

    # ----------------------------------------------------------------- forward
    def convolve(self, inputs):
        """`conv(inputs) + bias`, the pre-activation before the gate."""
        pre = conv2d(inputs, self.kernel, self.strides, self.padding)
        if self.use_bias:
            pre = pre + self.bias
        return pre

    def forward(self, inputs, training: bool = False, noise=None, gate_kernel: str = "tf") -> GatedForward:
        """Forward pass returning the intermediates the DynHP training step needs.

        Args:
            inputs: (batch, height, width, in_channels) tensor.
            training: sample per-example gates (True) or use deterministic gates.
            noise: optional uniforms (batch, filters) to use instead of drawing them.
            gate_kernel: accepted for a common signature with `L0Dense` and ignored:
                (batch, filters) channel gates are small, they always use TensorFlow ops.

        Returns:
            A `GatedForward`: `gated_inputs` are the inputs (the gates act on the
            outputs), `pre_activation` is `conv(inputs) + bias` before the gate,
            `gate_open` has shape (batch, filters).
        """
        inputs = ops.cast(inputs, self.compute_dtype)  # float32 data into a float64 layer (conv2d does not promote)
        z = ops.cast(self._gates(ops.shape(inputs)[0], training, noise), inputs.dtype)
        pre = self.convolve(inputs)
        gated = pre * ops.expand_dims(ops.expand_dims(z, 1), 1)
        out = self.activation(gated) if self.activation is not None else gated
        gate_open = ops.cast(z > 0, inputs.dtype)
        return GatedForward(out, inputs, pre, gate_open, ops.sum(gate_open, axis=0))

    def compute_output_shape(self, input_shape):
        h = _conv_output_length(input_shape[1], self.kernel_size[0], self.strides[0], self.padding)
        w = _conv_output_length(input_shape[2], self.kernel_size[1], self.strides[1], self.padding)
        return (input_shape[0], h, w, self.filters)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "data_format": self.data_format,
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            **self._gate_config(),
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package="tf_dynhp")
class SelectFeatures(keras.layers.Layer):
    """Keeps the listed features of the last axis (a gather; TFLite builtin GATHER).

    Used by `tf_dynhp.strip` to drop input features whose first-layer gate was
    pruned, inside the graph, so the stripped model still takes the original
    input shape. A `Lambda` would not load in safe mode; this layer does.

    Args:
        indices: sorted, distinct, non-negative feature indices to keep.
    """

    def __init__(self, indices: Sequence[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        idx = [int(i) for i in np.asarray(indices).reshape(-1)]
        if not idx or any(i < 0 for i in idx) or len(set(idx)) != len(idx) or idx != sorted(idx):
            raise ValueError(
                "Invalid value received for argument `indices`. Expected a non-empty "
                f"sorted list of distinct non-negative integers. Received: indices={list(indices)[:10]}"
            )
        self.indices = idx

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is not None and self.indices[-1] >= dim:
            raise ValueError(
                f"SelectFeatures '{self.name}': index {self.indices[-1]} is out of range for "
                f"an input with {dim} features"
            )
        self.built = True

    def call(self, inputs):
        # int16 indices when they fit: the exported .tflite stores half the bytes
        # (TFLite GATHER takes int16 positions).
        dtype = "int16" if self.indices[-1] < 2**15 else "int32"
        return ops.take(inputs, np.asarray(self.indices, dtype=dtype), axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (len(self.indices),)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "indices": list(self.indices)}
