"""The figures of RESULTS.md: one PNG per paper figure (Fig. 1-7) and the trade-off
frontier, drawn from the finished run groups of one data set and setting
(`tools/run_folders.py`), with the paper's published points (`tools/paper.py`).

Every file is written with `tf_dynhp._checks.write_atomic`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from paper import DATASET_TITLES, PAPER, PAPER_MEMORY_UNIT_KB, PAPER_TABLES
from run_folders import Group, setting_text

from tf_dynhp._checks import write_atomic
from tf_dynhp.memory import KB_PER_MB, mo_kb_from_counts

__all__ = ["figures_for"]

#: The paper's figure of the error per batch size: Fig. 3 (MNIST), Fig. 4 (Fashion-MNIST).
PAPER_FIGURE_OF_BATCH_GRID = {"mnist": 3, "fashion_mnist": 4}
#: The names of every figure this module draws, before "_<data set>.png".
FIGURE_STEMS = ("fig1_active_units", "fig2_memory_sp_hp", "fig3_error_by_batch", "fig4_error_by_batch", "fig5_error_dynhp",
                "fig6_batch_size", "fig7_memory_dynhp", "frontier")


def is_report_figure(name: str) -> bool:
    """Whether a file name is one this module draws (`FIGURE_STEMS` of a data set the
    report covers): what the report may remove as an earlier report's figure. A user's
    `fig1_my_sketch.png` beside them is not."""
    return any(name == f"{stem}_{dataset}.png" for stem in FIGURE_STEMS for dataset in PAPER)
NUM_CLASSES = 10


def _dense_chain_weights(dims: Sequence[float]) -> float:
    """Weights and biases of a dense chain of widths `dims` (inputs first, classes last);
    the widths may be fractional (mean open gates)."""
    return float(sum(dims[i] * dims[i + 1] + dims[i + 1] for i in range(len(dims) - 1)))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _log_error_axis(ax) -> None:
    """Error % on a log axis, ticks written as plain numbers (2, 5, 10 rather than 10^0.3)."""
    from matplotlib.ticker import FormatStrFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.grid(alpha=0.3, which="both")


def _curve(group: Group, key: str) -> list[float] | None:
    """Per-epoch `key` averaged over the group's finished seeds (None: no history)."""
    series = []
    for r in group.finished:
        h = r.history()
        if h and key in h and all(v is not None for v in h[key]):
            series.append([float(v) for v in h[key]])
    if not series:
        return None
    n = min(len(s) for s in series)
    return [sum(s[i] for s in series) / len(series) for i in range(n)]


def _units_curves(group: Group) -> list[list[float]] | None:
    """active_units per layer (rows: layers), averaged over seeds."""
    per_seed = []
    for r in group.finished:
        h = r.history()
        if h and h.get("active_units"):
            per_seed.append([[float(x) for x in u] for u in h["active_units"]])
    if not per_seed:
        return None
    n = min(len(s) for s in per_seed)
    layers = len(per_seed[0][0])
    return [[sum(s[e][i] for s in per_seed) / len(per_seed) for e in range(n)] for i in range(layers)]


def _virtual_mo(group: Group) -> list[float] | None:
    """SP's 'virtual' MO per epoch (Fig. 7): MO of a network of the mean active units (Fig. 1)."""
    units = _units_curves(group)
    batches = _curve(group, "batch_size")
    if units is None or batches is None:
        return None
    out = []
    for e in range(min(len(units[0]), len(batches))):
        dims = [units[i][e] for i in range(len(units))] + [NUM_CLASSES]
        out.append(mo_kb_from_counts(_dense_chain_weights(dims), batches[e], dims[0]))
    return out


def _label(group: Group) -> str:
    n = len(group.finished)
    return group.label() + (f" (mean of {n} seeds)" if n > 1 else "")


def _cumulative_mb(values: Sequence[float]) -> list[float]:
    out, total = [], 0.0
    for v in values:
        total += v
        out.append(total / KB_PER_MB)
    return out


#: Curves of at most this many points get a marker on each (as `tf_dynhp.plot_history`):
#: a 1-epoch run's line has no length and would not show.
MARK_POINTS = 20


def _save(fig, path: Path) -> Path:
    for ax in fig.axes:
        marked = set()
        for line in ax.get_lines():
            in_data = line.get_transform() is ax.transData  # not an axhline (drawn in axes coordinates)
            if in_data and len(line.get_xdata()) <= MARK_POINTS and line.get_marker() in (None, "None", "", " "):
                line.set_marker("o")
                line.set_markersize(3)
                marked.add(line.get_label())
        legend = ax.get_legend()
        if marked and legend is not None:  # its swatches were copied from the lines before the markers
            for handle, text in zip(legend.legend_handles, legend.get_texts(), strict=False):
                if text.get_text() in marked and hasattr(handle, "set_marker"):
                    handle.set_marker("o")
                    handle.set_markersize(3)
    try:
        fig.tight_layout()
        write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        _pyplot().close(fig)
    return path


