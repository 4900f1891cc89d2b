"""Compression on request: `fit(target_kb=...)` (hard pruning to a stated model size).

The size is the paper's model-size measure: weights + biases of the dense and conv
layers x 4 bytes / 1024 (`tf_dynhp.memory.weight_count`), of the model `strip`
would give. Three pieces, each a pure function of the model's shapes and gates:

* **The multiplier** (`update_lambda`). The penalty weight λ of Eq. 5 becomes a
  Lagrange multiplier of the constraint `size <= target` (dual ascent, as in
  Gallego-Posada et al. 2022, "Controlled Sparsity via Constrained Optimization"):
  at every epoch boundary, after pruning, `λ <- λ + step * (size / target - 1)` while
  the model is above the target, and `λ <- λ / 2` once it is at or below it (pruning
  stops at the target, where the plain step would be ~0 and λ would stay at its
  peak). It rises while the model is too large, falls back toward 0 below, and is
  never negative. What λ follows is
  the *real* size (what Eq. 7's pruning and `strip` leave), not the differentiable
  expected size, which reads several times low (surviving gates open with
  probabilities between 0.5 and 1). Defaults: λ starts at `fit`'s `l0_lambda`
  (0.01, the paper's), `lambda_step` 0.05: a model five times its target adds 0.2
  a epoch, so λ reaches the strength that prunes (0.1-1 on this scale) within a few
  epochs; once at the target it halves every epoch.
* **The penalty** (`expected_weights`): λ / N times the expected number of weights,
  counted across coupled axes (a weight disappears when either of its ends closes):
  for each dense / conv layer `k_h k_w (Σ p_in)(Σ p_out) + Σ p_out`, where p are the
  open probabilities (Eq. 4) of the gates on each unit axis, 1 on ungated axes and
  on the output, and a flattened row's probability is its channel's times its own.
  With p_out = 1 this is Eq. 5's per-layer term: the λ keeps its reference scale.
  Per-layer penalty weights (`l0_lambda` a list or dict, `relative_lambdas`) scale the
  gradient on each layer's own gates by its share of the multiplier (the count is the
  same): the largest value starts λ and the others keep their ratio to it as λ moves.
* **The pruning** (`plan_to_target`): Eq. 7 removes the units whose activation rate
  is below γ. Under a target they are removed **only down to the target**, lowest
  activation rate first: all gates of one axis carry the same penalty and cross γ
  together, so plain Eq. 7 overshoots (inputs 715 -> 335 in one epoch in a measured
  run). This is our departure from Eq. 7. With `force=True` (the guarantee) every
  unit is a candidate, lowest activation rate first, until the model fits.

The guarantee: from the epoch `fit`'s `target_deadline` names (default: a quarter
of the epochs) every boundary forces the model down to the target, so
`result.model` is never larger than `target_kb`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from keras import ops

from tf_dynhp import augment
from tf_dynhp.kinds import CONV_TYPES, WEIGHTED_TYPES
from tf_dynhp.units import UnitAxis, effective_keep, plan_outcome, unit_axes

__all__ = ["SIZE_PENALTIES", "TARGET_SCHEDULES", "deadline_epoch", "scheduled_kb", "update_lambda", "relative_lambdas", "weights_of_sizes", "smallest_weights", "plan_to_target", "expected_weights"]


#: How the size the controller aims at moves over the run (`scheduled_kb`; `fit(target_schedule=...)`).
TARGET_SCHEDULES = ("constant", "cubic")


def deadline_epoch(target_deadline: float, epochs: int) -> int:
    """The number of epochs after which every epoch boundary forces the model to the
    target (`fit(target_deadline=...)`): `ceil(target_deadline * epochs)`, at least 1,
    by the one rule for a fraction of the epochs, `tf_dynhp.augment.augmented_epochs`
    (0.55 of 100 epochs is 55, not the 56 floating point would give)."""
    return augment.augmented_epochs(target_deadline, int(epochs))


def scheduled_kb(target_kb: float, start_kb: float, epoch: int, ramp_epochs: int, schedule: str = "constant") -> float:
    """The size the controller aims at, at the boundary that ends epoch `epoch` (0-based).

    "constant": `target_kb` from the first epoch on (λ rises at once; a 5x model
    loses most of its units in its first few epochs). "cubic": the gradual-pruning
    schedule of Zhu & Gupta (2017, "To prune, or not to prune", Eq. 1; tfmot's
    `PolynomialDecay` with power 3): from `start_kb` down to `target_kb` by the end of
    epoch `ramp_epochs`, `target + (start - target) * (1 - t)^3` with
    `t = (epoch + 1) / ramp_epochs`: fast at first, while the network is redundant,
    slower as it nears the target. Never below `target_kb`.
    """
    if schedule not in TARGET_SCHEDULES:
        raise ValueError(f"target schedule: expected one of {list(TARGET_SCHEDULES)}; received {schedule!r}.")
    if schedule == "constant" or start_kb <= target_kb:
        return float(target_kb)
    t = min(1.0, (int(epoch) + 1) / max(int(ramp_epochs), 1))
    return float(target_kb) + (float(start_kb) - float(target_kb)) * (1.0 - t) ** 3


#: Forms of the differentiable size penalty (`expected_weights`; `fit(size_penalty=...)`).
SIZE_PENALTIES = ("coupled", "outgoing")


def update_lambda(lam: float, size_kb: float, target_kb: float, step: float, floor: float = 0.0) -> float:
    """One update of the multiplier at an epoch boundary.

    Above the target, a dual-ascent step: `lam + step * (size_kb / target_kb - 1)`.
    At or below it, `lam / 2`. Hard pruning is a ratchet (units never come back) and
    stops at the target, so the size then sits just under it, where the plain
    dual-ascent step is ~0 and λ would stay at its peak, pressing on gates that can
    no longer be removed; halving lets it fall back toward `floor` in a few epochs.
    Never below `floor` (default 0: λ falls back toward 0, the plain multiplier; a
    floor > 0 keeps some of the L0 penalty, and the gates' noise, on the model that
    has reached its size).
    """
    floor = max(0.0, float(floor))
    if size_kb > target_kb:
        return max(floor, float(lam) + float(step) * (float(size_kb) / float(target_kb) - 1.0))
    return max(floor, float(lam) * 0.5)


def _kernel_area(layer: Any) -> int:
    return int(math.prod(layer.kernel_size)) if isinstance(layer, CONV_TYPES) else 1


def weights_of_sizes(body: Sequence[Any], layer_axes: Sequence[tuple[int, int]], sizes: Sequence[int]) -> int:
    """Weights + biases of the body's dense / conv layers when unit axis i has `sizes[i]` units."""
    total = 0
    for layer, (a_in, a_out) in zip(body, layer_axes):
        if isinstance(layer, WEIGHTED_TYPES):
            total += _kernel_area(layer) * int(sizes[a_in]) * int(sizes[a_out])
            if getattr(layer, "use_bias", False):
                total += int(sizes[a_out])
    return total


