"""tools/reproduce.py (grid, sweep, skip and resume, Ray), tools/report.py (and its modules), tools/summarize.py
and tools/benchmark.py.

The tools run as subprocesses (their absl flags never meet another tool's in this
process). One quick sweep of two runs (SP and DynHP on 2000 MNIST images, two
epochs, two jobs) is shared by the tests that read run folders.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA_ROOT

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SWEEP_ARGS = ["--quick", "--datasets=mnist", "--methods=sp,dynhp", "--alphas=0.972", "--jobs=2"]
SP_NAME = "mnist-sp-bs512-lam0.01-e2-n2000x1000-seed1"
DYNHP_NAME = "mnist-dynhp-a0.972-step_mean-lam0.01-e2-n2000x1000-seed1"
RUNTIME_KEYS = ("epoch_seconds", "rebuild_seconds", "trace_seconds", "retraces")  # tf_dynhp.training.RUNTIME_KEYS


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_DYNHP_DATA": str(DATA_ROOT), "PYTHONPATH": str(REPO)}
    env.update(extra)
    return env


def _run(tool: str, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOLS / tool), *args], capture_output=True, text=True, cwd=REPO,
                          env=_env(**env), timeout=timeout)


def _ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, f"exit code {done.returncode}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    return done.stdout


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def _history(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def data_available():
    if not (DATA_ROOT / "mnist").is_dir():
        pytest.skip(f"MNIST not found under {DATA_ROOT} (set TF_DYNHP_DATA)")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, data_available) -> tuple[Path, str]:
    """A finished quick sweep: SP (batch 512) and DynHP (alpha 0.972) side by side."""
    out = tmp_path_factory.mktemp("sweep")
    stdout = _ok(_run("reproduce.py", *SWEEP_ARGS, f"--out={out}"))
    return out, stdout


# --------------------------------------------------------------------------- grid
GRID_SCRIPT = r"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("reproduce", sys.argv[1])
rp = importlib.util.module_from_spec(spec)
sys.modules["reproduce"] = rp  # dataclasses look their module up
spec.loader.exec_module(rp)
def dump(runs):
    return [{"name": r.name, "row": r.row, **r.config.to_dict()} for r in runs]
out = {
    "paper": dump(rp.build_grid()),
    "seeds": dump(rp.build_grid(seeds=3, seeds_rows=["sp", "dynhp_best"])),
    "dynhp_seeds": dump(rp.build_grid(["mnist"], methods=["dynhp"], seeds=2, seeds_rows=["dynhp"])),
    "full": dump(rp.build_grid(grid="full")),
    "override": dump(rp.build_grid(["mnist"], "full", alphas=[0.9, 0.95], sp_batch_sizes=[32], hp_batch_sizes=[],
                                   l0_lambdas=[0.1], batch_growth=["epoch"], epochs=7, train_limit=100)),
    "budgets": {d: rp.budget_kb(d) for d in ("mnist", "fashion_mnist")},
    "lenet5": dump(rp.build_grid(methods=["sp"], lenet5_lambdas=[0.5], lenet5_epochs=50)),
    "frontier": dump(rp.build_grid(grid="frontier", seeds=3)),
    "headline": dump(rp.build_grid(grid="frontier", seeds=3, frontier_targets=[205, 135])),
    "targeted": dump(rp.build_grid(["mnist"], methods=["hp", "dynhp"], target_kb=205.0, validation_split=0.1)),
    "errors": [],
}
for kwargs in ({"datasets": ["cifar"]}, {"batch_growth": ["fast"]}, {"methods": ["dense"]}, {"seeds_rows": ["hp_best"]},
               {"alphas": [0.97, 0.97]}):
    try:
        rp.build_grid(**kwargs)
    except ValueError as err:
        out["errors"].append(str(err))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def grids() -> dict:
    done = subprocess.run([sys.executable, "-c", GRID_SCRIPT, str(TOOLS / "reproduce.py")], capture_output=True, text=True,
                          cwd=REPO, env=_env(), timeout=120)
    return json.loads(_ok(done).strip().splitlines()[-1])


def test_lenet5_rows(grids):
    """Issue 8: a DynHP LeNet-5 row per data set, budget = MO of LeNet-5 at the SP batch."""
    lenet = [r for r in grids["lenet5"] if r["arch"] == "lenet5"]
    assert [(r["dataset"], r["method"], r["alpha_bs"], r["l0_lambda"], r["epochs"]) for r in lenet] == [
        ("mnist", "dynhp", 0.972, 0.5, 50), ("fashion_mnist", "dynhp", 0.98, 0.5, 50)]
    # 4 bytes x (431,080 weights + 512 x 784) / 1024, and the same at batch 128.
    assert lenet[0]["budget_kb"] == pytest.approx(4 * (431080 + 512 * 784) / 1024)
    assert lenet[1]["budget_kb"] == pytest.approx(4 * (431080 + 128 * 784) / 1024)
    assert "lenet5" in lenet[0]["name"] and all("lenet5" not in r["name"] for r in grids["lenet5"] if r["arch"] == "mlp")


def test_frontier_grid_targets_the_papers_sizes(grids):
    """Issue 16: DynHP at the sizes the paper publishes, each with its row's alpha_bs (HP's
    sizes with the best one), 3 seeds at the headline targets, names encoding the target."""
    rows = [(r["dataset"], r["target_kb"], r["alpha_bs"], r["seed"]) for r in grids["frontier"]]
    mnist = sorted({(t, a) for d, t, a, _ in rows if d == "mnist"})
    assert mnist == [(178.0, 0.975), (205.0, 0.973), (206.0, 0.972), (217.0, 0.974), (398.0, 0.972), (572.0, 0.971)]
    fashion = sorted({(t, a) for d, t, a, _ in rows if d == "fashion_mnist"})
    assert fashion == [(124.0, 0.989), (135.0, 0.988), (236.0, 0.98), (252.0, 0.987), (415.0, 0.98), (430.0, 0.979)]
    seeds = {(d, t): sorted(s for d2, t2, _, s in rows if (d2, t2) == (d, t)) for d, t, _, _ in rows}
    assert {k for k, v in seeds.items() if v == [1, 2, 3]} == {("mnist", 205.0), ("mnist", 178.0), ("fashion_mnist", 135.0)}
    assert all(v in ([1], [1, 2, 3]) for v in seeds.values())
    assert all(r["method"] == "dynhp" and f"-t{r['target_kb']:g}-" in r["name"] for r in grids["frontier"])
    assert grids["frontier"][0]["budget_kb"] == pytest.approx(grids["budgets"]["mnist"])
    targeted = grids["targeted"]
    assert {r["method"] for r in targeted} == {"hp", "dynhp"}
    assert all(r["target_kb"] == 205.0 and r["validation_split"] == 0.1 and "-t205-vs0.1-" in r["name"] for r in targeted)
    assert sorted({(r["dataset"], r["target_kb"]) for r in grids["headline"]}) == [("fashion_mnist", 135.0), ("mnist", 205.0)]
    assert len(grids["headline"]) == 6 and all(r["name"] in {f["name"] for f in grids["frontier"]} for r in grids["headline"])
    # Every targeted row trains with the one target-size recipe, and untargeted rows with the plain one.
    from tf_dynhp.cli.paper import TARGET_BY_DATASET, TARGET_RECIPE, target_recipe

    for r in grids["frontier"] + targeted:
        recipe = target_recipe(r["dataset"])
        assert {k: r[k] for k in recipe} == recipe, r["name"]
        own = TARGET_BY_DATASET.get(r["dataset"], {})  # the fields the data set changes, the rest the shared recipe's
        assert {k: recipe[k] for k in TARGET_RECIPE if k not in own} == {k: v for k, v in TARGET_RECIPE.items() if k not in own}
    # what the rankings chose (WORKSPACE.md "Accuracy at a given size"), pinned
    assert {k: target_recipe("mnist")[k] for k in ("augment_shift", "augment_until", "decoupled_weight_decay")} == {
        "augment_shift": 2, "augment_until": 1.0, "decoupled_weight_decay": 0.01}
    assert {k: target_recipe("fashion_mnist")[k] for k in ("augment_shift", "augment_until", "decoupled_weight_decay", "lr_decay",
                                                          "size_penalty")} == {
        "augment_shift": 1, "augment_until": 0.75, "decoupled_weight_decay": 0.0, "lr_decay": "cosine_restart", "size_penalty": "coupled"}
    assert target_recipe("mnist")["lr_decay"] == "cosine"
    plain = {"lr_decay": "none", "lambda_floor": 0.0, "size_penalty": "coupled", "target_schedule": "constant", "ema_momentum": None,
             "weight_decay_per_weight": 0.0, "decoupled_weight_decay": 0.0}
    assert all({k: r[k] for k in plain} == plain for r in grids["paper"])


def test_run_names_show_a_recipe_that_is_not_the_plain_one():
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import reproduce as rp; from tf_dynhp.runs import RunConfig; "
              "print(rp.run_name(RunConfig(alpha_bs=0.973, target_kb=205.0, lr_decay='none', size_penalty='coupled', lambda_floor=0.0))); "
              "print(rp.run_name(RunConfig(alpha_bs=0.973, target_kb=205.0, lr_decay='cosine', size_penalty='outgoing', lambda_floor=0.01, lambda_step=0.2, "
              "target_schedule='cubic', ema_momentum=0.999, weight_decay_per_weight=5e-4, decoupled_weight_decay=0.01, dropout=0.2, target_deadline=0.5, augment_shift=2, augment_flip=True, augment_until=0.75, augment_fraction=0.5, augment_erase=0.25, label_smoothing=0.1, deterministic_from=0.5)))")
    done = subprocess.run([sys.executable, "-c", script, str(TOOLS)], capture_output=True, text=True, cwd=REPO, env=_env(), timeout=120)
    plain, name = _ok(done).strip().splitlines()[-2:]
    names = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import reproduce as rp; "
                            "from tf_dynhp.runs import RunConfig; print(*(rp.run_name(RunConfig(alpha_bs=a)) for a in (0.972, 0.9725, 0.9726)))",
                            str(TOOLS)], capture_output=True, text=True, cwd=REPO, env=_env(), timeout=120)
    assert [n.split("-")[2] for n in _ok(names).split()] == ["a0.972", "a0.9725", "a0.9726"]  # 3 decimals were one name
    assert "cosine" not in plain and "outgoing" not in plain and "-fl" not in plain and not re.search(r"-step\d", plain)
    assert "-t205-cosine-outgoing-fl0.01-step0.2-cubic-dl0.5-ema0.999-wd0.0005-adamw0.01-do0.2-sh2-flip-au0.75-af0.5-er0.25-ls0.1-det0.5-" in name
    assert "det" not in plain


def test_paper_rows_are_the_rows_of_tables_2_and_3(grids):
    rows = {(r["dataset"], r["method"], r["batch_size"], r["alpha_bs"]) for r in grids["paper"]}
    assert rows == {
        ("mnist", "sp", 512, None), ("mnist", "hp", 100, None),
        ("mnist", "dynhp", 16, 0.971), ("mnist", "dynhp", 16, 0.972), ("mnist", "dynhp", 16, 0.975),
        ("fashion_mnist", "sp", 128, None), ("fashion_mnist", "hp", 128, None),
        ("fashion_mnist", "dynhp", 16, 0.98), ("fashion_mnist", "dynhp", 16, 0.988), ("fashion_mnist", "dynhp", 16, 0.989),
    }
    assert len(grids["paper"]) == 10
    for r in grids["paper"]:
        assert (r["l0_lambda"], r["gamma"], r["batch_growth"], r["epochs"], r["seed"]) == (0.01, 0.5, "step_mean", 200, 1)
        assert r["train_limit"] is None and r["test_limit"] is None
        if r["method"] == "dynhp":
            expected = {"mnist": 2609.4, "fashion_mnist": 1433.4}[r["dataset"]]
            assert r["budget_kb"] == pytest.approx(expected, abs=0.05)
        else:
            assert r["budget_kb"] is None
    assert grids["budgets"]["mnist"] == pytest.approx(2609.4, abs=0.05)
    assert grids["budgets"]["fashion_mnist"] == pytest.approx(1433.4, abs=0.05)
    best = [r for r in grids["paper"] if r["row"] == "dynhp_best"]
    assert {(r["dataset"], r["alpha_bs"]) for r in best} == {("mnist", 0.972), ("fashion_mnist", 0.98)}
    assert "mnist-dynhp-a0.972-step_mean-lam0.01-e200-seed1" in {r["name"] for r in grids["paper"]}


def test_seeds_apply_to_the_named_rows_only(grids):
    seeds: dict[tuple, list[int]] = {}
    for r in grids["seeds"]:
        seeds.setdefault((r["dataset"], r["method"], r["batch_size"], r["alpha_bs"]), []).append(r["seed"])
    assert seeds[("mnist", "sp", 512, None)] == [1, 2, 3]
    assert seeds[("mnist", "dynhp", 16, 0.972)] == [1, 2, 3]
    assert seeds[("fashion_mnist", "dynhp", 16, 0.98)] == [1, 2, 3]
    assert seeds[("mnist", "hp", 100, None)] == [1]
    assert seeds[("mnist", "dynhp", 16, 0.971)] == [1]
    assert len(grids["seeds"]) == 18
    assert len({r["name"] for r in grids["seeds"]}) == 18


def test_seeds_of_every_dynhp_row_include_the_best_alphas_row(grids):
    """--seeds_rows=dynhp ("every DynHP row") left the row at the best alpha, labelled
    dynhp_best, at seed 1."""
    seeds: dict[float, list[int]] = {}
    for r in grids["dynhp_seeds"]:
        seeds.setdefault(r["alpha_bs"], []).append(r["seed"])
    assert len(seeds) > 1 and all(s == [1, 2] for s in seeds.values()), seeds
    assert 0.972 in seeds


def test_full_grid_covers_every_axis(grids):
    full = grids["full"]
    # per lambda (3): SP and HP at 7 batches; DynHP at 5 (MNIST) / 11 (Fashion-MNIST) alphas x 3 batch growths
    assert len(full) == 3 * (7 + 7 + 5 * 3) + 3 * (7 + 7 + 11 * 3)
    fashion_alphas = sorted({r["alpha_bs"] for r in full if r["dataset"] == "fashion_mnist" and r["method"] == "dynhp"})
    assert fashion_alphas == pytest.approx([0.979 + 0.001 * i for i in range(11)])
    assert sorted({r["batch_size"] for r in full if r["method"] == "hp"}) == [16, 32, 64, 100, 128, 256, 512]
    assert {r["l0_lambda"] for r in full} == {0.01, 0.03, 0.1}
    assert {r["batch_growth"] for r in full if r["method"] == "dynhp"} == {"step_mean", "step", "epoch"}


def test_overrides_replace_their_axis(grids):
    rows = grids["override"]
    assert sorted((r["method"], r["batch_size"], r["alpha_bs"]) for r in rows) == [
        ("dynhp", 16, 0.9), ("dynhp", 16, 0.95), ("sp", 32, None)]
    assert {(r["l0_lambda"], r["epochs"], r["train_limit"]) for r in rows} == {(0.1, 7, 100)}
    assert {r["batch_growth"] for r in rows if r["method"] == "dynhp"} == {"epoch"}
    assert "mnist-sp-bs32-lam0.1-e7-n100xall-seed1" in {r["name"] for r in rows}


def test_bad_grid_arguments_are_refused(grids):
    errors = grids["errors"]
    assert len(errors) == 5
    assert "datasets" in errors[0] and "cifar" in errors[0]
    assert "batch_growth" in errors[1] and "fast" in errors[1]
    assert "methods" in errors[2] and "dense" in errors[2]
    assert "seeds_rows" in errors[3]
    assert "duplicate" in errors[4]


def test_dry_run_plans_and_writes_the_manifest(tmp_path):
    stdout = _ok(_run("reproduce.py", "--dry_run", "--datasets=fashion_mnist", "--sp_batch_sizes=16,32", "--hp_batch_sizes=",
                      "--alphas=0.985", "--l0_lambdas=0.03", "--seeds=2", "--seeds_rows=sp", f"--out={tmp_path}"))
    assert "5 runs planned" in stdout and "0 finished (skipped), 5 to run" in stdout
    assert stdout.count("not run yet") == 5
    manifest = json.loads((tmp_path / "sweep.json").read_text())["runs"]
    assert sorted(manifest) == sorted([
        "fashion_mnist-sp-bs16-lam0.03-e200-seed1", "fashion_mnist-sp-bs16-lam0.03-e200-seed2",
        "fashion_mnist-sp-bs32-lam0.03-e200-seed1", "fashion_mnist-sp-bs32-lam0.03-e200-seed2",
        "fashion_mnist-dynhp-a0.985-step_mean-lam0.03-e200-seed1",
    ])
    dyn = manifest["fashion_mnist-dynhp-a0.985-step_mean-lam0.03-e200-seed1"]
    assert dyn["config"]["budget_kb"] == pytest.approx(1433.4, abs=0.05)
    assert dyn["command"].startswith("python tools/reproduce.py --datasets=fashion_mnist")  # the command that will run it
    assert [p.name for p in tmp_path.iterdir()] == ["sweep.json"]  # nothing trained
    # a later dry run with other flags plans the same run: the recorded command stays
    _ok(_run("reproduce.py", "--dry_run", "--datasets=fashion_mnist", "--methods=dynhp", "--alphas=0.985", "--l0_lambdas=0.03",
             "--hp_batch_sizes=", f"--out={tmp_path}"))
    again = json.loads((tmp_path / "sweep.json").read_text())["runs"]
    assert again["fashion_mnist-dynhp-a0.985-step_mean-lam0.03-e200-seed1"]["command"] == dyn["command"]


def test_a_damaged_config_json_is_a_stale_folder_and_dry_run_1_is_not_recorded(tmp_path):
    # A config.json cut short crashed the planner (a JSONDecodeError traceback); --dry_run=1
    # (not only --dry_run / =true / =True) was kept in the command sweep.json records.
    args = ("--datasets=mnist", "--grid=paper_rows", "--methods=dynhp", "--alphas=0.972", "--epochs=1", f"--out={tmp_path}")
    name = "mnist-dynhp-a0.972-step_mean-lam0.01-e1-seed1"
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text('{"dataset": "mni')
    done = _run("reproduce.py", "--dry_run=1", *args)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert f"{name}: its config.json differs (it is not readable" in done.stderr
    (tmp_path / name / "config.json").unlink()
    _ok(_run("reproduce.py", "--dry_run=1", *args))
    command = json.loads((tmp_path / "sweep.json").read_text())["runs"][name]["command"]
    assert "dry_run" not in command and "--alphas=0.972" in command


def test_ray_backend_without_ray_says_how_to_install(tmp_path):
    fake = tmp_path / "noray"
    fake.mkdir()
    (fake / "ray.py").write_text("raise ImportError('No module named ray (test stand-in)')\n")
    done = _run("reproduce.py", "--backend=ray", "--quick", f"--out={tmp_path / 'out'}", PYTHONPATH=f"{fake}{os.pathsep}{REPO}")
    assert done.returncode == 2
    assert "pip install 'tf_dynhp[ray]'" in done.stderr


# --------------------------------------------------------------------------- the sweep
def test_quick_sweep_runs_two_jobs_into_run_folders(sweep):
    out, stdout = sweep
    assert "2 runs planned" in stdout and "0 finished (skipped), 2 to run; backend local, 2 at a time" in stdout
    assert "done in" in stdout and "2 finished, 0 failed" in stdout
    for name, method in ((SP_NAME, "sp"), (DYNHP_NAME, "dynhp")):
        folder = out / name
        for f in ("config.json", "history.jsonl", "metrics.json", "model.keras", "train.log"):
            assert (folder / f).is_file(), f"{name} lacks {f}"
        config = json.loads((folder / "config.json").read_text())
        assert (config["method"], config["epochs"], config["train_limit"], config["test_limit"]) == (method, 2, 2000, 1000)
        m = _metrics(folder)
        assert 0.0 < m["test_error"] < 90.0 and m["epochs_run"] == 2
        assert len(_history(folder)) == 2
        log = (folder / "train.log").read_text()
        assert "Epoch 2/2" in log
        assert "\x1b[" not in log and "━" not in log  # a file gets the one-line-per-epoch log, no progress bar
        assert "threads: intra_op=1 inter_op=1 OMP=1" in log  # jobs > 1: one thread per worker
    assert _metrics(out / DYNHP_NAME)["budget_kb"] == pytest.approx(2609.4, abs=0.05)
    assert _metrics(out / SP_NAME)["mean_memory_kb"] == pytest.approx(2609.4, abs=0.05)  # MO of SP at 512


def test_finished_runs_are_skipped_and_unfinished_ones_resume(sweep):
    out, _ = sweep
    sp_metrics = (out / SP_NAME / "metrics.json")
    sp_before = (sp_metrics.stat().st_mtime_ns, sp_metrics.read_text())
    dyn = out / DYNHP_NAME
    history_before = _history(dyn)
    metrics_before = _metrics(dyn)
    # Make the DynHP run unfinished after epoch 1: no metrics.json, no epoch-2 checkpoint.
    (dyn / "metrics.json").unlink()
    (dyn / "checkpoints" / "epoch-00002.dynhp").unlink()
    assert (dyn / "checkpoints" / "epoch-00001.dynhp").exists()
    log_size = (dyn / "train.log").stat().st_size

    stdout = _ok(_run("reproduce.py", *SWEEP_ARGS, f"--out={out}"))
    assert "1 finished (skipped), 1 to run" in stdout
    assert (sp_metrics.stat().st_mtime_ns, sp_metrics.read_text()) == sp_before  # not trained again
    new_log = (dyn / "train.log").read_text()[log_size:]
    assert f"Resumed from {dyn / 'checkpoints' / 'epoch-00001.dynhp'} (epoch 1)" in new_log
    assert "Epoch 2/2" in new_log and "Epoch 1/2" not in new_log  # resumed, not restarted
    # Exact resume: same results as the uninterrupted run (timings and trace counts aside).
    assert _metrics(dyn)["test_error"] == metrics_before["test_error"]
    history_after = _history(dyn)
    assert len(history_after) == 2
    for before, after in zip(history_before, history_after, strict=True):
        assert {k: v for k, v in before.items() if k not in RUNTIME_KEYS} == {k: v for k, v in after.items() if k not in RUNTIME_KEYS}

    # Everything finished now: nothing to do.
    stdout = _ok(_run("reproduce.py", *SWEEP_ARGS, f"--out={out}"))
    assert "2 finished (skipped), 0 to run" in stdout


def test_ray_backend_runs_the_same_workers(tmp_path, data_available):
    try:
        import ray  # noqa: F401
    except ImportError:
        pytest.skip("ray is not installed (pip install 'tf_dynhp[ray]')")
    done = _run("reproduce.py", "--backend=ray", "--jobs=2", "--quick", "--datasets=mnist", "--methods=hp,dynhp", "--alphas=0.975",
                "--epochs=1", "--train_limit=500", "--test_limit=200", f"--out={tmp_path}", timeout=240)
    if done.returncode == 3 and "Ray could not start" in done.stderr:
        pytest.skip(f"Ray cannot start in this sandbox: {done.stderr.strip().splitlines()[-1]}")
    stdout = _ok(done)
    assert "backend ray, 2 at a time" in stdout and "2 finished, 0 failed" in stdout
    for name in ("mnist-hp-bs100-lam0.01-e1-n500x200-seed1", "mnist-dynhp-a0.975-step_mean-lam0.01-e1-n500x200-seed1"):
        assert (tmp_path / name / "metrics.json").is_file()
        assert _metrics(tmp_path / name)["epochs_run"] == 1
        assert "threads: intra_op=1 inter_op=1 OMP=1" in (tmp_path / name / "train.log").read_text()


# --------------------------------------------------------------------------- report
@pytest.fixture(scope="module")
def report_input(sweep, tmp_path_factory) -> Path:
    """A copy of the sweep plus one planned-but-not-run and one unfinished DynHP run."""
    out, _ = sweep
    runs = tmp_path_factory.mktemp("report") / "runs"
    shutil.copytree(out, runs)
    manifest = json.loads((runs / "sweep.json").read_text())
    template = manifest["runs"][DYNHP_NAME]
    for alpha, name in ((0.975, "mnist-dynhp-a0.975-step_mean-lam0.01-e2-n2000x1000-seed1"),
                        (0.971, "mnist-dynhp-a0.971-step_mean-lam0.01-e2-n2000x1000-seed1")):
        manifest["runs"][name] = {**template, "config": {**template["config"], "alpha_bs": alpha}}
    (runs / "sweep.json").write_text(json.dumps(manifest))
    unfinished = runs / "mnist-dynhp-a0.971-step_mean-lam0.01-e2-n2000x1000-seed1"
    (unfinished / "checkpoints").mkdir(parents=True)
    (unfinished / "config.json").write_text(json.dumps({**template["config"], "alpha_bs": 0.971}))
    shutil.copy(out / DYNHP_NAME / "checkpoints" / "epoch-00001.dynhp", unfinished / "checkpoints" / "epoch-00001.dynhp")
    return runs


def test_report_writes_tables_and_figures(report_input, tmp_path):
    results, figures = tmp_path / "RESULTS.md", tmp_path / "figures"
    stdout = _ok(_run("report.py", f"--runs={report_input}", f"--out={results}", f"--figures={figures}"))
    assert "4 runs (2 finished)" in stdout
    text = results.read_text()
    paper_table = text.split("### In the layout of the paper's Table 2")[1].split("###")[0]
    rows = {line.split("|")[1].strip() + "|" + line.split("|")[2].strip(): line for line in paper_table.splitlines()
            if line.startswith(("| SP |", "| HP |", "| DynHP |"))}
    assert len(rows) == 7  # SP, HP and the five alpha_bs of Table 2
    sp, dyn = _metrics(report_input / SP_NAME), _metrics(report_input / DYNHP_NAME)
    # SP row: our final test error (metrics.json), the paper's 1.42 and its training memory in 10^6 KB
    sp_row = rows["SP|bs = 512"]
    assert f"| {sp['test_error']:.2f} |" in sp_row and "| 1.42 |" in sp_row
    assert f"{sp['training_memory_mb'] * 1000 / 1e6:.4g}" in sp_row and "| 5.219 |" in sp_row
    # DynHP 0.972: error, its change vs SP, model size and saving, memory saving; beside the paper's numbers
    dyn_row = rows["DynHP|0.972"]
    delta = 100 * (dyn["test_error"] - sp["test_error"]) / sp["test_error"]
    saving = 100 * (dyn["training_memory_mb"] - sp["training_memory_mb"]) / sp["training_memory_mb"]
    assert f"{dyn['test_error']:.2f} ({delta:+.0f}%)" in dyn_row
    assert f"{dyn['model_kb'] / 1000:.3f}" in dyn_row and f"({saving:+.0f}%)" in dyn_row
    assert "1.35 (-5%)" in dyn_row and "0.398 (-62%)" in dyn_row
    assert f"{dyn['mean_memory_kb']:.1f} / 1368.0" in dyn_row
    # missing and unfinished runs
    assert "not run yet" in rows["DynHP|0.975"]
    assert "unfinished, epoch 1 of 2" in rows["DynHP|0.971"]
    assert "not in this sweep" in rows["DynHP|0.973"] and "1.40 (-1%)" in rows["DynHP|0.973"]
    assert "python tools/reproduce.py --quick --datasets=mnist --methods=sp,dynhp --alphas=0.972 --jobs=2" in text
    # issue 17: no run conditions the run folders do not record
    assert "side by side" not in text and "wall time" not in text and "half of that" not in text
    # one PNG per figure, linked from RESULTS.md
    for name in ("fig1_active_units_mnist", "fig2_memory_sp_hp_mnist", "fig3_error_by_batch_mnist", "fig5_error_dynhp_mnist",
                 "fig6_batch_size_mnist", "fig7_memory_dynhp_mnist", "frontier_mnist"):
        png = figures / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC, name
        assert png.stat().st_size > 10_000
        assert f"](figures/{name}.png)" in text


def test_report_removes_only_the_figures_it_draws(tmp_path):
    """It removed every fig[1-7]_*.png and frontier_*.png of --figures, a user's
    fig1_my_own_sketch.png too, saying "a figure of an earlier report"."""
    (tmp_path / "runs").mkdir()
    figures = tmp_path / "figures"
    figures.mkdir()
    mine = [figures / "fig1_my_own_sketch.png", figures / "frontier_draft.png", figures / "fig3_error_by_batch_cifar.png"]
    earlier = [figures / "fig1_active_units_mnist.png", figures / "frontier_fashion_mnist.png"]
    for path in mine + earlier:
        path.write_bytes(b"x")
    stdout = _ok(_run("report.py", f"--runs={tmp_path / 'runs'}", f"--out={tmp_path / 'R.md'}", f"--figures={figures}"))
    assert all(p.exists() for p in mine) and not any(p.exists() for p in earlier)
    assert stdout.count("a figure of an earlier report") == 2


def test_report_on_an_empty_folder_says_so(tmp_path):
    """Also issue 15: without --figures the figures go beside --out, not into the repository's figures/."""
    (tmp_path / "runs").mkdir()
    out = tmp_path / "elsewhere" / "R.md"
    stdout = _ok(_run("report.py", f"--runs={tmp_path / 'runs'}", f"--out={out}"))
    assert "0 runs" in stdout
    assert "from 0 runs" in out.read_text()
    assert f"figures in {tmp_path / 'elsewhere' / 'figures'}" in stdout
    assert (tmp_path / "elsewhere" / "figures").is_dir()


