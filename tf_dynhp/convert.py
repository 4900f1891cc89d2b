"""`to_l0` (Dense -> L0Dense, Conv2D -> L0Conv2D) and `strip` (gated -> smaller plain layers).

"Strip before export" as in TF Model Optimization, except that here the shapes
really shrink: dense rows whose deterministic gate is exactly zero are removed, with
the unit of the layer before them; conv channels whose gate is zero are removed with
the matching input channel of the next conv or the H x W rows of the next Dense
after `Flatten` (its one row after a global pooling); pruned input features are dropped inside the graph by `SelectFeatures`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

from tf_dynhp import gates
from tf_dynhp.chain import parse_chain
from tf_dynhp.kinds import DENSE_TYPES, refuse_plain_settings
from tf_dynhp.layers import L0Conv2D, L0Dense
from tf_dynhp.surgery import build_chain_model, io_structure, rebuild_body
from tf_dynhp.units import unit_axes

__all__ = ["to_l0", "strip"]


def to_l0(
    model: keras.Model,
    l0_lambda: float | Sequence[float] | Mapping[str, float] = 0.01,
    *,
    weight_decay: float = 0.0,
    droprate_init: float = 0.5,
    input_droprate_init: float = 0.2,
    temperature: float = gates.TEMPERATURE,
    limit_l: float = gates.LIMIT_L,
    limit_r: float = gates.LIMIT_R,
    dataset_size: int | None = None,
    seed: int | None = None,
) -> keras.Model:
    """Returns the gated model of the same layers: every `Dense` becomes an `L0Dense`,
    every `Conv2D` an `L0Conv2D` (gates on its output channels).

    Weights are copied, but the model does not predict as the original: its inference
    gates (Eq. 4's deterministic values) start below 1 (about 0.86 on the inputs at
    `input_droprate_init` 0.2, 0.5 on units at `droprate_init` 0.5), as in the
    reference L0 code; training moves them. Gate logits are initialised from `droprate_init`
    (`input_droprate_init` when the first weighted layer is a Dense layer, whose
    gates sit on the input features: 0.2 and 0.5 as in the reference L0 MLP; a
    convolutional model's gates are all on channels and units: `droprate_init`).
    Layers that are already gated keep their weights, gate logits, temperature and
    stretch limits, and take this call's `l0_lambda`, `weight_decay` and `dataset_size`
    (the penalty of the training to come: `fit` on a gated model uses its own). In a
    dense-first model `Flatten`/`Reshape` heads become one `Flatten`; `SelectFeatures`
    is kept, so `to_l0(strip(m))` trains on. Pooling, `Flatten`, `Reshape`,
    `Dropout` and `Activation` layers of a convolutional model pass as they are.

    Args:
        model: a built Sequential or functional Keras model (see `parse_chain`).
        l0_lambda: lambda of paper Eq. 5 on the reference scale (see `L0Dense`): one
            value for every layer, a list with one value per dense / conv layer (in
            order), or a dict from the model's layer names to values (the others:
            0.01), to push one layer harder.
        weight_decay, temperature, limit_l, limit_r, dataset_size: `L0Dense` / `L0Conv2D` arguments.
        droprate_init: initial drop rate of hidden-unit and channel gates.
        input_droprate_init: initial drop rate of the input-feature gates of a first Dense layer.
        seed: base seed of the gate noise; weighted layer k uses `seed + k`.

    Returns:
        A new functional model with the original input shape.

    Raises:
        ValueError: the model has a layer or topology tf_dynhp does not support
            (the message names the layer and its class).
    """
    chain = parse_chain(model)
    refuse_plain_settings(  # a gated layer has its own penalty and no constraints
        chain.weighted_layers, "which its gated version (L0Dense / L0Conv2D) does not take: it has its own penalty "
        "(`l0_lambda`, `weight_decay`, an L2 term). Remove it, or pass weight_decay for an L2 penalty.")
    lambdas = layer_lambdas(chain.weighted_layers, l0_lambda)
    common = dict(
        weight_decay=weight_decay, temperature=temperature,
        limit_l=limit_l, limit_r=limit_r, dataset_size=dataset_size,
    )
    # Validate the arguments once, up front, with the layer's own checks.
    for lam in set(lambdas):
        L0Dense(1, droprate_init=droprate_init, l0_lambda=lam, **common)
    L0Dense(1, droprate_init=input_droprate_init, l0_lambda=lambdas[0], **common)

    def layer_kwargs(k: int, layer: keras.layers.Layer) -> dict[str, Any]:
        on_inputs = k == 0 and isinstance(layer, DENSE_TYPES)
        return {
            **common,
            "l0_lambda": lambdas[k],
            "droprate_init": input_droprate_init if on_inputs else droprate_init,
            "seed": None if seed is None else int(seed) + k,
        }

    new_layers, _, load = rebuild_body(chain.body, None, convert="l0", l0_kwargs=layer_kwargs)
    out = build_chain_model(
        chain.input_shape, new_layers, chain.features, name=f"{chain.name}_l0", dtype=model.inputs[0].dtype,
        spatial=chain.spatial, input_name=model.inputs[0].name, structure=io_structure(model),
    )
    load()
    return out


def layer_lambdas(layers: Sequence[keras.layers.Layer], l0_lambda: Any) -> list[float]:
    """One λ per dense / conv layer from `to_l0`'s `l0_lambda` (a number, a list, or a
    dict from layer names to numbers, the others 0.01), naming what does not fit."""
    if isinstance(l0_lambda, Mapping):
        names = [layer.name for layer in layers]
        unknown = sorted(set(l0_lambda) - set(names))
        if unknown:
            raise ValueError(f"`l0_lambda` names layers {unknown} that are not dense / conv layers of the model; expected some of {names}.")
        return [float(l0_lambda.get(name, 0.01)) for name in names]
    if isinstance(l0_lambda, (list, tuple)):
        if len(l0_lambda) != len(layers):
            raise ValueError(
                f"`l0_lambda` has {len(l0_lambda)} values; the model has {len(layers)} dense / conv layers "
                f"({[layer.name for layer in layers]}): one value each."
            )
        return [float(v) for v in l0_lambda]
    return [l0_lambda] * len(layers)


def kept_inputs(layer: L0Dense | L0Conv2D) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic gates of `layer` and the indices of the gates that are non-zero
    (inputs of an `L0Dense`, output channels of an `L0Conv2D`).

    At least one is kept (the one with the largest gate): its folded row (or filter)
    is zero if all gates are, so the layer's output is unchanged.
    """
    g = np.asarray(keras.ops.convert_to_numpy(layer.deterministic_gates()))
    keep = np.flatnonzero(g > 0)
    if keep.size == 0:
        keep = np.array([int(np.argmax(g))])
    return g, keep


