r"""Reproduce the paper's Tables 2-3 and Figures 1-7: a sweep of run folders.

    python tools/reproduce.py --datasets=mnist,fashion_mnist --grid=paper_rows --epochs=200 --out=runs/
    python tools/reproduce.py --grid=paper_rows --epochs=200 --seeds=3 --seeds_rows=sp,dynhp_best --jobs=2
    python tools/reproduce.py --grid=full --epochs=200 --jobs=2 --backend=ray --ray_address=auto
    python tools/reproduce.py --quick --jobs=2 --out=/tmp/quick      # CI smoke test, < 1 minute
    python tools/report.py --runs=runs/ --out=RESULTS.md --figures=figures/

(`tf-dynhp-reproduce` is the same program, installed with the package.)

Grids (`PAPER` of tf_dynhp/cli/paper.py holds the paper's settings):

* ``paper_rows``: the rows of Tables 2-3. SP at its best batch (512 MNIST, 128
  Fashion-MNIST), HP at its best (100, 128), DynHP at three alpha_bs per data set
  (MNIST 0.971, 0.972, 0.975; Fashion-MNIST 0.980, 0.988, 0.989) from an initial
  batch of 16 under the budget = MO of the data set's best SP configuration
  (`tf_dynhp.memory.mo_kb(model, batch_size=512 or 128)`: 2609.4 KB, 1433.4 KB);
  l0_lambda 0.01, gamma 0.5, batch_growth "step_mean".
* ``frontier`` (issue 16): DynHP with `target_kb` at the model sizes the paper
  publishes (`FRONTIER_TARGETS`, read from `PAPER_TABLES`): MNIST 572, 398, 205,
  217, 178 KB with the alpha_bs of each DynHP row and HP's 206 KB with the best
  alpha_bs; Fashion-MNIST 430, 415, 252, 135, 124 KB likewise and HP's 236 KB. Seeds
  1..`--seeds` at the headline targets (MNIST 205 and 178, Fashion-MNIST 135; the
  issue's runs pass `--seeds=3`), seed 1 elsewhere. SP's runs of `paper_rows` are the
  memory reference. The flags that choose rows of the other grids (`--methods`,
  `--alphas`, `--l0_lambdas`, ...) are refused with it.
* ``full``: every alpha_bs of Tables 2-3 (MNIST 0.971..0.975, Fashion-MNIST
  0.979..0.989, step 0.001; Figures 5-6 draw subsets of these), SP and HP at every
  batch of Figures 3-4 {16, 32, 64, 100, 128, 256, 512}, each at l0_lambda
  {0.01, 0.03, 0.1}; DynHP at every alpha x lambda x batch_growth
  {"step_mean", "step", "epoch"}. `--dry_run` prints the runs and their count.

`--alphas --sp_batch_sizes --hp_batch_sizes --l0_lambdas --batch_growth` replace
the grid's value of that axis (for every data set; an empty value, e.g.
`--hp_batch_sizes=`, drops the rows); `--methods` keeps some methods only.
`--seeds=N` runs seeds 1..N of the rows named in `--seeds_rows` ("all", or some of
sp, hp, dynhp (every DynHP row), dynhp_best (alpha 0.972 MNIST, 0.980
Fashion-MNIST)); the other rows run seed 1 only. The issue's setting, three
seeds for the SP row and the best DynHP row: `--seeds=3 --seeds_rows=sp,dynhp_best`.

Each run has its own folder `<out>/<name>`, the name encoding the data set,
method, parameters, epochs, data limits and seed (e.g.
`mnist-dynhp-a0.972-step_mean-lam0.01-e200-seed1`), written by
`tf_dynhp.runs.run(config, folder, resume=True)` in a worker process
(`python -m tf_dynhp.cli.reproduce --worker_config=...`) whose output goes to
`<folder>/train.log`. A finished run (a readable `metrics.json`) is skipped;
an unfinished one resumes from its last checkpoint: stop a sweep at any time
(Ctrl-C, or SIGTERM / SIGHUP: the workers are stopped too) and run the same command
again to continue. `<out>/sweep.json` lists every run a command planned (with the
command, without `--dry_run`), so that `tools/report.py` can tell "not run yet" from
"not part of the sweep"; a run it already lists keeps its command unless this command
trains it (a dry run or a refused plan rewrites nothing).

Backends: ``local`` runs `--jobs` worker processes side by side (each limited to
one TensorFlow/OpenMP thread when jobs > 1); ``ray`` submits the same workers as
Ray tasks (one CPU each) to `--ray_address` or to a local Ray started with
`--jobs` CPUs (`pip install 'tf_dynhp[ray]'`). With a Ray cluster, the repository
(or the installed package) and `--out` must be at the same path on every node (a
shared file system).

`--quick`: 2 epochs on the first 2000 training / 1000 test images (unless
`--epochs`, `--train_limit`, `--test_limit` say otherwise); run names get a
`-n2000x1000` tag so quick runs never mix with real ones.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from absl import app, flags

from tf_dynhp._checks import invalid, write_atomic
from tf_dynhp.batching import BATCH_GROWTH_MODES
from tf_dynhp.cli.flag_rules import expect, one_line_usage, output_folder
from tf_dynhp.cli.paper import DYNHP_BATCH as DYNHP_INITIAL_BATCH
from tf_dynhp.cli.paper import FRONTIER_TARGETS, PAPER, PAPER_GAMMA, PAPER_HIDDEN, recipe_parts, sp_mo_kb, target_recipe
from tf_dynhp.cli.paper import PAPER_LAMBDA as PAPER_L0_LAMBDA
from tf_dynhp.cli.run_folders import run_status

#: The folder holding the `tf_dynhp` package (the repository, or site-packages): the
#: workers import tf_dynhp from it and run in it.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
#: The workers' program: this module (`tools/reproduce.py --worker_config=...` also works).
WORKER_MODULE = "tf_dynhp.cli.reproduce"

FLAGS = flags.FLAGS
flags.DEFINE_list("datasets", ["mnist", "fashion_mnist"], "Data sets: mnist, fashion_mnist.")
flags.DEFINE_enum("grid", "paper_rows", ["paper_rows", "full", "frontier"], "paper_rows: the rows of Tables 2-3; full: every axis of Figures 3-6; frontier: DynHP with target_kb at the paper's published sizes (see the module docstring).")
flags.DEFINE_list("frontier_targets", None, "--grid=frontier: run only these targets (KB), e.g. the headline 205,178,135 first; "
                  "the rest resume later with the same --out.")
flags.DEFINE_float("target_kb", None, "Size target (KB) of every hp/dynhp row of the grid (fit(target_kb=...)); run names get -t<KB>.")
flags.DEFINE_float("validation_split", 0.0, "Fraction of each training set held out as per-epoch validation data (RunConfig.validation_split).")
flags.DEFINE_integer("epochs", 200, "Epochs of every run (the paper trained 2000); --quick: 2 unless given.")
flags.DEFINE_integer("seeds", 1, "Run seeds 1..N of the rows named in --seeds_rows (the others: seed 1).")
flags.DEFINE_list("seeds_rows", ["all"], "Rows that get --seeds seeds: all, or some of sp, hp, dynhp, dynhp_best.")
flags.DEFINE_integer("jobs", 1, "Runs side by side (local processes, or CPUs of a local Ray).")
flags.DEFINE_enum("backend", "local", ["local", "ray"], "local: worker processes; ray: Ray tasks.")
flags.DEFINE_string("ray_address", "", "Address of a running Ray cluster (e.g. auto, ray://host:10001); empty: start a local Ray.")
flags.DEFINE_string("out", "runs/", "Folder holding one folder per run, and sweep.json.")
flags.DEFINE_bool("quick", False, "Smoke test: 2 epochs on 2000 train / 1000 test images.")
flags.DEFINE_string("data_dir", None, "Folder of the IDX files (default: TF_DYNHP_DATA, /usr/share/datasets, Keras cache).")
flags.DEFINE_list("alphas", None, "Override: DynHP alpha_bs values (every data set).")
flags.DEFINE_list("sp_batch_sizes", None, "Override: SP batch sizes (every data set; empty: no SP rows).")
flags.DEFINE_list("hp_batch_sizes", None, "Override: HP batch sizes (every data set; empty: no HP rows).")
flags.DEFINE_list("l0_lambdas", None, "Override: l0_lambda values.")
flags.DEFINE_list("batch_growth", None, "Override: DynHP readings of Eq. 8 (step_mean, step, epoch).")
flags.DEFINE_list("methods", ["sp", "hp", "dynhp"], "Keep only these methods.")
flags.DEFINE_list("lenet5_lambdas", [], "Add a DynHP LeNet-5 row per data set for each l0_lambda given (issue 8).")
flags.DEFINE_integer("lenet5_epochs", 50, "Epochs of the LeNet-5 rows (--quick: 2).")
flags.DEFINE_integer("train_limit", None, "Use only the first N training images (--quick: 2000).")
flags.DEFINE_integer("test_limit", None, "Use only the first N test images (--quick: 1000).")
flags.DEFINE_bool("dry_run", False, "Print the planned runs and their status (and add the new ones to sweep.json); train nothing.")


for _name in ("epochs", "seeds", "lenet5_epochs", "train_limit", "test_limit"):
    expect(_name, "a positive integer", lambda v: v >= 1)
expect("alphas", "floats in [0, 1]", lambda v: 0.0 <= v <= 1.0)
expect("l0_lambdas", "floats >= 0", lambda v: v >= 0.0 and math.isfinite(v))
expect("lenet5_lambdas", "floats >= 0", lambda v: v >= 0.0 and math.isfinite(v))
expect("target_kb", "a positive number of KB", lambda v: v > 0.0 and math.isfinite(v))
expect("frontier_targets", "positive numbers of KB", lambda v: v > 0.0 and math.isfinite(v))
expect("validation_split", "a float in [0, 1)", lambda v: 0.0 <= v < 1.0)
expect("sp_batch_sizes", "positive integers", lambda v: v >= 1 and v == int(v))
expect("hp_batch_sizes", "positive integers", lambda v: v >= 1 and v == int(v))

flags.DEFINE_string("worker_config", None, "Internal: JSON RunConfig of the one run this worker process trains.")
flags.DEFINE_string("worker_dir", None, "Internal: run folder of --worker_config.")

# --------------------------------------------------------------------------- grid axes
#: The paper's settings (`PAPER`, per data set: SP and HP batches, alpha_bs of the
#: tables and of `--grid=paper_rows`, the best alpha_bs) are in tf_dynhp/cli/paper.py.
BATCH_GRID = (16, 32, 64, 100, 128, 256, 512)  # Figures 3-4
L0_LAMBDAS = (0.01, 0.03, 0.1)
BATCH_GROWTHS = BATCH_GROWTH_MODES
QUICK = {"epochs": 2, "train_limit": 2000, "test_limit": 1000}
ROW_KINDS = ("sp", "hp", "dynhp", "dynhp_best")
METHODS = ("sp", "hp", "dynhp")
MANIFEST = "sweep.json"
LOG_NAME = "train.log"


@dataclasses.dataclass
class PlannedRun:
    """One run of the sweep: its folder name, table row kind and configuration."""

    name: str
    row: str  # "sp", "hp", "dynhp" or "dynhp_best"
    config: Any  # tf_dynhp.runs.RunConfig


# --------------------------------------------------------------------------- grid
def budget_kb(dataset: str, hidden: Sequence[int] = PAPER_HIDDEN) -> float:
    """DynHP budget of `dataset`: MO of its best SP configuration (Sec. 5.3), `paper.sp_mo_kb`
    (2609.4 KB MNIST, 1433.4 KB Fashion-MNIST)."""
    return sp_mo_kb(dataset, "mlp", tuple(hidden))


def run_name(config: Any) -> str:
    """Folder name of a run: data set, method, parameters, epochs, data limits, seed."""
    parts = [config.dataset] + ([config.arch] if getattr(config, "arch", "mlp") != "mlp" else []) + [config.method]
    if config.method == "dynhp":
        # three decimals as the paper prints α_bs; more only when the value has them
        # (0.9725 and 0.9726 are two runs, not one name)
        alpha = f"{config.alpha_bs:.3f}" if round(config.alpha_bs, 3) == config.alpha_bs else f"{config.alpha_bs:.6g}"
        parts += [f"a{alpha}", config.batch_growth]
        if config.batch_size not in (None, DYNHP_INITIAL_BATCH):
            parts.append(f"bs{config.batch_size}")
    else:
        parts.append(f"bs{config.batch_size}")
    parts.append(f"lam{config.l0_lambda:g}")
    if config.gamma != PAPER_GAMMA:
        parts.append(f"g{config.gamma:g}")
    if tuple(config.hidden) != PAPER_HIDDEN:
        parts.append("h" + "x".join(str(h) for h in config.hidden))
    if getattr(config, "target_kb", None) is not None:
        parts.append(f"t{config.target_kb:g}")
    if getattr(config, "validation_split", 0.0):
        parts.append(f"vs{config.validation_split:g}")
    parts += recipe_parts(dataclasses.asdict(config) if dataclasses.is_dataclass(config) else vars(config))
    parts.append(f"e{config.epochs}")
    if config.train_limit or config.test_limit:
        parts.append(f"n{config.train_limit or 'all'}x{config.test_limit or 'all'}")
    parts.append(f"seed{config.seed}")
    return "-".join(parts)


def _floats(name: str, values: Sequence[Any] | None) -> list[float] | None:
    if values is None:
        return None
    try:
        return [float(v) for v in values]
    except ValueError as err:
        raise invalid(name, "a comma-separated list of numbers", ",".join(map(str, values))) from err


def _ints(name: str, values: Sequence[Any] | None) -> list[int] | None:
    if values is None:
        return None
    try:
        out = [int(v) for v in values]
    except ValueError as err:
        raise invalid(name, "a comma-separated list of positive integers", ",".join(map(str, values))) from err
    if any(v < 1 for v in out):
        raise invalid(name, "a comma-separated list of positive integers", ",".join(map(str, values)))
    return out


def build_grid(
    datasets: Sequence[str] = ("mnist", "fashion_mnist"),
    grid: str = "paper_rows",
    *,
    epochs: int = 200,
    seeds: int = 1,
    seeds_rows: Sequence[str] = ("all",),
    methods: Sequence[str] = METHODS,
    alphas: Sequence[float] | None = None,
    sp_batch_sizes: Sequence[int] | None = None,
    hp_batch_sizes: Sequence[int] | None = None,
    l0_lambdas: Sequence[float] | None = None,
    batch_growth: Sequence[str] | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    lenet5_lambdas: Sequence[float] | None = None,
    lenet5_epochs: int = 50,
    target_kb: float | None = None,
    validation_split: float = 0.0,
    frontier_targets: Sequence[float] | None = None,
) -> list[PlannedRun]:
    """The runs of a sweep, in the order they are started.

    Args:
        datasets: "mnist" and/or "fashion_mnist".
        grid: "paper_rows" (Tables 2-3) or "full" (module docstring).
        epochs: epochs of every run.
        seeds: runs seeds 1..seeds of the rows in `seeds_rows`, seed 1 of the others.
        seeds_rows: "all" or row kinds ("sp", "hp", "dynhp", "dynhp_best").
        methods: methods to keep.
        alphas, sp_batch_sizes, hp_batch_sizes, l0_lambdas, batch_growth: replace
            that axis of the grid (None: the grid's own values).
        train_limit, test_limit: data subsets.
        lenet5_lambdas: adds, per data set and lambda, a DynHP LeNet-5-Caffe row (issue 8;
            best alpha_bs, budget = MO of LeNet-5 at the data set's SP batch).
        lenet5_epochs: epochs of the LeNet-5 rows.
        target_kb: size target of every hp/dynhp row (grids paper_rows and full).
        validation_split: `RunConfig.validation_split` of every run.
        frontier_targets: grid "frontier": only these of its targets (None: all).

    Returns:
        PlannedRun list (names unique).

    Raises:
        ValueError: an unknown data set, grid, method, row kind or batch growth, or
            a non-positive number.
    """
    from tf_dynhp.runs import RunConfig

    for d in datasets:
        if d not in PAPER:
            raise invalid("datasets", f"names from {list(PAPER)}", ",".join(datasets))
    if grid not in ("paper_rows", "full", "frontier"):
        raise invalid("grid", "'paper_rows', 'full' or 'frontier'", grid)
    for m in methods:
        if m not in METHODS:
            raise invalid("methods", f"names from {list(METHODS)}", ",".join(methods))
    if target_kb is not None and grid != "frontier" and not {"hp", "dynhp"} & set(methods):
        raise ValueError(f"--target_kb: no effect with --methods={','.join(methods)} (a size target is for the methods "
                         f"that remove units, hp and dynhp). Received: target_kb={target_kb:g}")
    rows = set(seeds_rows)
    if not rows <= set(ROW_KINDS) | {"all"}:
        raise invalid("seeds_rows", f"'all' or names from {list(ROW_KINDS)}", ",".join(seeds_rows))
    if "all" in rows:
        rows = set(ROW_KINDS)
    if "dynhp" in rows:  # "every DynHP row": the best alpha's row too (it was left at seed 1)
        rows.add("dynhp_best")
    if epochs < 1 or seeds < 1:
        raise invalid("epochs/seeds", "positive integers", (epochs, seeds))
    growths = list(batch_growth) if batch_growth is not None else (list(BATCH_GROWTHS) if grid == "full" else ["step_mean"])
    for g in growths:
        if g not in BATCH_GROWTHS:
            raise invalid("batch_growth", f"names from {list(BATCH_GROWTHS)}", ",".join(growths))
    lambdas = list(l0_lambdas) if l0_lambdas is not None else (list(L0_LAMBDAS) if grid == "full" else [PAPER_L0_LAMBDA])
    common = {"epochs": int(epochs), "gamma": PAPER_GAMMA, "train_limit": train_limit, "test_limit": test_limit,
              "validation_split": float(validation_split)}

    planned: list[PlannedRun] = []

    def add(row: str, **kwargs: Any) -> None:
        n = seeds if row in rows else 1
        for seed in range(1, n + 1):
            config = RunConfig(**common, **kwargs, seed=seed)
            planned.append(PlannedRun(run_name(config), row, config))

    if grid == "frontier":
        for dataset in datasets:
            paper = PAPER[dataset]
            for kb, alpha, headline in FRONTIER_TARGETS[dataset]:
                if frontier_targets is not None and not any(abs(kb - float(t)) < 1e-6 for t in frontier_targets):
                    continue
                n = seeds if headline else 1
                for seed in range(1, n + 1):
                    config = RunConfig(
                        **common, dataset=dataset, method="dynhp", batch_size=DYNHP_INITIAL_BATCH, l0_lambda=PAPER_L0_LAMBDA,
                        alpha_bs=float(alpha), budget_kb=budget_kb(dataset), budget_batch=paper["sp_batch"],
                        batch_growth="step_mean", target_kb=float(kb), seed=seed, **target_recipe(dataset),
                    )
                    planned.append(PlannedRun(run_name(config), "frontier", config))
        return planned
    for dataset in datasets:
        paper = PAPER[dataset]
        full = grid == "full"
        sp_batches = list(sp_batch_sizes) if sp_batch_sizes is not None else (list(BATCH_GRID) if full else [paper["sp_batch"]])
        hp_batches = list(hp_batch_sizes) if hp_batch_sizes is not None else (list(BATCH_GRID) if full else [paper["hp_batch"]])
        dyn_alphas = list(alphas) if alphas is not None else list(paper["table_alphas"] if full else paper["row_alphas"])
        budget = budget_kb(dataset) if "dynhp" in methods and dyn_alphas else None
        recipe = target_recipe(dataset) if target_kb is not None else {}  # how every targeted row trains
        for lam in lambdas:
            if "sp" in methods:
                for b in sp_batches:
                    add("sp", dataset=dataset, method="sp", batch_size=int(b), l0_lambda=float(lam), budget_batch=paper["sp_batch"])
            if "hp" in methods:
                for b in hp_batches:
                    add("hp", dataset=dataset, method="hp", batch_size=int(b), l0_lambda=float(lam), budget_batch=paper["sp_batch"],
                        target_kb=target_kb, **recipe)
            if "dynhp" in methods:
                for growth in growths:
                    for a in dyn_alphas:
                        row = "dynhp_best" if abs(float(a) - paper["best_alpha"]) < 1e-9 else "dynhp"
                        add(
                            row, dataset=dataset, method="dynhp", batch_size=DYNHP_INITIAL_BATCH, l0_lambda=float(lam),
                            alpha_bs=float(a), budget_kb=budget, budget_batch=paper["sp_batch"], batch_growth=growth,
                            target_kb=target_kb, **recipe,
                        )
    for dataset in datasets:
        paper = PAPER[dataset]
        for lam in lenet5_lambdas or []:
            lenet_budget = sp_mo_kb(dataset, "lenet5")
            config = RunConfig(
                **{**common, "epochs": int(lenet5_epochs)}, dataset=dataset, arch="lenet5", method="dynhp",
                batch_size=DYNHP_INITIAL_BATCH, l0_lambda=float(lam), alpha_bs=paper["best_alpha"],
                budget_kb=lenet_budget, budget_batch=paper["sp_batch"], seed=1,
            )
            planned.append(PlannedRun(run_name(config), "lenet5", config))
    names = [p.name for p in planned]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"The grid has duplicate runs {dupes[:3]}: an override lists a value twice.")
    return planned


# --------------------------------------------------------------------------- run folders
def status(run_dir: Path, epochs: int) -> str:
    """"finished", "unfinished, epoch k of N" or "not run yet" (`run_folders.run_status`)."""
    return run_status(run_dir, epochs)


def _config_mismatch(run_dir: Path, config: Any) -> list[str]:
    """Keys of config.json in `run_dir` that differ from `config` (a stale folder)."""
    path = run_dir / "config.json"
    if not path.exists():
        return []
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # a write cut short: the folder is not this run's to reuse
        return [f"it is not readable ({err})"]
    if not isinstance(saved, dict):
        return ["it is not a JSON object"]
    wanted = config.to_dict()
    out = []
    for key, value in wanted.items():
        if key not in saved:
            continue
        old = saved[key]
        if isinstance(value, float) and isinstance(old, (int, float)):
            if abs(old - value) > 1e-6 * max(1.0, abs(value)):
                out.append(f"{key}: {old!r} != {value!r}")
        elif json.dumps(old) != json.dumps(value):
            out.append(f"{key}: {old!r} != {value!r}")
    return out


def write_manifest(out: Path, planned: Sequence[PlannedRun], command: str, replace: Sequence[str] = ()) -> Path:
    """Adds the planned runs that `<out>/sweep.json` (kept across invocations) does not
    hold yet, with `command`; of those it holds, only the runs named in `replace` (the ones
    this command is about to train) take the new command and config. A finished run keeps
    the command that made it, whatever a later dry run or refused plan says."""
    path = out / MANIFEST
    data: dict[str, Any] = {"runs": {}}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("runs", {}), dict):
            aside = path.with_name(path.name + ".damaged")
            os.replace(path, aside)  # kept for the user: its records are not thrown away
            print(f"warning: {path} was not a sweep's record (not valid JSON, or no 'runs' object); moved it to {aside} "
                  "and started a new one", file=sys.stderr)
            data = {"runs": {}}
    data.setdefault("runs", {})
    for p in planned:
        if p.name not in data["runs"] or p.name in replace:
            data["runs"][p.name] = {"row": p.row, "config": p.config.to_dict(), "command": command}
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True))
    return path


def command_line(argv: Sequence[str]) -> str:
    """The command as a user would type it (from the repository root for `tools/reproduce.py`)."""
    args = [a for a in argv[1:] if not a.startswith("--worker")]
    program = "tf-dynhp-reproduce" if Path(argv[0]).name == "tf-dynhp-reproduce" else "python tools/reproduce.py"
    return program + " " + " ".join(shlex.quote(a) for a in args)


# --------------------------------------------------------------------------- workers
def worker_env(single_thread: bool) -> dict[str, str]:
    """Variables added to a worker's environment."""
    env = {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"), "PYTHONUNBUFFERED": "1"}
    path = os.environ.get("PYTHONPATH", "")
    env["PYTHONPATH"] = str(PACKAGE_ROOT) + (os.pathsep + path if path else "")
    if single_thread:
        env.update({"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1"})
    return env


def worker_command(run: PlannedRun, out: Path, data_dir: str | None) -> list[str]:
    """The worker process of `run`; its paths are absolute (it runs in `PACKAGE_ROOT`)."""
    cmd = [sys.executable, "-m", WORKER_MODULE, f"--worker_config={json.dumps(run.config.to_dict())}",
           f"--worker_dir={os.path.abspath(out / run.name)}"]
    if data_dir:
        cmd.append(f"--data_dir={os.path.abspath(data_dir)}")
    return cmd


def _log_header(log, cmd: Sequence[str]) -> None:
    log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(shlex.quote(c) for c in cmd)}\n")
    log.flush()


def _run_worker(config_json: str, run_dir: str, data_dir: str | None) -> None:
    """The worker: trains (or resumes) one run into its folder."""
    intra, inter = os.environ.get("TF_NUM_INTRAOP_THREADS"), os.environ.get("TF_NUM_INTEROP_THREADS")
    if intra or inter:
        import tensorflow as tf

        if intra:
            tf.config.threading.set_intra_op_parallelism_threads(int(intra))
        if inter:
            tf.config.threading.set_inter_op_parallelism_threads(int(inter))
    from tf_dynhp import runs

    config = runs.RunConfig(**json.loads(config_json))
    print(f"run {Path(run_dir).name}: {config.method} on {config.dataset}, {config.epochs} epochs, seed {config.seed}; "
          f"threads: intra_op={intra or 'default'} inter_op={inter or 'default'} OMP={os.environ.get('OMP_NUM_THREADS', 'default')}",
          flush=True)
    runs.run(config, run_dir, data_dir=data_dir, resume=True, verbose=2)  # one line per epoch: the log is a file, not a terminal


def _summary(run_dir: Path) -> str:
    try:
        m = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return ""
    return f"test error {m['test_error']:.2f}%, model {m['model_kb']:.1f} KB, training memory {m['training_memory_mb']:.1f} MB"


def run_local(pending: Sequence[PlannedRun], out: Path, jobs: int, data_dir: str | None) -> dict[str, int]:
    """Runs the workers as `jobs` processes side by side; returns name -> exit code.
    Ctrl-C, SIGTERM or SIGHUP (a `kill`, a closed terminal) stops the workers it started,
    which keep their last checkpoints, then raises KeyboardInterrupt (a worker left
    running would hold its folder, and the same command run again would fail on it)."""
    env = {**os.environ, **worker_env(single_thread=jobs > 1)}
    queue = list(pending)
    running: dict[str, tuple[subprocess.Popen, Any, float]] = {}
    codes: dict[str, int] = {}
    total = len(queue)

    def interrupt(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        while queue or running:
            while queue and len(running) < jobs:
                run = queue.pop(0)
                run_dir = out / run.name
                run_dir.mkdir(parents=True, exist_ok=True)
                log = open(run_dir / LOG_NAME, "a")
                cmd = worker_command(run, out, data_dir)
                _log_header(log, cmd)
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(PACKAGE_ROOT))
                running[run.name] = (proc, log, time.perf_counter())
                print(f"[start] {run.name} (pid {proc.pid}, log {run_dir / LOG_NAME})", flush=True)
            time.sleep(0.2)
            for name, (proc, log, t0) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                log.close()
                del running[name]
                codes[name] = code
                done = len(codes)
                if code == 0:
                    print(f"[{done}/{total}] {name}: finished in {time.perf_counter() - t0:.0f}s; {_summary(out / name)}", flush=True)
                else:
                    print(f"[{done}/{total}] {name}: FAILED (exit code {code}); see {out / name / LOG_NAME}", flush=True)
    except KeyboardInterrupt:
        print(f"\nInterrupted: stopping {len(running)} running worker(s); run the same command again to resume.", flush=True)
        for proc, _log, _ in running.values():
            proc.send_signal(signal.SIGTERM)
        for proc, log, _ in running.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return codes


def _ray_task(cmd: list[str], env_add: dict[str, str], log_path: str, cwd: str) -> tuple[int, float]:
    """Body of one Ray task: the same worker process as the local backend."""
    t0 = time.perf_counter()
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        _log_header(log, cmd)
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env_add}, cwd=cwd)
    return code, time.perf_counter() - t0


