"""Reading a Keras model as a chain of supported layers.

tf_dynhp trains single-input, single-output chains of layers, of two kinds.

* **Dense-first** (the paper's MLPs): the *head*, everything before the first Dense
  layer that only re-arranges the input (`Flatten`, `Reshape`, `SelectFeatures`), is
  equivalent to a row-major flatten followed by an optional feature selection, so the
  training pipeline does it on the data (and hard pruning of input features shrinks
  the mini-batch); the *body* is the `Dense` / `L0Dense` layers and element-wise
  layers (`Dropout`, `Activation`) between them.
* **Convolutional** (any `Conv2D` / `L0Conv2D` or pooling layer): there is no head;
  the images are fed as they are and the body is every layer: convolutions, pooling
  (`MaxPooling2D`, `AveragePooling2D`), element-wise layers and `Reshape`, then the
  `Flatten` (optionally followed by `SelectFeatures`) that leads into the dense part,
  or a `GlobalAveragePooling2D` / `GlobalMaxPooling2D` after a convolution, which
  keeps the channel axis: the first Dense layer's rows are the last conv's channels.
  Channels are on the last axis (channels_last only). Input features are not selected.

Anything else raises a `ValueError` naming the layer and its class, before any
training starts. `io_shapes` gives a layer's per-example input and output shapes;
the unit axes between layers (what pruning can shrink) are described by
`tf_dynhp.units.unit_axes`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import keras
import numpy as np

from tf_dynhp.kinds import (
    CONV_TYPES,
    DENSE_TYPES,
    ELEMENTWISE_TYPES,
    GATED_TYPES,
    GLOBAL_POOLING_TYPES,
    HEAD_TYPES,
    INDEX_MAP_TYPES,
    POOLING_TYPES,
    SUPPORTED_LAYERS,
    WEIGHTED_TYPES,
    io_shapes,
    unsupported,
)
from tf_dynhp.layers import SelectFeatures
from tf_dynhp.units import unit_axes

__all__ = [
    "Chain",
    "parse_chain",
    "io_shapes",
    "SUPPORTED_LAYERS",
    "DENSE_TYPES",
    "CONV_TYPES",
    "WEIGHTED_TYPES",
    "GATED_TYPES",
    "ELEMENTWISE_TYPES",
    "POOLING_TYPES",
    "INDEX_MAP_TYPES",
]

@dataclasses.dataclass
class Chain:
    """A model read as `input -> flatten -> select features -> body` (dense-first) or
    `input -> body` (convolutional, `spatial=True`).

    Attributes:
        input_shape: per-example input shape of the model, e.g. (28, 28).
        features: indices (into the row-major flattened input) that the model
            reads, or None for all of them (always None for convolutional chains).
        body: the layers after the head, in order; for a convolutional chain every
            layer of the model.
        name: the model's name.
        spatial: True for a convolutional chain: the body takes the input as it is.
    """

    input_shape: tuple[int, ...]
    features: np.ndarray | None
    body: list[keras.layers.Layer]
    name: str
    spatial: bool = False

    @property
    def flat_dim(self) -> int:
        """Number of features of the flattened original input."""
        return int(math.prod(self.input_shape))

    @property
    def input_dim(self) -> int:
        """Number of input floats per example the model reads (selected features, or the whole input)."""
        return self.flat_dim if self.features is None else int(len(self.features))

    @property
    def body_input_shape(self) -> tuple[int, ...]:
        """Per-example shape of what the body receives: the input (spatial) or the selected features."""
        return tuple(self.input_shape) if self.spatial else (self.input_dim,)

    @property
    def dense_layers(self) -> list[keras.layers.Layer]:
        return [layer for layer in self.body if isinstance(layer, DENSE_TYPES)]

    @property
    def weighted_layers(self) -> list[keras.layers.Layer]:
        """Dense and conv layers, in order."""
        return [layer for layer in self.body if isinstance(layer, WEIGHTED_TYPES)]


def _ordered_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The model's layers in order, checking that they form a single chain."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"Expected a keras.Model (Sequential or functional). Received: {type(model).__name__}")
    if not isinstance(model, keras.Sequential) and not getattr(model, "inputs", None):
        raise ValueError(
            f"Model '{model.name}' is a subclassed keras.Model ({type(model).__name__}): tf_dynhp reads and rebuilds a "
            "model's layers from its graph, which a subclassed model's `call` hides. Build the same network as a "
            "keras.Sequential or a functional keras.Model (keras.Input(...) first)."
        )
    if not model.built:
        raise ValueError(
            f"Model '{model.name}' is not built: give it an input shape "
            "(keras.Input(...) as its first layer) before passing it to tf_dynhp."
        )
    inputs = getattr(model, "inputs", None) or []
    outputs = getattr(model, "outputs", None) or []
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(
            f"Model '{model.name}' has {len(inputs)} inputs and {len(outputs)} outputs; "
            f"tf_dynhp supports single-input, single-output chains. Supported layers: {SUPPORTED_LAYERS}."
        )
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    in_graph = _graph_nodes(outputs)
    previous = None
    for layer in layers:
        if isinstance(layer, keras.Model):
            raise unsupported(layer, "Nested models are not supported; flatten them into one model.")
        nodes = in_graph.get(id(layer), [])
        if len(nodes) != 1 or any(_shapes(n) != _shapes(nodes[0]) for n in layer._inbound_nodes):
            # (a Sequential loaded from a file holds its layers' earlier builds too: calls of
            # the same shapes outside its graph, which are no sharing)
            raise unsupported(layer, f"It is called {len(layer._inbound_nodes)} times (shared layers are not supported).")
        tensors = nodes[0].input_tensors
        if len(tensors) != 1:
            raise unsupported(layer, f"It takes {len(tensors)} inputs (branches are not supported).")
        source = tensors[0]._keras_history.operation
        expected = previous
        if expected is None:
            if not isinstance(source, keras.layers.InputLayer):
                raise unsupported(layer, "The model is not a chain.")
        elif source is not expected:
            raise unsupported(layer, f"It reads '{source.name}', not the layer before it (branches are not supported).")
        previous = layer
    if previous is not None and previous.output is not outputs[0]:
        raise ValueError(f"Model '{model.name}': the output is not produced by its last layer; not a chain.")
    return layers


def _graph_nodes(outputs: list[Any]) -> dict[int, list[Any]]:
    """The calls (nodes) of each layer that the graph ending at `outputs` is made of, by
    the layer's id: walked back from the outputs, so a layer's calls in another graph, or
    in an earlier build of the same model, are not counted."""
    found: dict[int, list[Any]] = {}
    seen: set[int] = set()
    stack = list(outputs)
    while stack:
        history = stack.pop()._keras_history
        node = history.operation._inbound_nodes[history.node_index]
        if id(node) in seen:
            continue
        seen.add(id(node))
        found.setdefault(id(history.operation), []).append(node)
        stack.extend(node.input_tensors)
    return found


def _shapes(node: Any) -> tuple[Any, Any]:
    return [tuple(t.shape) for t in node.input_tensors], [tuple(t.shape) for t in node.output_tensors]


def parse_chain(model: keras.Model) -> Chain:
    """Reads `model` as a `Chain`, or raises a `ValueError` naming the offending layer.

    Args:
        model: a built Sequential or functional Keras model.

    Returns:
        The `Chain` (referencing the model's own layers).

    Raises:
        ValueError: unsupported layer, branch, several inputs, an input dimension
            other than the batch unknown, a Dense layer on a non-flat input, a
            convolution or pooling after the dense part, a global pooling before any
            convolution, a channels_first / dilated / grouped convolution, or no Dense
            layer at all.
        TypeError: `model` is not a Keras model.
    """
    layers = _ordered_layers(model)
    if any(d is None for d in model.inputs[0].shape[1:]):  # before the ints below (a variable-size CNN input)
        raise ValueError(f"Model '{model.name}': every input dimension but the batch must be known, received {model.inputs[0].shape}")
    input_shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    _check_no_lora(layers)
    _check_exact_classes(layers)
    _check_flatten_order(layers)
    _check_hidden_activations(layers)
    if any(isinstance(layer, CONV_TYPES + POOLING_TYPES) for layer in layers):
        return _parse_spatial(model, layers, input_shape)
    features: np.ndarray | None = None
    body: list[keras.layers.Layer] = []
    seen_dense = False
    for layer in layers:
        if isinstance(layer, DENSE_TYPES):
            _check_flat_dense(layer)
            seen_dense = True
            body.append(layer)
        elif isinstance(layer, ELEMENTWISE_TYPES):
            if not seen_dense:
                _check_flat_elementwise(layer)
            body.append(layer)
        elif isinstance(layer, HEAD_TYPES) and not seen_dense:
            if isinstance(layer, SelectFeatures):
                _check_flat_select(layer)
                idx = np.asarray(layer.indices, dtype=np.int64)
                features = idx if features is None else features[idx]
        elif isinstance(layer, HEAD_TYPES):
            raise unsupported(layer, "Flatten/Reshape/SelectFeatures are supported only before the first Dense layer.")
        else:
            raise unsupported(layer)
    if not seen_dense:
        raise ValueError(f"Model '{model.name}' has no Dense layer: nothing for tf_dynhp to train or prune.")
    return Chain(input_shape=input_shape, features=features, body=body, name=model.name)


def _check_flat_dense(layer: keras.layers.Layer) -> None:
    in_shape = layer._inbound_nodes[0].input_tensors[0].shape
    if len(in_shape) != 2:
        raise unsupported(
            layer,
            f"It receives inputs of shape {tuple(in_shape)}; Dense layers must act on flat "
            "(batch, features) inputs: add a Flatten layer before it.",
        )


def _check_flat_elementwise(layer: keras.layers.Layer) -> None:
    """An element-wise layer before the first Dense of a Dense-first model gets the flat
    rows the pipeline feeds (the head is applied to the data): one whose work depends on
    the input's shape (SpatialDropout, a Dropout `noise_shape`) cannot run on them."""
    shape = tuple(layer._inbound_nodes[0].input_tensors[0].shape)
    if len(shape) == 2:
        return
    if type(layer) is not keras.layers.Activation and not (type(layer) is keras.layers.Dropout and layer.noise_shape is None):
        why = f"noise_shape={tuple(layer.noise_shape)}" if getattr(layer, "noise_shape", None) is not None else f"a {type(layer).__name__}"
        raise unsupported(
            layer,
            f"It acts on inputs of shape {shape} with {why}, which depends on that shape, but before the first Dense "
            "layer tf_dynhp feeds the layers flat (batch, features) rows (the Flatten is applied to the data). "
            "Move it after the Flatten, or use Dropout without noise_shape.",
        )


def _check_exact_classes(layers: list[keras.layers.Layer]) -> None:
    """No subclass of a weighted layer: surgery rebuilds Dense / Conv2D layers as the
    plain class (keeping the config and weights), which would drop what the subclass
    changes (its `call`). tf_dynhp's own gated layers are their own classes."""
    exact = (keras.layers.Dense, keras.layers.Conv2D) + GATED_TYPES
    for layer in layers:
        if isinstance(layer, WEIGHTED_TYPES) and type(layer) not in exact:
            base = next(c.__name__ for c in exact if isinstance(layer, c))
            raise unsupported(
                layer,
                f"It is a subclass of {base}: tf_dynhp rebuilds every {base} as a plain {base} when it prunes and "
                "strips, which would drop what the subclass changes. Use the plain layer (with an Activation layer "
                "after it for another function of its outputs).",
            )
        quantized = getattr(getattr(layer, "dtype_policy", None), "quantization_mode", None)
        if quantized:
            raise unsupported(
                layer,
                f"It is quantized (quantization_mode={quantized!r}): tf_dynhp trains and rebuilds float kernels and "
                "would read the quantized values as floats. Train and prune the float model, then quantize it "
                "(tf_dynhp.export.to_tflite(quantization=...) or model.quantize(...)).",
            )


def _check_flatten_order(layers: list[keras.layers.Layer]) -> None:
    """Flatten in row-major (channels_last) order only: pruning maps every flattened
    unit to the channel and position it copies in that order, and the Dense-first
    pipeline flattens the data so."""
    for layer in layers:
        if isinstance(layer, keras.layers.Flatten) and layer.data_format != "channels_last":
            shape = tuple(layer._inbound_nodes[0].input_tensors[0].shape)
            # Keras moves axis 1 last: nothing moves for (batch, features), or when axis 1 or
            # all the axes after it hold one value
            if len(shape) >= 3 and shape[1] != 1 and math.prod(shape[2:]) != 1:
                raise unsupported(
                    layer,
                    f"It has data_format={layer.data_format!r} (set by the layer or by keras.config."
                    "image_data_format()), which flattens its inputs of shape "
                    f"{shape} channel axis first; tf_dynhp reads flattened units in row-major order. Use "
                    "Flatten(data_format='channels_last').",
                )


def _check_flat_select(layer: keras.layers.Layer) -> None:
    if len(layer._inbound_nodes[0].input_tensors[0].shape) != 2:
        raise unsupported(layer, "SelectFeatures must act on flat (batch, features) inputs.")


def _elementwise(activation: Any) -> bool:
    """Whether `activation` acts on every unit alone (relu, tanh, ...), not across units
    (softmax, log_softmax): a row of values through it at once must equal each value
    through it alone."""
    row = np.array([[-1.5, 0.25, 2.0]], dtype="float32")
    together = np.asarray(keras.ops.convert_to_numpy(activation(keras.ops.convert_to_tensor(row))))
    alone = np.concatenate([np.asarray(keras.ops.convert_to_numpy(activation(keras.ops.convert_to_tensor(row[:, i : i + 1]))))
                            for i in range(row.shape[1])], axis=1)
    return together.shape == alone.shape and bool(np.allclose(together, alone, rtol=1e-5, atol=1e-6))


def _check_no_lora(layers: list[keras.layers.Layer]) -> None:
    """No LoRA adapter: every rebuilt layer takes the base kernel."""
    for layer in layers:
        if getattr(layer, "lora_enabled", False):  # `chain` reads the base kernel: the model's function would change
            raise unsupported(
                layer,
                f"It has a LoRA adapter (lora_rank={getattr(layer, 'lora_rank', None)}); tf_dynhp rebuilds every layer "
                "from its base kernel and would lose the adapter. Merge it into the kernel first (a layer of the same "
                "config without LoRA, with `kernel` = the LoRA layer's `kernel`), or fine-tune with LoRA after pruning.",
            )


def _check_hidden_activations(layers: list[keras.layers.Layer]) -> None:
    """Before the last Dense layer (the output layer, whose softmax is the usual head) every
    activation must act on each unit alone: pruning removes units, and a softmax over the
    units of a hidden layer would give the survivors other values once some are gone."""
    last = max((i for i, layer in enumerate(layers) if isinstance(layer, DENSE_TYPES)), default=-1)
    for layer in layers[:last]:
        activation = getattr(layer, "activation", None)
        try:
            mixes = activation is not None and not _elementwise(activation)
        except Exception as err:  # e.g. "glu", which halves the units
            name = getattr(activation, "__name__", str(activation))
            raise unsupported(
                layer,
                f"Its activation '{name}' fails on a row of 3 units ({type(err).__name__}: {err}): hidden activations "
                "must act on each unit alone (relu, tanh, gelu, ...), since pruning removes units.",
            ) from err
        if isinstance(layer, keras.layers.Softmax) or mixes:
            name = "softmax" if isinstance(layer, keras.layers.Softmax) else getattr(activation, "__name__", str(activation))
            raise unsupported(
                layer,
                f"Its activation '{name}' mixes the units of the layer (not element-wise): pruning removes units, so "
                "the others would output other values. Only the output layer may have one; use an element-wise "
                "activation (relu, tanh, gelu, ...) in hidden layers.",
            )


def _zero_preserving(activation: Any) -> bool:
    value = keras.ops.convert_to_numpy(activation(keras.ops.zeros((1,), "float32")))
    return bool(np.all(np.asarray(value) == 0.0))


def _parse_spatial(model: keras.Model, layers: list[keras.layers.Layer], input_shape: tuple[int, ...]) -> Chain:
    """A convolutional chain: conv/pool part, Flatten or global pooling, dense part; the body is every layer."""
    seen_dense = False
    seen_conv = False
    after_conv = False  # an element-wise layer here sees the (gated) outputs of a conv
    for layer in layers:
        kind = type(layer).__name__
        if isinstance(layer, CONV_TYPES + POOLING_TYPES):
            if seen_dense:
                raise unsupported(layer, f"{kind} layers must come before the dense part (and the Flatten or global "
                                         "pooling that leads into it).")
            if isinstance(layer, GLOBAL_POOLING_TYPES) and not seen_conv:
                raise unsupported(
                    layer, f"A {kind} before any Conv2D pools the images' own channels, which a Dense layer fed "
                    "them would gate and remove; tf_dynhp removes input features of flat rows only. Put a Conv2D "
                    "before it, or Flatten the input instead.")
            seen_conv = seen_conv or isinstance(layer, CONV_TYPES)
            cfg = layer.get_config()
            if cfg.get("data_format", "channels_last") != "channels_last":
                raise unsupported(layer, f"It has data_format={cfg['data_format']!r}; only 'channels_last' is supported.")
            if isinstance(layer, CONV_TYPES):
                if tuple(cfg.get("dilation_rate", (1, 1))) != (1, 1) or int(cfg.get("groups", 1)) != 1:
                    raise unsupported(
                        layer,
                        f"It has dilation_rate={cfg.get('dilation_rate')} and groups={cfg.get('groups')}; "
                        "only dilation_rate=1 and groups=1 are supported.",
                    )
                _check_closed_channels_vanish(layer, layer.activation)
                after_conv = True
        elif isinstance(layer, DENSE_TYPES):
            _check_flat_dense(layer)
            seen_dense = True
            after_conv = False
        elif isinstance(layer, ELEMENTWISE_TYPES):
            if after_conv and isinstance(layer, keras.layers.Activation):
                _check_closed_channels_vanish(layer, layer.activation)
        elif isinstance(layer, INDEX_MAP_TYPES):
            if seen_dense:
                raise unsupported(layer, "Flatten/Reshape/SelectFeatures are supported only before the first Dense layer.")
            if isinstance(layer, SelectFeatures):
                _check_flat_select(layer)
        else:
            raise unsupported(layer)
    if not seen_dense:
        raise ValueError(f"Model '{model.name}' has no Dense layer: nothing for tf_dynhp to train or prune.")
    unit_axes(layers)  # raises, naming the layer, where conv channels cannot be followed through a Reshape
    return Chain(input_shape=input_shape, features=None, body=list(layers), name=model.name, spatial=True)


def _check_closed_channels_vanish(layer: keras.layers.Layer, activation: Any) -> None:
    """A closed conv gate zeroes the pre-activation; removing the channel is exact only if act(0) == 0."""
    if not _zero_preserving(activation):
        name = getattr(activation, "__name__", str(activation))
        raise unsupported(
            layer,
            f"Its activation '{name}' is not 0 at 0: the gates of a conv layer act before the activation, "
            "so a pruned channel would still output a constant. Use an activation with f(0) = 0 "
            "(relu, linear, tanh, elu, gelu, swish, ...) after conv layers.",
        )
