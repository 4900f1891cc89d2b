"""`plot_history`: one run's curves as in the paper's Figures 1, 2, 5, 6 and 7.

matplotlib is an optional dependency (`pip install tf_dynhp[tools]`); it is
imported only when a plot is drawn, with the non-interactive Agg backend.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

__all__ = ["plot_history"]

REQUIRED_KEYS = ("active_units", "batch_size", "memory_kb", "val_error")


def plot_history(history: Mapping[str, Sequence[Any]], path: str | os.PathLike, title: str | None = None) -> str:
    """Draws active units per layer, batch size, memory and error against epochs.

    Panels: (a) active units of every layer's inputs (input features, hidden
    units; Figure 1), (b) mini-batch size (Figure 6), (c) memory per epoch, MO and
    the full footprint with the budget (Figures 2 and 7), and with a size target the
    model's size, its expected size and the target, (d) validation error % (Figure 5).

    Args:
        history: `FitResult.history` (or a `history.jsonl` read back as lists).
        path: output image file (PNG, PDF, SVG: by extension).
        title: figure title.

    Returns:
        The path written.

    Raises:
        ValueError: `history` lacks a key the plot needs, or has no epochs.
        ImportError: matplotlib is not installed.
    """
    missing = [k for k in REQUIRED_KEYS if k not in history]
    if missing:
        raise ValueError(f"`history` lacks {missing}; expected the history of tf_dynhp.fit (keys {list(REQUIRED_KEYS)}).")
    epochs = list(range(1, len(history["batch_size"]) + 1))
    if not epochs:
        raise ValueError("`history` has no epochs to plot.")
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("plot_history needs matplotlib: pip install 'tf_dynhp[tools]'") from err

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    ax = axes[0][0]
    units = [list(u) for u in history["active_units"]]
    names = ["input"] + [f"hidden {i}" for i in range(1, len(units[0]))]
    for i, name in enumerate(names):
        ax.plot(epochs, [u[i] for u in units], label=name)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("active units (log)")
    ax.set_title("(a) active units per layer")
    ax.legend()

    ax = axes[0][1]
    ax.plot(epochs, history["batch_size"], label="batch size")
    if "candidate_batch_size" in history:
        ax.plot(epochs, history["candidate_batch_size"], "--", label="candidate (Eq. 8)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("examples")
    ax.set_title("(b) mini-batch size")
    ax.legend()

    ax = axes[1][0]
    ax.plot(epochs, history["memory_kb"], label="MO (paper)")
    if "memory_full_kb" in history:
        ax.plot(epochs, history["memory_full_kb"], label="full footprint")
    budgets = [b for b in history.get("budget_kb", []) if b]
    if budgets:
        ax.axhline(budgets[0], color="red", linestyle=":", label=f"budget {budgets[0]:.1f} KB")
    if "model_kb" in history:
        ax.plot(epochs, history["model_kb"], label="model size")
    targets = [t for t in history.get("target_kb", []) if t]
    if targets:  # fit(target_kb=...): the size against the target, and what the penalty sees
        ax.plot(epochs, history["expected_kb"], "--", label="expected size (penalty)")
        ax.axhline(targets[0], color="green", linestyle=":", label=f"target {targets[0]:.1f} KB")
    ax.set_xlabel("epoch")
    ax.set_ylabel("KB")
    ax.set_title("(c) memory and model size per epoch")
    ax.legend()

    ax = axes[1][1]
    errors = [e for e in history["val_error"]]
    if any(e is not None for e in errors):
        ax.plot([e for e, v in zip(epochs, errors) if v is not None], [v for v in errors if v is not None])
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation error %")
    ax.set_title("(d) misclassification error")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