class RayStartError(RuntimeError):
    """`ray.init` failed (no cluster at the address, or a local Ray cannot start here)."""


def import_ray():
    """Ray, or a clear error saying how to install it (Ray is an optional extra)."""
    try:
        import ray
    except ImportError as err:
        raise ImportError("--backend=ray needs Ray, an optional extra: pip install 'tf_dynhp[ray]' (or pip install ray).") from err
    return ray


def run_ray(pending: Sequence[PlannedRun], out: Path, jobs: int, data_dir: str | None, address: str = "") -> dict[str, int]:
    """Submits the workers as Ray tasks (one CPU each); returns name -> exit code."""
    ray = import_ray()
    try:
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=max(1, jobs), include_dashboard=False, log_to_driver=False)
    except Exception as err:  # Ray's own start-up errors are of many types
        raise RayStartError(f"Ray could not start ({'address ' + address if address else 'a local Ray'}): {type(err).__name__}: {err}") from err
    try:
        # The task goes to Ray by value (a Ray worker then imports neither tf_dynhp nor TensorFlow).
        ray.cloudpickle.register_pickle_by_value(sys.modules[_ray_task.__module__])
        task = ray.remote(num_cpus=1, max_retries=0)(_ray_task)
        env_add = worker_env(single_thread=True)
        refs = {}
        for run in pending:
            (out / run.name).mkdir(parents=True, exist_ok=True)
            cmd = worker_command(run, out, data_dir)
            refs[task.remote(cmd, env_add, str(out / run.name / LOG_NAME), str(PACKAGE_ROOT))] = run.name
            print(f"[submit] {run.name} (log {out / run.name / LOG_NAME})", flush=True)
        codes: dict[str, int] = {}
        waiting = list(refs)
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            name = refs[ready[0]]
            try:
                code, seconds = ray.get(ready[0])
            except Exception as err:  # a task that died (node lost, ...)
                code, seconds = -1, 0.0
                print(f"{name}: Ray task failed: {err}", flush=True)
            codes[name] = code
            if code == 0:
                print(f"[{len(codes)}/{len(refs)}] {name}: finished in {seconds:.0f}s; {_summary(out / name)}", flush=True)
            else:
                print(f"[{len(codes)}/{len(refs)}] {name}: FAILED (exit code {code}); see {out / name / LOG_NAME}", flush=True)
        return codes
    except KeyboardInterrupt:
        print("\nInterrupted: cancelling the Ray tasks; run the same command again to resume.", flush=True)
        for ref in refs:
            ray.cancel(ref, force=True)
        raise
    finally:
        ray.shutdown()


