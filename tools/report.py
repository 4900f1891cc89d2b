r"""RESULTS.md and figures/*.png from the run folders of tools/reproduce.py.

    python tools/report.py --runs=runs/ --out=RESULTS.md --figures=figures/

Writes, from `<runs>/*/config.json`, `metrics.json`, `history.jsonl` and
checkpoints (and `<runs>/sweep.json`, the runs each reproduce command planned):

* per data set and per setting (epochs, data limits), a table in the layout of
  the paper's Tables 2-3 (Method, alpha_bs / batch, misclassification error and
  its change vs SP, model size and saving vs SP, training memory and saving vs SP)
  with the paper's published numbers beside ours (`PAPER_TABLES`, transcribed
  from the paper's text; the only numbers in RESULTS.md not read from a run
  folder), the command that made the runs above each table;
* a table of every run group (every lambda, batch growth, batch);
* one PNG per figure: active units per layer (Fig. 1), memory per epoch and
  cumulative (Fig. 2, 7), error vs epoch per batch size (Fig. 3-4) and per
  alpha_bs (Fig. 5), batch size vs epoch (Fig. 6), and the trade-off frontier
  (error vs final model size and vs memory per epoch, with the paper's points);
* `<runs>/benchmark.md` (tools/benchmark.py) if present.

Missing and unfinished runs are listed ("not run yet", "unfinished, epoch k of N");
rows of several seeds show mean ± std and their seed count.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("runs", "runs/", "Folder of run folders (tools/reproduce.py --out).")
flags.DEFINE_string("out", "RESULTS.md", "Markdown file to write.")
flags.DEFINE_string("figures", "figures/", "Folder for the PNG figures.")
flags.DEFINE_string("benchmark", None, "Markdown of tools/benchmark.py to include (default: <runs>/benchmark.md if present).")

# --------------------------------------------------------------------------- the paper's numbers
#: The paper's published numbers, transcribed from its text: Table 2 (MNIST) and
#: Table 3 (Fashion-MNIST), 2000 epochs, lambda 0.01, gamma 0.5. Per row: method,
#: batch (SP/HP) or alpha_bs (DynHP), misclassification error % and its printed
#: change vs SP %, model size in the paper's MBytes (1000 KB of 1024 bytes) and its
#: printed saving %, training memory as printed (sum over epochs of MO; the numbers
#: are 10^6 KB: 2609.4 KB x 2000 epochs = 5.219e6 KB) and its printed saving %.
#: Printed percentages are kept as printed (e.g. HP on MNIST: 0.206 of 1.041 MB
#: is printed as -88%, where the sizes give -80%).
PAPER_TABLES: dict[str, dict[str, Any]] = {
    "mnist": {
        "table": "Table 2",
        "epochs": 2000,
        "rows": [
            # method, batch, alpha, error, d_error, size_mb, d_size, memory, d_memory
            ("sp", 512, None, 1.42, None, 1.041, None, 5.219, None),
            ("hp", 100, None, 1.41, -1, 0.206, -88, 1.185, -77),
            ("dynhp", 16, 0.971, 1.50, 5, 0.572, -45, 5.165, -1),
            ("dynhp", 16, 0.972, 1.35, -5, 0.398, -62, 2.736, -48),
            ("dynhp", 16, 0.973, 1.40, -1, 0.205, -80, 1.279, -75),
            ("dynhp", 16, 0.974, 1.45, 2, 0.217, -79, 1.361, -74),
            ("dynhp", 16, 0.975, 1.43, 1, 0.178, -83, 0.980, -81),
        ],
    },
    "fashion_mnist": {
        "table": "Table 3",
        "epochs": 2000,
        "rows": [
            ("sp", 128, None, 9.96, None, 1.041, None, 2.866, None),
            ("hp", 128, None, 10.20, 2, 0.236, -77, 1.377, -52),
            ("dynhp", 16, 0.979, 9.97, 0, 0.430, -59, 2.874, 0),
            ("dynhp", 16, 0.980, 9.64, -3, 0.415, -60, 2.874, 0),
            ("dynhp", 16, 0.981, 9.96, 0, 0.418, -60, 2.874, 0),
            ("dynhp", 16, 0.982, 9.77, -2, 0.399, -62, 2.874, 0),
            ("dynhp", 16, 0.983, 10.21, 2, 0.407, -61, 2.872, 0),
            ("dynhp", 16, 0.984, 10.12, 2, 0.405, -61, 2.872, 0),
            ("dynhp", 16, 0.985, 10.06, 1, 0.410, -61, 2.872, 0),
            ("dynhp", 16, 0.986, 9.93, 0, 0.386, -63, 2.858, 0),
            ("dynhp", 16, 0.987, 10.08, 1, 0.252, -76, 2.573, -10),
            ("dynhp", 16, 0.988, 10.23, 3, 0.135, -87, 0.829, -71),
            ("dynhp", 16, 0.989, 10.50, 5, 0.124, -88, 0.611, -79),
        ],
    },
}
DATASET_TITLES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}
PAPER_FIGURE_OF_BATCH_GRID = {"mnist": 3, "fashion_mnist": 4}
#: The paper's fixed settings (Sec. 5.1-5.3).
PAPER_LAMBDA, PAPER_GAMMA, PAPER_GROWTH, PAPER_HIDDEN, PAPER_LR, DYNHP_BATCH = 0.01, 0.5, "step_mean", (300, 100), 1e-3, 16
NUM_CLASSES, INPUT_DIM = 10, 784
KB_PER_MB = 1000  # the paper's MBytes
#: Test error whose first reaching is timed (the issue's 2% on MNIST; a comparable
#: early milestone on Fashion-MNIST, where SP ends near 10%).
TIME_TARGET_ERROR = {"mnist": 2.0, "fashion_mnist": 11.0}
#: Issue 6's targets for DynHP against SP after 200 epochs: error at most, model and
#: training-memory savings at least (None: no target).
TARGETS = {
    "mnist": {"error": 1.40, "model_saving": 75.0, "memory_saving": 70.0},
    "fashion_mnist": {"error": 10.0, "model_saving": 60.0, "memory_saving": None},
}
PAPER_MEMORY_UNIT_KB = 1e6  # the unit of the paper's "Training Memory" column
_CHECKPOINT = re.compile(r"^epoch-(\d{5,})\.dynhp$")


# --------------------------------------------------------------------------- memory arithmetic
def mo_kb(n_weights: float, batch: float, input_dim: float) -> float:
    """Paper MO (Sec. 5.1) in KB: 4 bytes x (weights + batch x input_dim) / 1024,
    as `tf_dynhp.memory.mo_kb_from_counts` (not imported: the report needs no TensorFlow)."""
    return 4.0 * (n_weights + batch * input_dim) / 1024.0


def mlp_weights(dims: Sequence[float]) -> float:
    """Weights and biases of a dense chain with layer widths `dims` (inputs first, classes last)."""
    return float(sum(dims[i] * dims[i + 1] + dims[i + 1] for i in range(len(dims) - 1)))


def paper_budget_kb(dataset: str, hidden: Sequence[int] = PAPER_HIDDEN) -> float:
    """MO of the dense MLP at the paper's best SP batch: the DynHP budget of Sec. 5.3."""
    sp_batch = PAPER_TABLES[dataset]["rows"][0][1]
    return mo_kb(mlp_weights([INPUT_DIM, *hidden, NUM_CLASSES]), sp_batch, INPUT_DIM)


