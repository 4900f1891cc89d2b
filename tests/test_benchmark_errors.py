"""tools/benchmark.py refuses what it cannot use (a LeNet-5 run, a damaged model.keras or
config.json, an --out it cannot write or whose .json would be the Markdown file itself)
with one `benchmark.py: error:` line before any row is trained, not with a traceback
after them; "~" in --dynhp_run and --out is expanded as the shell would. The tool runs as
a subprocess (its absl flags are its own) on two tiny run folders trained once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import DATA_ROOT

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
TINY = ["--quick", "--skip_tfmot", "--epochs=1", "--train_limit=300", "--test_limit=100"]


def _run(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / script), *args], capture_output=True, text=True,
                          timeout=300, env=env or ENV)


def _bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return _run("benchmark.py", *TINY, f"--data_dir={DATA_ROOT / 'mnist'}", *args, env=env)


def _refused_before_training(done: subprocess.CompletedProcess, expected: str) -> None:
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"benchmark.py: error: {expected}" in done.stderr, done.stderr[-3000:]
    assert "[1/4]" not in done.stdout, done.stdout  # no row was trained


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Finished DynHP run folders of one epoch on 300 images: an MLP (hidden 8) and a LeNet-5."""
    if not DATA_ROOT.exists():
        pytest.skip("datasets not found")
    root = tmp_path_factory.mktemp("bench_runs")
    common = ["--method=dynhp", "--epochs=1", "--train_limit=300", "--test_limit=100", "--verbose=0",
              f"--data_dir={DATA_ROOT / 'mnist'}"]
    for name, arch in (("mlp", ["--hidden=8"]), ("lenet5", ["--arch=lenet5"])):
        done = _run("train.py", *common, *arch, f"--out_dir={root / name}")
        assert done.returncode == 0, done.stderr[-3000:]
    return {"mlp": root / "mlp", "lenet5": root / "lenet5"}


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to, ignore=shutil.ignore_patterns("checkpoints"))
    return to


def test_a_lenet5_run_is_refused_by_its_arch(runs, tmp_path):
    """Trained every row (the Keras dense baseline an MLP), then a representative_data shape
    ValueError at the export."""
    done = _bench(f"--dynhp_run={runs['lenet5']}", f"--out={tmp_path / 'out' / 'b.md'}")
    _refused_before_training(done, f"--dynhp_run={runs['lenet5']}: arch is 'lenet5', expected 'mlp'")
    assert not (tmp_path / "out").exists()


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:2000])


def _foreign_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "not a model")


@pytest.mark.parametrize("damage,expected", [
    (_truncate, "is not a readable Keras model file (a .keras file is a zip archive"),
    (_foreign_zip, "is not a readable Keras model file (KeyError"),
])
def test_a_damaged_model_keras_is_refused_before_training(damage, expected, runs, tmp_path):
    """A truncated model.keras was Keras' "File not found" ValueError after two rows of training."""
    run = _copy(runs["mlp"], tmp_path / "run")
    damage(run / "model.keras")
    done = _bench(f"--dynhp_run={run}", f"--out={tmp_path / 'out' / 'b.md'}")
    _refused_before_training(done, f"--dynhp_run={run}: {run / 'model.keras'} {expected}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content,expected", [
    (None, "is missing (expected the run's configuration, a JSON object"),
    ("[1, 2]\n", "holds an array (expected the run's configuration, a JSON object"),
    ('"mlp"\n', "holds a string (expected the run's configuration, a JSON object"),
    ('{"method": "dynhp",', "cannot be read (expected the run's configuration, a JSON object"),
])
def test_a_missing_or_malformed_config_json_is_one_line(content, expected, runs, tmp_path):
    """FileNotFoundError / AttributeError ('list' object has no attribute 'get') tracebacks."""
    run = _copy(runs["mlp"], tmp_path / "run")
    if content is None:
        (run / "config.json").unlink()
    else:
        (run / "config.json").write_text(content)
    done = _bench(f"--dynhp_run={run}", f"--out={tmp_path / 'out' / 'b.md'}")
    _refused_before_training(done, f"--dynhp_run={run}: {run / 'config.json'} {expected}")


@pytest.mark.parametrize("folder", ["/sys", "/proc"])
def test_an_out_folder_that_cannot_be_written_is_refused_before_training(folder, runs):
    """Root passes os.access on /sys and /proc; the Markdown file's write failed after all
    the training (PermissionError / FileNotFoundError)."""
    if not os.path.isdir(folder):
        pytest.skip(f"no {folder} here")
    out = f"{folder}/tf_dynhp_benchmark.md"
    done = _bench(f"--dynhp_run={runs['mlp']}", f"--out={out}")
    _refused_before_training(done, f"--out={out}: its folder cannot be created or written ({folder}: a file could not "
                                   "be created there: ")


@pytest.mark.parametrize("name", ["b.json", "b.JSON"])
def test_an_out_ending_in_json_is_refused(name, runs, tmp_path):
    """--out=b.json wrote the table, then the raw numbers over it ("wrote b.json and b.json")."""
    out = tmp_path / "out" / name
    done = _bench(f"--dynhp_run={runs['mlp']}", f"--out={out}")
    _refused_before_training(done, f"--out={out}: expected the path of a Markdown file (e.g. benchmark.md); "
                                   "the raw numbers go to the same name ending in .json")
    assert not (tmp_path / "out").exists()


def test_tilde_is_expanded_and_the_table_and_numbers_are_two_files(runs, tmp_path):
    """--dynhp_run=~/run said "no such folder" for a folder that exists. The whole tiny
    benchmark runs: the Markdown table and the JSON of raw numbers land in two files."""
    home = tmp_path / "home"
    _copy(runs["mlp"], home / "run")
    done = _bench("--dynhp_run=~/run", "--out=~/out/b.md", env={**ENV, "HOME": str(home)})
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"wrote {home / 'out' / 'b.md'} and {home / 'out' / 'b.json'}" in done.stdout, done.stdout[-2000:]
    assert (home / "out" / "b.md").read_text().startswith("# Benchmark: DynHP against the alternatives")
    raw = json.loads((home / "out" / "b.json").read_text())
    names = [r["name"] for r in raw["rows"]]
    assert len(names) == 3 and names[0].startswith("DynHP (") and names[1].startswith("Keras dense 784-8-10"), names
    assert not Path("~").exists() and not (ROOT / "~").exists()  # no folder named "~" was made
