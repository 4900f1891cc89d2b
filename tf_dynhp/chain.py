"""Reading a Keras model as a chain of supported layers.

tf_dynhp trains MLP-like models: one input, one output, a chain of layers. The
chain is split in two parts:

* the *head*, everything before the first Dense layer that only re-arranges the
  input (`Flatten`, `Reshape`, `SelectFeatures`): it is equivalent to a row-major
  flatten followed by an optional feature selection, so the training pipeline does
  it on the data (and hard pruning of input features shrinks the mini-batch);
* the *body*: `Dense` / `L0Dense` layers and element-wise layers (`Dropout`,
  `Activation`) between them.

Anything else raises a `ValueError` naming the layer and its class, before any
training starts.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import keras
import numpy as np

from tf_dynhp.layers import L0Dense, SelectFeatures

__all__ = ["Chain", "parse_chain", "SUPPORTED_LAYERS", "DENSE_TYPES", "ELEMENTWISE_TYPES"]

DENSE_TYPES = (keras.layers.Dense, L0Dense)
ELEMENTWISE_TYPES = (keras.layers.Dropout, keras.layers.Activation)
HEAD_TYPES = (keras.layers.Flatten, keras.layers.Reshape, SelectFeatures)
SUPPORTED_LAYERS = "InputLayer, Flatten, Reshape, SelectFeatures, Dense, L0Dense, Dropout, Activation"


@dataclasses.dataclass
class Chain:
    """A model read as `input -> flatten -> select features -> body`.

    Attributes:
        input_shape: per-example input shape of the model, e.g. (28, 28).
        features: indices (into the row-major flattened input) that the model
            reads, or None for all of them.
        body: the layers after the head, in order (dense and element-wise).
        name: the model's name.
    """

    input_shape: tuple[int, ...]
    features: np.ndarray | None
    body: list[keras.layers.Layer]
    name: str

    @property
    def flat_dim(self) -> int:
        """Number of features of the flattened original input."""
        return int(math.prod(self.input_shape))

    @property
    def input_dim(self) -> int:
        """Number of features the first dense layer receives."""
        return self.flat_dim if self.features is None else int(len(self.features))

    @property
    def dense_layers(self) -> list[keras.layers.Layer]:
        return [layer for layer in self.body if isinstance(layer, DENSE_TYPES)]


def _unsupported(layer: Any, why: str = "") -> ValueError:
    extra = f" {why}" if why else ""
    return ValueError(
        f"Layer '{layer.name}' of class {type(layer).__name__} is not supported by "
        f"tf_dynhp.{extra} Supported layers: {SUPPORTED_LAYERS}, in a single-input, "
        "single-output chain."
    )


def _ordered_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The model's layers in order, checking that they form a single chain."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"Expected a keras.Model (Sequential or functional). Received: {type(model).__name__}")
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
    previous = None
    for layer in layers:
        if isinstance(layer, keras.Model):
            raise _unsupported(layer, "Nested models are not supported; flatten them into one model.")
        nodes = [n for n in layer._inbound_nodes]
        if len(nodes) != 1:
            raise _unsupported(layer, f"It is called {len(nodes)} times (shared layers are not supported).")
        tensors = nodes[0].input_tensors
        if len(tensors) != 1:
            raise _unsupported(layer, f"It takes {len(tensors)} inputs (branches are not supported).")
        source = tensors[0]._keras_history.operation
        expected = previous
        if expected is None:
            if not isinstance(source, keras.layers.InputLayer):
                raise _unsupported(layer, "The model is not a chain.")
        elif source is not expected:
            raise _unsupported(layer, f"It reads '{source.name}', not the layer before it (branches are not supported).")
        previous = layer
    if previous is not None and previous.output is not outputs[0]:
        raise ValueError(f"Model '{model.name}': the output is not produced by its last layer; not a chain.")
    return layers


def parse_chain(model: keras.Model) -> Chain:
    """Reads `model` as a `Chain`, or raises a `ValueError` naming the offending layer.

    Args:
        model: a built Sequential or functional Keras model.

    Returns:
        The `Chain` (referencing the model's own layers).

    Raises:
        ValueError: unsupported layer, branch, several inputs, a Dense layer on a
            non-flat input, or no Dense layer at all.
        TypeError: `model` is not a Keras model.
    """
    layers = _ordered_layers(model)
    input_shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    if any(d is None for d in model.inputs[0].shape[1:]):
        raise ValueError(f"Model '{model.name}': every input dimension but the batch must be known, received {model.inputs[0].shape}")
    features: np.ndarray | None = None
    body: list[keras.layers.Layer] = []
    seen_dense = False
    for layer in layers:
        if isinstance(layer, DENSE_TYPES):
            in_shape = layer._inbound_nodes[0].input_tensors[0].shape
            if len(in_shape) != 2:
                raise _unsupported(
                    layer,
                    f"It receives inputs of shape {tuple(in_shape)}; Dense layers must act on flat "
                    "(batch, features) inputs: add a Flatten layer before it.",
                )
            seen_dense = True
            body.append(layer)
        elif isinstance(layer, ELEMENTWISE_TYPES):
            body.append(layer)
        elif isinstance(layer, HEAD_TYPES) and not seen_dense:
            if isinstance(layer, SelectFeatures):
                in_shape = layer._inbound_nodes[0].input_tensors[0].shape
                if len(in_shape) != 2:
                    raise _unsupported(layer, "SelectFeatures must act on flat (batch, features) inputs.")
                idx = np.asarray(layer.indices, dtype=np.int64)
                features = idx if features is None else features[idx]
        elif isinstance(layer, HEAD_TYPES):
            raise _unsupported(layer, "Flatten/Reshape/SelectFeatures are supported only before the first Dense layer.")
        else:
            raise _unsupported(layer)
    if not seen_dense:
        raise ValueError(f"Model '{model.name}' has no Dense layer: nothing for tf_dynhp to train or prune.")
    return Chain(input_shape=input_shape, features=features, body=body, name=model.name)