def strip(model: keras.Model) -> keras.Model:
    """Plain Keras model from a gated one: gates folded in, zero-gate units removed.

    The deterministic (test-time) gates are multiplied into the weights: kernel rows
    of an `L0Dense`; kernel filters and biases of an `L0Conv2D` (its gate scales
    `conv(x) + b`). Units whose gate is exactly 0 are removed: a dense row with the
    matching unit (kernel column and bias) of the layer before; a conv channel with
    the matching input channel of the next conv, or its H x W rows of the next Dense
    after `Flatten` (its one row after a global pooling; `tf_dynhp.units.effective_keep`). Zero-gate input features of
    a dense-first model are dropped by a `SelectFeatures` layer, so the stripped
    model takes the original input. Its predictions equal the gated model's
    inference predictions.

    Args:
        model: a model with `L0Dense` / `L0Conv2D` layers (plain layers pass through).

    Returns:
        A new functional model of plain `Dense` / `Conv2D` layers, loadable with `import tf_dynhp`.
    """
    chain = parse_chain(model)
    axes, _ = unit_axes(chain.body)
    gates_of: dict[int, np.ndarray] = {}
    keep: list[np.ndarray | None] = [None] * (len(axes) - 1)
    for i, axis in enumerate(axes[:-1]):
        for layer in axis.gated_by:
            g, k = kept_inputs(layer)
            gates_of[id(layer)] = g
            if k.size < g.size:
                keep[i] = k if keep[i] is None else np.intersect1d(keep[i], k)

    def fold(layer: keras.layers.Layer, name: str, value: np.ndarray) -> np.ndarray:
        g = gates_of.get(id(layer))
        if g is None:
            return value
        g = g.astype(value.dtype)
        if isinstance(layer, L0Conv2D):
            return value * g  # kernel (..., filters) and bias (filters,): the gate's axis is last
        return value * g[:, None] if name == "kernel" else value

    # A dense-first model's first axis is its input features: SelectFeatures drops
    # them in the graph, and the kernel loses the same rows.
    features = chain.features
    if not chain.spatial and keep[0] is not None:
        features = keep[0] if features is None else features[keep[0]]
    new_layers, _, load = rebuild_body(chain.body, keep, convert="dense", weight_transform=fold)
    out = build_chain_model(
        chain.input_shape, new_layers, features, name=f"{chain.name}_stripped", dtype=model.inputs[0].dtype,
        spatial=chain.spatial, input_name=model.inputs[0].name, structure=io_structure(model),
    )
    load()
    return out
