"""Run folders as the report tools read them, when a file in them is damaged: the file is
named, the run is left out or its per-epoch columns left empty, and the tools go on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tf_dynhp import runs
from tf_dynhp.cli import run_folders

REPO = Path(__file__).resolve().parents[1]
SWEEP = REPO / "results" / "sweep"
RUN = "fashion_mnist-sp-bs128-lam0.01-e200-seed1"


@pytest.fixture()
def runs_dir(tmp_path):
    """A copy of one finished run of results/sweep (config, history, metrics)."""
    if not (SWEEP / RUN).is_dir():
        pytest.skip(f"{SWEEP / RUN} not found")
    shutil.copytree(SWEEP / RUN, tmp_path / RUN)
    return tmp_path


def test_a_half_written_history_line_is_named_and_the_report_goes_on(runs_dir):
    history = runs_dir / RUN / "history.jsonl"
    with history.open("a") as f:
        f.write('{"epoch": 201, "loss": 2.7')  # a write cut short
    with pytest.raises(ValueError, match=r"history.jsonl, line 201: not valid JSON"):
        runs.read_history(runs_dir / RUN)
    (info,) = run_folders.load_runs(runs_dir)
    with pytest.warns(RuntimeWarning, match=r"line 201.*per-epoch columns of run .* left empty"):
        assert info.history() is None
    assert info.time_to_error(2.0) is None and info.finished  # the metrics still count


@pytest.mark.parametrize("key,value,expected", [
    ("val_error", "abc", r"line 3: expected a number or null for 'val_error', received 'abc'"),
    ("epoch_seconds", True, r"line 3: expected a number or null for 'epoch_seconds', received True"),
    ("active_units", [784, "x", 100], r"line 3: expected a list of unit counts for 'active_units'"),
])
def test_a_history_value_of_another_kind_is_named_and_the_report_goes_on(runs_dir, key, value, expected):
    """A hand-edited "val_error": "abc" made tools/report.py end in a TypeError (time_to_error)."""
    import json

    history = runs_dir / RUN / "history.jsonl"
    rows = [json.loads(line) for line in history.read_text().splitlines()]
    rows[2][key] = value
    history.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (info,) = run_folders.load_runs(runs_dir)
    with pytest.warns(RuntimeWarning, match=expected + r".*per-epoch columns of run .* left empty"):
        assert info.history() is None
    assert info.time_to_error(2.0) is None and info.finished


def test_a_damaged_config_leaves_the_run_out_with_a_warning(runs_dir):
    (runs_dir / RUN / "config.json").write_text('{"dataset": "mni')
    with pytest.warns(RuntimeWarning, match=r"config.json is not a run's configuration.*left out"):
        assert run_folders.load_runs(runs_dir) == []


def test_a_per_layer_l0_lambda_run_is_left_out_of_the_report_tables_by_name_and_summarized(runs_dir):
    """tools/train.py --l0_lambda=a,b,c writes a list; the report's tables group runs by one
    l0_lambda (float() of the list was a TypeError ending tools/report.py)."""
    import json

    config = json.loads((runs_dir / RUN / "config.json").read_text())
    config["l0_lambda"] = [0.01, 0.005, 0.005]
    (runs_dir / RUN / "config.json").write_text(json.dumps(config))
    with pytest.warns(RuntimeWarning, match=r"config.json: per-layer l0_lambda \[0.01, 0.005, 0.005\].*left out \(tools/summarize"):
        assert run_folders.load_runs(runs_dir) == []
    done = subprocess.run([sys.executable, str(REPO / "tools" / "summarize.py"), str(runs_dir / RUN)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr and "skipped" not in done.stderr, done.stderr[-2000:]
    assert "| 0.01,0.005,0.005 |" in done.stdout, done.stdout


def test_summarize_names_what_it_skips(runs_dir, tmp_path):
    (runs_dir / RUN / "metrics.json").write_text("{")
    done = subprocess.run([sys.executable, str(REPO / "tools" / "summarize.py"), str(runs_dir / RUN), str(tmp_path / "nothing")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert f"skipped {runs_dir / RUN}: {runs_dir / RUN / 'metrics.json'} is not readable JSON" in done.stderr
    assert f"skipped {tmp_path / 'nothing'}: no metrics.json (not a run folder)" in done.stderr


def test_summarize_skips_a_metrics_file_that_is_not_an_object(runs_dir, tmp_path):
    (runs_dir / RUN / "metrics.json").write_text("[1, 2]")
    done = subprocess.run([sys.executable, str(REPO / "tools" / "summarize.py"), str(runs_dir / RUN)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert f"skipped {runs_dir / RUN}: {runs_dir / RUN / 'metrics.json'} is not a JSON object (damaged)" in done.stderr


def test_a_metrics_field_of_another_kind_is_damaged_for_summarize_and_report(runs_dir, tmp_path):
    """`"test_error": "12.3"` or `"batch_sizes": 16` failed in summarize (a format error)
    and in the report (an int is not subscriptable), with tracebacks."""
    import json

    path = runs_dir / RUN / "metrics.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "test_error": "12.3", "batch_sizes": 16}))
    done = subprocess.run([sys.executable, str(REPO / "tools" / "summarize.py"), str(runs_dir / RUN)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert (f"skipped {runs_dir / RUN}: its metrics.json 'test_error' is '12.3', expected a number (damaged, or written "
            "by another version)") in done.stderr
    out = tmp_path / "R.md"
    done = subprocess.run([sys.executable, str(REPO / "tools" / "report.py"), f"--runs={runs_dir}", f"--out={out}",
                           f"--figures={tmp_path / 'fig'}"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "(0 finished, 0 unfinished, 0 not run yet, 1 damaged)" in out.read_text()
    from tf_dynhp.cli import run_metrics

    assert run_metrics.problem({"test_error": 1.0}) is None  # other versions' files lack fields
    assert run_metrics.problem({"dense_model_kb": 0}) == "'dense_model_kb' is 0, expected a positive number"  # the report divides by it
    assert run_metrics.problem({"test_error": 10**400}).endswith("expected a number")  # math.isfinite overflowed
    assert run_metrics.problem({"test_error": 1.0}, ("test_error", "model_kb")) == "lacks ['model_kb']"
    assert run_metrics.problem(json.loads((SWEEP / RUN / "metrics.json").read_text())) is None


def test_a_dynhp_config_with_a_null_alpha_bs_reads_as_the_default():
    """config.json of dynhp runs without --alpha_bs said null before it recorded fit's
    default: the report reads the default, so such a seed joins its row (and formats)."""
    from tf_dynhp.training import DEFAULT_ALPHA_BS

    assert run_folders._normalize({"dataset": "mnist", "method": "dynhp", "alpha_bs": None})["alpha_bs"] == DEFAULT_ALPHA_BS
    assert run_folders._normalize({"dataset": "mnist", "method": "sp", "alpha_bs": None})["alpha_bs"] is None


def test_the_report_header_counts_a_damaged_run(runs_dir, tmp_path):
    (runs_dir / RUN / "metrics.json").write_text("{")
    out = tmp_path / "R.md"
    done = subprocess.run([sys.executable, str(REPO / "tools" / "report.py"), f"--runs={runs_dir}", f"--out={out}",
                           f"--figures={tmp_path / 'fig'}"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "from 1 runs in" in out.read_text() and "(0 finished, 0 unfinished, 0 not run yet, 1 damaged)" in out.read_text()


def test_a_validation_split_run_is_labelled_apart():
    """Two groups that differ only by a validation split read alike in the report's tables."""
    plain = run_folders._normalize({"dataset": "mnist", "method": "sp", "batch_size": 512, "epochs": 200})
    held = {**plain, "validation_split": 0.1}
    runs_ = [run_folders.RunInfo(f"r{i}", Path(f"/nonexistent/r{i}"), c, "finished", {"test_error": 1.0}, None)
             for i, c in enumerate((plain, held))]
    labels = sorted(g.label() for g in run_folders.make_groups(runs_))
    assert labels == ["SP bs=512", "SP bs=512, validation split 0.1"]


