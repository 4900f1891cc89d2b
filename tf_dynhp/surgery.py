"""Model surgery: the one rebuild routine behind `to_l0`, `strip` and hard pruning.

Hard pruning (paper Sec. 4.1, Eq. 7: Z = Z * g(a, gamma)) removes units for good.
Here that is done by *building a new, smaller functional model*. The chain is read
as a sequence of **unit axes**: the last axis (features of a flat tensor, channels of
a channels_last image) of the tensors between layers (`unit_axes`):

* a weighted layer (`Dense`, `L0Dense`, `Conv2D`, `L0Conv2D`) reads one axis ("in")
  and makes a new one ("out"); `PRUNABLE_AXES` says which axis of each of its weights
  follows which (dense kernel (in, out), conv kernel (., ., in, out), bias (out),
  gate logits (in) for `L0Dense`, (out) for `L0Conv2D`);
* element-wise and pooling layers keep the axis (a channel stays a channel);
* index-map layers (`Flatten`, `Reshape`, `SelectFeatures`) make a new axis whose
  unit j *copies* unit `index_map[j]` of the axis before. The map is derived from the
  shapes alone: flattening (H, W, C) channels_last gives unit `(h*W + w)*C + c` the
  source channel `c`; no per-architecture code.

A pruning plan is one keep-index array per unit axis (the output axis of the last
layer is never pruned). `effective_keep` makes it consistent: a removed channel
removes its copies after an index map (the H x W rows of the next Dense after
`Flatten`), and a unit none of whose copies survive is removed too. `rebuild_body`
then slices every weight along its prunable axes and re-derives the index-map layers
(a `SelectFeatures` follows a `Flatten` when individual flattened features were
pruned). The optimizer is rebuilt the same way (Keras 3 optimizers refuse variables
they were not built with): a fresh optimizer from the old config, built on the new
variables, with each slot sliced like the variable it belongs to.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import keras
import numpy as np

from tf_dynhp.kinds import (
    CONV_TYPES,
    GATED_TYPES,
    INDEX_MAP_TYPES,
    PLAIN_SETTINGS,
    PRUNABLE_AXES,
    WEIGHTED_TYPES,
    io_shapes,
    layer_kind,
)
from tf_dynhp.layers import L0Conv2D, L0Dense, SelectFeatures
from tf_dynhp.optim import clone_optimizer, uncopyable
from tf_dynhp.units import IndexRun, UnitAxis, effective_keep, index_run, unit_axes

__all__ = [
    "PRUNABLE_AXES",
    "UnitAxis",
    "VariableMap",
    "layer_kind",
    "unit_axes",
    "effective_keep",
    "take_axes",
    "build_chain_model",
    "io_structure",
    "call_on_tensor",
    "rebuild_body",
    "transfer_optimizer",
    "check_prunable_optimizer",
]

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
    spatial: bool = False,
    input_name: str | None = None,
    structure: tuple[Any, Any] = (None, None),
) -> keras.Model:
    """Builds the functional model `Input -> [Flatten] -> [SelectFeatures] -> body`.

    Args:
        input_shape: per-example input shape.
        body: fresh (unbuilt) layers, applied in order.
        features: indices of the flattened input to keep, or None for all.
        name: model name.
        dtype: dtype of the input tensor (defaults to Keras' float type).
        spatial: a convolutional chain: `Input -> body`, no flatten head (`features`
            must be None).
        input_name: name of the Input (the user's model's, so that `predict({name: x})`
            works on the rebuilt model as on it); None: Keras' default.
        structure: how the user's model wraps its input and its output
            (`io_structure`): the rebuilt model takes and gives them the same way.

    Returns:
        A built `keras.Model`.
    """
    inputs = keras.Input(shape=tuple(input_shape), dtype=dtype, name=input_name)
    x = inputs
    taken = {layer.name for layer in body} | {input_name}
    if spatial:
        if features is not None:
            raise ValueError("A convolutional chain (spatial=True) takes the input as it is: `features` must be None.")
    else:
        if len(input_shape) > 1:
            # row-major, as the pipeline flattens the data, whatever keras.config.image_data_format() says
            x = keras.layers.Flatten(data_format="channels_last", name=free_name("flatten", taken))(x)
        if features is not None:
            x = SelectFeatures(indices=[int(i) for i in features], name=free_name("select_features", taken))(x)
    for layer in body:
        x = layer(x)
    return keras.Model(_wrap(structure[0], inputs), _wrap(structure[1], x), name=name)


def io_structure(model: keras.Model) -> tuple[Any, Any]:
    """How a one-input, one-output model wraps its input and its output: None (the tensor
    itself) or the structure with 0 for the tensor (`{"img": 0}`, `[0]`, `{"out": [0]}`):
    a `keras.Model({"img": x}, {"logits": y})` takes and gives dicts, and so must the
    models rebuilt from it."""

    def form(struct: Any) -> Any:
        if not isinstance(struct, (dict, list, tuple)):
            return None
        return keras.tree.map_structure(lambda _: 0, struct)

    if not isinstance(model, keras.Model) or isinstance(model, keras.Sequential):
        return (None, None)
    try:
        return (form(model.input), form(model.output))
    except (AttributeError, ValueError):  # an unbuilt or subclassed model: chain.parse_chain says what it needs
        return (None, None)


def call_on_tensor(model: keras.Model, x: Any, **kwargs: Any) -> Any:
    """`model(x)` for a tensor `x`, giving a tensor, whatever structure the model takes
    and gives its one input and output in (`io_structure`): for export's signatures."""
    inputs, outputs = io_structure(model)
    out = model(_wrap(inputs, x), **kwargs)
    return out if outputs is None else keras.tree.flatten(out)[0]


def _wrap(form: Any, tensor: Any) -> Any:
    return tensor if form is None else keras.tree.map_structure(lambda _: tensor, form)


def _shared_kwargs(layer: keras.layers.Layer) -> dict[str, Any]:
    """Constructor arguments every dense or conv layer passes on to its rebuilt self."""
    cfg = layer.get_config()
    return {
        "activation": cfg["activation"],
        "use_bias": cfg["use_bias"],
        "kernel_initializer": cfg["kernel_initializer"],
        "bias_initializer": cfg["bias_initializer"],
        "name": layer.name,
        "dtype": layer.dtype_policy,
    }


def _dense_kwargs(layer: keras.layers.Layer, units: int) -> dict[str, Any]:
    return {"units": units, **_shared_kwargs(layer)}


def _conv_kwargs(layer: keras.layers.Layer, filters: int) -> dict[str, Any]:
    cfg = layer.get_config()
    return {
        "filters": filters,
        "kernel_size": tuple(cfg["kernel_size"]),
        "strides": tuple(cfg["strides"]),
        "padding": cfg["padding"],
        "data_format": "channels_last",
        **_shared_kwargs(layer),
    }


#: What `to_l0` sets anew on a layer that is already gated: the penalty of the training to
#: come (Eq. 5's λ, the L2 term, the training-set size N). Weights, gate logits and the
#: gate's shape (temperature, stretch limits) stay.
PENALTY_SETTINGS = ("l0_lambda", "weight_decay", "dataset_size")


def _new_weighted(layer: keras.layers.Layer, size_out: int, convert: str, l0_kwargs: Any, k: int) -> keras.layers.Layer:
    new = _rebuilt_weighted(layer, size_out, convert, l0_kwargs, k)
    new.trainable = layer.trainable  # a frozen layer stays frozen
    return new


def _rebuilt_weighted(layer: keras.layers.Layer, size_out: int, convert: str, l0_kwargs: Any, k: int) -> keras.layers.Layer:
    conv = isinstance(layer, CONV_TYPES)
    is_l0 = isinstance(layer, GATED_TYPES)
    target_l0 = (convert == "l0") or (convert == "same" and is_l0)
    if target_l0 and is_l0:
        cfg = layer.get_config()
        cfg["filters" if conv else "units"] = size_out
        if convert == "l0" and l0_kwargs:  # a gated layer converted again takes the new penalty (`to_l0`)
            extra = l0_kwargs(k, layer) if callable(l0_kwargs) else l0_kwargs
            cfg.update({key: extra[key] for key in PENALTY_SETTINGS if extra.get(key) is not None})
        return type(layer).from_config(cfg)
    kwargs = _conv_kwargs(layer, size_out) if conv else _dense_kwargs(layer, size_out)
    if target_l0:
        extra = l0_kwargs(k, layer) if callable(l0_kwargs) else (l0_kwargs or {})
        return (L0Conv2D if conv else L0Dense)(**kwargs, **extra)
    cfg = layer.get_config()
    kwargs.update({key: cfg[key] for key in PLAIN_SETTINGS if cfg.get(key) is not None})
    return (keras.layers.Conv2D if conv else keras.layers.Dense)(**kwargs)


def free_name(wanted: str, taken: set[str | None]) -> str:
    """`wanted`, or `wanted_1`, `wanted_2`, ... if a layer of the model has it (Keras
    refuses one name twice: the rebuilt model failed at the first prune)."""
    name, n = wanted, 0
    while name in taken:
        n += 1
        name = f"{wanted}_{n}"
    taken.add(name)
    return name


def _new_index_run(run: IndexRun, eff_in: np.ndarray, eff_out: np.ndarray,
                   taken: set[str | None] | None = None) -> list[keras.layers.Layer]:
    """The layers replacing a run of index-map layers whose input keeps `eff_in` and output `eff_out`:
    its Flatten/Reshape layers re-derived for the surviving units, then one `SelectFeatures`
    if individual positions were pruned (none if it would keep everything)."""
    out: list[keras.layers.Layer] = []
    source: np.ndarray | None = None  # input unit that each position of the current tensor copies
    for k, (layer, m) in enumerate(zip(run.shape_layers, run.shape_maps)):
        cfg = layer.get_config()
        source = None if m is None or (k > 0 and source is None) else (m if k == 0 else source[m])
        if source is not None and isinstance(layer, keras.layers.Reshape):
            target = list(cfg["target_shape"])
            if target[-1] != -1:
                target[-1] = int(np.isin(source, eff_in).sum())
            cfg["target_shape"] = tuple(target)
        out.append(type(layer).from_config(cfg))  # an unfollowable reshape's input is never pruned
    if run.raw_map is None:
        raw_available = np.arange(int(io_shapes(run.shape_layers[-1])[1][-1]))
    else:
        raw_available = np.flatnonzero(np.isin(run.raw_map, eff_in))
    wanted = eff_out if run.select is None else run.select[eff_out]
    if not np.array_equal(wanted, raw_available):
        named = [layer for layer in run.layers if isinstance(layer, SelectFeatures)]
        base = named[0] if named else run.layers[-1]
        out.append(
            SelectFeatures(
                indices=[int(i) for i in np.searchsorted(raw_available, wanted)],
                name=base.name if named else free_name(f"{base.name}_select", set() if taken is None else taken),
                dtype=base.dtype_policy,
            )
        )
    return out


def rebuild_body(
    body: Sequence[keras.layers.Layer],
    keep: Sequence[np.ndarray | None] | None = None,
    convert: str = "same",
    l0_kwargs: dict[str, Any] | Callable[[int, keras.layers.Layer], dict[str, Any]] | None = None,
    weight_transform: Callable[[keras.layers.Layer, str, np.ndarray], np.ndarray] | None = None,
) -> tuple[list[keras.layers.Layer], VariableMap, Callable[[], None]]:
    """New layers for `body` keeping only the given units of every unit axis.

    Args:
        body: the current layers, already built (see `unit_axes`).
        keep: for each unit axis but the last (the model output, never pruned), the
            indices of the units to keep (None: all); None: nothing pruned. For a dense
            chain these are the inputs of each dense layer in order (dense layer k then
            keeps output units `keep[k + 1]`). The plan is made consistent with
            `effective_keep` first.
        convert: "same" (gated layers stay gated, plain ones plain), "l0" (every Dense /
            Conv2D becomes an `L0Dense` / `L0Conv2D` built with `l0_kwargs`), or "dense"
            (every layer becomes a plain `keras.layers.Dense` / `Conv2D`).
        l0_kwargs: gated-layer arguments used by convert="l0" for layers that are not
            gated already: a dict, or `f(k, layer) -> dict` for weighted layer k.
        weight_transform: optional `f(old_layer, weight_name, value) -> value` applied to
            the full kernel and bias before slicing (`strip` folds the gates in with it).

    Returns:
        `(new_layers, variable_map, load_weights)`: the fresh layers (a `SelectFeatures`
        may follow a `Flatten`), the map of old to new variables with their index
        arrays, and a function that copies the sliced weights (and the gate-noise seed
        state) once the new layers are built (call it after `build_chain_model`).
    """
    if convert not in ("same", "l0", "dense"):
        raise ValueError(f"Invalid value received for argument `convert`. Expected 'same', 'l0' or 'dense'. Received: convert={convert!r}")
    axes, layer_axes = unit_axes(body)
    keep = [None] * (len(axes) - 1) if keep is None else list(keep)
    if len(keep) != len(axes) - 1:
        raise ValueError(
            f"Expected one keep-index array per unit axis but the output ({len(axes) - 1}: the inputs of "
            f"every dense layer of a dense chain), received {len(keep)}"
        )
    eff = effective_keep(axes, keep + [None])
    index = [None if e.size == a.size else e for e, a in zip(eff, axes)]
    new_layers: list[keras.layers.Layer] = []
    pending: list[tuple[keras.layers.Layer, keras.layers.Layer, np.ndarray | None, np.ndarray | None]] = []
    seeded: list[tuple[keras.layers.Layer, keras.layers.Layer]] = []  # Dropout: its mask stream goes on
    taken = {layer.name for layer in body}
    k = 0
    i = 0
    while i < len(body):
        layer, (a_in, a_out) = body[i], layer_axes[i]
        if isinstance(layer, INDEX_MAP_TYPES):
            j = i
            while j < len(body) and isinstance(body[j], INDEX_MAP_TYPES):
                j += 1
            new_layers.extend(_new_index_run(index_run(body[i:j]), eff[a_in], eff[a_out], taken))
            i = j
            continue
        if isinstance(layer, WEIGHTED_TYPES):
            size_out = axes[a_out].size if index[a_out] is None else int(index[a_out].size)
            new = _new_weighted(layer, size_out, convert, l0_kwargs, k)
            new_layers.append(new)
            pending.append((layer, new, index[a_in], index[a_out]))
            k += 1
        else:
            new = type(layer).from_config(layer.get_config())
            new_layers.append(new)
            if getattr(layer, "seed_generator", None) is not None and getattr(new, "seed_generator", None) is not None:
                seeded.append((layer, new))
        i += 1

    var_map: VariableMap = []

    def load_weights() -> None:
        for old, new, keep_in, keep_out in pending:
            sides = {"in": keep_in, "out": keep_out}
            for attr, spec in PRUNABLE_AXES[layer_kind(old)].items():
                old_var, new_var = getattr(old, attr, None), getattr(new, attr, None)
                if old_var is None or new_var is None:
                    continue
                idx = tuple(sides[a] if a is not None else None for a in spec)
                value = np.asarray(old_var.numpy())
                if weight_transform is not None and attr != "log_alpha":
                    value = weight_transform(old, attr, value)
                new_var.assign(take_axes(value, idx).astype(new_var.dtype))
                var_map.append((old_var, new_var, idx))
            if isinstance(old, GATED_TYPES) and isinstance(new, GATED_TYPES):
                new.seed_generator.state.assign(old.seed_generator.state.numpy())
        # A Dropout of no seed drew a new one from Python's random at each rebuild: its masks
        # after a prune depended on how many rebuilds came before, so a resume diverged.
        for old, new in seeded:
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
    new_opt = clone_optimizer(optimizer)  # from_config, keeping the weight-decay exclusions
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
    owners = _slot_owners(old_vars)
    for old_v, new_v in zip(old_opt_vars, new_opt_vars):
        if len(old_v.shape) == 0:
            new_v.assign(old_v.numpy())
            continue
        ref = owners(old_v)
        if ref is None or tuple(old_v.shape) != tuple(ref.shape) or id(ref) not in by_old:
            raise _slot_error(optimizer, old_v, ref)
        _, index = by_old[id(ref)]
        new_v.assign(take_axes(old_v.numpy(), index).astype(new_v.dtype))
    return new_opt


def check_prunable_optimizer(optimizer: keras.optimizers.Optimizer) -> None:
    """Refuses, before any training, an optimizer `transfer_optimizer` cannot slice: one
    with a slot of another shape than its variable (Adafactor's factored moments), which
    failed at the first prune, an epoch into the run. A copy is built on two probe
    variables, a kernel and a bias; `optimizer` itself is left as it is.

    Raises:
        ValueError: naming the optimizer and the slot.
    """
    probe = [keras.Variable(np.zeros((3, 5), "float32"), name="kernel"), keras.Variable(np.zeros((5,), "float32"), name="bias")]
    try:
        copy = clone_optimizer(optimizer)
    except Exception as err:  # was the bare TypeError of Keras' from_config
        raise uncopyable(optimizer, err, "the methods that remove units rebuild the optimizer from its config at every prune") from err
    copy.build(probe)
    owners = _slot_owners(probe)
    for slot in copy.variables:
        ref = owners(slot)
        if len(slot.shape) and (ref is None or tuple(slot.shape) != tuple(ref.shape)):
            raise _slot_error(optimizer, slot, ref)


def _slot_owners(variables: Sequence[Any]) -> Callable[[Any], Any]:
    """Slots are named "<optimizer>/<variable path with '_' for '/'>_<slot>": a function
    giving a slot's variable (the longest path that prefixes its name), or None."""
    prefixes = sorted(((v.path.replace("/", "_") + "_", v) for v in variables), key=lambda p: -len(p[0]))

    def owner(slot: Any) -> Any:
        slot_name = slot.path.split("/", 1)[-1]
        return next((v for prefix, v in prefixes if slot_name.startswith(prefix)), None)

    return owner


def _slot_error(optimizer: keras.optimizers.Optimizer, slot: Any, ref: Any) -> ValueError:
    found = "belongs to no variable" if ref is None else f"is not shaped like its variable '{ref.path}' {tuple(ref.shape)}"
    return ValueError(
        f"Optimizer {type(optimizer).__name__}: its slot '{slot.path}', shape {tuple(slot.shape)}, {found}. "
        "tf_dynhp slices the optimizer's state like the weights of the units it removes, so it can prune only with "
        "optimizers whose slots have their variable's shape (SGD, Adam, AdamW, RMSprop, Adagrad, Nadam, Lion, ...); "
        "use one of those, or method='sp', which removes nothing."
    )
