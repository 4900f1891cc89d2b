"""Hard pruning (paper Sec. 4.1, Eq. 6-7): the plan, and the model it leaves.

Training runs on a *core*: a `GatedModel` of the chain's body on flat selected
features (dense-first chains: the flatten and the feature selection are done on the
data) or on the images as they are (convolutional chains).

* `core_from` makes the core of a full-input gated (or dense) model; `full_model`
  puts the core's layers back behind the original input.
* `prune_plan` computes the activation rates of one epoch (Eq. 6) and the units that
  survive (Eq. 7), per unit axis (`tf_dynhp.units`).
* `rebuild_core` builds the smaller core and moves the optimizer state to it
  (`tf_dynhp.surgery`).
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np

from tf_dynhp.chain import parse_chain
from tf_dynhp.model import GatedModel
from tf_dynhp.surgery import build_chain_model, rebuild_body, transfer_optimizer
from tf_dynhp.units import effective_keep, plan_outcome, unit_axes

__all__ = ["compile_core", "core_from", "assemble_core", "is_spatial", "full_model", "prune_plan", "rebuild_core"]


def core_from(gated: keras.Model) -> tuple[GatedModel, np.ndarray | None, tuple[int, ...]]:
    """GatedModel on flat selected features (dense-first) or on the input as it is
    (convolutional) from a full-input gated (or dense) model."""
    chain = parse_chain(gated)
    layers, _, load = rebuild_body(chain.body, None, convert="same")
    core = assemble_core(chain.body_input_shape, layers, dtype=gated.inputs[0].dtype)
    load()
    return core, chain.features, chain.input_shape


def assemble_core(input_shape: int | Sequence[int], layers: Sequence[keras.layers.Layer], dtype: Any = None) -> GatedModel:
    shape = (int(input_shape),) if isinstance(input_shape, (int, np.integer)) else tuple(int(d) for d in input_shape)
    inputs = keras.Input(shape=shape, name="features", dtype=dtype)
    x = inputs
    for layer in layers:
        x = layer(x)
    return GatedModel(inputs, x, name="dynhp_core")


def is_spatial(core: GatedModel) -> bool:
    return len(core.inputs[0].shape) > 2


def full_model(core: GatedModel, features: np.ndarray | None, input_shape: tuple[int, ...], name: str,
               input_name: str | None = None, structure: tuple[Any, Any] = (None, None)) -> keras.Model:
    """The core's layers behind the original input: Input (named `input_name`, the
    user's model's) -> [Flatten -> SelectFeatures] -> layers, taking and giving its input
    and output as the user's model does (`structure`, `surgery.io_structure`)."""
    layers, _, load = rebuild_body(core.body, None, convert="same")
    model = build_chain_model(input_shape, layers, features, name=name, dtype=core.inputs[0].dtype, spatial=is_spatial(core),
                              input_name=input_name, structure=structure)
    load()
    return model


def prune_plan(core: GatedModel, gate_open: list[np.ndarray], count: float, gamma: float) -> tuple[list[np.ndarray | None], list[int], list[bool]]:
    """Eq. 6-7: activation rates and the units that survive, per unit axis.

    The unit axes (`tf_dynhp.units.unit_axes`) are the last axis of the tensors
    between layers: for a dense chain, the inputs of each dense layer; for a conv
    chain also the output channels of each conv layer and the flattened features.
    An axis is pruned by the gates sitting on it (the inputs of an `L0Dense`, the
    output channels of an `L0Conv2D`); the plan is then made consistent by
    `effective_keep` (a closed conv channel takes its flattened copies with it).
    Never the last unit of an axis; the output axis is never pruned.

    Returns:
        (keep indices per unit axis but the output (None: nothing pruned), pruned
        count per axis, whether each gated axis is at its floor of one unit).
    """
    axes, _ = unit_axes(core.body)
    rate_of = {id(layer): open_ / max(count, 1.0) for layer, open_ in zip(core.gated_layers, gate_open)}  # Eq. 6
    wanted: list[np.ndarray | None] = []
    scores: list[np.ndarray | None] = []
    for axis in axes[:-1]:
        if not axis.gated_by:
            wanted.append(None)
            scores.append(None)
            continue
        rate = np.min(np.stack([rate_of[id(layer)] for layer in axis.gated_by]), axis=0)
        survive = np.flatnonzero(rate >= gamma)  # Eq. 7: Z = Z * g(a, gamma)
        if survive.size == 0:  # never remove the last unit of a layer
            survive = np.array([int(np.argmax(rate))])
        wanted.append(survive)
        scores.append(rate)
    eff = effective_keep(axes, wanted + [None], scores + [None])
    return plan_outcome(axes, eff)


def rebuild_core(core: GatedModel, keep: list[np.ndarray | None]) -> GatedModel:
    layers, var_map, load = rebuild_body(core.body, keep, convert="same")
    shape = tuple(int(d) for d in core.inputs[0].shape[1:])
    if keep[0] is not None:
        shape = shape[:-1] + (len(keep[0]),)
    new = assemble_core(shape, layers, dtype=core.inputs[0].dtype)
    load()
    optimizer = transfer_optimizer(core.optimizer, var_map, new.trainable_variables)
    compile_core(new, optimizer)
    new.track_variance = core.track_variance
    new.loss_fn = core.loss_fn
    return new


def compile_core(core: GatedModel, optimizer: keras.optimizers.Optimizer) -> None:
    """Compiles `core` with `optimizer` and a built `accuracy` metric, so that callbacks
    that look the metric up (`EarlyStopping(monitor="val_accuracy")`, mode "auto") find
    its direction. The metric's variables are not the model's: the traced step never
    reads them."""
    core.compile(optimizer=optimizer, metrics=["accuracy"], jit_compile=False)
    dtype = core.inputs[0].dtype
    core._compile_metrics.build(np.zeros((1,), "int32"), np.zeros((1, core.num_classes), dtype))