# --------------------------------------------------------------------------- rank_at_size
def test_rank_at_size_ranks_on_a_held_out_split_of_the_training_set(tmp_path):
    """Issue 16 item 3: candidates train without the last --holdout training images and are
    ranked on them; the test error is shown beside and chooses nothing."""
    out = tmp_path / "rank.md"
    _ok(_run("rank_at_size.py", "--train_limit=600", "--holdout=200", "--epochs=1", "--seeds=1", "--first_seed=4",
             "--target_kb=300", "--candidates=base,coc_adamw01", f"--out={out}", timeout=600))
    runs = json.loads(Path(str(out) + ".json").read_text())
    assert [(r["candidate"], r["seed"]) for r in runs] == [("base", 4), ("coc_adamw01", 4)]
    assert all(r["train_images"] == 400 and 0 <= r["val_error"] <= 100 and r["model_kb"] <= 300 for r in runs)
    text = out.read_text()
    assert "Trained on the first 400 training images; ranked on the validation error" in text
    assert "| validation error % (mean ± std) |" in text
    bad = _run("rank_at_size.py", "--train_limit=600", "--holdout=600", "--epochs=1", "--candidates=base", timeout=300)
    assert bad.returncode != 0 and "--holdout=600: expected fewer than the 600 training images" in bad.stderr + bad.stdout