# --------------------------------------------------------------------------- main
def _resolved_limits() -> tuple[int, int | None, int | None]:
    epochs, train_limit, test_limit = FLAGS.epochs, FLAGS.train_limit, FLAGS.test_limit
    if FLAGS.quick:
        epochs = epochs if FLAGS["epochs"].present else QUICK["epochs"]
        train_limit = train_limit if FLAGS["train_limit"].present else QUICK["train_limit"]
        test_limit = test_limit if FLAGS["test_limit"].present else QUICK["test_limit"]
    return epochs, train_limit, test_limit


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.worker_config:
        if not FLAGS.worker_dir:
            raise app.UsageError("--worker_config needs --worker_dir")
        _run_worker(FLAGS.worker_config, FLAGS.worker_dir, FLAGS.data_dir)
        return 0
    if FLAGS.jobs < 1:
        raise app.UsageError(f"--jobs must be >= 1, received {FLAGS.jobs}")
    out = output_folder("out", FLAGS.out, "a folder of run folders")  # nothing created here: a refusal below leaves no folder
    if FLAGS.backend == "ray":
        try:
            import_ray()  # fail now, not after planning
        except ImportError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    other_grid = ("target_kb", "alphas", "sp_batch_sizes", "hp_batch_sizes", "l0_lambdas", "batch_growth", "methods",
                  "seeds_rows", "lenet5_lambdas", "lenet5_epochs")
    if FLAGS.grid == "frontier" and any(FLAGS[n].present for n in other_grid):
        given = [f"--{n}" for n in other_grid if FLAGS[n].present]
        raise app.UsageError(f"{', '.join(given)}: no effect with --grid=frontier (its targets, alpha_bs and recipe are "
                             "the paper's rows'; choose targets with --frontier_targets)")
    if FLAGS.grid != "frontier" and FLAGS["frontier_targets"].present:
        raise app.UsageError(f"--frontier_targets: only with --grid=frontier (received --grid={FLAGS.grid})")
    epochs, train_limit, test_limit = _resolved_limits()
    try:
        planned = build_grid(
            FLAGS.datasets, FLAGS.grid, epochs=epochs, seeds=FLAGS.seeds, seeds_rows=FLAGS.seeds_rows,
            methods=FLAGS.methods, alphas=_floats("alphas", FLAGS.alphas),
            sp_batch_sizes=_ints("sp_batch_sizes", FLAGS.sp_batch_sizes),
            hp_batch_sizes=_ints("hp_batch_sizes", FLAGS.hp_batch_sizes),
            l0_lambdas=_floats("l0_lambdas", FLAGS.l0_lambdas), batch_growth=FLAGS.batch_growth,
            train_limit=train_limit, test_limit=test_limit,
            lenet5_lambdas=_floats("lenet5_lambdas", FLAGS.lenet5_lambdas),
            lenet5_epochs=epochs if FLAGS.quick else FLAGS.lenet5_epochs,
            target_kb=FLAGS.target_kb, validation_split=FLAGS.validation_split,
            frontier_targets=_floats("frontier_targets", FLAGS.frontier_targets),
        )
    except ValueError as err:
        raise app.UsageError(str(err)) from err
    if not planned:  # a run of nothing that says "done" hides a typo in a flag
        hint = ""
        if FLAGS.grid == "frontier":
            hint = "; the paper's sizes (KB): " + "; ".join(
                f"{d} {', '.join(f'{t[0]:g}' for t in FRONTIER_TARGETS.get(d, []))}" for d in FLAGS.datasets)
        targets = f", --frontier_targets={','.join(FLAGS.frontier_targets)}" if FLAGS.frontier_targets else ""
        raise app.UsageError(f"the flags select no run (--grid={FLAGS.grid}, --datasets={','.join(FLAGS.datasets)}{targets}){hint}")
    pending, skipped, stale, states = [], [], [], []
    for run in planned:
        state = status(out / run.name, run.config.epochs)
        mismatch = _config_mismatch(out / run.name, run.config)
        if mismatch:
            stale.append((run.name, mismatch))
            continue
        if state == "finished":
            skipped.append(run.name)
        else:
            pending.append(run)
        states.append((state, run.name))
    if pending and not FLAGS.dry_run:  # once here, not once per worker; before anything is written
        from tf_dynhp import datasets  # noqa: PLC0415 - no TensorFlow

        for dataset in sorted({p.config.dataset for p in pending}):
            try:  # read whole, as a worker will: a damaged file or the other data set fails here, not in every worker
                datasets.load(dataset, FLAGS.data_dir, download=False)
            except FileNotFoundError as err:
                if not FLAGS.data_dir:  # found nowhere: each worker's `load` may still download it
                    continue
                print(f"error: --data_dir={FLAGS.data_dir}: {' '.join(line.strip() for line in str(err).splitlines())}",
                      file=sys.stderr)
                return 2
            except (ValueError, OSError) as err:  # damaged, the other data set, or not readable (permissions)
                where = f"--data_dir={FLAGS.data_dir}: " if FLAGS.data_dir else ""
                print(f"error: {where}the {dataset} data set cannot be read: "
                      f"{' '.join(line.strip() for line in str(err).splitlines())}", file=sys.stderr)
                return 2
    out.mkdir(parents=True, exist_ok=True)
    if FLAGS.dry_run:
        for state, name in states:
            print(f"{state:<28} {name}")
    print(
        f"{len(planned)} runs planned in {out}: {len(skipped)} finished (skipped), {len(pending)} to run"
        + (f", {len(stale)} with a different config.json (left alone)" if stale else "")
        + (f"; backend {FLAGS.backend}, {FLAGS.jobs} at a time" if pending and not FLAGS.dry_run else ""),
        flush=True,
    )
    for name, mismatch in stale:
        print(f"  {name}: its config.json differs ({'; '.join(mismatch[:3])}); move the folder away to rerun it", file=sys.stderr)
    # Recorded without --dry_run: the command that will make the runs it plans. Stale runs
    # (another configuration in the folder) are not this command's and are left out.
    stale_names = {name for name, _ in stale}
    write_manifest(out, [p for p in planned if p.name not in stale_names],
                   command_line([a for a in sys.argv if a.lstrip("-").split("=")[0] not in ("dry_run", "nodry_run")]),
                   replace=[] if FLAGS.dry_run else [p.name for p in pending])
    if FLAGS.dry_run or not pending:
        return 1 if stale else 0
    t0 = time.perf_counter()
    try:
        codes = _execute(pending, out)
    except KeyboardInterrupt:
        print(f"stopped after {time.perf_counter() - t0:.0f}s; finished runs are kept, the others resume from their "
              "last checkpoint when the same command runs again", file=sys.stderr)
        return 130
    if codes is None:
        return 3
    failed = sorted(name for name, code in codes.items() if code != 0)
    print(f"done in {time.perf_counter() - t0:.0f}s: {len(codes) - len(failed)} finished, {len(failed)} failed", flush=True)
    for name in failed:
        print(f"  FAILED {name}: see {out / name / LOG_NAME}", file=sys.stderr)
    return 1 if failed or stale else 0


def _execute(pending: Sequence[PlannedRun], out: Path) -> dict[str, int] | None:
    """Runs `pending` on the chosen backend; None when Ray could not start."""
    if FLAGS.backend == "ray":
        try:
            codes = run_ray(pending, out, FLAGS.jobs, FLAGS.data_dir, FLAGS.ray_address)
        except RayStartError as err:
            print(f"error: {err}", file=sys.stderr)
            return None
        return codes
    return run_local(pending, out, FLAGS.jobs, FLAGS.data_dir)


def run() -> None:
    """Entry point of `tf-dynhp-reproduce`, `tools/reproduce.py` and the workers: parses the flags, calls `main`."""
    entry = sys.modules["__main__"]
    if entry is not sys.modules.get(__name__):
        entry.__doc__ = __doc__  # absl's --help prints __main__'s docstring
    for flag in FLAGS.get_flags_for_module(__name__):  # and the flags of the module named sys.argv[0]
        FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(one_line_usage(main))


if __name__ == "__main__":
    run()
