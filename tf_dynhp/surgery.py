"""Model surgery: the one rebuild routine behind `to_l0`, `strip` and hard pruning.

Hard pruning (paper Sec. 4.1, Eq. 7: Z = Z * g(a, gamma)) removes units for good.
Here that is done by *building a new, smaller functional model*: every layer is
described by its prunable axes (which axis of which weight follows the layer's
inputs, which follows its output units), so the same routine slices a Dense
kernel's rows/columns today and a conv kernel's channels later. The optimizer is
rebuilt the same way (Keras 3 optimizers refuse variables they were not built
with): a fresh optimizer from the old config, built on the new variables, with
each slot sliced like the variable it belongs to.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import keras
import numpy as np

from tf_dynhp.chain import DENSE_TYPES
from tf_dynhp.layers import L0Dense, SelectFeatures

__all__ = [
    "PRUNABLE_AXES",
    "VariableMap",
    "take_axes",
    "build_chain_model",
    "rebuild_body",
    "transfer_optimizer",
]

#: For every weight of a dense-type layer, which axis follows the layer's inputs
#: ("in") and which its output units ("out"); None for an axis that is never pruned.
PRUNABLE_AXES: dict[str, tuple[str | None, ...]] = {
    "kernel": ("in", "out"),
    "bias": ("out",),
    "log_alpha": ("in",),
}

#: (old variable, new variable, index arrays per axis (None = whole axis)).
VariableMap = list[tuple[Any, Any, tuple[np.ndarray | None, ...]]]


def take_axes(array: np.ndarray, index: Sequence[np.ndarray | None]) -> np.ndarray:
    """Keeps `index[k]` along axis k of `array` (all of it where `index[k]` is None)."""
    out = np.asarray(array)
    for axis, idx in enumerate(index):
        if idx is not None:
            out = np.take(out, idx, axis=axis)
    return out


def build_chain_model(
    input_shape: Sequence[int],
    body: Sequence[keras.layers.Layer],
    features: np.ndarray | None = None,
    name: str | None = None,
    dtype: Any = None,
) -> keras.Model:
    """Builds the functional model `Input -> [Flatten] -> [SelectFeatures] -> body`.

    Args:
        input_shape: per-example input shape.
        body: fresh (unbuilt) layers, applied in order.
        features: indices of the flattened input to keep, or None for all.
        name: model name.
        dtype: dtype of the input tensor (defaults to Keras' float type).

    Returns:
        A built `keras.Model`.
    """
    inputs = keras.Input(shape=tuple(input_shape), dtype=dtype)
    x = inputs
    if len(input_shape) > 1:
        x = keras.layers.Flatten(name="flatten")(x)
    if features is not None:
        x = SelectFeatures(indices=[int(i) for i in features], name="select_features")(x)
    for layer in body:
        x = layer(x)
    return keras.Model(inputs, x, name=name)


def _dense_kwargs(layer: keras.layers.Layer, units: int) -> dict[str, Any]:
    cfg = layer.get_config()
    return {
        "units": units,
        "activation": cfg["activation"],
        "use_bias": cfg["use_bias"],
        "kernel_initializer": cfg["kernel_initializer"],
        "bias_initializer": cfg["bias_initializer"],
        "name": layer.name,
        "dtype": layer.dtype_policy,
    }


def rebuild_body(
    body: Sequence[keras.layers.Layer],
    keep: Sequence[np.ndarray | None],
    convert: str = "same",
    l0_kwargs: dict[str, Any] | Callable[[int, keras.layers.Layer], dict[str, Any]] | None = None,
    kernel_transform: Callable[[keras.layers.Layer, np.ndarray], np.ndarray] | None = None,
) -> tuple[list[keras.layers.Layer], VariableMap, Callable[[], None]]:
    """New layers for `body` with only the kept input units of every dense layer.

    Args:
        body: the current layers (dense and element-wise), already built.
        keep: for each dense layer in order, the indices of its inputs to keep
            (None: all). Dense layer k then keeps output units `keep[k + 1]`; the
            last dense layer keeps all its outputs.
        convert: "same" (L0Dense stays L0Dense, Dense stays Dense), "l0" (every
            dense layer becomes an `L0Dense` built with `l0_kwargs`), or "dense"
            (every dense layer becomes a plain `keras.layers.Dense`).
        l0_kwargs: `L0Dense` arguments used by convert="l0" for layers that are not
            `L0Dense` already: a dict, or `f(k, layer) -> dict` for dense layer k.
        kernel_transform: optional `f(old_layer, kernel) -> kernel` applied to the
            full kernel before slicing (`strip` folds the gates in with it).

    Returns:
        `(new_layers, variable_map, load_weights)`: the fresh layers, the map of
        old to new variables with their index arrays, and a function that copies
        the sliced weights (and the gate-noise seed state) once the new layers are
        built (call it after `build_chain_model`).
    """
    if convert not in ("same", "l0", "dense"):
        raise ValueError(f"Invalid value received for argument `convert`. Expected 'same', 'l0' or 'dense'. Received: convert={convert!r}")
    dense = [layer for layer in body if isinstance(layer, DENSE_TYPES)]
    if len(keep) != len(dense):
        raise ValueError(f"Expected one keep-index array per dense layer ({len(dense)}), received {len(keep)}")
    new_layers: list[keras.layers.Layer] = []
    pending: list[tuple[keras.layers.Layer, keras.layers.Layer, tuple[Any, Any]]] = []
    k = 0
    for layer in body:
        if not isinstance(layer, DENSE_TYPES):
            new_layers.append(type(layer).from_config(layer.get_config()))
            continue
        keep_in = keep[k]
        keep_out = keep[k + 1] if k + 1 < len(dense) else None
        units = layer.units if keep_out is None else int(len(keep_out))
        is_l0 = isinstance(layer, L0Dense)
        target_l0 = (convert == "l0") or (convert == "same" and is_l0)
        if target_l0 and is_l0:
            cfg = layer.get_config()
            cfg["units"] = units
            new = L0Dense.from_config(cfg)
        elif target_l0:
            extra = l0_kwargs(k, layer) if callable(l0_kwargs) else (l0_kwargs or {})
            new = L0Dense(**_dense_kwargs(layer, units), **extra)
        else:
            new = keras.layers.Dense(**_dense_kwargs(layer, units))
        new_layers.append(new)
        pending.append((layer, new, (keep_in, keep_out)))
        k += 1

    var_map: VariableMap = []

    def load_weights() -> None:
        for old, new, (keep_in, keep_out) in pending:
            axes = {"in": keep_in, "out": keep_out}
            for attr, spec in PRUNABLE_AXES.items():
                old_var, new_var = getattr(old, attr, None), getattr(new, attr, None)
                if old_var is None or new_var is None:
                    continue
                index = tuple(axes[a] if a is not None else None for a in spec)
                value = np.asarray(old_var.numpy())
                if attr == "kernel" and kernel_transform is not None:
                    value = kernel_transform(old, value)
                new_var.assign(take_axes(value, index).astype(new_var.dtype))
                var_map.append((old_var, new_var, index))
            if isinstance(old, L0Dense) and isinstance(new, L0Dense):
                new.seed_generator.state.assign(old.seed_generator.state.numpy())

    return new_layers, var_map, load_weights


def transfer_optimizer(optimizer: keras.optimizers.Optimizer, var_map: VariableMap, new_variables: Sequence[Any]):
    """A fresh optimizer for `new_variables` carrying the sliced state of `optimizer`.

    Keras 3 optimizers refuse variables they were not built with and `build()`
    returns early once built, so: `from_config`, `build(new_variables)`, then every
    optimizer variable is copied, scalars (iterations, ...) as they are and slots
    sliced like their model variable (paper Sec. 4.1: pruned units leave no state).

    Args:
        optimizer: the built optimizer of the old model.
        var_map: `rebuild_body`'s map of old to new variables.
        new_variables: the new model's trainable variables, in model order.

    Returns:
        The new, built optimizer.

    Raises:
        ValueError: an optimizer slot whose shape is not its variable's.
    """
    new_opt = type(optimizer).from_config(optimizer.get_config())
    new_opt.build(list(new_variables))
    if not optimizer.built:
        return new_opt
    by_old = {id(old): (new, index) for old, new, index in var_map}
    old_vars = list(optimizer._trainable_variables)
    old_opt_vars, new_opt_vars = list(optimizer.variables), list(new_opt.variables)
    if len(old_opt_vars) != len(new_opt_vars):
        raise ValueError(
            f"Optimizer {type(optimizer).__name__}: the rebuilt optimizer has {len(new_opt_vars)} "
            f"variables, the old one {len(old_opt_vars)}; cannot carry its state across pruning."
        )
    # Slots are named "<optimizer>/<variable path with '_' for '/'>_<slot>": match the
    # longest variable path, then check the shape.
    prefixes = sorted(((v.path.replace("/", "_") + "_", v) for v in old_vars), key=lambda p: -len(p[0]))
    for old_v, new_v in zip(old_opt_vars, new_opt_vars):
        if len(old_v.shape) == 0:
            new_v.assign(old_v.numpy())
            continue
        slot_name = old_v.path.split("/", 1)[-1]
        ref = next((v for prefix, v in prefixes if slot_name.startswith(prefix)), None)
        if ref is None or tuple(old_v.shape) != tuple(ref.shape) or id(ref) not in by_old:
            expected = "no model variable" if ref is None else f"the shape of its variable '{ref.path}' {tuple(ref.shape)}"
            raise ValueError(
                f"Optimizer {type(optimizer).__name__}: slot '{old_v.path}' has shape "
                f"{tuple(old_v.shape)}, expected {expected}. tf_dynhp can only prune optimizers "
                "whose slots have their variable's shape (SGD, Adam, AdamW, RMSprop, Adagrad, ...)."
            )
        _, index = by_old[id(ref)]
        new_v.assign(take_axes(old_v.numpy(), index).astype(new_v.dtype))
    return new_opt
