"""What each supported layer class is to tf_dynhp: the one table the rest asks.

Like tfmot's prune registry: which layer classes are dense, convolutional, gated,
element-wise, pooling or index maps (layers that move units around without weights),
and which axis of each weight of a weighted layer follows its input or output units
(`PRUNABLE_AXES`). `tf_dynhp.chain` reads a model with these tables,
`tf_dynhp.units` derives the unit axes from them, `tf_dynhp.surgery` slices weights
along them.
"""

from __future__ import annotations

from typing import Any

import keras

from tf_dynhp.layers import L0Conv2D, L0Dense, SelectFeatures

__all__ = [
    "DENSE_TYPES",
    "CONV_TYPES",
    "WEIGHTED_TYPES",
    "GATED_TYPES",
    "ELEMENTWISE_TYPES",
    "POOLING_TYPES",
    "GLOBAL_POOLING_TYPES",
    "INDEX_MAP_TYPES",
    "HEAD_TYPES",
    "SUPPORTED_LAYERS",
    "PRUNABLE_AXES",
    "PLAIN_SETTINGS",
    "refuse_plain_settings",
    "layer_kind",
    "io_shapes",
    "unsupported",
]

DENSE_TYPES = (keras.layers.Dense, L0Dense)
CONV_TYPES = (keras.layers.Conv2D, L0Conv2D)
#: Layers with a kernel and a bias: what pruning slices and what the memory accounting counts.
WEIGHTED_TYPES = DENSE_TYPES + CONV_TYPES
GATED_TYPES = (L0Dense, L0Conv2D)
ELEMENTWISE_TYPES = (keras.layers.Dropout, keras.layers.Activation)
#: Global pooling keeps the channel axis as the last one (a unit is still a channel), so
#: it passes like the other pooling layers; a Dense layer after it is fed the channels.
GLOBAL_POOLING_TYPES = (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)
POOLING_TYPES = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D) + GLOBAL_POOLING_TYPES
#: Layers that move units around without weights: a new unit axis whose units copy units
#: of the axis before (derived from shapes; see `tf_dynhp.units.unit_axes`).
INDEX_MAP_TYPES = (keras.layers.Flatten, keras.layers.Reshape, SelectFeatures)
HEAD_TYPES = INDEX_MAP_TYPES
SUPPORTED_LAYERS = (
    "InputLayer, Flatten, Reshape, SelectFeatures, Dense, L0Dense, Dropout, Activation, "
    "Conv2D, L0Conv2D, MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D (channels_last)"
)


#: A plain Dense / Conv2D's terms of `model.losses` and its constraints, none bound to the
#: layer's width: `surgery` keeps them when it rebuilds a plain layer as a plain layer
#: (`strip`); a gated layer has its own penalty and takes none (`convert.to_l0` refuses
#: them), and `fit`'s step and `GatedModel`'s apply neither (refused there too).
PLAIN_SETTINGS = ("kernel_regularizer", "bias_regularizer", "activity_regularizer", "kernel_constraint", "bias_constraint")


def refuse_plain_settings(layers: Any, why: str) -> None:
    """Raises a ValueError naming the first of `layers` with a `PLAIN_SETTINGS` setting,
    the settings, and `why` (e.g. "which GatedModel's training step does not apply")."""
    for layer in layers:
        given = [key for key in PLAIN_SETTINGS if getattr(layer, key, None) is not None]
        if given:
            raise ValueError(f"Layer '{layer.name}' has {', '.join(f'`{key}`' for key in given)}, {why}")


#: For every weight of a weighted layer kind, which axis follows the layer's input
#: unit axis ("in") and which its output unit axis ("out"); None for an axis that is
#: never pruned (the spatial axes of a conv kernel).
PRUNABLE_AXES: dict[str, dict[str, tuple[str | None, ...]]] = {
    "dense": {"kernel": ("in", "out"), "bias": ("out",), "log_alpha": ("in",)},
    "conv2d": {"kernel": (None, None, "in", "out"), "bias": ("out",), "log_alpha": ("out",)},
}

def layer_kind(layer: keras.layers.Layer) -> str:
    """The `PRUNABLE_AXES` key of a weighted layer: "dense" or "conv2d"."""
    if isinstance(layer, DENSE_TYPES):
        return "dense"
    if isinstance(layer, CONV_TYPES):
        return "conv2d"
    raise TypeError(f"Layer '{layer.name}' of class {type(layer).__name__} has no prunable weights.")


def io_shapes(layer: keras.layers.Layer) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per-example (input, output) shapes of a layer called once in a model."""
    node = layer._inbound_nodes[0]
    return (
        tuple(node.input_tensors[0].shape[1:]),
        tuple(node.output_tensors[0].shape[1:]),
    )


def unsupported(layer: Any, why: str = "") -> ValueError:
    """The ValueError for a layer tf_dynhp cannot train, naming it, its class and why."""
    extra = f" {why}" if why else ""
    return ValueError(
        f"Layer '{layer.name}' of class {type(layer).__name__} is not supported by "
        f"tf_dynhp.{extra} Supported layers: {SUPPORTED_LAYERS}, in a single-input, "
        "single-output chain."
    )
