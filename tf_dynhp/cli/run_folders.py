"""Run folders of a sweep as the tools read them: status, configuration, metrics,
history, and the groups of seeds that make one table row.

A run folder is written by `tf_dynhp.runs.run` (see its docstring): its status,
history and checkpoints are read with the library's own functions
(`tf_dynhp.runs.is_finished`, `tf_dynhp.runs.read_history`,
`tf_dynhp.checkpoint.list_checkpoints`). `tf_dynhp.cli.reproduce` (`tools/reproduce.py`)
asks `run_status` which runs to skip or resume; `tools/report.py` groups the runs with
`make_groups`. (The tools import it as `run_folders`, through `tools/run_folders.py`.)
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tf_dynhp import checkpoint, runs
from tf_dynhp.cli.paper import (
    DYNHP_BATCH,
    PAPER,
    PAPER_GAMMA,
    PAPER_GROWTH,
    PAPER_HIDDEN,
    PAPER_LAMBDA,
    PAPER_LR,
    recipe_parts,
    sp_mo_kb,
)

__all__ = ["DAMAGED_METRICS", "RunInfo", "Group", "run_status", "latest_epoch", "load_runs", "make_groups", "setting_key", "setting_text",
           "setting_order"]


def latest_epoch(run_dir: Path) -> int:
    """Epoch of the newest valid checkpoint in `<run_dir>/checkpoints` (0: none), the one a
    resume continues from (`checkpoint.valid_checkpoints`: not one renamed to another epoch)."""
    return checkpoint.latest_valid_epoch(Path(run_dir) / "checkpoints")


#: How `run_status` ends for a folder whose metrics.json is damaged (`run_metrics.problem`).
DAMAGED_METRICS = "; metrics.json damaged"


def run_status(run_dir: Path, epochs: int) -> str:
    """"finished", "unfinished, epoch k of N" (with "; metrics.json damaged" when the
    folder has one that is not sound, `run_metrics.problem`: a resume writes it again) or
    "not run yet"."""
    run_dir = Path(run_dir)
    if runs.is_finished(run_dir):
        return "finished"
    k = latest_epoch(run_dir)
    damaged = DAMAGED_METRICS if (run_dir / "metrics.json").exists() else ""
    if k or damaged or (run_dir / "config.json").exists():
        return f"unfinished, epoch {k} of {epochs}{damaged}"
    return "not run yet"


@dataclasses.dataclass
class RunInfo:
    """One run folder (or a run a sweep planned and has not started)."""

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
        """`history.jsonl` as per-epoch lists (None: unfinished, or no history)."""
        if self._history is None and self.finished and (self.path / "history.jsonl").exists():
            try:
                self._history = runs.read_history(self.path)
            except ValueError as err:  # a damaged file: the run's per-epoch columns stay empty, and say why
                warnings.warn(f"{err}: the per-epoch columns of run {self.name} are left empty", RuntimeWarning, stacklevel=2)
                self._history = {}
            problem = history_problem(self._history or {})
            if problem:  # a hand-edited value of another kind: the same
                warnings.warn(f"{self.path / 'history.jsonl'}: {problem}: the per-epoch columns of run {self.name} are "
                              "left empty", RuntimeWarning, stacklevel=2)
                self._history = {}
        return self._history or None

    def time_to_error(self, target: float) -> tuple[float, int] | None:
        """(training seconds, epoch) when the test error after an epoch first reached `target`
        (sum of `epoch_seconds`, which includes the per-epoch evaluation), or None."""
        h = self.history()
        if not h or "val_error" not in h or "epoch_seconds" not in h:
            return None
        total = 0.0
        for epoch, (err, sec) in enumerate(zip(h["val_error"], h["epoch_seconds"], strict=True), start=1):
            total += float(sec or 0.0)
            if err is not None and err <= target:
                return total, epoch
        return None


#: The per-epoch numbers the reports read from a history (None allowed: an epoch without it).
HISTORY_NUMBERS = ("val_error", "epoch_seconds", "memory_kb", "memory_full_kb", "model_kb", "batch_size", "loss", "accuracy")


def history_problem(h: dict[str, list[Any]]) -> str | None:
    """What makes a history unreadable for the reports (None: nothing): a value of
    `HISTORY_NUMBERS` that is not a number, or `active_units` that are not lists of
    numbers; named with its line (the epoch)."""
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    for key in HISTORY_NUMBERS:
        for line, v in enumerate(h.get(key) or [], start=1):
            if v is not None and not number(v):
                return f"line {line}: expected a number or null for {key!r}, received {v!r}"
    for line, units in enumerate(h.get("active_units") or [], start=1):
        if units is not None and not (isinstance(units, list) and all(number(u) for u in units)):
            return f"line {line}: expected a list of unit counts for 'active_units', received {units!r}"
    return None


class PerLayerLambda(ValueError):
    """A run of per-layer `l0_lambda` values (tools/train.py --l0_lambda=a,b,c): valid, but
    the report's tables group runs by one value."""