def test_rank_at_size_segmented_cosine_is_the_restart_and_its_variants():
    """The twelfth round's schedules: one segment at half the epochs from the full rate is
    runs' "cosine_restart"; a second one restarts again; a peak of None goes on from the
    rate reached, without a jump, down to 0."""
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import rank_at_size as r; from tf_dynhp import runs; "
              "a = r.segmented_cosine(1e-3, 200, ((0.5, 1.0),)); b = runs.lr_callbacks('cosine_restart', 1e-3, 200, 100)[0].schedule; "
              "assert all(a(e) == b(e, 0.0) for e in range(200)); "
              "c = r.segmented_cosine(1e-3, 200, ((0.5, 1.0), (0.75, 1.0))); "
              "assert c(149) < 1e-6 and c(150) == 1e-3 and c(100) == 1e-3 and c(199) < 1e-6; "
              "d = r.segmented_cosine(1e-3, 200, ((0.5, None),)); "
              "assert abs(d(100) - b(100 - 1e-9, 0.0)) < 1e-6 and d(100) == a(0) / 2 and d(150) == d(100) / 2 and d(199) < 1e-6; "
              "print('ok')")
    done = subprocess.run([sys.executable, "-c", script, str(TOOLS)], capture_output=True, text=True, cwd=REPO, env=_env(), timeout=120)
    assert _ok(done).split()[-1] == "ok"