def _rates(axes: Sequence[UnitAxis], gated_layers: Sequence[Any], gate_open: Sequence[np.ndarray], count: float) -> list[np.ndarray | None]:
    """Eq. 6 per unit axis (the lowest rate of the layers gating it), None where no gate sits."""
    rate_of = {id(layer): np.asarray(o, dtype=np.float64) / max(count, 1.0) for layer, o in zip(gated_layers, gate_open)}
    out: list[np.ndarray | None] = []
    for axis in axes:
        out.append(np.min(np.stack([rate_of[id(layer)] for layer in axis.gated_by]), axis=0) if axis.gated_by else None)
    return out


def _plan(axes, layer_axes, body, rates, removed: Sequence[tuple[int, int]]) -> tuple[list[np.ndarray], int]:
    """Keep sets and weight count when the (axis, unit) pairs in `removed` go."""
    drop: dict[int, list[int]] = {}
    for a, j in removed:
        drop.setdefault(a, []).append(j)
    wanted: list[np.ndarray | None] = []
    for i, axis in enumerate(axes[:-1]):
        if i not in drop:
            wanted.append(None)
            continue
        keep = np.setdiff1d(np.arange(axis.size), np.asarray(drop[i]))
        if keep.size == 0:  # never the last unit of an axis
            keep = np.array([int(np.argmax(rates[i]))])
        wanted.append(keep)
    eff = effective_keep(axes, wanted + [None], list(rates[:-1]) + [None])
    return eff, weights_of_sizes(body, layer_axes, [e.size for e in eff])