# --------------------------------------------------------------------------- loading
@dataclasses.dataclass
class RunInfo:
    name: str
    path: Path
    config: dict[str, Any]
    status: str  # "finished", "unfinished, epoch k of N", "not run yet"
    metrics: dict[str, Any] | None
    command: str | None
    _history: dict[str, list[Any]] | None = None

    @property
    def finished(self) -> bool:
        return self.metrics is not None

    def history(self) -> dict[str, list[Any]] | None:
        if self._history is None and self.finished:
            path = self.path / "history.jsonl"
            if path.exists():
                rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
                self._history = {k: [r.get(k) for r in rows] for k in rows[0]} if rows else {}
        return self._history or None

    def time_to_error(self, target: float) -> tuple[float, int] | None:
        """(training seconds, epoch) when the test error after an epoch first reached `target`
        (sum of `epoch_seconds`, which includes the per-epoch evaluation), or None."""
        h = self.history()
        if not h or "val_error" not in h or "epoch_seconds" not in h:
            return None
        total = 0.0
        for epoch, (err, sec) in enumerate(zip(h["val_error"], h["epoch_seconds"]), start=1):
            total += float(sec or 0.0)
            if err is not None and err <= target:
                return total, epoch
        return None


def _normalize(config: dict[str, Any]) -> dict[str, Any]:
    c = dict(config)
    hidden = c.get("hidden", list(PAPER_HIDDEN))
    if isinstance(hidden, str):
        hidden = [int(h) for h in hidden.split(",") if h]
    c["hidden"] = tuple(int(h) for h in hidden)
    c.setdefault("method", "dynhp")
    if c.get("batch_size") is None:
        c["batch_size"] = DYNHP_BATCH if c["method"] == "dynhp" else 100
    for key, default in (("gamma", PAPER_GAMMA), ("l0_lambda", PAPER_LAMBDA), ("learning_rate", PAPER_LR),
                         ("batch_growth", PAPER_GROWTH), ("budget_on", "paper"), ("seed", 1)):
        if c.get(key) is None:
            c[key] = default
    c.setdefault("train_limit", None)
    c.setdefault("test_limit", None)
    c.setdefault("alpha_bs", None)
    c.setdefault("budget_kb", None)
    return c


def _train_command(name: str, c: dict[str, Any]) -> str:
    """A tools/train.py command reproducing a run that no sweep planned."""
    parts = [f"--dataset={c['dataset']}"] + ([f"--arch={c['arch']}"] if c.get("arch", "mlp") != "mlp" else [])
    parts += [f"--method={c['method']}", f"--epochs={c['epochs']}", f"--batch_size={c['batch_size']}",
             f"--l0_lambda={c['l0_lambda']:g}", f"--seed={c['seed']}"]
    if c["method"] == "dynhp":
        parts += [f"--alpha_bs={c['alpha_bs']}", f"--budget_kb={c['budget_kb']}", f"--batch_growth={c['batch_growth']}"]
    if c["train_limit"]:
        parts.append(f"--train_limit={c['train_limit']}")
    return "python tools/train.py " + " ".join(parts) + f" --out_dir=<runs>/{name}"


def _latest_checkpoint_epoch(path: Path) -> int:
    folder = path / "checkpoints"
    if not folder.is_dir():
        return 0
    epochs = [int(m.group(1)) for p in folder.iterdir() if (m := _CHECKPOINT.match(p.name))]
    return max(epochs, default=0)