# --------------------------------------------------------------------------- benchmark
def test_benchmark_baselines_get_the_dynhp_runs_l2_term():
    """benchmark.with_l2: every Dense kernel and bias of a baseline pays 0.5 * wd * ||w||^2, the
    DynHP run's expected-L2 term with its gates open; wd 0 leaves the model as it is."""
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import numpy as np, keras, benchmark as b; from tf_dynhp import runs; "
              "m = runs.build_mlp((6,), input_shape=(4, 4)); assert b.with_l2(m, 0.0) is m; "
              "r = b.with_l2(m, 1e-2); r(np.zeros((1, 4, 4), 'float32')); "
              "want = 0.5 * 1e-2 * sum(float(np.sum(np.square(w))) for w in r.get_weights()); "
              "got = float(sum(keras.ops.convert_to_numpy(l) for l in r.losses)); "
              "print(len(r.losses), got, want)")
    done = subprocess.run([sys.executable, "-c", script, str(TOOLS)], capture_output=True, text=True, cwd=REPO, env=_env(), timeout=120)
    count, got, want = _ok(done).split()[-3:]
    assert int(count) == 4 and float(got) == pytest.approx(float(want), rel=1e-5) and float(want) > 0


def test_benchmark_baselines_see_the_images_of_the_dynhp_runs_epochs():
    """With the run's augmentation, train_keras trains epoch e on augment(x, epoch_rng(seed, e)),
    the images DynHP's epoch e saw, and the images as they are from `augment_epochs` on; the
    tfmot helper rebuilds the same augmentation (a shift, then erasing) and `epoch_images` from its config and
    tf_dynhp/augment.py's file alone (its venv has no Keras 3)."""
    script = ("import sys, json; sys.path.insert(0, sys.argv[1]); import numpy as np, benchmark as b, _tfmot_baseline as t; "
              "from tf_dynhp import runs, augment; b.FLAGS(['benchmark']); "
              "shift = augment.Augmentations((augment.RandomShift(1, flip=True), augment.RandomErasing(0.5))); seen = []\n"
              "def spy(x, rng):\n"
              "    out = shift(x, rng); seen.append(out); return out\n"
              "x = np.random.default_rng(0).random((64, 6, 6)).astype('float32'); y = np.arange(64) % 10\n"
              "r = b.train_keras(runs.build_mlp((5,), input_shape=(6, 6)), ((x, y), (x, y)), 3, 16, 1e-3, 7, augment=spy)\n"
              "ok = all(np.array_equal(s, shift(x, augment.epoch_rng(7, e))) for e, s in enumerate(seen))\n"
              "rebuilt, images_of = t._augmentation({'augment': shift.get_config(), 'augment_module': sys.argv[2]})\n"
              "b.train_keras(runs.build_mlp((5,), input_shape=(6, 6)), ((x, y), (x, y)), 3, 16, 1e-3, 7, augment=spy, augment_epochs=2)\n"
              "print(len(seen), ok, len(r['epochs']), rebuilt.get_config() == shift.get_config(), np.array_equal(images_of(rebuilt, x, 7, 2), seen[2]), "
              "images_of(rebuilt, x, 7, 2, 2) is x, t._augmentation({'augment': None}) == (None, None))")
    done = subprocess.run([sys.executable, "-c", script, str(TOOLS), str(REPO / "tf_dynhp" / "augment.py")],
                          capture_output=True, text=True, cwd=REPO, env=_env(), timeout=300)
    assert _ok(done).split()[-7:] == ["5", "True", "3", "True", "True", "True", "True"]  # 3 + 2: no augment call in the final phase


