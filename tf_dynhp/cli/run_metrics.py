"""What a run folder's `metrics.json` holds (`tf_dynhp.runs.run` writes it): its fields
and their kinds, and `problem`, which names the first field of another kind (or, when
asked, missing). A file with a problem is damaged: `tf_dynhp.runs.is_finished` says the
run is not finished (a resume writes the file again), and `tools/report.py` and
`tools/summarize.py` name it and leave it out instead of failing on it.

Pure Python (no TensorFlow): the tools load it by its path (`tools/_load.py`)."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["REQUIRED", "KINDS", "problem"]


def _number(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:  # an int beyond float's range (10**400) is no number the tools can format: math.isfinite overflowed
        return math.isfinite(float(v))
    except OverflowError:
        return False


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _positive(v: Any) -> bool:
    return _number(v) and v > 0


def _counts(v: Any) -> bool:
    return isinstance(v, list) and all(_count(e) for e in v)


#: Each field's kind: (test, what it must be).
KINDS: dict[str, tuple[Any, str]] = {
    "test_error": (_number, "a number"),
    "model_kb": (_number, "a number"),
    "dense_model_kb": (_positive, "a positive number"),
    "model_fraction": (_number, "a number"),
    "layer_sizes": (lambda v: v is None or _counts(v), "null or a list of unit counts"),
    "training_memory_mb": (_number, "a number"),
    "mean_memory_kb": (_number, "a number"),
    "max_memory_kb": (_number, "a number"),
    "budget_kb": (lambda v: v is None or _number(v), "null or a number"),
    "batch_sizes": (lambda v: _counts(v) and len(v) > 0, "a non-empty list of batch sizes"),
    "epochs_run": (_count, "a whole number"),
    "gate_kernel": (lambda v: v is None or isinstance(v, str), "null or a name"),
    "train_seconds": (_number, "a number"),
    "total_epoch_seconds": (_number, "a number"),
}
#: Fields a table row of `tools/summarize.py` needs (the report shows a missing one as a dash).
REQUIRED = ("test_error", "model_kb", "batch_sizes", "mean_memory_kb", "max_memory_kb", "epochs_run", "train_seconds")


def problem(metrics: Any, required: tuple[str, ...] = ()) -> str | None:
    """None for a sound `metrics.json` object, else what is wrong with it, e.g.
    "'test_error' is '12.3', expected a number", or with `required` "lacks
    ['model_kb']". A field left out is not wrong (files of other versions lack some);
    one present must be of its kind."""
    if not isinstance(metrics, dict):
        return f"not a JSON object ({type(metrics).__name__})"
    missing = [k for k in required if metrics.get(k) is None]
    if missing:
        return f"lacks {missing}"
    for key, (test, expected) in KINDS.items():
        if key in metrics and not test(metrics[key]):
            return f"{key!r} is {metrics[key]!r:.60}, expected {expected}"
    return None