def _read_json(path: Path) -> Any:
    """The file's JSON, or None when it is missing or not (yet) valid JSON."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def load_runs(runs_dir: Path) -> list[RunInfo]:
    """Every run folder under `runs_dir` and every run `sweep.json` planned."""
    manifest: dict[str, Any] = {}
    if (runs_dir / "sweep.json").exists():
        manifest = json.loads((runs_dir / "sweep.json").read_text()).get("runs", {})
    names = set(manifest)
    if runs_dir.is_dir():
        names |= {p.name for p in runs_dir.iterdir() if p.is_dir() and (p / "config.json").exists()}
    out = []
    for name in sorted(names):
        path = runs_dir / name
        entry = manifest.get(name, {})
        raw = _read_json(path / "config.json") or entry.get("config")
        if not raw or "dataset" not in raw:
            continue
        config = _normalize(raw)
        metrics = _read_json(path / "metrics.json")
        if metrics is not None:
            state = "finished"
        elif path.is_dir() and ((path / "config.json").exists() or _latest_checkpoint_epoch(path)):
            state = f"unfinished, epoch {_latest_checkpoint_epoch(path)} of {config['epochs']}"
        else:
            state = "not run yet"
        command = entry.get("command") or _train_command(name, config)
        out.append(RunInfo(name, path, config, state, metrics, command))
    return out


# --------------------------------------------------------------------------- groups
def setting_key(c: dict[str, Any]) -> tuple:
    return (c["epochs"], c["train_limit"], c["test_limit"], c["hidden"], c["learning_rate"])


def setting_text(key: tuple) -> str:
    epochs, train_limit, test_limit, hidden, lr = key
    data = "full data (60000 train / 10000 test images)"
    if train_limit or test_limit:
        data = f"{train_limit or 60000} train / {test_limit or 10000} test images"
    extra = "" if (tuple(hidden), lr) == (PAPER_HIDDEN, PAPER_LR) else f", MLP 784-{'-'.join(map(str, hidden))}-10, lr {lr:g}"
    return f"{epochs} epochs, {data}{extra}"


def group_key(c: dict[str, Any]) -> tuple:
    dynhp = c["method"] == "dynhp"
    return (
        c["dataset"], c["method"], int(c["batch_size"]), round(c["alpha_bs"], 6) if dynhp and c["alpha_bs"] is not None else None,
        float(c["l0_lambda"]), c["batch_growth"] if dynhp else None, float(c["gamma"]),
        round(c["budget_kb"], 1) if dynhp and c["budget_kb"] else None, c["budget_on"] if dynhp else None,
    ) + setting_key(c)


@dataclasses.dataclass
class Group:
    key: tuple
    runs: list[RunInfo]

    @property
    def config(self) -> dict[str, Any]:
        return self.runs[0].config

    @property
    def finished(self) -> list[RunInfo]:
        return [r for r in self.runs if r.finished]

    def values(self, key: str) -> list[float]:
        return [float(r.metrics[key]) for r in self.finished if r.metrics.get(key) is not None]

    def mean(self, key: str) -> float | None:
        v = self.values(key)
        return sum(v) / len(v) if v else None

    def std(self, key: str) -> float | None:
        v = self.values(key)
        if len(v) < 2:
            return None
        m = sum(v) / len(v)
        return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))

    def status_text(self) -> str:
        """Empty when every seed finished; else what is missing."""
        missing = [r for r in self.runs if not r.finished]
        if not missing:
            return ""
        parts = [f"seed {r.config['seed']}: {r.status}" for r in sorted(missing, key=lambda r: r.config["seed"])]
        return "; ".join(parts)

    def seeds_text(self) -> str:
        n, total = len(self.finished), len(self.runs)
        return f"{n}" if n == total else f"{n} of {total}"

    def is_paper_setting(self) -> bool:
        c = self.config
        if (float(c["l0_lambda"]), float(c["gamma"]), c["hidden"]) != (PAPER_LAMBDA, PAPER_GAMMA, PAPER_HIDDEN):
            return False
        if c["method"] == "dynhp":
            budget = c["budget_kb"]
            return (c["batch_growth"] == PAPER_GROWTH and int(c["batch_size"]) == DYNHP_BATCH and c["budget_on"] == "paper"
                    and budget is not None and abs(budget - paper_budget_kb(c["dataset"], c["hidden"])) < 0.5)
        return c["method"] in ("sp", "hp")

    def label(self) -> str:
        c = self.config
        if c["method"] == "dynhp":
            return f"DynHP α_bs={c['alpha_bs']:.3f}"
        return f"{c['method'].upper()} bs={c['batch_size']}"


def make_groups(runs: Iterable[RunInfo]) -> list[Group]:
    by_key: dict[tuple, list[RunInfo]] = defaultdict(list)
    for r in runs:
        by_key[group_key(r.config)].append(r)
    return [Group(k, sorted(v, key=lambda r: r.config["seed"])) for k, v in by_key.items()]


def _setting_order(key: tuple) -> tuple:
    epochs, train_limit, test_limit = key[0], key[1], key[2]
    return (-epochs, -(train_limit or 10**9), -(test_limit or 10**9), str(key))


# --------------------------------------------------------------------------- formatting
def _pct(value: float | None, ref: float | None) -> str:
    if value is None or ref is None or ref == 0:
        return "n/a"
    return f"{100.0 * (value - ref) / ref:+.0f}%"


def _printed_pct(p: float | None) -> str:
    return "–" if p is None else f"{p:+.0f}%" if p else "0%"


def _mean_std(group: Group, key: str, fmt: str) -> str:
    m, s = group.mean(key), group.std(key)
    if m is None:
        return "–"
    return format(m, fmt) + (f" ± {format(s, fmt)}" if s is not None else "")


def _g4(x: float) -> str:
    return f"{x:.4g}"


def _commands(groups: Iterable[Group], limit: int = 12) -> list[str]:
    seen: list[str] = []
    for g in groups:
        for r in g.runs:
            if r.command and r.command not in seen:
                seen.append(r.command)
    if len(seen) > limit:
        return seen[:limit] + [f"# ... and {len(seen) - limit} more commands (see sweep.json / config.json of each run)"]
    return seen


# --------------------------------------------------------------------------- tables
def _dense_kb(group: Group) -> float:
    """Size of the unpruned MLP: metrics.json `dense_model_kb`, else from the configured layer widths."""
    found = group.mean("dense_model_kb")
    if found is not None:
        return found
    return mo_kb(mlp_weights([INPUT_DIM, *group.config["hidden"], NUM_CLASSES]), 0, INPUT_DIM)


def _sp_size_kb(group: Group) -> float | None:
    """Model size of SP as the paper counts it: every weight is kept during training."""
    return _dense_kb(group)


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _row_size_kb(group: Group) -> float | None:
    return _sp_size_kb(group) if group.config["method"] == "sp" else group.mean("model_kb")


def paper_table(dataset: str, setting: tuple, groups: Sequence[Group]) -> tuple[list[str], list[Group]]:
    """Markdown lines of the paper-layout table of one data set and setting, and the groups in it."""
    paper = PAPER_TABLES[dataset]
    mine = [g for g in groups if g.is_paper_setting()]
    sp_batch, hp_batch = paper["rows"][0][1], paper["rows"][1][1]
    sp = next((g for g in mine if g.config["method"] == "sp" and g.config["batch_size"] == sp_batch), None)
    hp = next((g for g in mine if g.config["method"] == "hp" and g.config["batch_size"] == hp_batch), None)
    dyn = {round(g.config["alpha_bs"], 3): g for g in mine if g.config["method"] == "dynhp"}
    paper_rows = {(r[0], r[1] if r[0] != "dynhp" else None, r[2]): r for r in paper["rows"]}
    rows: list[tuple[str, str, Group | None, tuple | None]] = [
        ("SP", f"bs = {sp_batch}", sp, paper_rows.get(("sp", sp_batch, None))),
        ("HP", f"bs = {hp_batch}", hp, paper_rows.get(("hp", hp_batch, None))),
    ]
    alphas = sorted(set(dyn) | {r[2] for r in paper["rows"] if r[0] == "dynhp"})
    for a in alphas:
        rows.append(("DynHP", f"{a:.3f}", dyn.get(a), paper_rows.get(("dynhp", None, a))))

    epochs = setting[0]
    sp_err = sp.mean("test_error") if sp else None
    sp_size = _sp_size_kb(sp) if sp else None
    sp_mem = sp.mean("training_memory_mb") if sp else None
    lines = [
        f"| Method | α_bs / batch | seeds | Error % ours (Δ vs SP) | Error % paper (Δ) "
        f"| Model size MB ours (saving) | Model size MB paper (saving) "
        f"| Training memory ours, {epochs} epochs, 10⁶ KB (saving) | Training memory paper, {paper['epochs']} epochs, 10⁶ KB (saving) "
        f"| Mean MO per epoch KB ours / paper |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    used = []
    for method, setting_label, g, p in rows:
        if g is not None:
            used.append(g)
        if g is not None and g.finished:
            err = g.mean("test_error")
            size = _row_size_kb(g)
            mem = g.mean("training_memory_mb")
            is_sp = g is sp
            ours_err = _mean_std(g, "test_error", ".2f") + ("" if is_sp else f" ({_pct(err, sp_err)})")
            ours_size = _num(None if size is None else size / KB_PER_MB, ".3f") + ("" if is_sp else f" ({_pct(size, sp_size)})")
            ours_mem = ("–" if mem is None else _g4(mem * KB_PER_MB / PAPER_MEMORY_UNIT_KB)) + ("" if is_sp else f" ({_pct(mem, sp_mem)})")
            ours_mo = _num(g.mean("mean_memory_kb"), ".1f")
            seeds = g.seeds_text()
            note = g.status_text()
            if note:
                ours_err += f" — {note}"
        else:
            state = "not in this sweep" if g is None else g.status_text() or "not run yet"
            ours_err, ours_size, ours_mem, ours_mo, seeds = state, "–", "–", "–", "0"
        if p is not None:
            _, _, _, perr, pderr, psize, pdsize, pmem, pdmem = p
            paper_err = f"{perr:.2f}" + ("" if pderr is None else f" ({_printed_pct(pderr)})")
            paper_size = f"{psize:.3f}" + ("" if pdsize is None else f" ({_printed_pct(pdsize)})")
            paper_mem = f"{pmem:.3f}" + ("" if pdmem is None else f" ({_printed_pct(pdmem)})")
            paper_mo = f"{pmem * PAPER_MEMORY_UNIT_KB / paper['epochs']:.1f}"
        else:
            paper_err = paper_size = paper_mem = paper_mo = "–"
        lines.append(
            f"| {method} | {setting_label} | {seeds} | {ours_err} | {paper_err} | {ours_size} | {paper_size} "
            f"| {ours_mem} | {paper_mem} | {ours_mo} / {paper_mo} |"
        )
    return lines, used


def _mean_time(group: Group, target: float | None) -> float | None:
    """Mean over the finished seeds that reached `target` of their seconds to it (None: none did)."""
    if target is None:
        return None
    hits = [h[0] for h in (r.time_to_error(target) for r in group.finished) if h is not None]
    return sum(hits) / len(hits) if hits else None


def time_to_error_text(group: Group) -> str:
    """Mean seconds (and epochs) until the test error first reached the data set's milestone."""
    target = TIME_TARGET_ERROR.get(group.config["dataset"])
    if target is None or not group.finished:
        return "–"
    reached = [h for h in (r.time_to_error(target) for r in group.finished) if h is not None]
    if not reached:
        return "not reached"
    text = f"{_mean_time(group, target):.0f} s (epoch {'/'.join(str(h[1]) for h in reached)})"
    never = len(group.finished) - len(reached)
    return text if not never else text + f", {never} seed(s) never"