def test_benchmark_baselines_train_on_the_dynhp_runs_label_smoothing():
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import numpy as np, benchmark as b; from tf_dynhp import runs, losses; "
              "b.FLAGS(['benchmark']); x = np.random.default_rng(0).random((32, 4, 4)).astype('float32'); y = np.arange(32) % 10\n"
              "for s in (0.0, 0.1):\n"
              "    loss = b.train_keras(runs.build_mlp((5,), input_shape=(4, 4)), ((x, y), (x, y)), 1, 16, 1e-3, 0, label_smoothing=s)['model'].loss\n"
              "    print(type(loss).__name__, getattr(loss, 'label_smoothing', None))")
    done = subprocess.run([sys.executable, "-c", script, str(TOOLS)], capture_output=True, text=True, cwd=REPO, env=_env(), timeout=300)
    assert _ok(done).strip().splitlines()[-2:] == ["str None", "SparseCategoricalCrossentropy 0.1"]


def test_benchmark_quick_without_tfmot(sweep, report_input, tmp_path):
    out, _ = sweep
    bench = report_input / "benchmark.md"
    stdout = _ok(_run("benchmark.py", f"--dynhp_run={out / DYNHP_NAME}", "--quick", "--skip_tfmot", f"--out={bench}",
                      "--target_error=50"))
    raw = json.loads(bench.with_suffix(".json").read_text())
    names = [r["name"] for r in raw["rows"]]
    assert len(names) == 3 and names[0].startswith("DynHP") and names[1].startswith("Keras dense") and "from scratch" in names[2]
    for r in raw["rows"]:
        assert 0.0 < r["test_error"] < 90.0
        fp32, int8 = r["tflite_fp32"], r["tflite_int8"]
        assert 0 < int8[0] < fp32[0] and 0 < fp32[1] <= fp32[0] * 1.01  # (bytes, gzip bytes)
        assert r["train_seconds"] > 0 and len(r["epochs"]) == 2
    dense = raw["rows"][1]
    assert dense["nonzero"] == 266_610  # the 784-300-100-10 MLP
    assert dense["mo_mean_kb"] == pytest.approx(1347.7, abs=0.05)  # MO at batch 100
    assert raw["rows"][0]["mo_sum_mb"] == pytest.approx(_metrics(out / DYNHP_NAME)["training_memory_mb"], rel=1e-9)
    assert "tfmot row skipped (--skip_tfmot)." in raw["notes"]
    text = bench.read_text()
    assert text.count("\n| ") == 4  # header + 3 rows
    assert "s to reach 50% (epoch)" in stdout
    # report.py includes <runs>/benchmark.md
    results = tmp_path / "RESULTS.md"
    _ok(_run("report.py", f"--runs={report_input}", f"--out={results}", f"--figures={tmp_path / 'figures'}"))
    assert "## Benchmark against the alternatives" in results.read_text()
    assert names[1] in results.read_text()