def smallest_weights(body: Sequence[Any]) -> int:
    """Weights of the smallest model hard pruning can leave: one unit on every gated axis
    (and what follows from it: a conv channel's flattened copies)."""
    axes, layer_axes = unit_axes(body)
    rates = [np.zeros(axis.size) if axis.gated_by else None for axis in axes]
    every = [(i, j) for i, axis in enumerate(axes[:-1]) if axis.gated_by for j in range(axis.size)]
    return _plan(axes, layer_axes, body, rates, every)[1]


def plan_to_target(
    body: Sequence[Any],
    gated_layers: Sequence[Any],
    gate_open: Sequence[np.ndarray],
    count: float,
    gamma: float,
    target_weights: int,
    force: bool = False,
) -> tuple[list[np.ndarray | None], list[int], list[bool]]:
    """Eq. 6-7 under a size target: the units to keep, per unit axis.

    Candidates are the gated units whose activation rate (Eq. 6) is below `gamma`
    (every gated unit with `force`), removed lowest rate first, and only as many as
    it takes to bring the weights to `target_weights` or below (all of them if that
    is not enough). The count is found by bisection on the (monotone) weights of
    the consistent plan (`effective_keep`).

    Returns:
        As `tf_dynhp.pruning.prune_plan`: (keep indices per unit axis but the output
        (None: nothing pruned), pruned count per axis, whether each gated axis is at
        its floor of one unit).
    """
    axes, layer_axes = unit_axes(body)
    rates = _rates(axes, gated_layers, gate_open, count)
    candidates = [
        (float(r[j]), i, j)
        for i, r in enumerate(rates[:-1])
        if r is not None
        for j in range(axes[i].size)
        if force or r[j] < gamma
    ]
    candidates.sort()
    removed = [(i, j) for _, i, j in candidates]
    _, now = _plan(axes, layer_axes, body, rates, [])
    if now <= target_weights:
        m = 0
    else:
        lo, hi = 1, len(removed)  # smallest m with weights(m) <= target (or all candidates)
        if _plan(axes, layer_axes, body, rates, removed)[1] > target_weights:
            lo = hi
        while lo < hi:
            mid = (lo + hi) // 2
            if _plan(axes, layer_axes, body, rates, removed[:mid])[1] <= target_weights:
                hi = mid
            else:
                lo = mid + 1
        m = lo
    eff, _ = _plan(axes, layer_axes, body, rates, removed[:m])
    return plan_outcome(axes, eff)