def all_runs_table(groups: Sequence[Group]) -> list[str]:
    target = TIME_TARGET_ERROR.get(groups[0].config["dataset"]) if groups else None
    lines = [
        "| Method | batch / α_bs | λ | batch growth | seeds | status | Error % | Model KB (% of dense) | units input-h1-h2 "
        f"| batch first→last | mean MO KB | max MO KB | training memory MB | train s "
        f"| {'s to target error' if target is None else f's to {target:g}% error'} (epoch) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def order(g: Group) -> tuple:
        c = g.config
        return ({"sp": 0, "hp": 1, "dynhp": 2}.get(c["method"], 3), c["l0_lambda"], c["batch_growth"] if c["method"] == "dynhp" else "",
                c["alpha_bs"] or 0.0, c["batch_size"], c["gamma"])

    for g in sorted(groups, key=order):
        c = g.config
        what = f"{c['alpha_bs']:.3f}" if c["method"] == "dynhp" else f"bs = {c['batch_size']}"
        if c["gamma"] != PAPER_GAMMA:
            what += f", γ = {c['gamma']:g}"
        growth = c["batch_growth"] if c["method"] == "dynhp" else "–"
        status = "finished" if not g.status_text() else g.status_text()
        if g.finished:
            m0 = g.finished[0].metrics
            dense = _dense_kb(g)
            size = g.mean("model_kb")
            size_text = "–" if size is None else f"{size:.1f} ({100 * size / dense:.1f}%)"
            units = "-".join(str(u) for u in m0["layer_sizes"]) if m0.get("layer_sizes") else "–"
            batches = m0.get("batch_sizes") or []
            batch_text = f"{batches[0]}→{batches[-1]}" if batches else "–"
            lines.append(
                f"| {c['method'].upper() if c['method'] != 'dynhp' else 'DynHP'} | {what} | {c['l0_lambda']:g} | {growth} "
                f"| {g.seeds_text()} | {status} | {_mean_std(g, 'test_error', '.2f')} "
                f"| {size_text} | {units} | {batch_text} | {_num(g.mean('mean_memory_kb'), '.1f')} "
                f"| {_num(g.mean('max_memory_kb'), '.1f')} | {_num(g.mean('training_memory_mb'), '.1f')} | {_num(g.mean('train_seconds'), '.0f')} "
                f"| {time_to_error_text(g)} |"
            )
        else:
            lines.append(
                f"| {c['method'].upper() if c['method'] != 'dynhp' else 'DynHP'} | {what} | {c['l0_lambda']:g} | {growth} "
                f"| 0 of {len(g.runs)} | {status} | – | – | – | – | – | – | – | – | – |"
            )
    return lines


# --------------------------------------------------------------------------- figures
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
        out.append(mo_kb(mlp_weights(dims), batches[e], dims[0]))
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


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def figures_for(dataset: str, setting: tuple, groups: Sequence[Group], folder: Path) -> list[tuple[str, Path]]:
    """Draws every figure of one data set from the finished groups of `setting`; returns (caption, path)."""
    plt = _pyplot()
    title = DATASET_TITLES.get(dataset, dataset)
    epochs_note = setting_text(setting)
    paper_groups = [g for g in groups if g.is_paper_setting() and g.finished]
    sp_batch, hp_batch = PAPER_TABLES[dataset]["rows"][0][1], PAPER_TABLES[dataset]["rows"][1][1]
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
        for g in finished:
            m = g.config["method"]
            for r in g.finished:
                if any(r.metrics.get(k) is None for k in ("model_kb", "mean_memory_kb", "test_error")):
                    continue
                label = None if m in seen else {"sp": "SP, ours (stripped after training)", "hp": "HP, ours", "dynhp": "DynHP, ours"}.get(m, m)
                seen.add(m)
                axes[0].scatter(r.metrics["model_kb"], r.metrics["test_error"], marker=markers.get(m, "o"), color=colors.get(m, "C4"), label=label, s=25)
                axes[1].scatter(r.metrics["mean_memory_kb"], r.metrics["test_error"], marker=markers.get(m, "o"), color=colors.get(m, "C4"), s=25)
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
                    "against mean MO per epoch, every finished run of this setting; hollow black markers: the paper's "
                    "published points (square SP, triangle HP, circle DynHP).", _save(fig, folder / f"frontier_{dataset}.png")))
    return out