def test_other_drop_rates_are_another_row_and_a_copied_seed_counts_once():
    """Runs that differed only in --droprate_init / --input_droprate_init were one row of
    "2 seeds" (averaging 47.2% and 25.6%), and a copy of a seed's folder counted twice."""
    plain = run_folders._normalize({"dataset": "mnist", "method": "sp", "batch_size": 512, "epochs": 200, "seed": 1})
    other = {**plain, "droprate_init": 0.1, "input_droprate_init": 0.05}
    runs_ = [run_folders.RunInfo(f"r{i}", Path(f"/nonexistent/r{i}"), c, "finished", {"test_error": 1.0 + i}, None)
             for i, c in enumerate((plain, other))]
    labels = sorted(g.label() for g in run_folders.make_groups(runs_))
    assert labels == ["SP bs=512", "SP bs=512, droprate_init 0.1 (inputs 0.05)"]
    copy = run_folders.RunInfo("copy", Path("/nonexistent/copy"), dict(plain), "finished", {"test_error": 9.0}, None)
    with pytest.warns(RuntimeWarning, match=r"/nonexistent/copy is a run of the same configuration and seed as /nonexistent/r0"):
        groups = run_folders.make_groups(runs_ + [copy])
    assert sorted(len(g.runs) for g in groups) == [1, 1]


