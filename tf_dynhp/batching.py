"""Dynamic batch size of DynHP (paper Sec. 4.2, Eq. 8-10), as pure functions.

Eq. 8 grows the batch after each gradient by `floor((1 - alpha_bs) * ||S||_1 / F)`,
with `F` the mean data loss of the mini-batch and `S` a per-parameter gradient
variance (Balles et al. 2017, CABS). The paper is ambiguous about which variance,
and about when the growth is applied ("at the end of each gradient computation"
vs "the batch size can only increase epoch by epoch"). We always *accumulate*
the increments during an epoch and apply them, capped by the budget (Eq. 9-10),
at the epoch boundary. Three readings of `S`, selected by `batch_growth`:

* ``"step_mean"`` (default): every step adds the floor with `S` the variance of the
  mini-batch *mean* gradient, i.e. the per-example variance divided by the batch
  size. It grows slowest and is the only reading compatible with the paper's
  small training memory at alpha_bs >= 0.973 (measured figures in WORKSPACE.md).
* ``"step"``: every step adds the floor with `S` the per-example variance.
* ``"epoch"``: one increment per epoch from the epoch's mean per-example `||S||_1 / F`.

The per-example variance is the unbiased `sum_i (g_i - mean g)^2 / (B - 1)` of
the per-example gradients of every kernel and bias (not of the gate logits),
computed exactly in the train step (see `variance.py`).
"""

from __future__ import annotations

import math
from typing import Any, Callable

from tf_dynhp._checks import real_number, whole_number

__all__ = ["BATCH_GROWTH_MODES", "check_alpha_bs", "growth", "batch_increment", "next_batch_size"]

BATCH_GROWTH_MODES = ("step_mean", "step", "epoch")


def check_alpha_bs(alpha_bs: float) -> float:
    """Validates the smoothing parameter of Eq. 8 (alpha_bs in [0, 1])."""
    return real_number("alpha_bs", alpha_bs, "a float in [0, 1]", lambda v: 0.0 <= v <= 1.0)


def growth(ratio: Any, alpha_bs: float, batch: Any = 1.0, floor: Callable[[Any], Any] = math.floor) -> Any:
    """Eq. 8, the one place it is written: `floor((1 - alpha_bs) * ratio / batch)`.

    Used by the compiled training step (with `floor=tf.floor`, on tensors) for the
    "step" and "step_mean" readings, and by `batch_increment` for the "epoch" reading.

    Args:
        ratio: `||S||_1 / F`, the summed per-example gradient variance over the mean
            data loss of the mini-batch.
        alpha_bs: smoothing parameter in [0, 1].
        batch: divides the per-example variance into the variance of the mini-batch
            mean gradient ("step_mean": the batch's example count); 1 otherwise.
        floor: the floor of the caller's number type (`math.floor`, `tf.floor`, `np.floor`).

    Returns:
        The increment, in the caller's number type.
    """
    return floor((1.0 - alpha_bs) * ratio / batch)


def batch_increment(variance_l1: float, loss: float, alpha_bs: float) -> int:
    """One increment of Eq. 8: `floor((1 - alpha_bs) * ||S||_1 / F)`.

    Args:
        variance_l1: `||S||_1`, the summed gradient variance (>= 0).
        loss: `F`, the mean data loss of the mini-batch (> 0; 0 gives no growth).
        alpha_bs: smoothing parameter in [0, 1].

    Returns:
        The non-negative integer increment, at most `MAX_INCREMENT` (the budget's cap,
        Eq. 10, is far below; an infinite ratio raised an OverflowError).
    """
    alpha_bs = check_alpha_bs(alpha_bs)
    if not loss > 0.0 or not math.isfinite(variance_l1):
        return 0
    ratio = max(variance_l1, 0.0) / loss
    if not math.isfinite(ratio) or (1.0 - alpha_bs) * ratio >= MAX_INCREMENT:
        return MAX_INCREMENT if alpha_bs < 1.0 else 0
    return max(0, int(growth(ratio, alpha_bs)))


#: The largest increment `batch_increment` gives (fit's largest batch_size is below 2**62).
MAX_INCREMENT = 2**62


def next_batch_size(batch_size: int, candidate: int, max_batch: int) -> int:
    """Batch size of the next epoch, paper Eq. 10: `min(max_batch, candidate)`, never shrinking.

    Args:
        batch_size: the batch used in the epoch that just ended (b_i).
        candidate: the grown candidate (b~_{i+1}, Eq. 8).
        max_batch: the largest batch the budget allows after pruning (Eq. 9).

    Returns:
        b_{i+1}. The batch never shrinks: pruning only frees memory, so
        `max_batch >= batch_size` whenever the current batch fit.

    Raises:
        ValueError: `batch_size` or `candidate` is not an integer >= 1, `max_batch` not
            an integer >= 0 (floats were cut, strings read, bools taken as 0/1 silently).
    """
    batch_size, candidate = whole_number("batch_size", batch_size, 1), whole_number("candidate", candidate, 1)
    return max(batch_size, min(whole_number("max_batch", max_batch), candidate))