# --------------------------------------------------------------------------- the document
def _rel(path: Path, start: Path) -> str:
    return os.path.relpath(path, start).replace(os.sep, "/")


LENET5_WEIGHTS = 431_080  # LeNet-5-Caffe 20-50-800-500: conv 520 + 25,050, fc 400,500 + 5,010


def lenet_section(runs: Sequence[RunInfo]) -> list[str]:
    """Issue 8: the LeNet-5-Caffe rows (not in the paper), one line per run."""
    lines = ["## LeNet-5-Caffe with DynHP (issue 8; not in the paper)", "",
             "Target: error ≤ 1.0% with the model ≤ 25% of the dense LeNet-5 (431,080 weights = 1683.9 KB), "
             "no epoch over the budget (MO of LeNet-5 at the data set's SP batch).", ""]
    cmds = sorted({r.command for r in runs if r.command})
    if cmds:
        lines += ["```bash", *cmds, "```", ""]
    lines += ["| run | λ | epochs | test error % | model KB (% of dense) | units (in-conv1-conv2-flat-fc1) "
              "| batch first→last | max MO KB / budget KB | status |", "|---|---|---|---|---|---|---|---|---|"]
    dense_kb = LENET5_WEIGHTS * 4 / 1024
    for r in runs:
        m, c = r.metrics or {}, r.config
        if r.finished:
            sizes = "-".join(str(u) for u in (m.get("layer_sizes") or []))
            batches = m.get("batch_sizes") or [None]
            lines.append(
                f"| {r.name} | {c['l0_lambda']} | {m.get('epochs_run')} | {m['test_error']:.2f} "
                f"| {m['model_kb']:.1f} ({100 * m['model_kb'] / dense_kb:.1f}%) | {sizes} | {batches[0]}→{batches[-1]} "
                f"| {m['max_memory_kb']:.1f} / {m['budget_kb']:.1f} | finished |"
            )
        else:
            lines.append(f"| {r.name} | {c['l0_lambda']} | | | | | | | {r.status} |")
    lines.append("")
    return lines


def _paper_sp(groups: Sequence[Group]) -> Group | None:
    """The SP row of the paper's table (its best batch) among finished groups."""
    dataset = groups[0].config["dataset"] if groups else None
    if dataset not in PAPER_TABLES:
        return None
    batch = PAPER_TABLES[dataset]["rows"][0][1]
    return next(
        (g for g in groups if g.is_paper_setting() and g.config["method"] == "sp" and g.config["batch_size"] == batch and g.finished),
        None,
    )