@pytest.mark.parametrize("content", ["{bad", "[]", '{"runs": 3}'])
def test_a_damaged_sweep_json_is_named_and_kept(runs_dir, content):
    """report.py crashed on a sweep.json that was not an object; reproduce.py replaced an
    unreadable one, losing its records. The report reads the runs without it, with a
    warning; reproduce moves it aside to sweep.json.damaged and starts a new one."""
    (runs_dir / "sweep.json").write_text(content)
    with pytest.warns(RuntimeWarning, match=r"sweep.json is not a sweep's record"):
        (info,) = run_folders.load_runs(runs_dir)
    assert info.finished
    done = subprocess.run([sys.executable, str(REPO / "tools" / "reproduce.py"), "--dry_run", "--datasets=fashion_mnist",
                           "--methods=sp", "--sp_batch_sizes=128", f"--out={runs_dir}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "moved it to" in done.stderr, done.stderr[-2000:]
    assert (runs_dir / "sweep.json.damaged").read_text() == content
    assert RUN in __import__("json").loads((runs_dir / "sweep.json").read_text())["runs"]


def test_metrics_without_some_keys_are_skipped_by_summarize_and_shown_as_dashes_by_the_report(runs_dir, tmp_path):
    import json

    metrics = json.loads((runs_dir / RUN / "metrics.json").read_text())
    del metrics["batch_sizes"], metrics["train_seconds"]
    (runs_dir / RUN / "metrics.json").write_text(json.dumps(metrics))
    done = subprocess.run([sys.executable, str(REPO / "tools" / "summarize.py"), str(runs_dir / RUN)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "metrics.json lacks ['batch_sizes', 'train_seconds']" in done.stderr
    target = next(p for p in SWEEP.iterdir() if p.name.startswith("fashion_mnist-dynhp-") and "-t135-" in p.name)
    shutil.copytree(target, runs_dir / target.name)
    out = tmp_path / "R.md"
    done = subprocess.run([sys.executable, str(REPO / "tools" / "report.py"), f"--runs={runs_dir}", f"--out={out}",
                           f"--figures={tmp_path / 'fig'}"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "MB training memory, – s," in out.read_text()  # SP's missing seconds, not a crash


def test_a_run_without_a_history_is_not_counted_as_never_reaching_the_error(runs_dir):
    """A missing or empty history.jsonl made the report say the seed never reached the
    error milestone: it does not know."""
    import importlib
    import sys as _sys

    if str(REPO / "tools") not in _sys.path:
        _sys.path.insert(0, str(REPO / "tools"))
    report_tables = importlib.import_module("report_tables")
    (runs_dir / RUN / "history.jsonl").write_text("")
    (group,) = run_folders.make_groups(run_folders.load_runs(runs_dir))
    assert report_tables.time_to_error_text(group) == "no history"


def test_summarize_on_a_folder_of_runs_says_so(runs_dir):
    done = subprocess.run([sys.executable, str(REPO / "tools" / "summarize.py"), str(runs_dir)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and f"skipped {runs_dir}: no metrics.json (a folder of run folders: pass them" in done.stderr


def test_the_report_removes_its_own_figures_it_no_longer_draws(runs_dir, tmp_path):
    figures = tmp_path / "fig"
    figures.mkdir()
    (figures / "fig1_active_units_mnist.png").write_bytes(b"old")  # a data set no longer in the runs (Fashion-MNIST's only)
    (figures / "notes.png").write_bytes(b"mine")  # not a name the report draws: left alone
    (figures / "fig1_active_units_cifar10.png").write_bytes(b"mine")  # nor this: the report draws no such data set
    done = subprocess.run([sys.executable, str(REPO / "tools" / "report.py"), f"--runs={runs_dir}", f"--out={tmp_path / 'R.md'}",
                           f"--figures={figures}"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (figures / "fig1_active_units_mnist.png").exists() and (figures / "notes.png").exists()
    assert (figures / "fig1_active_units_cifar10.png").exists()
    assert "removed" in done.stdout and "fig1_active_units_mnist.png" in done.stdout


def test_the_rebuilt_command_leaves_out_settings_without_effect(runs_dir):
    """A dense run of an l0_lambda or a LeNet-5 run of --hidden (folders of before tools/train.py
    refused them) got a rebuilt command that tools/train.py refuses."""
    import json

    config = json.loads((runs_dir / RUN / "config.json").read_text())
    for change, flag in (({"method": "dense", "l0_lambda": 0.5}, "--l0_lambda"), ({"arch": "lenet5", "hidden": [16, 8]}, "--hidden")):
        command = run_folders._train_command("r", run_folders._normalize({**config, **change}))
        assert flag not in command, command
