"""`to_l0` (Dense -> L0Dense) and `strip` (L0Dense -> smaller plain Dense).

"Strip before export" as in TF Model Optimization, except that here the shapes
really shrink: rows whose deterministic gate is exactly zero are removed, with
the unit of the layer before them; pruned input features are dropped inside the
graph by `SelectFeatures`.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tf_dynhp.chain import parse_chain
from tf_dynhp.layers import L0Dense
from tf_dynhp.surgery import build_chain_model, rebuild_body

__all__ = ["to_l0", "strip"]


def to_l0(
    model: keras.Model,
    l0_lambda: float = 0.01,
    *,
    weight_decay: float = 0.0,
    droprate_init: float = 0.5,
    input_droprate_init: float = 0.2,
    temperature: float = 2.0 / 3.0,
    limit_l: float = -0.1,
    limit_r: float = 1.1,
    dataset_size: int | None = None,
    seed: int | None = None,
) -> keras.Model:
    """Returns an equivalent gated model: every `Dense` becomes an `L0Dense`.

    Weights are copied; gate logits are initialised from `droprate_init`
    (`input_droprate_init` for the first dense layer, whose gates sit on the input
    features: 0.2 and 0.5 as in the reference L0 MLP). Layers that are already
    `L0Dense` are kept as they are (with their weights). `Flatten`/`Reshape`
    heads become one `Flatten`; `SelectFeatures` is kept, so `to_l0(strip(m))`
    trains on.

    Args:
        model: a built Sequential or functional Keras model (see `parse_chain`).
        l0_lambda: lambda of paper Eq. 5 on the reference scale (see `L0Dense`).
        weight_decay, temperature, limit_l, limit_r, dataset_size: `L0Dense` arguments.
        droprate_init: initial drop rate of hidden-unit gates.
        input_droprate_init: initial drop rate of the first layer's (input) gates.
        seed: base seed of the gate noise; layer k uses `seed + k`.

    Returns:
        A new functional model with the original input shape.

    Raises:
        ValueError: the model has a layer or topology tf_dynhp does not support
            (the message names the layer and its class).
    """
    chain = parse_chain(model)
    common = dict(
        l0_lambda=l0_lambda, weight_decay=weight_decay, temperature=temperature,
        limit_l=limit_l, limit_r=limit_r, dataset_size=dataset_size,
    )
    # Validate the arguments once, up front, with the layer's own checks.
    L0Dense(1, droprate_init=droprate_init, **common)
    L0Dense(1, droprate_init=input_droprate_init, **common)

    def layer_kwargs(k: int, layer: keras.layers.Layer) -> dict[str, Any]:
        return {
            **common,
            "droprate_init": input_droprate_init if k == 0 else droprate_init,
            "seed": None if seed is None else int(seed) + k,
        }

    n_dense = len(chain.dense_layers)
    new_layers, _, load = rebuild_body(chain.body, [None] * n_dense, convert="l0", l0_kwargs=layer_kwargs)
    out = build_chain_model(
        chain.input_shape, new_layers, chain.features, name=f"{chain.name}_l0", dtype=model.inputs[0].dtype
    )
    load()
    return out


def kept_inputs(layer: L0Dense) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic gates of `layer` and the indices of the inputs whose gate is non-zero.

    At least one input is kept (the one with the largest gate): its folded row is
    zero if all gates are, so the layer's output is unchanged.
    """
    g = np.asarray(keras.ops.convert_to_numpy(layer.deterministic_gates()))
    keep = np.flatnonzero(g > 0)
    if keep.size == 0:
        keep = np.array([int(np.argmax(g))])
    return g, keep


def strip(model: keras.Model) -> keras.Model:
    """Plain Keras model from a gated one: gates folded in, zero-gate rows removed.

    The deterministic (test-time) gates are multiplied into the kernel rows; rows
    whose gate is exactly 0 are removed together with the matching unit (kernel
    column and bias) of the dense layer before; zero-gate input features are
    dropped by a `SelectFeatures` layer, so the stripped model takes the original
    input. Its predictions equal the gated model's inference predictions.

    Args:
        model: a model with `L0Dense` layers (plain `Dense` layers pass through).

    Returns:
        A new functional model of plain `Dense` layers, loadable with `import tf_dynhp`.
    """
    chain = parse_chain(model)
    dense = chain.dense_layers
    gates_of: dict[int, np.ndarray] = {}
    keep: list[np.ndarray | None] = []
    for layer in dense:
        if isinstance(layer, L0Dense):
            g, k = kept_inputs(layer)
            gates_of[id(layer)] = g
            keep.append(k if k.size < g.size else None)
        else:
            keep.append(None)

    def fold(layer: keras.layers.Layer, kernel: np.ndarray) -> np.ndarray:
        g = gates_of.get(id(layer))
        return kernel if g is None else kernel * g[:, None].astype(kernel.dtype)

    # The first layer's zero-gate rows are input features: SelectFeatures drops
    # them in the graph, and the kernel loses the same rows.
    features = chain.features
    if keep[0] is not None:
        features = keep[0] if features is None else features[keep[0]]
    new_layers, _, load = rebuild_body(chain.body, keep, convert="dense", kernel_transform=fold)
    out = build_chain_model(chain.input_shape, new_layers, features, name=f"{chain.name}_stripped", dtype=model.inputs[0].dtype)
    load()
    return out