def expected_weights(body: Sequence[Any], form: str = "coupled", layer_weights: Sequence[float] | None = None) -> Any:
    """The differentiable expected weight count of the body, across coupled axes (see
    the module docstring), from the gates' open probabilities (Eq. 4).

    `layer_weights` (one number >= 0 per dense / conv layer, in order; default all 1)
    are `fit(target_kb=..., l0_lambda=[...])`'s per-layer shares of the multiplier
    (see `relative_lambdas`): layer k's share scales the gradient on layer k's own
    gates (its inputs' for a Dense layer, its channels' for a Conv2D layer), wherever
    they enter the count, as Eq. 5's per-layer λ presses a layer's own gates. The
    value is the count unweighted (a gate's probability enters as
    `share * p + (1 - share) * stop_gradient(p)`): one size, pressed unevenly.

    `form="outgoing"` counts instead, as Eq. 5 and Louizos et al. do, each gate's
    outgoing weights only: every layer's output axis at its current size (p = 1),
    so the biases are constants and drop out. The real size (what follows λ) is
    the same in both forms; they differ in which axis the penalty presses hardest:
    a hidden unit weighs its incoming and outgoing weights when coupled, only its
    outgoing ones here, like an input feature.

    Sizes of ungated axes are read from the variables (a step traced once serves every
    pruned size); the flattened-row maps of a CNN are read from the model's shapes,
    so a CNN's step is traced again after each rebuild under a target."""
    from tf_dynhp.layers import _dynamic_dim  # noqa: PLC0415 - layers imports much

    weighted_layers = [layer for layer in body if isinstance(layer, WEIGHTED_TYPES)]
    if layer_weights is not None and len(layer_weights) != len(weighted_layers):
        raise ValueError(f"layer_weights: expected one number per dense / conv layer ({len(weighted_layers)}); "
                         f"received {len(layer_weights)}: {list(layer_weights)!r}.")
    shares = {} if layer_weights is None else {id(layer): float(w) for layer, w in zip(weighted_layers, layer_weights, strict=True)}
    axes, layer_axes = unit_axes(body)
    expected: list[Any] = [None] * len(axes)  # per axis: vector of open probabilities, or None (= all 1)
    for i, axis in enumerate(axes):
        p = None
        for layer in axis.gated_by:
            q = layer.prob_open()
            share = shares.get(id(layer), 1.0)
            if share != 1.0:  # the same value; the gradient on this layer's gates scaled by its share
                q = share * q + (1.0 - share) * ops.stop_gradient(q)
            p = q if p is None else p * q
        if axis.source is not None and axis.index_map is not None and expected[axis.source] is not None:
            copied = ops.take(expected[axis.source], np.asarray(axis.index_map, dtype=np.int64))
            p = copied if p is None else p * copied
        expected[i] = p

    def total(i: int, layer: Any, side: int) -> Any:  # float32 whatever the layers' dtype (float64 models)
        if expected[i] is not None:
            return ops.cast(ops.sum(expected[i]), "float32")
        return ops.cast(_dynamic_dim(layer.kernel, side), "float32")

    if form not in SIZE_PENALTIES:
        raise ValueError(f"size penalty form: expected one of {list(SIZE_PENALTIES)}; received {form!r}.")
    terms = []
    for layer, (a_in, a_out) in zip(body, layer_axes):
        if not isinstance(layer, WEIGHTED_TYPES):
            continue
        e_in = total(a_in, layer, -2)
        if form == "outgoing":
            terms.append(float(_kernel_area(layer)) * e_in * ops.cast(_dynamic_dim(layer.kernel, -1), "float32"))
            continue
        e_out = total(a_out, layer, -1)
        terms.append(float(_kernel_area(layer)) * e_in * e_out + (e_out if getattr(layer, "use_bias", False) else 0.0))
    return ops.sum(ops.stack([ops.cast(t, "float32") for t in terms]))


def relative_lambdas(values: Sequence[float]) -> tuple[float, tuple[float, ...] | None]:
    """`fit(target_kb=..., l0_lambda=[...])`: the multiplier's start and each layer's
    share of it.

    The multiplier starts at the largest value and layer k's gates are pressed with
    `λ * values[k] / max(values)` throughout the run (`expected_weights`' shares): at
    the start each layer's gates have the value given, as Eq. 5's per-layer λ without a
    target, and the controller scales them together ("works on the total"), so a layer
    given twice another's value is pressed twice as hard at every λ. Returns
    `(start, shares)`; `shares` is None when all values are equal (one multiplier, as
    a number would give).

    Raises:
        ValueError: every value is 0 (no share to scale; give a number, which starts
            the multiplier there).
    """
    values = [float(v) for v in values]
    top = max(values) if values else 0.0
    if top <= 0:
        raise ValueError(
            f"`l0_lambda`={values!r} under `target_kb`: per-layer values set each layer's share of the size "
            "multiplier, relative to the largest, and all are 0. Give at least one value > 0, or one number "
            "(the multiplier's start).")
    if all(v == top for v in values):
        return top, None
    return top, tuple(v / top for v in values)