# --------------------------------------------------------------------------- report: targets and time to an error
def _tools():
    """tools/paper.py, tools/run_folders.py and tools/report_tables.py, imported as the tools import them."""
    if str(TOOLS) not in sys.path:
        sys.path.insert(0, str(TOOLS))
    import paper
    import report_tables
    import run_folders

    return paper, run_folders, report_tables


def _fake_run(folder: Path, method: str, errors, seconds, metrics, **config):
    folder.mkdir(parents=True)
    rows = [{"epoch": i + 1, "val_error": e, "epoch_seconds": s} for i, (e, s) in enumerate(zip(errors, seconds, strict=True))]
    (folder / "history.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    c = {"dataset": "mnist", "method": method, "epochs": 4, "learning_rate": 1e-3, "batch_size": 512 if method == "sp" else 16,
         "l0_lambda": 0.01, "gamma": 0.5, "hidden": (300, 100), "alpha_bs": None, "batch_growth": "step_mean",
         "budget_kb": None, "budget_on": "paper", "seed": 1, "train_limit": None, "test_limit": None, **config}
    return _tools()[1].RunInfo(folder.name, folder, c, "finished", {"dense_model_kb": 1041.4453125, **metrics}, None)


def test_time_to_error_and_targets_table(tmp_path):
    """The seconds to a test error are summed epoch times up to the first epoch at or below it;
    each DynHP group is checked against issue 6's targets with SP as the reference."""
    paper, run_folders, report = _tools()
    sp = _fake_run(tmp_path / "sp", "sp", [3.0, 2.5, 1.9, 1.5], [2.0, 2.0, 2.0, 2.0],
                   {"test_error": 1.5, "model_kb": 1041.4453125, "training_memory_mb": 10.0})
    good = _fake_run(tmp_path / "good", "dynhp", [2.0, 1.8], [1.5, 9.0],
                     {"test_error": 1.38, "model_kb": 200.0, "training_memory_mb": 2.0, "batch_sizes": [16, 40]},
                     alpha_bs=0.975, budget_kb=paper.sp_mo_kb("mnist"))
    bad = _fake_run(tmp_path / "bad", "dynhp", [2.4, 2.1], [1.0, 1.0],
                    {"test_error": 1.41, "model_kb": 300.0, "training_memory_mb": 2.0, "batch_sizes": [16, 40]},
                    alpha_bs=0.971, budget_kb=paper.sp_mo_kb("mnist"))
    assert sp.time_to_error(2.0) == (6.0, 3)
    assert good.time_to_error(2.0) == (1.5, 1)  # "at or below"
    assert bad.time_to_error(2.0) is None
    groups = run_folders.make_groups([sp, good, bad])
    lines = report.targets_section("mnist", groups)
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| DynHP")}
    assert "1.38 (met)" in rows["DynHP α_bs 0.975, λ 0.01, step_mean"]
    assert "80.8 (met)" in rows["DynHP α_bs 0.975, λ 0.01, step_mean"]  # 1 - 200 / 1041.4
    assert "80.0 (met)" in rows["DynHP α_bs 0.975, λ 0.01, step_mean"]  # 1 - 2 / 10
    assert "2 (faster than SP)" in rows["DynHP α_bs 0.975, λ 0.01, step_mean"]
    assert rows["DynHP α_bs 0.975, λ 0.01, step_mean"].endswith("| yes |")
    assert "1.41 (missed)" in rows["DynHP α_bs 0.971, λ 0.01, step_mean"]
    assert "71.2 (missed)" in rows["DynHP α_bs 0.971, λ 0.01, step_mean"]
    assert "not reached" in rows["DynHP α_bs 0.971, λ 0.01, step_mean"]
    assert rows["DynHP α_bs 0.971, λ 0.01, step_mean"].endswith("| no |")
    assert not any("side by side" in line or "cores" in line for line in lines)  # issue 17: not read from the runs
    text = "\n".join(report.observations("mnist", groups))
    assert "1.50% test error" in text and "the paper's 1.42%" in text
    assert "1.38-1.41% error" in text
    # both save 80% of SP's memory; the paper's 0.971 and 0.975 save 1% and 81%
    assert "Our training memory is 80% below SP's at every α_bs (final batches 40, 40)" in text
    assert "(80 points apart) and ours are 0 points apart: ours vary less with α_bs than the paper's" in text
    assert "does not appear" not in text
    # the noise of runs at a fixed rate and of runs whose rate decays are told apart (one range said "fixed" for both)
    assert "0.14-0.66 points at a fixed learning rate (as in the paper)" in text and "decays" not in text
    cosine = _fake_run(tmp_path / "cos", "dynhp", [2.0, 2.1], [1.0, 1.0],
                       {"test_error": 2.1, "model_kb": 200.0, "training_memory_mb": 2.0, "batch_sizes": [16, 40]},
                       alpha_bs=0.973, budget_kb=paper.sp_mo_kb("mnist"), lr_decay="cosine", target_kb=205.0)
    text = "\n".join(report.observations("mnist", run_folders.make_groups([sp, good, bad, cosine])))
    assert "0.14-0.66 points at a fixed learning rate (as in the paper) and 0.07 points in the runs whose learning rate decays" in text


