"""Unit axes: what hard pruning shrinks, and consistent keep sets (paper Sec. 4.1, Eq. 7).

The chain is read as a sequence of **unit axes**: the last axis (features of a flat
tensor, channels of a channels_last image) of the tensors between layers
(`unit_axes`). A weighted layer reads one axis and makes a new one; element-wise and
pooling layers keep the axis; index-map layers (`Flatten`, `Reshape`,
`SelectFeatures`) make a new axis whose unit j *copies* unit `index_map[j]` of the
axis before, derived from the shapes alone. A pruning plan is one keep-index array
per axis; `effective_keep` makes it consistent (a removed conv channel removes its
flattened copies; a unit none of whose copies survive is removed too). Pure NumPy on
the layers' shapes: `tf_dynhp.surgery` applies the plan to the weights.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import keras
import numpy as np

from tf_dynhp.kinds import (
    GATED_TYPES,
    INDEX_MAP_TYPES,
    PRUNABLE_AXES,
    WEIGHTED_TYPES,
    io_shapes,
    layer_kind,
    unsupported,
)
from tf_dynhp.layers import SelectFeatures

__all__ = ["UnitAxis", "IndexRun", "index_run", "unit_axes", "axis_names", "effective_keep", "plan_outcome"]


@dataclasses.dataclass
class UnitAxis:
    """The last axis of the tensors between two layers (what pruning shrinks).

    Attributes:
        size: number of units (features or channels) in the current model.
        source: for an axis made by an index-map layer, the axis its units copy; else None.
        index_map: unit j copies unit `index_map[j]` of `source`; None when the layer
            mixes units in a way that cannot be followed (then `source` is never pruned).
        producer: the weighted layer whose output units these are (None: the model
            input or an index map). Only such axes lose units that nobody reads.
        gated_by: the gated layers with one gate per unit of this axis.
    """

    size: int
    source: int | None = None
    index_map: np.ndarray | None = None
    producer: keras.layers.Layer | None = None
    gated_by: list[keras.layers.Layer] = dataclasses.field(default_factory=list)


def _shape_map(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> np.ndarray | None:
    """For each output unit (last axis) of a Flatten/Reshape, the input unit it copies;
    None if the reshape mixes units (no output unit copies a single input unit everywhere)."""
    n_in, n_out = int(in_shape[-1]), int(out_shape[-1])
    # Unit (last-axis index) of every element of the input, in row-major order, laid out
    # in the output's shape: the map exists when every output "row" reads the same units.
    units = (np.arange(math.prod(in_shape), dtype=np.int64) % n_in).reshape(-1, n_out)
    if np.all(units == units[:1]):
        return units[0]
    return None


@dataclasses.dataclass
class IndexRun:
    """Consecutive index-map layers: Flatten/Reshape layers, then SelectFeatures layers.

    `raw_map[p]`: the input unit that position p of the last Flatten/Reshape output copies
    (None: not followable); `select[j]`: the raw position that output unit j is (None: identity).
    """

    layers: list[keras.layers.Layer]
    shape_layers: list[keras.layers.Layer]
    shape_maps: list[np.ndarray | None]
    raw_map: np.ndarray | None
    select: np.ndarray | None

    @property
    def index_map(self) -> np.ndarray | None:
        if self.raw_map is None or self.select is None:
            return self.raw_map
        return self.raw_map[self.select]


def index_run(layers: Sequence[keras.layers.Layer]) -> IndexRun:
    in_shape, _ = io_shapes(layers[0])
    raw_map: np.ndarray | None = np.arange(int(in_shape[-1]))
    shape_layers, shape_maps = [], []
    select: np.ndarray | None = None
    for layer in layers:
        if isinstance(layer, SelectFeatures):
            idx = np.asarray(layer.indices, dtype=np.int64)
            select = idx if select is None else select[idx]
            continue
        if select is not None:
            raise unsupported(layer, "A Flatten/Reshape right after SelectFeatures is not supported; select after reshaping.")
        m = _shape_map(*io_shapes(layer))
        shape_layers.append(layer)
        shape_maps.append(m)
        raw_map = None if (m is None or raw_map is None) else raw_map[m]
    return IndexRun(list(layers), shape_layers, shape_maps, raw_map, select)


def axis_names(axes: Sequence[UnitAxis]) -> list[str]:
    """A label per unit axis, for plots and logs: "input" (the model's input features or
    channels), "<layer> channels" (a conv layer's outputs), "<layer> units" (a dense
    layer's), "flattened" (an axis a Flatten or Reshape copies from another)."""
    names = []
    for i, axis in enumerate(axes):
        if i == 0:
            names.append("input")
        elif axis.producer is None:
            names.append("flattened")
        else:
            kind = "channels" if layer_kind(axis.producer) == "conv2d" else "units"
            names.append(f"{axis.producer.name} {kind}")
    return names


def unit_axes(body: Sequence[keras.layers.Layer]) -> tuple[list[UnitAxis], list[tuple[int, int]]]:
    """The unit axes of a chain body and, for each layer, its (input axis, output axis).

    Axis 0 is the last axis of what the body receives; the last axis is the model's
    output. A run of consecutive index-map layers (Flatten/Reshape, then any
    SelectFeatures) makes one axis, so that inserting or dropping a `SelectFeatures`
    after a `Flatten` keeps the axes of a model (and of its pruning state) the same.
    Gated layers are attached to the axis their gates sit on (`PRUNABLE_AXES` of
    their "log_alpha").

    Args:
        body: layers of a built chain (each called once in a model).

    Returns:
        `(axes, layer_axes)`.

    Raises:
        ValueError: a `Reshape` mixes the units of a prunable axis (names the layer).
    """
    first_in, _ = io_shapes(body[0])
    axes = [UnitAxis(size=int(first_in[-1]))]
    layer_axes: list[tuple[int, int]] = []
    i = 0
    while i < len(body):
        layer = body[i]
        current = len(axes) - 1
        if isinstance(layer, INDEX_MAP_TYPES):
            j = i
            while j < len(body) and isinstance(body[j], INDEX_MAP_TYPES):
                j += 1
            run = index_run(body[i:j])
            src = axes[current]
            if run.raw_map is None and (src.producer is not None or src.gated_by):
                bad = next(lay for lay, m in zip(run.shape_layers, run.shape_maps) if m is None)
                in_shape, out_shape = io_shapes(bad)
                raise unsupported(
                    bad,
                    f"It reshapes {in_shape} to {out_shape}, mixing the units of the last axis, which "
                    "pruning removes; only reshapes that keep each unit a whole slice (e.g. Flatten) "
                    "are supported after a Conv2D/Dense layer.",
                )
            _, out_shape = io_shapes(body[j - 1])
            axes.append(UnitAxis(size=int(out_shape[-1]), source=current, index_map=run.index_map))
            layer_axes += [(current, current + 1)] * (j - i)
            i = j
            continue
        if isinstance(layer, WEIGHTED_TYPES):
            axes.append(UnitAxis(size=int(io_shapes(layer)[1][-1]), producer=layer))
            layer_axes.append((current, current + 1))
            if isinstance(layer, GATED_TYPES):
                side = PRUNABLE_AXES[layer_kind(layer)]["log_alpha"][0]
                axes[current if side == "in" else current + 1].gated_by.append(layer)
        else:  # element-wise and pooling layers keep the unit axis
            layer_axes.append((current, current))
        i += 1
    return axes, layer_axes


def _floor(candidates: np.ndarray, score: np.ndarray | None) -> np.ndarray:
    """The one unit kept when a plan would empty an axis: the best-scored candidate."""
    if candidates.size == 0:
        raise ValueError("A unit axis has no unit left to keep (its source lost every unit).")
    if score is None:
        return candidates[:1]
    return np.array([candidates[int(np.argmax(np.asarray(score)[candidates]))]])


def effective_keep(
    axes: Sequence[UnitAxis],
    keep: Sequence[np.ndarray | None],
    scores: Sequence[np.ndarray | None] | None = None,
) -> list[np.ndarray]:
    """The consistent keep-index arrays of every axis for a requested plan.

    1. Forward: an axis made by an index map keeps only the units whose source unit
       survives (a pruned conv channel takes its H x W flattened copies with it), and
       of those the requested ones.
    2. Backward: a unit of a weighted layer's output none of whose copies survive
       after an index map is removed too (nobody reads it).
    3. Forward again. No axis is ever emptied: the best-scored unit stays.

    Args:
        axes: from `unit_axes`.
        keep: per axis (missing trailing entries: None), the indices to keep in the
            current model's units, or None for all of them.
        scores: optional per-axis scores (activation rates) choosing the unit kept on
            an axis that would be emptied.

    Returns:
        Sorted index arrays, one per axis.
    """
    n = len(axes)
    keep = list(keep) + [None] * (n - len(keep))
    scores = list(scores or []) + [None] * (n - len(scores or []))
    want = [np.arange(a.size) if k is None else np.unique(np.asarray(k, dtype=np.int64)) for a, k in zip(axes, keep)]
    for a, w in zip(axes, want):
        if w.size and (w[0] < 0 or w[-1] >= a.size):
            raise ValueError(f"Keep indices {w[:5]}... are out of range for a unit axis of size {a.size}.")
    eff: list[np.ndarray] = [np.empty(0, np.int64)] * n

    def forward() -> None:
        for i, a in enumerate(axes):
            if a.source is None:
                available = np.arange(a.size)
            elif a.index_map is None:
                if eff[a.source].size != axes[a.source].size:
                    raise ValueError(f"Unit axis {a.source} cannot be pruned: the layer after it mixes its units.")
                available = np.arange(a.size)
            else:
                available = np.flatnonzero(np.isin(a.index_map, eff[a.source]))
            cur = np.intersect1d(available, want[i])
            eff[i] = cur if cur.size or not available.size else _floor(available, scores[i])

    forward()
    need = [e.copy() for e in eff]
    for i in range(n - 1, -1, -1):
        a = axes[i]
        if a.source is None or a.index_map is None:
            continue
        sources = np.unique(a.index_map[need[i]])
        need[a.source] = np.intersect1d(need[a.source], sources)
        if axes[a.source].producer is not None:
            want[a.source] = np.intersect1d(want[a.source], sources)
    forward()
    return eff


def plan_outcome(axes: Sequence[UnitAxis], eff: Sequence[np.ndarray]) -> tuple[list[np.ndarray | None], list[int], list[bool]]:
    """What a consistent plan (`effective_keep`) does to each unit axis but the output:
    (keep indices, None where nothing is pruned; pruned count; whether a gated axis is
    at its floor of one unit)."""
    keep: list[np.ndarray | None] = []
    pruned: list[int] = []
    floors: list[bool] = []
    for axis, e in zip(axes[:-1], eff):
        keep.append(e if e.size < axis.size else None)
        pruned.append(int(axis.size - e.size))
        floors.append(bool(axis.gated_by) and e.size == 1)
    return keep, pruned, floors
