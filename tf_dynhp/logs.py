"""What a run says about itself: the epoch line and the logs Keras callbacks receive."""

from __future__ import annotations

from typing import Any

__all__ = ["DERIVED", "format_line", "scalar_logs"]


#: Logs `scalar_logs` derives for the callbacks that fit's history does not hold.
DERIVED = ("error",)


def scalar_logs(record: dict[str, Any]) -> dict[str, float]:
    """Per-epoch record flattened to scalars for Keras callbacks (lists become key_0, key_1, ...).

    `epoch` is left out: Keras passes the epoch apart (a CSVLogger would write it twice).
    `error` (%, 100 x (1 - accuracy)) is the training twin of `val_error`, as Keras logs
    `accuracy` beside `val_accuracy`: a CSVLogger whose first epoch has no validation
    (`validation_freq`) makes its `val_` columns from the training keys."""
    logs: dict[str, float] = {}
    for key, value in record.items():
        if key == "epoch" or isinstance(value, str):
            continue
        if isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                logs[f"{key}_{i}"] = float(v)
        elif value is not None:
            logs[key] = float(value)
    if "accuracy" in logs and "error" not in logs:
        logs["error"] = 100.0 * (1.0 - logs["accuracy"])
    return logs


def format_line(record: dict[str, Any], epochs: int, gate_kernel: str | None = None) -> str:
    """The epoch line: loss, accuracy, validation error, batch (and Eq. 8's candidate),
    active units per axis, pruned units, memory MO against the budget, which gate
    kernel sampled the gates, seconds."""
    parts = [
        f"Epoch {record['epoch']}/{epochs}",
        f"loss {record['loss']:.4f}",
        f"acc {record['accuracy']:.4f}",
    ]
    if record.get("val_error") is not None:
        parts.append(f"val_error {record['val_error']:.2f}%")
    batch = f"batch {record['batch_size']}"
    if record.get("variance_ratio") is not None:  # DynHP: Eq. 8's candidate and ratio
        batch += f" (cand {record['candidate_batch_size']}, S/F {record['variance_ratio']:.0f})"
    parts += [batch, "active " + "-".join(str(int(round(a))) for a in record["active_units"])]
    if sum(record.get("pruned_units") or []):
        parts.append(f"pruned {sum(record['pruned_units'])}")
    budget = f"/{record['budget_kb']:.1f}" if record.get("budget_kb") else ""
    parts.append(f"MO {record['memory_kb']:.1f}{budget} KB")
    if record.get("target_kb") is not None:  # fit(target_kb=...): size, target, multiplier
        parts.append(f"size {record['model_kb']:.1f}/{record['target_kb']:.1f} KB (expected {record['expected_kb']:.1f}, λ {record['l0_lambda']:.3g})")
    if gate_kernel:
        parts.append(f"gates {gate_kernel}")
    parts.append(f"{record['epoch_seconds']:.1f}s")
    return " - ".join(parts)