def _dynhp(folder: Path, alpha: float, metrics: dict, seed: int = 1):
    metrics = {"test_error": 1.6, "model_kb": 600.0, "training_memory_mb": 3.0, "mean_memory_kb": 900.0, **metrics}
    return _fake_run(folder, "dynhp", [2.0, 1.6], [1.0, 1.0], metrics, alpha_bs=alpha, budget_kb=_tools()[0].sp_mo_kb("mnist"),
                     seed=seed)


def _sp(folder: Path):
    return _fake_run(folder, "sp", [3.0, 1.5], [1.0, 1.0], {"test_error": 1.5, "model_kb": 1041.4453125, "training_memory_mb": 10.0,
                                                           "mean_memory_kb": 2609.4, "max_memory_kb": 2609.4, "batch_sizes": [512, 512]})


def test_observations_follow_the_runs(tmp_path):
    """Issue 17: the memory sentence says what the runs show: here one α_bs uses more memory than
    SP, and the savings vary across α_bs more than the paper's."""
    _, run_folders, report = _tools()
    above = _dynhp(tmp_path / "above", 0.971, {"training_memory_mb": 12.0, "batch_sizes": [16, 512]})
    below = _dynhp(tmp_path / "below", 0.975, {"training_memory_mb": 2.0, "batch_sizes": [16, 40]})
    text = "\n".join(report.observations("mnist", run_folders.make_groups([_sp(tmp_path / "sp"), above, below])))
    assert "at every α_bs" not in text and "does not appear" not in text
    assert "Our training memory is between 20% above and 80% below SP's, depending on α_bs (final batches 512, 40)" in text
    assert "the paper's savings range from 1% to 81% (80 points apart) and ours are 100 points apart: ours vary more" in text


def test_rows_of_several_seeds_aggregate_over_the_seeds(tmp_path):
    """Issue 17: a row of 3 seeds shows every seed's units and batches (not seed 1's), and its
    max MO KB is the largest of the seeds' maxima (not their mean)."""
    _, run_folders, report = _tools()
    seeds = [([452, 294, 100], [16, 90, 182], 1091.1), ([454, 287, 100], [16, 95, 187], 1109.4),
             ([448, 284, 100], [16, 88, 182], 1092.2)]
    dyn = [_dynhp(tmp_path / f"seed{seed}", 0.972, {"layer_sizes": units, "batch_sizes": batches, "max_memory_kb": top}, seed=seed)
           for seed, (units, batches, top) in enumerate(seeds, start=1)]
    groups = run_folders.make_groups([_sp(tmp_path / "sp"), *dyn])
    rows = [line for line in report.all_runs_table(groups) if line.startswith("| DynHP")]
    assert len(rows) == 1 and "| 3 | finished |" in rows[0]
    assert "| 452-294-100 / 454-287-100 / 448-284-100 |" in rows[0]
    assert "| 16→182/187/182 |" in rows[0]
    assert "| 1109.4 |" in rows[0] and "1097.6" not in rows[0]
    sp_row = next(line for line in report.all_runs_table(groups) if line.startswith("| SP"))
    assert "| 512→512 |" in sp_row  # one value when the seeds agree
    assert "final batches 182/187/182" in "\n".join(report.observations("mnist", groups))


def _summarize_folder(folder: Path, dataset: str, mean_memory_kb: float) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"dataset": dataset, "arch": "mlp", "method": "hp", "l0_lambda": 0.01,
                                                    "hidden": [300, 100], "alpha_bs": None, "batch_growth": "step_mean"}))
    (folder / "metrics.json").write_text(json.dumps({
        "test_error": 10.0, "model_kb": 1041.4453125 / 2, "dense_model_kb": 1041.4453125, "layer_sizes": [700, 200, 100],
        "mean_memory_kb": mean_memory_kb, "max_memory_kb": mean_memory_kb, "budget_kb": None, "batch_sizes": [128, 128],
        "epochs_run": 2, "train_seconds": 1.0}))
    return folder


def test_summarize_takes_the_references_of_the_runs_dataset(tmp_path):
    """Issue 17: the % columns compare with the run's own data set (SP's MO: 2609.4 KB on MNIST at
    batch 512, 1433.4 KB on Fashion-MNIST at batch 128), unless --sp_mo_kb / --dense_kb say otherwise."""
    mnist = _summarize_folder(tmp_path / "m", "mnist", 2609.4453125 / 2)
    fashion = _summarize_folder(tmp_path / "f", "fashion_mnist", 1433.4453125 / 2)
    rows = {line.split("|")[1].strip(): line for line in _ok(_run("summarize.py", str(mnist), str(fashion))).splitlines()}
    assert "| 1304.7 (50.0%) |" in rows["m"] and "| 520.7 (50.0%) |" in rows["m"]
    assert "| 716.7 (50.0%) |" in rows["f"] and "| 520.7 (50.0%) |" in rows["f"]
    rows = {line.split("|")[1].strip(): line for line in
            _ok(_run("summarize.py", "--sp_mo_kb=1000", "--dense_kb=2000", str(fashion))).splitlines()}
    assert "| 716.7 (71.7%) |" in rows["f"] and "| 520.7 (26.0%) |" in rows["f"]


def test_summarize_shows_alpha_bs_zero_and_none_for_methods_without_it(tmp_path):
    """alpha_bs 0.0 (a legal Eq. 8 smoothing) showed an empty cell; an sp/hp run's recorded
    --alpha_bs, which they do not use, was shown."""
    rows = {}
    for name, method, alpha in (("zero", "dynhp", 0.0), ("hp", "hp", 0.9)):
        folder = _summarize_folder(tmp_path / name, "mnist", 1000.0)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "method": method, "alpha_bs": alpha}))
    for line in _ok(_run("summarize.py", str(tmp_path / "zero"), str(tmp_path / "hp"))).splitlines():
        rows[line.split("|")[1].strip()] = [cell.strip() for cell in line.split("|")]
    assert rows["zero"][4] == "0.0" and rows["hp"][4] == ""


