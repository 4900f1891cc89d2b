"""tools/train.py: flags out of range are refused when parsed (one line, no traceback, before
TensorFlow is imported); a run without --out_dir says that nothing is saved."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DATA_ROOT

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def train(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "train.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


@pytest.mark.parametrize("flag,expected", [
    ("--alpha_bs=2", "Expected a float in [0, 1]. Received: alpha_bs=2.0"),
    ("--alpha_bs=-0.1", "Expected a float in [0, 1]. Received: alpha_bs=-0.1"),
    ("--budget_kb=-1", "Expected a positive number of KB (1024 bytes). Received: budget_kb=-1.0"),
    ("--budget_kb=nan", "Expected a positive number of KB (1024 bytes). Received: budget_kb=nan"),
    ("--learning_rate=0", "Expected a positive float. Received: learning_rate=0.0"),
    ("--epochs=0", "Expected a positive integer. Received: epochs=0"),
    ("--batch_size=-3", "Expected a positive integer. Received: batch_size=-3"),
    ("--gamma=1", "Expected a float in (0, 1). Received: gamma=1.0"),
    ("--gamma=0", "Expected a float in (0, 1). Received: gamma=0.0"),
    ("--l0_lambda=-0.5", "Expected floats >= 0 (one, or one per gated layer). Received: l0_lambda='-0.5'"),
    ("--l0_lambda=0.01,x,0.01", "Expected floats >= 0 (one, or one per gated layer). Received: l0_lambda='x'"),
    ("--l0_lambda=", "Expected one float >= 0, or one per gated layer. Received: an empty list"),
    ("--droprate_init=1", "Expected a float in (0, 1). Received: droprate_init=1.0"),
    ("--hidden=300,0", "Expected comma-separated positive layer sizes"),
    ("--seed=-1", "Expected an integer in [0, 2**32). Received: seed=-1"),  # was NumPy's traceback after loading the data
    ("--seed=4294967296", "Expected an integer in [0, 2**32). Received: seed=4294967296"),
])
def test_invalid_flag_is_a_parse_error(flag, expected):
    t0 = time.perf_counter()
    done = train(flag, "--out_dir=/nonexistent/never", timeout=60)
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr, done.stderr
    line = next(ln for ln in done.stderr.splitlines() if "Flags parsing error" in ln)
    assert f"Invalid value received for --{flag[2:].split('=')[0]}. {expected}" in line, line
    assert time.perf_counter() - t0 < 30  # refused at parse time: no TensorFlow import, no data


def test_resume_and_overwrite_together_are_refused():
    done = train("--resume", "--overwrite", "--out_dir=/nonexistent/never", timeout=60)
    assert done.returncode == 1 and "pass one of them" in done.stderr and "Traceback" not in done.stderr


def test_without_out_dir_says_nothing_is_saved(tmp_path):
    if not DATA_ROOT.exists():
        pytest.skip("datasets not found")
    done = train(f"--data_dir={DATA_ROOT / 'mnist'}", "--method=sp", "--epochs=1", "--train_limit=100", "--hidden=8",
                 "--gate_kernel=tf", "--steps_per_execution=1")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[0] == "No --out_dir given: nothing is saved (no run folder, no checkpoints, no model)."
    assert "test_error" in done.stdout


def test_recipe_flags_default_to_the_target_recipe_only_with_a_target():
    from tf_dynhp.cli.paper import PLAIN_RECIPE, TARGET_BY_DATASET, TARGET_RECIPE, recipe_for, target_recipe
    from tf_dynhp.runs import RunConfig

    assert PLAIN_RECIPE == {k: getattr(RunConfig(), k) for k in PLAIN_RECIPE}
    assert recipe_for(None, lr_decay=None, lambda_floor=None, size_penalty=None) == PLAIN_RECIPE
    assert recipe_for(205.0, lr_decay=None, lambda_floor=None, size_penalty=None) == TARGET_RECIPE
    # the data set adds its augmentation (a mirror is no transform for digits)
    assert recipe_for(205.0, dataset="mnist") == {**TARGET_RECIPE, **TARGET_BY_DATASET["mnist"]} == target_recipe("mnist")
    assert target_recipe("mnist")["augment_shift"] > 0 and not target_recipe("mnist")["augment_flip"]
    assert recipe_for(205.0, dataset="mnist", augment_shift=0)["augment_shift"] == 0
    assert all(set(extra) <= set(PLAIN_RECIPE) for extra in TARGET_BY_DATASET.values())  # fields a RunConfig has
    assert target_recipe("emnist") == TARGET_RECIPE  # a data set it does not name: no augmentation
    assert recipe_for(None, dataset="mnist") == PLAIN_RECIPE
    given = {"lr_decay": "cosine", "lambda_floor": 0.02, "lambda_step": 0.2, "size_penalty": "outgoing", "target_schedule": "cubic", "ema_momentum": 0.99,
             "weight_decay_per_weight": 5e-4, "decoupled_weight_decay": 0.01, "dropout": 0.2,
             "target_deadline": 0.5, "augment_shift": 2, "augment_flip": True, "augment_until": 0.75, "augment_fraction": 0.5,
             "augment_erase": 0.25, "label_smoothing": 0.1, "deterministic_from": 0.5}
    assert recipe_for(205.0, **given) == given and recipe_for(None, **given) == given
    assert recipe_for(None, lr_decay="cosine") == {**PLAIN_RECIPE, "lr_decay": "cosine"}
    assert recipe_for(205.0, ema_momentum=0.0)["ema_momentum"] is None  # 0: no average


@pytest.mark.parametrize("flag", ["--size_penalty=l1", "--lr_decay=step", "--target_schedule=linear"])
def test_recipe_choices_are_checked_at_parse_time(flag):
    done = train(flag, "--epochs=1", timeout=60)
    assert done.returncode != 0 and "should be one of" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("flag", ["--lambda_floor=-1", "--lambda_step=0", "--lambda_step=-0.1", "--ema_momentum=1", "--weight_decay_per_weight=-1", "--decoupled_weight_decay=-0.1", "--target_kb=0", "--target_kb=-5", "--validation_split=1", "--validation_split=-0.1", "--verbose=3", "--augment_shift=-1", "--augment_until=0", "--augment_until=1.5", "--augment_fraction=-0.1", "--augment_fraction=1.5", "--augment_erase=-0.1", "--augment_erase=1.5", "--label_smoothing=1", "--label_smoothing=-0.1"])
def test_target_and_validation_flags_are_checked_at_parse_time(flag):
    done = train(flag, "--epochs=1", timeout=60)
    assert done.returncode != 0 and "Invalid value received for --" in done.stderr and "Traceback" not in done.stderr


def test_a_run_folder_whose_checkpoints_all_name_other_epochs_is_one_error_line_and_its_status_skips_them(tmp_path):
    """A --resume on a run folder whose checkpoints are all damaged (here: copied to another
    epoch's name) ends with one `error:` line, no traceback; the folder's status (what
    reproduce and the reports print) counts only the checkpoints a resume would use."""
    if not DATA_ROOT.exists():
        pytest.skip("datasets not found")
    from tf_dynhp.cli.run_folders import run_status

    out = tmp_path / "run"
    args = (f"--data_dir={DATA_ROOT / 'mnist'}", "--method=hp", "--train_limit=100", "--hidden=8", "--gate_kernel=tf",
            "--steps_per_execution=1", "--verbose=0", f"--out_dir={out}")
    done = train(*args, "--epochs=2")
    assert done.returncode == 0, done.stderr[-2000:]
    (out / "metrics.json").unlink()  # as if killed before it finished
    ckpts = out / "checkpoints"
    assert run_status(out, 3) == "unfinished, epoch 2 of 3"
    (ckpts / "epoch-00002.dynhp").rename(ckpts / "epoch-00007.dynhp")
    assert run_status(out, 3) == "unfinished, epoch 1 of 3"  # not "epoch 7": that file holds epoch 2
    (ckpts / "epoch-00001.dynhp").rename(ckpts / "epoch-00008.dynhp")
    done = train(*args, "--epochs=3", "--resume")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "error: No valid checkpoint" in done.stderr and "says epoch 8 but it holds epoch 1" in done.stderr


def test_the_report_command_of_an_unplanned_run_trains_the_same_configuration(tmp_path):
    """tools/report.py prints, for a run no sweep planned, a tools/train.py command
    (`run_folders._train_command`); it used to leave out --hidden, the learning rate,
    gamma, the target and the recipe flags, so it trained another model. Run again, it
    writes the same configuration (as the report reads it, `_normalize`)."""
    if not DATA_ROOT.exists():
        pytest.skip("datasets not found")
    import json

    from tf_dynhp.cli.run_folders import _normalize, _train_command

    out = tmp_path / "first"
    args = (f"--data_dir={DATA_ROOT / 'mnist'}", "--method=hp", "--hidden=16,8", "--learning_rate=0.002", "--gamma=0.6",
            "--target_kb=20", "--lr_decay=none", "--augment_shift=1", "--augment_fraction=0.5", "--augment_erase=0.25", "--noaugment_flip",
            "--ema_momentum=0", "--train_limit=100", "--test_limit=50", "--epochs=2", "--gate_kernel=tf", "--steps_per_execution=1", "--verbose=0")
    done = train(*args, f"--out_dir={out}")
    assert done.returncode == 0, done.stderr[-2000:]
    first = json.loads((out / "config.json").read_text())
    command = _train_command("again", _normalize(first))
    assert "--hidden=16,8" in command and "--target_kb=20.0" in command and "--augment_fraction=0.5" in command and "--augment_erase=0.25" in command and "--test_limit=50" in command
    again = command.split()[2:-1] + [f"--data_dir={DATA_ROOT / 'mnist'}", f"--out_dir={tmp_path / 'again'}", "--verbose=0"]
    done = train(*again)
    assert done.returncode == 0, done.stderr[-2000:]
    first, second = _normalize(first), _normalize(json.loads((tmp_path / "again" / "config.json").read_text()))
    assert {k: (first[k], second.get(k)) for k in first if first[k] != second.get(k)} == {}  # (None batch: the paper's)


def _tool(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / script), *args], capture_output=True, text=True,
                          timeout=120, env=ENV)


@pytest.mark.parametrize("script,args,expected", [
    ("reproduce.py", ["--alphas=0.97,2", "--dry_run"], "Expected floats in [0, 1]. Received: alphas='2'"),
    ("reproduce.py", ["--train_limit=-5", "--dry_run"], "Expected a positive integer. Received: train_limit=-5"),
    ("reproduce.py", ["--validation_split=1.5", "--dry_run"], "Expected a float in [0, 1). Received: validation_split=1.5"),
    ("reproduce.py", ["--sp_batch_sizes=inf", "--dry_run"], "Expected positive integers. Received: sp_batch_sizes='inf'"),
    ("reproduce.py", ["--grid=frontier", "--methods=sp", "--dry_run"], "--methods: no effect with --grid=frontier"),
    ("reproduce.py", ["--frontier_targets=205", "--dry_run"], "--frontier_targets: only with --grid=frontier"),
    ("reproduce.py", ["--grid=frontier", "--datasets=mnist", "--frontier_targets=999", "--dry_run"],
     "the flags select no run (--grid=frontier, --datasets=mnist, --frontier_targets=999); the paper's sizes (KB): mnist 572,"),
    ("benchmark.py", ["--dynhp_run=/nonexistent/run"], "--dynhp_run=/nonexistent/run: no such folder"),
    ("benchmark.py", ["--dynhp_run=.", "--out=/dev/null/b.md"], "--out=/dev/null/b.md: its folder cannot be created"),
    ("report.py", ["--runs=results/sweep/mnist-sp-bs512-lam0.01-e200-seed1"], "that is one run's folder; --runs takes the folder"),
    ("rank_at_size.py", ["--from_runs=/nonexistent/r.json"], "--from_runs: cannot read /nonexistent/r.json"),
    ("rank_at_size.py", ["--data_dir=/nonexistent/d", "--epochs=1", "--seeds=1"], "rank_at_size.py: error: Dataset 'mnist' not found"),
    ("benchmark_step.py", ["--data_dir=/nonexistent/d"], "benchmark_step.py: error: Dataset 'mnist' not found"),
    ("train.py", ["--data_dir=/nonexistent/d", "--method=sp", "--epochs=1"], "error: Dataset 'mnist' not found in data_dir"),
    ("train.py", ["--method=sp", "--target_kb=10", "--epochs=1", "--train_limit=100"],
     "error: `target_kb` needs a method that removes units"),
    ("train.py", ["--method=dynhp", "--budget_kb=1", "--epochs=1", "--train_limit=100"], "error: `budget_kb`=1.0 cannot hold"),
    ("train.py", ["--method=sp", "--epochs=1", "extra"], "Unexpected arguments: ['extra']"),
    # flags the others make ineffective: they changed only config.json and the run's name (its report group)
    ("train.py", ["--method=hp", "--alpha_bs=0.9"], "error: --alpha_bs: no effect with --method=hp"),
    ("train.py", ["--method=sp", "--batch_growth=epoch"], "error: --batch_growth: no effect with --method=sp"),
    ("train.py", ["--lambda_floor=0.1", "--size_penalty=outgoing"],
     "error: --lambda_floor, --size_penalty: no effect without --target_kb"),
    ("train.py", ["--target_deadline=0.5"], "error: --target_deadline: no effect without --target_kb"),
    ("train.py", ["--arch=lenet5", "--hidden=16,8"], "error: --hidden: no effect with --arch=lenet5"),
    ("train.py", ["--method=dense", "--l0_lambda=0.5"], "error: --l0_lambda: no effect with --method=dense"),
    ("reproduce.py", ["--methods=sp", "--target_kb=200", "--dry_run"], "error: --target_kb: no effect with --methods=sp"),
    # the other data set (or a damaged file) in --data_dir: every worker started, then failed in its train.log
    ("reproduce.py", ["--datasets=mnist", "--methods=sp", "--epochs=1", f"--data_dir={DATA_ROOT / 'fashion-mnist'}"],
     "the mnist data set cannot be read: "),
    ("reproduce.py", ["--datasets=mnist", "--methods=sp", "--epochs=1", "--data_dir=/nonexistent/d"],
     "error: --data_dir=/nonexistent/d: Dataset 'mnist' not found"),
])
def test_tools_refuse_bad_values_in_one_line_before_any_work(script, args, expected, tmp_path):
    """Values that used to be planned (reproduce --alphas=2, --train_limit=-5 trained on
    x[:-5]), or found out after hours of training (benchmark's --out), or a traceback."""
    done = _tool(script, *args, f"--out={tmp_path / 'o'}" if script == "reproduce.py" else "--verbosity=0")
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert expected in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "o").exists()  # reproduce checks --data_dir before it writes sweep.json (it wrote it first)
    assert not done.stderr.rstrip().endswith(":")  # the data set's message whole (it was cut at its first line)


@pytest.mark.parametrize("script", ["train.py", "export.py", "reproduce.py", "rank_at_size.py", "report.py", "benchmark.py"])
def test_a_usage_error_is_one_line_not_the_whole_help(script, tmp_path):
    """absl printed the program's docstring and every flag (~150 lines) above the line that
    matters; now the line ("<program>: error: ...") and where the help is."""
    required = {"export.py": ["--model=m.keras", f"--out={tmp_path / 'm.tflite'}"], "benchmark.py": ["--dynhp_run=."]}
    done = _tool(script, *required.get(script, []), "stray")
    lines = [line for line in done.stderr.splitlines() if line and not line.startswith(("I0000", "W0000", "E0000", "WARNING: All"))]
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert lines == [f"{script}: error: " + lines[0].split(": error: ", 1)[-1], f"{script}: --helpshort lists the flags, --helpfull all of them."], lines
    assert "Unexpected arguments" in lines[0] and "stray" in lines[0]


def test_every_command_of_workspace_figures_sh_parses_its_flags():
    """tools/workspace_figures.sh passed edge_table.py an --overwrite it has no flag for, so
    `all` stopped there after 45 minutes of training: every tool line must parse. Each is
    loaded as its own module and its argv parsed by absl, without running it."""
    script = (ROOT / "tools" / "workspace_figures.sh").read_text()
    lines = [line.strip() for line in script.splitlines() if line.strip().startswith("python tools/")]
    assert len(lines) >= 8
    parse = ("import runpy, sys; from absl import flags; argv = sys.argv[1:]; "
             "runpy.run_path(argv[0], run_name='not_main'); flags.FLAGS(argv); print('parsed')")
    for line in lines:
        args = line.replace("$g", "step").replace("$lam", "0.1").split()[1:]
        done = subprocess.run([sys.executable, "-c", parse, *args], capture_output=True, text=True, timeout=120, env=ENV, cwd=ROOT)
        assert done.returncode == 0 and done.stdout.strip().endswith("parsed"), (line, done.stderr[-500:])


@pytest.mark.parametrize("flags,expected", [
    (["--arch=lenet5", "--dropout=0.2"], "error: Invalid value received for argument `dropout`. Expected 0 with arch='lenet5'"),
    (["--augment_fraction=0.5"], "error: Invalid value received for argument `augment_fraction`. Expected 1 without augment_shift"),
    # refused by fit: it left an empty folder with checkpoints/, which the tools listed as unfinished
    (["--method=sp", "--target_kb=10", "--train_limit=100"], "error: `target_kb` needs a method that removes units"),
    # the default budget is the paper's MO, which the full footprint always exceeds: it was refused as too small
    (["--method=dynhp", "--budget_on=full", "--train_limit=100"], "error: budget_on='full' (--budget_on) needs a budget_kb (--budget_kb)"),
])
def test_settings_runs_refuses_are_one_line_and_leave_no_folder(tmp_path, flags, expected):
    # They ended in a traceback (a ValueError outside the refusals train.py prints), the
    # LeNet-5 one after making the run folder and its checkpoints/.
    out = tmp_path / "new" / "sub" / "run"  # nor the parents made for it (new/sub/ stayed)
    done = train(*flags, "--epochs=1", f"--out_dir={out}", timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert expected in done.stderr and not (tmp_path / "new").exists()


def test_ctrl_c_says_how_to_go_on(tmp_path):
    # Ctrl-C printed a KeyboardInterrupt traceback of ~50 lines and no word on --resume.
    import signal
    import time

    if not DATA_ROOT.exists():
        pytest.skip("datasets not found")
    out = tmp_path / "run"
    # Epochs enough that the run is still going when the signal comes (200 of them ended
    # first on a fast machine).
    proc = subprocess.Popen([sys.executable, str(ROOT / "tools" / "train.py"), f"--data_dir={DATA_ROOT / 'mnist'}", "--method=hp",
                             "--epochs=100000", "--train_limit=2000", "--hidden=8", "--verbose=2", f"--out_dir={out}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            # a pytest-xdist worker ignores SIGINT, and a child inherits that: Python would too
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while not list(out.glob("checkpoints/epoch-*.dynhp")) and time.time() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-2000:]
    assert f"interrupted: run the same command with --resume to go on from the last epoch saved in {out}" in stderr


def test_a_diverging_run_is_one_line_saying_what_the_folder_keeps(tmp_path):
    """A NonFiniteError was a traceback pointing to "the exception's `last_good`", which a
    command-line user cannot reach; the folder does keep that model."""
    if not DATA_ROOT.exists():
        pytest.skip("datasets not found")
    out = tmp_path / "run"
    done = train(f"--data_dir={DATA_ROOT / 'mnist'}", "--method=hp", "--learning_rate=1e12", "--epochs=3", "--train_limit=1000",
                 "--test_limit=100", "--hidden=8", "--verbose=0", f"--out_dir={out}")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "error: Non-finite loss or gradient in epoch " in done.stderr and "last_good" not in done.stderr
    assert f"{out} keeps the initial model (no epoch ended well): model.keras" in done.stderr
    assert "--on_nonfinite=rollback" in done.stderr and (out / "model.keras").is_file()


def test_a_resume_whose_config_json_is_no_object_is_one_line(tmp_path):
    # valid JSON of another kind (a list) was an AttributeError traceback
    if not DATA_ROOT.exists():
        pytest.skip("datasets not found")
    out = tmp_path / "run"
    flags = (f"--data_dir={DATA_ROOT / 'mnist'}", "--method=hp", "--epochs=1", "--train_limit=300", "--test_limit=100",
             "--hidden=8", "--verbose=0", f"--out_dir={out}")
    assert train(*flags).returncode == 0
    (out / "config.json").write_text("[1, 2]")
    done = train(*flags, "--resume")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "its config.json is not readable (expected a JSON object of the run's settings, received a list)" in done.stderr


def test_per_layer_l0_lambda_reaches_fit_and_resumes(tmp_path):
    """--l0_lambda took one number only, where fit takes one per gated layer (the size
    multiplier's shares under --target_kb, issue 16 item 1)."""
    import json

    if not DATA_ROOT.exists():
        pytest.skip("datasets not found")
    out = tmp_path / "run"
    flags = (f"--data_dir={DATA_ROOT / 'mnist'}", "--method=hp", "--epochs=2", "--train_limit=300", "--test_limit=100",
             "--hidden=16,8", "--verbose=0", "--target_kb=8", "--l0_lambda=0.02,0,0.01", f"--out_dir={out}")
    done = train(*flags)
    assert done.returncode == 0, done.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert config["l0_lambda"] == [0.02, 0.0, 0.01]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model_kb"] <= 8
    # the middle layer has no share of the multiplier: its inputs (the first hidden layer's units) stay
    # until the size's forced cut at the deadline, so the first layer's inputs went first
    again = train(*flags, "--resume")  # the same list: the finished run is accepted
    assert again.returncode == 0, again.stderr[-2000:]
    other = train(*flags[:-2], "--l0_lambda=0.02,0.01,0.01", f"--out_dir={out}", "--resume")
    assert other.returncode == 1 and "Traceback" not in other.stderr and "l0_lambda" in other.stderr, other.stderr[-2000:]


def test_per_layer_l0_lambda_of_the_wrong_length_is_one_line_and_leaves_no_folder(tmp_path):
    if not DATA_ROOT.exists():
        pytest.skip("datasets not found")
    out = tmp_path / "new" / "run"
    done = train(f"--data_dir={DATA_ROOT / 'mnist'}", "--method=hp", "--epochs=1", "--train_limit=100", "--hidden=8",
                 "--l0_lambda=0.01,0.01,0.01", f"--out_dir={out}", timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "error: " in done.stderr and "l0_lambda" in done.stderr and not (tmp_path / "new").exists()