def _dynhp_label(g: Group) -> str:
    c = g.config
    return f"DynHP α_bs {c['alpha_bs']:.3f}, λ {c['l0_lambda']:g}, {c['batch_growth']}"


def targets_section(dataset: str, groups: Sequence[Group]) -> list[str]:
    """Issue 6's targets, each DynHP run group of the setting checked against them."""
    target = TARGETS.get(dataset)
    sp = _paper_sp(groups)
    dyn = [g for g in groups if g.config["method"] == "dynhp" and g.finished]
    if target is None or sp is None or not dyn:
        return []
    sp_size, sp_mem = _sp_size_kb(sp), sp.mean("training_memory_mb")
    milestone = TIME_TARGET_ERROR.get(dataset)
    sp_t = _mean_time(sp, milestone)

    def mark(ok: bool) -> str:
        return "met" if ok else "missed"

    heads = [f"error ≤ {target['error']:.2f}%", f"model saving ≥ {target['model_saving']:.0f}%"]
    if target["memory_saving"] is not None:
        heads.append(f"training-memory saving ≥ {target['memory_saving']:.0f}%")
    lines = [
        f"Targets of issue 6 for DynHP against SP (SP bs = {sp.config['batch_size']}: {_mean_std(sp, 'test_error', '.2f')}% error, "
        f"{sp_size:.1f} KB model, {sp_mem:.1f} MB training memory"
        + (f", {milestone:g}% error first reached after {sp_t:.0f} s" if sp_t is not None else "")
        + "). Savings are 100 × (1 − DynHP / SP); the model is the stripped DynHP model.",
        "",
        "| DynHP run group | seeds | " + " | ".join(heads) + f" | s to {milestone:g}% error (SP: {_num(sp_t, '.0f')} s) | all targets |",
        "|---|---|" + "---|" * len(heads) + "---|---|",
    ]
    for g in sorted(dyn, key=lambda g: (g.config["l0_lambda"], g.config["alpha_bs"], g.config["batch_growth"])):
        err, size, mem = g.mean("test_error"), g.mean("model_kb"), g.mean("training_memory_mb")
        model_saving = 100 * (1 - size / sp_size)
        mem_saving = 100 * (1 - mem / sp_mem)
        checks = [err <= target["error"] + 1e-9, model_saving >= target["model_saving"]]
        cells = [f"{_mean_std(g, 'test_error', '.2f')} ({mark(checks[0])})", f"{model_saving:.1f} ({mark(checks[1])})"]
        if target["memory_saving"] is not None:
            checks.append(mem_saving >= target["memory_saving"])
            cells.append(f"{mem_saving:.1f} ({mark(checks[2])})")
        t = _mean_time(g, milestone)
        if t is None:
            time_cell = "not reached"
        elif sp_t is None:
            time_cell = f"{t:.0f}"
        else:
            time_cell = f"{t:.0f} ({'faster' if t < sp_t else 'slower'} than SP)"
        lines.append(
            f"| {_dynhp_label(g)} | {g.seeds_text()} | " + " | ".join(cells) + f" | {time_cell} | {'yes' if all(checks) else 'no'} |"
        )
    lines += [
        "",
        "Wall times here come from the sweep's own runs, two side by side on the 2 cores (one thread each), some in "
        "an earlier sitting than others: a rough comparison. `tools/benchmark.py` (below) times DynHP and the "
        "alternatives one after the other in one run.",
        "",
    ]
    return lines


def _span(values: Sequence[float], fmt: str) -> str:
    """'a-b' of the rounded extremes, or one value when they print the same."""
    lo, hi = format(min(values), fmt), format(max(values), fmt)
    return lo if lo == hi else f"{lo}-{hi}"


def _closest_lambda_text(groups: Sequence[Group], paper_kept: float, dense_kb: float) -> str:
    """Which of our λ comes closest to the paper's model size (as a sentence ending)."""
    if len(groups) < 2:
        return "."
    best = min(groups, key=lambda g: abs(100 * g.mean("model_kb") / dense_kb - paper_kept))
    return f"; of ours, λ = {best.config['l0_lambda']:g} comes closest to the size the paper reports for λ = {PAPER_LAMBDA:g}."