def _normalize(config: dict[str, Any]) -> dict[str, Any]:
    """A config.json (of any version) with every key the report reads, defaults filled in."""
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
    if isinstance(c["l0_lambda"], (list, tuple, dict)):  # tools/train.py --l0_lambda=a,b,c (fit's per-layer shares)
        raise PerLayerLambda(f"per-layer l0_lambda {c['l0_lambda']!r}: the report's tables compare runs of one l0_lambda")
    c.setdefault("train_limit", None)
    c.setdefault("test_limit", None)
    if c.get("alpha_bs") is None and c["method"] == "dynhp":  # null: fit's default (config.json of before a8ab8a0)
        from tf_dynhp.training import DEFAULT_ALPHA_BS

        c["alpha_bs"] = DEFAULT_ALPHA_BS
    c.setdefault("alpha_bs", None)
    c.setdefault("budget_kb", None)
    c.setdefault("target_kb", None)
    c.setdefault("validation_split", 0.0)
    return c


def _flag(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no{name}"
    if isinstance(value, (list, tuple)):
        return f"--{name}={','.join(str(int(v)) if name == 'hidden' else str(float(v)) for v in value)}"
    if name == "ema_momentum" and value is None:
        return "--ema_momentum=0"  # tools/train.py's "none"
    return f"--{name}={value}"  # a float as its shortest exact repr


def _train_command(name: str, c: dict[str, Any]) -> str:
    """A tools/train.py command reproducing a run that no sweep planned: every setting of
    its config.json that differs from what tools/train.py would use without the flag
    (RunConfig's defaults; the recipe fields from `recipe_for` of its target and data
    set), so that the command trains the same architecture with the same recipe."""
    from tf_dynhp.cli.paper import PLAIN_RECIPE, recipe_for

    default = dataclasses.asdict(runs.RunConfig())
    recipe = recipe_for(c.get("target_kb"), dataset=c["dataset"])
    parts = [_flag(k, c[k]) for k in ("dataset", "method", "epochs", "seed")]
    for key, value in c.items():
        if key in ("dataset", "method", "epochs", "seed") or key not in default:
            continue
        if (key == "l0_lambda" and c["method"] == "dense") or (key == "hidden" and c.get("arch") == "lenet5"):
            continue  # no effect there, and tools/train.py refuses them as such
        base = recipe[key] if key in PLAIN_RECIPE else default[key]
        if key == "hidden":
            same = [int(v) for v in value] == [int(v) for v in base]
        elif isinstance(value, float) and isinstance(base, (int, float)) and not isinstance(base, bool):
            same = math.isclose(value, base, rel_tol=1e-12)
        else:
            same = value == base
        if not same:
            parts.append(_flag(key, value))
    return "python tools/train.py " + " ".join(parts) + f" --out_dir=<runs>/{name}"


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
        data = _read_json(runs_dir / "sweep.json")
        manifest = data.get("runs") if isinstance(data, dict) else None
        if not isinstance(manifest, dict):
            warnings.warn(f"{runs_dir / 'sweep.json'} is not a sweep's record (not valid JSON, or no 'runs' object): "
                          "read without it (the runs' commands are rebuilt from their config.json)", RuntimeWarning, stacklevel=2)
            manifest = {}
    names = set(manifest)
    if runs_dir.is_dir():
        names |= {p.name for p in runs_dir.iterdir() if p.is_dir() and (p / "config.json").exists()}
    out = []
    for name in sorted(names):
        path = runs_dir / name
        entry = manifest.get(name, {})
        raw = _read_json(path / "config.json") or entry.get("config")
        if not raw or "dataset" not in raw:
            if (path / "config.json").exists():
                warnings.warn(f"{path / 'config.json'} is not a run's configuration (not valid JSON, or no 'dataset'): "
                              f"run {name} left out", RuntimeWarning, stacklevel=2)
            continue
        try:  # a field of another kind ("hidden": "abc", no "epochs"): the run is left out, named, as a damaged file is
            config = _normalize(raw)
            state = run_status(path, int(config["epochs"]))
        except PerLayerLambda as err:  # a valid run the tables cannot place
            warnings.warn(f"{path / 'config.json'}: {err}: run {name} left out (tools/summarize.py {path} shows it)",
                          RuntimeWarning, stacklevel=2)
            continue
        except (KeyError, TypeError, ValueError) as err:
            warnings.warn(f"{path / 'config.json'} is not a run's configuration ({type(err).__name__}: {err}): "
                          f"run {name} left out", RuntimeWarning, stacklevel=2)
            continue
        metrics = _read_json(path / "metrics.json") if state == "finished" else None
        command = entry.get("command") or _train_command(name, config)
        out.append(RunInfo(name, path, config, state, metrics, command))
    return out


# --------------------------------------------------------------------------- groups
def setting_key(c: dict[str, Any]) -> tuple:
    """What must match for runs to share a table: epochs, data limits, hidden widths, learning rate."""
    return (c["epochs"], c["train_limit"], c["test_limit"], c["hidden"], c["learning_rate"])


def setting_text(key: tuple) -> str:
    epochs, train_limit, test_limit, hidden, lr = key
    data = "full data (60000 train / 10000 test images)"
    if train_limit or test_limit:
        data = f"{train_limit or 60000} train / {test_limit or 10000} test images"
    extra = "" if (tuple(hidden), lr) == (PAPER_HIDDEN, PAPER_LR) else f", MLP 784-{'-'.join(map(str, hidden))}-10, lr {lr:g}"
    return f"{epochs} epochs, {data}{extra}"


def setting_order(key: tuple) -> tuple:
    """Longest setting first, then the most data."""
    epochs, train_limit, test_limit = key[0], key[1], key[2]
    return (-epochs, -(train_limit or 10**9), -(test_limit or 10**9), str(key))


def group_key(c: dict[str, Any]) -> tuple:
    """Everything of a configuration but the seed (the training recipe too: two recipes at one
    target are two rows, never one row's seeds)."""
    dynhp = c["method"] == "dynhp"
    return (
        c["dataset"], c["method"], int(c["batch_size"]), round(c["alpha_bs"], 6) if dynhp and c["alpha_bs"] is not None else None,
        float(c["l0_lambda"]), c["batch_growth"] if dynhp else None, float(c["gamma"]),
        round(c["budget_kb"], 1) if dynhp and c["budget_kb"] else None, c["budget_on"] if dynhp else None,
        c.get("target_kb"), c.get("validation_split") or 0.0, tuple(recipe_parts(c)), _droprates(c),
    ) + setting_key(c)


#: fit's initial gate drop rates (hidden layers, input features): a run of others is another row.
DEFAULT_DROPRATES = (0.5, 0.2)


def _droprates(c: dict[str, Any]) -> tuple[float, float]:
    return (float(c.get("droprate_init", DEFAULT_DROPRATES[0])), float(c.get("input_droprate_init", DEFAULT_DROPRATES[1])))


@dataclasses.dataclass
class Group:
    """The seeds of one configuration (one table row)."""

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

    def max(self, key: str) -> float | None:
        v = self.values(key)
        return max(v) if v else None

    def std(self, key: str) -> float | None:
        v = self.values(key)
        if len(v) < 2:
            return None
        m = sum(v) / len(v)
        return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))

    def per_seed(self, text: Callable[[dict[str, Any]], str], sep: str = "/") -> str:
        """`text(metrics)` of every finished seed in seed order, joined by `sep`; one value
        when all seeds give the same text."""
        found = [text(r.metrics) for r in self.finished]
        return found[0] if len(set(found)) == 1 else sep.join(found)

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
        """λ, γ and hidden widths of the paper; for DynHP also its initial batch, batch
        growth and budget (MO of SP, `paper.sp_mo_kb`)."""
        c = self.config
        if c.get("target_kb") is not None or c.get("validation_split"):
            return False  # fit(target_kb=...) rows are the frontier's (issue 16), not the tables'
        if _droprates(c) != DEFAULT_DROPRATES:
            return False
        if c["dataset"] not in PAPER or (float(c["l0_lambda"]), float(c["gamma"]), c["hidden"]) != (PAPER_LAMBDA, PAPER_GAMMA, PAPER_HIDDEN):
            return False
        if c["method"] == "dynhp":
            budget = c["budget_kb"]
            return (c["batch_growth"] == PAPER_GROWTH and int(c["batch_size"]) == DYNHP_BATCH and c["budget_on"] == "paper"
                    and budget is not None and abs(budget - sp_mo_kb(c["dataset"], "mlp", c["hidden"])) < 0.5)
        return c["method"] in ("sp", "hp")

    def label(self) -> str:
        c = self.config
        held = f", validation split {c['validation_split']:g}" if (c.get("validation_split") or 0.0) > 0 else ""
        if _droprates(c) != DEFAULT_DROPRATES:
            held += f", droprate_init {_droprates(c)[0]:g} (inputs {_droprates(c)[1]:g})"
        if c["method"] == "dynhp":
            alpha = "default" if c.get("alpha_bs") is None else f"{c['alpha_bs']:.3f}"
            return f"DynHP α_bs={alpha}{held}"
        return f"{c['method'].upper()} bs={c['batch_size']}{held}"


def make_groups(runs: Iterable[RunInfo]) -> list[Group]:
    """The runs grouped by `group_key` (seeds together), each group in seed order."""
    by_key: dict[tuple, list[RunInfo]] = defaultdict(list)
    for r in runs:
        group = by_key[group_key(r.config)]
        same_seed = next((o for o in group if o.config["seed"] == r.config["seed"]), None)
        if same_seed is not None:  # e.g. a copy of a run folder: one run, not two seeds (a finished one kept)
            keep, drop = (r, same_seed) if r.finished and not same_seed.finished else (same_seed, r)
            warnings.warn(f"{drop.path} is a run of the same configuration and seed as {keep.path}: counted once, "
                          f"as {keep.path}.", RuntimeWarning, stacklevel=2)
            group[group.index(same_seed)] = keep
            continue
        group.append(r)
    return [Group(k, sorted(v, key=lambda r: r.config["seed"])) for k, v in by_key.items()]