def test_long_runs_section_says_whether_the_papers_size_is_reached(tmp_path):
    """Issue 16 item 5: each 2000-epoch row against the paper's row of the same method (and
    alpha_bs), the verdict computed; unfinished runs listed with their status."""
    _, run_folders, report = _tools()
    hp = _fake_run(tmp_path / "hp", "hp", [1.5, 1.4], [1.0, 1.0], {"test_error": 1.38, "model_kb": 416.8, "layer_sizes": [339, 240, 100],
                                                                    "epochs_run": 2000}, epochs=2000, batch_size=100)
    dyn = _fake_run(tmp_path / "dyn", "dynhp", [1.5], [1.0], {"test_error": 1.50, "model_kb": 170.0, "epochs_run": 2000},
                    epochs=2000, alpha_bs=0.975)
    # SP prunes nothing: its error only; an HP batch the paper has no row of: no verdict
    sp = _fake_run(tmp_path / "sp", "sp", [1.5], [1.0], {"test_error": 1.45, "model_kb": 1041.4, "epochs_run": 2000}, epochs=2000)
    hp64 = _fake_run(tmp_path / "hp64", "hp", [1.5], [1.0], {"test_error": 1.45, "model_kb": 300.0, "epochs_run": 2000},
                     epochs=2000, batch_size=64)
    other = "\n".join(report.long_runs_section([sp, hp64]))
    verdicts = [line for line in other.splitlines() if line.startswith("* ")]
    assert verdicts == ["* SP: after 2000 epochs its error 1.45% is above the paper's 1.42%."]
    late = run_folders.RunInfo("late", tmp_path / "late", {**dyn.config}, "unfinished, epoch 1138 of 2000", None, None)
    text = "\n".join(report.long_runs_section([hp, dyn, late]))
    assert "| 1.38 (1.41) | 416.8 (206) |" in text
    assert "HP: after 2000 epochs the model does not reach (2.0x its size) the paper's 206 KB; its error 1.38% is at or below the paper's 1.41%." in text
    assert "DYNHP α 0.975: after 2000 epochs the model reaches the paper's 178 KB; its error 1.50% is above the paper's 1.43%." in text
    assert "| late | 2000 | | | | | unfinished, epoch 1138 of 2000 |" in text


def test_frontier_section_at_the_papers_size(tmp_path):
    """Issue 16 item 4: one row per target with our size and error beside the paper's error at
    that size, the saving vs SP, and by how much a target is missed."""
    paper, run_folders, report = _tools()
    sp = _fake_run(tmp_path / "sp", "sp", [3.0, 1.9], [2.0, 2.0],
                   {"test_error": 1.5, "model_kb": 1041.4453125, "training_memory_mb": 10.0, "train_seconds": 100.0})
    budget = paper.sp_mo_kb("mnist")
    seeds = [_fake_run(tmp_path / f"t205s{s}", "dynhp", [2.2, 1.9], [1.0, 1.0],
                       {"test_error": e, "model_kb": 204.0, "training_memory_mb": 2.0, "train_seconds": 50.0},
                       alpha_bs=0.973, budget_kb=budget, target_kb=205.0, seed=s) for s, e in ((1, 1.38), (2, 1.40), (3, 1.42))]
    big = _fake_run(tmp_path / "t572", "dynhp", [2.5], [1.0],
                    {"test_error": 1.6, "model_kb": 500.0, "training_memory_mb": 4.0, "train_seconds": 60.0},
                    alpha_bs=0.971, budget_kb=budget, target_kb=572.0)
    other = _fake_run(tmp_path / "t205wd", "dynhp", [2.2, 1.9], [1.0, 1.0],
                      {"test_error": 1.5, "model_kb": 204.5, "training_memory_mb": 2.0, "train_seconds": 50.0},
                      alpha_bs=0.973, budget_kb=budget, target_kb=205.0, lr_decay="cosine", weight_decay_per_weight=5e-4)
    groups = run_folders.make_groups([sp, *seeds, big, other])
    assert len([g for g in groups if g.config.get("target_kb") == 205.0]) == 2  # the seeds form one row, another recipe another
    text = "\n".join(report.frontier_section("mnist", groups))
    row205, row205wd = [line for line in text.splitlines() if line.startswith("| 205 |")]
    assert "| 0.973 | plain | 3 | 204.0 | 1.40 ± 0.02 | 1.40 (DYNHP α 0.973) | 2.0 | 80.0 |" in row205 and row205.endswith("| yes |")
    assert "| 0.973 | cosine + wd0.0005 | 1 | 204.5 | 1.50 |" in row205wd and "error over by 0.10 points" in row205wd
    assert "chosen on a validation split held out of the training set" in text
    # every row here is another recipe than today's MNIST recipe: the table says so
    today = " + ".join(paper.recipe_parts({**paper.target_recipe("mnist"), "target_kb": 1.0}))
    assert f"Rows at 205, 572 KB were trained with another recipe than today's ({today})" in text
    row572 = next(line for line in text.splitlines() if line.startswith("| 572 |"))
    assert "12.6% under (more than 3%)" in row572 and "1.50 (DYNHP α 0.971)" in row572
    # the targeted rows are not mistaken for the paper's DynHP rows
    assert all(not g.is_paper_setting() for g in groups if g.config.get("target_kb"))


def test_sigterm_stops_the_workers_as_ctrl_c_does(tmp_path):
    """A `kill` of reproduce.py left its worker training, re-parented, holding the run
    folder: the same command run again failed on it. SIGTERM now stops the workers."""
    import re
    import signal
    import time

    proc = subprocess.Popen([sys.executable, str(TOOLS / "reproduce.py"), "--datasets=mnist", "--methods=sp", "--sp_batch_sizes=100",
                             "--epochs=50", "--train_limit=3000", "--test_limit=100", "--jobs=1", f"--out={tmp_path}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=_env())
    line = ""
    while "[start]" not in line:
        line = proc.stdout.readline()
        assert line or proc.poll() is None, proc.stderr.read()[-2000:]
    worker = int(re.search(r"pid (\d+)", line).group(1))
    time.sleep(3)  # the worker is training
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    for _ in range(100):
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(worker, signal.SIGKILL)
        raise AssertionError("the worker outlived reproduce.py")


def test_a_range_of_one_value_prints_once():
    """'−38.00 to −38.00 points' for one group: a range of equal ends is its value."""
    report = _tools()[2]
    assert report._signed_span([-38.0]) == "-38.00" and report._signed_span([-0.1, 0.2]) == "-0.10 to +0.20"
    assert report._span([1.0, 1.004], ".2f") == "1.00" and report._span([1.0, 2.0], ".1f") == "1.0-2.0"


def test_report_figures_mark_the_points_of_short_curves(tmp_path):
    """After a 1-epoch sweep every report figure had axes and a legend but no data: a line
    of one point has no length. Short curves get markers (horizontal reference lines do not)."""
    _tools()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import report_figures

    fig, ax = plt.subplots()
    one, = ax.plot([1], [2.0], label="one epoch")
    long, = ax.plot(range(50), range(50), label="fifty")
    ref = ax.axhline(1.0, label="reference")
    ax.legend()
    report_figures._save(fig, tmp_path / "f.png")
    assert one.get_marker() == "o" and long.get_marker() in ("None", None) and ref.get_marker() in ("None", None)
    swatches = {t.get_text(): h.get_marker() for h, t in zip(ax.get_legend().legend_handles, ax.get_legend().get_texts(), strict=True)}
    assert swatches["one epoch"] == "o" and swatches["fifty"] in ("None", None) and swatches["reference"] in ("None", None)
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG" and fig.number not in plt.get_fignums()


def test_the_lenet_section_shows_a_run_without_a_budget(tmp_path):
    """An hp/sp LeNet-5 run records "budget_kb": null; the report failed formatting it."""
    _, run_folders, report = _tools()
    run = run_folders.RunInfo("lenet_hp", tmp_path / "lenet_hp", {"l0_lambda": 0.01, "arch": "lenet5"}, "finished",
                              {"test_error": 1.2, "model_kb": 100.0, "layer_sizes": [1, 20, 50, 800, 500], "batch_sizes": [100, 100],
                               "max_memory_kb": 900.0, "budget_kb": None, "epochs_run": 1}, None)
    row = next(line for line in report.lenet_section([run]) if line.startswith("| lenet_hp"))
    assert "| 900.0 / – | finished |" in row and "| 1.20 |" in row