def observations(dataset: str, groups: Sequence[Group]) -> list[str]:
    """Plain sentences comparing our runs with the paper; every number is computed here."""
    paper = PAPER_TABLES.get(dataset)
    sp = _paper_sp(groups)
    if paper is None or sp is None:
        return []
    p_sp = paper["rows"][0]
    p_dyn = [r for r in paper["rows"] if r[0] == "dynhp"]
    dense_kb = _dense_kb(sp)
    sp_err, sp_mem = sp.mean("test_error"), sp.mean("training_memory_mb")
    ours = [g for g in groups if g.config["method"] == "dynhp" and g.finished and g.is_paper_setting()]
    other = [g for g in groups if g.config["method"] == "dynhp" and g.finished and g.config["l0_lambda"] != PAPER_LAMBDA]
    epochs = sp.config["epochs"]
    out = [
        f"* **SP**: {sp_err:.2f}% test error ({sp.seeds_text()} seed(s)) against the paper's {p_sp[3]:.2f}%, "
        f"{abs(sp_err - p_sp[3]):.2f} points apart."
    ]
    if ours:
        sizes = [100 * g.mean("model_kb") / dense_kb for g in ours]
        errs = [g.mean("test_error") for g in ours]
        mems = [100 * (1 - g.mean("training_memory_mb") / sp_mem) for g in ours]
        finals = [(g.finished[0].metrics.get("batch_sizes") or ["–"])[-1] for g in ours]
        p_sizes = [100 * r[5] * KB_PER_MB / dense_kb for r in p_dyn]
        p_mems = [-r[8] for r in p_dyn]
        alphas = ", ".join(f"{g.config['alpha_bs']:.3f}" for g in ours)
        out.append(
            f"* **DynHP at the paper's λ = {PAPER_LAMBDA:g}** (α_bs {alphas}): {_span(errs, '.2f')}% error, "
            f"{min(errs) - sp_err:+.2f} to {max(errs) - sp_err:+.2f} points from our SP (the paper's DynHP rows: "
            f"{min(r[3] for r in p_dyn) - p_sp[3]:+.2f} to {max(r[3] for r in p_dyn) - p_sp[3]:+.2f} from its SP). "
            f"Our models keep {_span(sizes, '.0f')}% of the dense weights after {epochs} epochs; the paper's "
            f"keep {_span(p_sizes, '.0f')}% after {paper['epochs']}. Our training memory is "
            f"{_span(mems, '.0f')}% below SP's at every α_bs (final batches {', '.join(str(b) for b in finals)}); "
            f"the paper's savings range from {min(p_mems):.0f}% to {max(p_mems):.0f}% across its α_bs: that sensitivity "
            f"to α_bs does not appear in our {epochs} epochs."
        )
    swings = []
    for g in groups:
        for r in g.finished:
            h = r.history() or {}
            tail = [e for e in (h.get("val_error") or [])[-20:] if e is not None]
            if len(tail) >= 2:
                m = sum(tail) / len(tail)
                swings.append(math.sqrt(sum((e - m) ** 2 for e in tail) / (len(tail) - 1)))
    if swings:
        out.append(
            f"* **Epoch-to-epoch noise**: over its last 20 epochs the test error of a run moves with a standard deviation of "
            f"{_span(swings, '.2f')} points (fixed learning rate, as in the paper); the tables report the last epoch's error, "
            "so differences of that size between single-seed rows are within noise."
        )
    p_hp = paper["rows"][1]
    hps = sorted((g for g in groups if g.config["method"] == "hp" and g.finished and g.config["batch_size"] == p_hp[1]),
                 key=lambda g: g.config["l0_lambda"])
    if hps:
        parts = [f"λ = {g.config['l0_lambda']:g}: {g.mean('test_error'):.2f}% error, {100 * g.mean('model_kb') / dense_kb:.0f}% of "
                 f"the dense weights kept" for g in hps]
        out.append(
            f"* **HP, bs = {p_hp[1]}**: " + "; ".join(parts) + f". The paper's HP (λ = {PAPER_LAMBDA:g}, {paper['epochs']} epochs) "
            f"keeps {100 * p_hp[5] * KB_PER_MB / dense_kb:.0f}% at {p_hp[3]:.2f}%. How much a λ prunes depends on the scale "
            "the penalty is read on (ours: the reference L0 code's, divided by the training-set size N, each input gate "
            "weighted by the weights it controls)"
            + _closest_lambda_text(hps, 100 * p_hp[5] * KB_PER_MB / dense_kb, dense_kb)
        )
    for g in sorted(other, key=lambda g: (g.config["l0_lambda"], g.config["alpha_bs"])):
        size = 100 * g.mean("model_kb") / dense_kb
        mem = 100 * (1 - g.mean("training_memory_mb") / sp_mem)
        out.append(
            f"* **{_dynhp_label(g)}**: {g.mean('test_error'):.2f}% error ({g.mean('test_error') - sp_err:+.2f} points from SP), "
            f"{size:.0f}% of the dense weights kept, training memory {mem:.0f}% below SP's ({g.seeds_text()} seed(s))."
        )
    return out