def figures_for(dataset: str, setting: tuple, groups: Sequence[Group], folder: Path) -> list[tuple[str, Path]]:
    """Draws every figure of one data set from the finished groups of `setting`; returns (caption, path)."""
    plt = _pyplot()
    title = DATASET_TITLES.get(dataset, dataset)
    epochs_note = setting_text(setting)
    paper_groups = [g for g in groups if g.is_paper_setting() and g.finished]
    sp_batch, hp_batch = PAPER[dataset]["sp_batch"], PAPER[dataset]["hp_batch"]
    sp = next((g for g in paper_groups if g.config["method"] == "sp" and g.config["batch_size"] == sp_batch), None)
    hp = next((g for g in paper_groups if g.config["method"] == "hp" and g.config["batch_size"] == hp_batch), None)
    dyn = sorted((g for g in paper_groups if g.config["method"] == "dynhp"), key=lambda g: g.config["alpha_bs"])
    out: list[tuple[str, Path]] = []

    # Figure 1: active units per layer, SP (virtual: mean open gates) and HP.
    if sp or hp:
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
        names = ["input layer (features)", "hidden layer 1", "hidden layer 2"]
        for g, style, what in ((sp, "--", "virtual (mean open gates)"), (hp, "-", "units kept")):
            units = _units_curves(g) if g else None
            if not units:
                continue
            for i, ax in enumerate(axes[: len(units)]):
                ax.plot(range(1, len(units[i]) + 1), units[i], style, label=f"{_label(g)}: {what}")
        for ax, name in zip(axes, names, strict=True):
            ax.set_title(name)
            ax.set_xlabel("epoch")
            ax.set_ylabel("active units")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{title}: active units per layer (cf. paper Fig. 1), {epochs_note}", fontsize=10)
        out.append((f"Fig. 1 ({title}): active units per layer, SP (dashed, mean open gates) and HP.",
                    _save(fig, folder / f"fig1_active_units_{dataset}.png")))

    def memory_figure(entries: list[tuple[str, list[float], str]], name: str, caption: str, fig_no: str) -> None:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4))
        for label, values, style in entries:
            x = range(1, len(values) + 1)
            axes[0].plot(x, values, style, label=label)
            axes[1].plot(x, _cumulative_mb(values), style, label=label)
        axes[0].set_ylabel("MO per epoch (KB)")
        axes[0].set_title("memory per epoch (paper's curves)")
        axes[1].set_ylabel("cumulative training memory (MB = 1000 KB)")
        axes[1].set_title("cumulative (area under the left curve; Tables 2-3)")
        for ax in axes:
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{title}: {caption} (cf. paper Fig. {fig_no}), {epochs_note}", fontsize=10)
        out.append((f"Fig. {fig_no} ({title}): {caption}; left per epoch, right cumulative.", _save(fig, folder / name)))

    # Figure 2: memory of SP (real and virtual) and HP.
    entries: list[tuple[str, list[float], str]] = []
    if sp and _curve(sp, "memory_kb"):
        entries.append((f"{_label(sp)}, real", _curve(sp, "memory_kb"), "k-"))
        if _virtual_mo(sp):
            entries.append((f"{_label(sp)}, virtual (mean open gates)", _virtual_mo(sp), "k--"))
    if hp and _curve(hp, "memory_kb"):
        entries.append((_label(hp), _curve(hp, "memory_kb"), "C1-"))
    if entries:
        memory_figure(entries, f"fig2_memory_sp_hp_{dataset}.png", "training memory of SP and HP", "2")

    # Figures 3-4: error vs epoch per batch size, SP and HP.
    by_method = {m: sorted((g for g in paper_groups if g.config["method"] == m), key=lambda g: g.config["batch_size"]) for m in ("sp", "hp")}
    if by_method["sp"] or by_method["hp"]:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
        for ax, m in zip(axes, ("sp", "hp"), strict=True):
            for g in by_method[m]:
                err = _curve(g, "val_error")
                if err:
                    ax.plot(range(1, len(err) + 1), err, label=f"bs = {g.config['batch_size']}")
            ax.set_title(f"({'a' if m == 'sp' else 'b'}) {m.upper()}")
            ax.set_xlabel("epoch")
            _log_error_axis(ax)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        axes[0].set_ylabel("misclassification error % (log)")
        no = PAPER_FIGURE_OF_BATCH_GRID.get(dataset, 3)
        fig.suptitle(f"{title}: test error per batch size (cf. paper Fig. {no}), {epochs_note}", fontsize=10)
        out.append((f"Fig. {no} ({title}): test error of SP and HP per mini-batch size.",
                    _save(fig, folder / f"fig{no}_error_by_batch_{dataset}.png")))

    # Figure 5: error vs epoch per alpha_bs, with SP and HP at their best.
    if dyn:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for g in dyn:
            err = _curve(g, "val_error")
            if err:
                ax.plot(range(1, len(err) + 1), err, label=_label(g))
        for g, style in ((sp, "k-"), (hp, "k--")):
            err = _curve(g, "val_error") if g else None
            if err:
                ax.plot(range(1, len(err) + 1), err, style, label=_label(g))
        ax.set_xlabel("epoch")
        ax.set_ylabel("misclassification error % (log)")
        _log_error_axis(ax)
        ax.legend(fontsize=7)
        ax.set_title(f"{title}: test error per α_bs (cf. paper Fig. 5)\n{epochs_note}", fontsize=10)
        out.append((f"Fig. 5 ({title}): test error of DynHP per α_bs, SP and HP at their best batch.",
                    _save(fig, folder / f"fig5_error_dynhp_{dataset}.png")))

        # Figure 6: batch size vs epoch per alpha_bs.
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for g in dyn:
            b = _curve(g, "batch_size")
            if b:
                ax.plot(range(1, len(b) + 1), b, label=_label(g))
        ax.axhline(sp_batch, color="k", linestyle=":", label=f"SP batch {sp_batch} (the budget)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("mini-batch size")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title(f"{title}: mini-batch size per α_bs (cf. paper Fig. 6)\n{epochs_note}", fontsize=10)
        out.append((f"Fig. 6 ({title}): DynHP mini-batch size per α_bs.", _save(fig, folder / f"fig6_batch_size_{dataset}.png")))

        # Figure 7: memory of DynHP per alpha_bs, HP and SP (real and virtual).
        entries = [(_label(g), _curve(g, "memory_kb"), "-") for g in dyn if _curve(g, "memory_kb")]
        if hp and _curve(hp, "memory_kb"):
            entries.append((_label(hp), _curve(hp, "memory_kb"), "C7-"))
        if sp and _curve(sp, "memory_kb"):
            entries.append((f"{_label(sp)}, real", _curve(sp, "memory_kb"), "k-"))
            if _virtual_mo(sp):
                entries.append((f"{_label(sp)}, virtual (mean open gates)", _virtual_mo(sp), "k--"))
        memory_figure(entries, f"fig7_memory_dynhp_{dataset}.png", "training memory of DynHP, HP and SP", "7")

    # Trade-off frontier (not in the paper): every finished run, with the paper's points.
    finished = [g for g in groups if g.finished]
    if finished:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
        markers = {"sp": "s", "hp": "^", "dynhp": "o", "dense": "x"}
        colors = {"sp": "C0", "hp": "C1", "dynhp": "C2", "dense": "C3"}
        seen: set[str] = set()
        names = {"sp": "SP, ours (stripped after training)", "hp": "HP, ours", "dynhp": "DynHP, ours"}
        for g in finished:
            m = g.config["method"]
            # fit(target_kb=...) runs (issue 16): stars, so they stand beside the paper's points at the same sizes.
            kind = m + ("+target" if g.config.get("target_kb") is not None else "")
            marker, size = ("*", 70) if kind.endswith("+target") else (markers.get(m, "o"), 25)
            for r in g.finished:
                if any(r.metrics.get(k) is None for k in ("model_kb", "mean_memory_kb", "test_error")):
                    continue
                label = None if kind in seen else names.get(m, m) + (", target_kb" if kind.endswith("+target") else "")
                seen.add(kind)
                axes[0].scatter(r.metrics["model_kb"], r.metrics["test_error"], marker=marker, color=colors.get(m, "C4"), label=label, s=size)
                axes[1].scatter(r.metrics["mean_memory_kb"], r.metrics["test_error"], marker=marker, color=colors.get(m, "C4"), s=size)
        paper = PAPER_TABLES[dataset]
        for i, (m, _b, _a, err, _de, size_mb, _ds, mem, _dm) in enumerate(paper["rows"]):
            label = f"paper ({paper['table']}, published)" if i == 0 else None
            axes[0].scatter(size_mb * KB_PER_MB, err, marker=markers[m], facecolors="none", edgecolors="k", s=45, label=label)
            axes[1].scatter(mem * PAPER_MEMORY_UNIT_KB / paper["epochs"], err, marker=markers[m], facecolors="none", edgecolors="k", s=45)
        axes[0].set_xlabel("final model size (KB)")
        axes[1].set_xlabel("mean training memory MO per epoch (KB)")
        axes[0].set_ylabel("final test error %")
        for ax in axes:
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{title}: error vs model size and vs training memory, every run ({epochs_note}); hollow: paper (2000 epochs)", fontsize=10)
        out.append((f"Trade-off frontier ({title}, not in the paper): final test error against final model size and "
                    "against mean MO per epoch, every finished run of this setting (stars: `fit(target_kb=...)` runs, at the "
                    "paper's published sizes); hollow black markers: the paper's published points (square SP, triangle HP, circle DynHP).", _save(fig, folder / f"frontier_{dataset}.png")))
    return out
