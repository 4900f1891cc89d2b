"""`plot_history`: one run's curves as in the paper's Figures 1, 2, 5, 6 and 7.

matplotlib is an optional dependency (`pip install tf_dynhp[tools]`); it is
imported only when a plot is drawn, with the non-interactive Agg backend.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from tf_dynhp._checks import file_in_the_way

__all__ = ["plot_history"]

REQUIRED_KEYS = ("active_units", "batch_size", "memory_kb", "val_error")


def plot_history(history: Any, path: str | os.PathLike, title: str | None = None,
                 unit_names: Sequence[str] | None = None) -> str:
    """Draws active units per layer, batch size, memory and error against epochs.

    Panels: (a) active units of every unit axis (input features, hidden units, conv
    channels; Figure 1), (b) mini-batch size (Figure 6), (c) memory per epoch, MO and
    the full footprint with the budget (Figures 2 and 7), and with a size target the
    model's size, its expected size and the target, (d) validation error % (Figure 5).
    A run of a few epochs gets a marker on every point (one epoch is one point).

    Args:
        history: a `FitResult` (its history, and its axes' names for panel (a)), or
            `FitResult.history` (or a `history.jsonl` read back as lists).
        path: output image file (PNG, PDF, SVG: by extension; without one, or with a
            dotted name's last part that is no format ("run-a0.975"), PNG and ".png" is
            added); its folder is made.
        title: figure title.
        unit_names: a label per unit axis for panel (a); default the `FitResult`'s
            (`state.axis_names`: "input", "<layer> units", "<layer> channels",
            "flattened"), else "input", "axis 1", ... (a history alone does not say
            which layers its axes are).

    Returns:
        The path of the file written.

    Raises:
        ValueError: `history` lacks a key the plot needs, or has no epochs; `path` is
            a folder or has an extension matplotlib does not write; `unit_names` is not
            one name per axis.
        ImportError: matplotlib is not installed.
    """
    if unit_names is None and hasattr(history, "state") and hasattr(history, "history"):
        unit_names = list(getattr(history.state, "axis_names", None) or []) or None
    if hasattr(history, "history") and not isinstance(history, Mapping):
        history = history.history
    missing = [k for k in REQUIRED_KEYS if k not in history]
    if missing:
        raise ValueError(f"`history` lacks {missing}; expected the history of tf_dynhp.fit (keys {list(REQUIRED_KEYS)}).")
    epochs = list(range(1, len(history["batch_size"]) + 1))
    if not epochs:
        raise ValueError("`history` has no epochs to plot.")
    path = os.path.expanduser(os.fspath(path))  # "~/plots" is the home folder's (a folder there is refused too)
    if os.path.isdir(path) or path.endswith(os.sep) or not os.path.basename(path):
        raise ValueError(f"`path`={path!r} is a folder; expected the path of an image file to write (e.g. run.png).")
    n_axes = len(history["active_units"][0])
    if unit_names is not None and len(unit_names) != n_axes:
        raise ValueError(f"`unit_names` has {len(unit_names)} names; the history has {n_axes} unit axes.")
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("plot_history needs matplotlib: pip install 'tf_dynhp[tools]'") from err
    path = _image_path(path)  # checked, and its folder made, before anything is drawn

    marker = "o" if len(epochs) <= 20 else None  # a 1-epoch line has no length: only a marker shows it
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    ax = axes[0][0]
    units = [list(u) for u in history["active_units"]]
    names = list(unit_names) if unit_names is not None else ["input"] + [f"axis {i}" for i in range(1, n_axes)]
    for i, name in enumerate(names):
        ax.plot(epochs, [u[i] for u in units], label=name, marker=marker)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("active units (log)")
    ax.set_title("(a) active units per layer")
    ax.legend()

    ax = axes[0][1]
    ax.plot(epochs, history["batch_size"], label="batch size", marker=marker)
    if "candidate_batch_size" in history:
        ax.plot(epochs, history["candidate_batch_size"], "--", label="candidate (Eq. 8)", marker=marker)
    ax.set_xlabel("epoch")
    ax.set_ylabel("examples")
    ax.set_title("(b) mini-batch size")
    ax.legend()

    ax = axes[1][0]
    ax.plot(epochs, history["memory_kb"], label="MO (paper)", marker=marker)
    if "memory_full_kb" in history:
        ax.plot(epochs, history["memory_full_kb"], label="full footprint", marker=marker)
    budgets = [b for b in history.get("budget_kb", []) if b]
    if budgets:
        ax.axhline(budgets[0], color="red", linestyle=":", label=f"budget {budgets[0]:.1f} KB")
    if "model_kb" in history:
        ax.plot(epochs, history["model_kb"], label="model size", marker=marker)
    targets = [t for t in history.get("target_kb", []) if t]
    if targets:  # fit(target_kb=...): the size against the target, and what the penalty sees
        ax.plot(epochs, history["expected_kb"], "--", label="expected size (penalty)", marker=marker)
        ax.axhline(targets[0], color="green", linestyle=":", label=f"target {targets[0]:.1f} KB")
    ax.set_xlabel("epoch")
    ax.set_ylabel("KB")
    ax.set_title("(c) memory and model size per epoch")
    ax.legend()

    ax = axes[1][1]
    errors = [e for e in history["val_error"]]
    if any(e is not None for e in errors):
        shown = [(e, v) for e, v in zip(epochs, errors) if v is not None]  # validation_freq: some epochs only
        ax.plot([e for e, _ in shown], [v for _, v in shown], marker="o" if len(shown) <= 20 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation error %")
    ax.set_title("(d) misclassification error")
    if title:
        fig.suptitle(title)
    try:
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:  # a failed save leaves no open figure behind
        plt.close(fig)
    return path


def _image_path(path: str) -> str:
    """The file `plot_history` writes: `path` with a format matplotlib writes, ".png" added
    when it has no extension or a dotted name's last part is not one ("run-a0.975"); its
    folder is made. A suffix of letters that is no image format (".txt") is refused."""
    from matplotlib.backend_bases import FigureCanvasBase

    path = os.path.expanduser(path)  # "~/x.png" is the home folder's, not a "~" folder here
    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = os.path.splitext(path)[1][1:]
    if suffix.lower() not in formats:
        if suffix.isalpha():
            raise ValueError(f"`path`={path!r} has the extension .{suffix}, which matplotlib does not write; expected "
                             f"one of {sorted(formats)} (or no extension: PNG).")
        path += ".png"  # what savefig writes without an extension: the path returned is the file written
    folder = os.path.dirname(path)
    if folder:
        blocking = file_in_the_way(folder)
        if blocking is not None:  # was a bare FileExistsError
            raise ValueError(f"`path`={path!r}: its folder cannot be made, {str(blocking)!r} is a file; expected the path "
                             "of an image file in a folder.")
        os.makedirs(folder, exist_ok=True)
    return path