def build_report(runs_dir: Path, out: Path, figures_dir: Path, benchmark: Path | None, command: str) -> dict[str, Any]:
    """Writes RESULTS.md and the figures; returns a summary (counts, figure paths)."""
    runs = load_runs(runs_dir)
    cnn_runs = [r for r in runs if r.config.get("arch", "mlp") != "mlp"]
    groups = make_groups([r for r in runs if r.config.get("arch", "mlp") == "mlp"])
    figures_dir.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    n_finished = sum(r.finished for r in runs)
    missing = [r for r in runs if not r.finished]
    lines = [
        "# Results: DynHP reproduction (paper Tables 2-3, Figures 1-7)",
        "",
        f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M')} from {len(runs)} runs in `{runs_dir}` "
        f"({n_finished} finished, {sum(r.status.startswith('unfinished') for r in runs)} unfinished, "
        f"{sum(r.status == 'not run yet' for r in runs)} not run yet). Every number is read from the run folders, except the "
        "columns marked **paper**: the published numbers of the paper's Tables 2-3, transcribed into `tools/report.py` "
        "(`PAPER_TABLES`).",
        "",
        "## Units and how to read the tables",
        "",
        "* **Error**: misclassification error % on the test set after the *last* epoch (`metrics.json` `test_error`, the "
        "stripped model), not the best epoch. Rows of several seeds show mean ± sample std; the *seeds* column says how "
        "many finished seeds each row has. Δ vs SP is relative: 100 × (error − SP error) / SP error, as the paper prints it.",
        "* **Model size**: weights and biases × 4 bytes, in the paper's MB = 1000 KB of 1024 bytes (the dense "
        "784-300-100-10 MLP is 1041.4 KB = 1.041 MB). SP's row is the full model, as in the paper (SP removes nothing "
        "while training); the size of SP's model stripped after training is in the run table below.",
        "* **Training memory**: the sum over epochs of MO (Sec. 5.1: weights + one mini-batch, 4-byte floats, per epoch), "
        "i.e. the area under the memory curve of Fig. 7. The paper's column is headed MBytes but its numbers are 10⁶ KB "
        "(SP on MNIST: 2609.4 KB × 2000 epochs = 5.219 × 10⁶ KB); ours are printed in the same unit. Training memory "
        "grows with the number of epochs: the paper trained 2000, we train the epochs stated above each table, so compare "
        "the **savings in %** (and the mean MO per epoch, the last column: total / epochs), not the totals.",
        "* Savings are relative to the SP row of the same table: 100 × (ours − SP) / SP.",
        "* The paper's columns are printed as published, including three oddities: HP on MNIST is printed −88% smaller "
        "although 0.206 of 1.041 MB is −80%; Table 3 heads its size column '(%)' but prints MB; and Table 3's DynHP rows "
        "at α_bs 0.979-0.982 used 2.874 × 10⁶ KB, more than the SP budget's 2.866 (1437 KB per epoch against 1433.4).",
        "",
    ]
    summary: dict[str, Any] = {"runs": len(runs), "finished": n_finished, "figures": [], "tables": 0}
    datasets = [d for d in PAPER_TABLES if any(g.config["dataset"] == d for g in groups)]
    datasets += sorted({g.config["dataset"] for g in groups} - set(datasets))
    for dataset in datasets:
        title = DATASET_TITLES.get(dataset, dataset)
        dgroups = [g for g in groups if g.config["dataset"] == dataset]
        settings = sorted({setting_key(g.config) for g in dgroups}, key=_setting_order)
        for setting in settings:
            sgroups = [g for g in dgroups if setting_key(g.config) == setting]
            lines.append(f"## {title}: {setting_text(setting)}")
            lines.append("")
            table, used = paper_table(dataset, setting, sgroups) if dataset in PAPER_TABLES else ([], [])
            if used:
                lines.append(f"### In the layout of the paper's {PAPER_TABLES[dataset]['table']} (λ = {PAPER_LAMBDA}, γ = {PAPER_GAMMA}, "
                             f"DynHP from batch {DYNHP_BATCH} under the budget MO(SP) = {paper_budget_kb(dataset):.1f} KB, batch growth {PAPER_GROWTH})")
                lines.append("")
                cmds = _commands(used)
                if cmds:
                    lines += ["```bash", *cmds, "```", ""]
                lines += table
                lines.append("")
                summary["tables"] += 1
            lines.append(f"### Every run group ({title}, {setting_text(setting)})")
            lines.append("")
            cmds = _commands(sgroups)
            if cmds:
                lines += ["```bash", *cmds, "```", ""]
            lines += all_runs_table(sgroups)
            lines.append("")
            secs = [r.metrics.get("train_seconds") or 0.0 for g in sgroups for r in g.finished]
            if secs:
                lines += [f"Training time of these {len(secs)} finished runs: {sum(secs) / 3600:.1f} hours of run time in all "
                          f"(`train s` summed; run two at a time with `--jobs=2`, about half of that in wall time).", ""]
            summary["tables"] += 1
            tlines = targets_section(dataset, sgroups)
            if tlines:
                lines += [f"### Targets ({title}, {setting_text(setting)})", ""] + tlines
            olines = observations(dataset, sgroups)
            if olines:
                lines += [f"### What we observe against the paper ({title}, {setting_text(setting)})", "",
                          "Generated from the tables above; the paper's numbers from `PAPER_TABLES`.", ""] + olines + [""]

    lines += ["## Figures", ""]
    lines.append("Curves average the finished seeds of a row. Drawn for each data set from its longest setting with finished "
                 "runs; figures 1-7 use the paper's settings (λ 0.01, γ 0.5, batch growth step_mean). The paper's text copy "
                 "shows no axes, so scales are ours (error on a log axis).")
    lines.append("")
    for dataset in datasets:
        dgroups = [g for g in groups if g.config["dataset"] == dataset and g.finished]
        if not dgroups:
            lines += [f"{DATASET_TITLES.get(dataset, dataset)}: no finished runs yet, no figures.", ""]
            continue
        setting = sorted({setting_key(g.config) for g in dgroups}, key=_setting_order)[0]
        sgroups = [g for g in groups if g.config["dataset"] == dataset and setting_key(g.config) == setting]
        lines.append(f"### {DATASET_TITLES.get(dataset, dataset)}: {setting_text(setting)}")
        lines.append("")
        for caption, path in figures_for(dataset, setting, sgroups, figures_dir):
            lines += [f"![{caption}]({_rel(path, out.parent)})", "", f"*{caption}*", ""]
            summary["figures"].append(str(path))

    if cnn_runs:
        lines += lenet_section(cnn_runs)
    if missing:
        lines += ["## Runs not finished", "", "| run | status |", "|---|---|"]
        lines += [f"| {r.name} | {r.status} |" for r in missing]
        lines.append("")
    if benchmark is not None and benchmark.exists():
        lines += ["## Benchmark against the alternatives", "", f"From `{benchmark}` (written by `tools/benchmark.py`):", ""]
        text = benchmark.read_text().strip().splitlines()
        lines += [("##" + line if line.startswith("#") else line) for line in text]  # under the "##" section heading
        lines.append("")
        summary["benchmark"] = str(benchmark)
    out.write_text("\n".join(lines) + "\n")
    summary["missing"] = [(r.name, r.status) for r in missing]
    return summary


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    runs_dir = Path(FLAGS.runs)
    if not runs_dir.is_dir():
        raise app.UsageError(f"--runs={FLAGS.runs}: no such folder (run tools/reproduce.py --out={FLAGS.runs} first)")
    benchmark = Path(FLAGS.benchmark) if FLAGS.benchmark else runs_dir / "benchmark.md"
    command = "python tools/report.py " + " ".join(a for a in sys.argv[1:])
    summary = build_report(runs_dir, Path(FLAGS.out), Path(FLAGS.figures), benchmark, command.strip())
    print(f"wrote {FLAGS.out}: {summary['runs']} runs ({summary['finished']} finished), {summary['tables']} tables, "
          f"{len(summary['figures'])} figures in {FLAGS.figures}" + (f", benchmark from {summary['benchmark']}" if "benchmark" in summary else ""))
    for name, state in summary["missing"]:
        print(f"  {name}: {state}")
    return 0


if __name__ == "__main__":
    app.run(main)
