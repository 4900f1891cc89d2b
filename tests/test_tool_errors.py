"""The tools refuse what they cannot use (an output path of the wrong kind, a damaged data
set, a file that is no Keras model, an output that would overwrite an input) with an
`error:` line before any work, not with a traceback after it. Each tool runs as a
subprocess (its absl flags are its own); nothing here trains."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA_ROOT

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def _tool(script: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / script), *args], capture_output=True, text=True,
                          timeout=180, env=ENV, cwd=cwd)


def _refused(done: subprocess.CompletedProcess, expected: str) -> None:
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert expected in done.stderr, done.stderr[-3000:]


# --------------------------------------------------------------------------- output paths of the wrong kind
@pytest.fixture
def places(tmp_path):
    """A folder, a file, and a path under that file (whose folder cannot be created)."""
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_file").write_text("keep me\n")
    return {"folder": str(tmp_path / "a_folder"), "file": str(tmp_path / "a_file"), "under_file": str(tmp_path / "a_file" / "x")}


@pytest.mark.parametrize("script,flag,place,expected", [
    ("train.py", "out_dir", "file", "expected a run folder (existing or to create); that is a file"),
    ("report.py", "out", "folder", "expected the path of a Markdown file to write; that is a folder"),
    ("report.py", "out", "under_file", "expected the path of a Markdown file to write; its folder cannot be created ("),
    ("report.py", "figures", "file", "expected a folder for the figures (existing or to create); that is a file"),
    ("reproduce.py", "out", "file", "expected a folder of run folders (existing or to create); that is a file"),
    ("reproduce.py", "out", "under_file", "expected a folder of run folders (existing or to create); it cannot be created ("),
    ("rank_at_size.py", "out", "folder", "expected the path of a Markdown file to write; that is a folder"),
    ("edge_table.py", "out_dir", "file", "expected a folder for the .tflite files and the table (existing or to create); that is a file"),
    ("behaviour_digest.py", "out", "folder", "expected the path of a JSON file to write; that is a folder"),
])
def test_an_output_path_of_the_wrong_kind_is_refused_before_any_work(script, flag, place, expected, places, tmp_path):
    """report.py --out=<folder> ended in IsADirectoryError, reproduce.py --out=<file> (even
    --dry_run) in FileExistsError, rank_at_size.py --out=<folder> after training every run,
    train.py --out_dir=<file> in FileExistsError: now one `error:` line naming the flag."""
    value = places[place]
    extra = {
        "train.py": ["--epochs=1", "--train_limit=100"],
        "report.py": [f"--runs={tmp_path / 'a_folder'}"] + ([f"--out={tmp_path / 'r.md'}"] if flag == "figures" else []),
        "reproduce.py": ["--quick", "--dry_run"],
        "rank_at_size.py": ["--data_dir=/nonexistent/d", "--epochs=1", "--seeds=1"],  # never trains, even unfixed
        "edge_table.py": ["--dynhp_model=/nonexistent/m.keras", "--data_dir=/nonexistent/d"],
        "behaviour_digest.py": ["--data_dir=/nonexistent/d"],
    }[script]
    done = _tool(script, *extra, f"--{flag}={value}")
    _refused(done, f"--{flag}={value}: {expected}")
    assert (tmp_path / "a_file").read_text() == "keep me\n" and list((tmp_path / "a_folder").iterdir()) == []


def test_a_run_folder_whose_checkpoints_is_a_file_is_one_error_line(tmp_path):
    """checkpoint.probe_writable's OSError (FileExistsError) was a traceback."""
    if not DATA_ROOT.exists():
        pytest.skip("datasets not found")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").write_text("")
    done = _tool("train.py", f"--data_dir={DATA_ROOT / 'mnist'}", "--method=sp", "--epochs=1", "--train_limit=100",
                 "--hidden=8", f"--out_dir={tmp_path / 'run'}")
    _refused(done, f"error: checkpoint_dir '{tmp_path / 'run' / 'checkpoints'}' is not writable: it is a file, not a folder")
    assert done.returncode == 1 and "[Errno" not in done.stderr
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoints"]


# --------------------------------------------------------------------------- data sets it finds but cannot read
@pytest.fixture
def damaged_data(tmp_path):
    """A folder with the four IDX file names, each holding 4 bytes that are no IDX header."""
    folder = tmp_path / "damaged"
    folder.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (folder / name).write_bytes(b"\x12\x34\x56\x78")
    return folder


@pytest.mark.parametrize("script,args,prefix", [
    ("train.py", ["--method=sp", "--epochs=1", "--train_limit=100"], "error: the mnist data set cannot be read: "),
    ("rank_at_size.py", ["--epochs=1", "--seeds=1"], "rank_at_size.py: error: the mnist data set cannot be read: "),
    ("export.py", ["--model=/nonexistent/m.keras", "--out={tmp}/m.tflite"], "export.py: error: the mnist data set cannot be read: "),
])
def test_a_damaged_data_set_file_is_one_error_line(script, args, prefix, damaged_data, tmp_path):
    """tf_dynhp.datasets.load's ValueError (a truncated or corrupt file, a SHA256SUMS mismatch,
    the other data set in --data_dir) was a traceback."""
    done = _tool(script, f"--data_dir={damaged_data}", *(a.format(tmp=tmp_path) for a in args))
    _refused(done, f"{prefix}{damaged_data / 'train-images-idx3-ubyte'}: wrong magic number")
    assert done.returncode == 1


def test_the_other_data_set_in_data_dir_is_one_error_line():
    if not (DATA_ROOT / "mnist").exists():
        pytest.skip("datasets not found")
    done = _tool("train.py", "--dataset=fashion_mnist", f"--data_dir={DATA_ROOT / 'mnist'}", "--method=sp", "--epochs=1",
                 "--train_limit=100")
    _refused(done, "error: the fashion_mnist data set cannot be read: ")
    assert "holds the mnist data set" in done.stderr


# --------------------------------------------------------------------------- tools/export.py
def _truncated_keras(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", "{}" * 2000)
    path.write_bytes(path.read_bytes()[:100])
    return path


def test_export_refuses_a_file_that_is_no_keras_model_by_its_flag(tmp_path):
    """A truncated .keras gave Keras' "File not found", a .tflite "File format not supported"
    with a traceback; a zip without a model a KeyError."""
    truncated = _truncated_keras(tmp_path / "trunc.keras")
    (tmp_path / "m.tflite").write_bytes(b"TFL3" * 10)
    if not DATA_ROOT.exists():
        pytest.skip("datasets not found")  # (export.py loads the data set before the model)
    with zipfile.ZipFile(tmp_path / "other.keras", "w") as z:
        z.writestr("readme.txt", "not a model")
    out = f"--out={tmp_path / 'o.tflite'}"
    for flags, expected in (
        ([f"--model={truncated}"], f"--model={truncated}: not a readable Keras model file (a .keras file is a zip archive"),
        ([f"--model={tmp_path / 'm.tflite'}"], f"--model={tmp_path / 'm.tflite'}: not a readable Keras model file (expected a .keras"),
        ([f"--model={tmp_path / 'other.keras'}"], f"--model={tmp_path / 'other.keras'}: not a readable Keras model file (KeyError"),
    ):
        done = _tool("export.py", *flags, out, "--eval_limit=10", f"--data_dir={DATA_ROOT}")
        _refused(done, f"export.py: error: {expected}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite", "other.keras", "trunc.keras"]


def test_export_refuses_a_bad_learning_rate_when_the_flags_are_parsed(tmp_path):
    """--trainable_out with --learning_rate=-1 was refused after --out's .tflite was written."""
    for value in ("-1", "0", "nan"):
        done = _tool("export.py", "--model=/nonexistent/m.keras", f"--out={tmp_path / 'o.tflite'}",
                     f"--trainable_out={tmp_path / 't.tflite'}", f"--learning_rate={value}")
        _refused(done, "Invalid value received for --learning_rate. Expected a positive float.")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("outputs,expected", [
    (["--out={model}"], "--out={model}: expected a path other than --model={model}, which it would overwrite"),
    (["--out={link}"], "--out={link}: expected a path other than --model={model}, which it would overwrite"),
    (["--out={dir}/x.tflite", "--dense_model={dir}/x_export.json"],
     "--out={dir}/x.tflite (its summary x_export.json): expected a path other than --dense_model={dir}/x_export.json"),
    (["--out={dir}/x.tflite", "--quantization=all", "--trainable_out={dir}/x_int8.tflite"],
     "--trainable_out={dir}/x_int8.tflite: expected a path of its own; received the same file as --out={dir}/x.tflite (its int8 variant)"),
    (["--out={dir}/x.tflite", "--trainable_out={dir}/x.tflite"],
     "--trainable_out={dir}/x.tflite: expected a path of its own; received the same file as --out={dir}/x.tflite"),
    (["--out={dir}/x.tflite", "--trainable_out={dir}/no/t.tflite"], "--trainable_out={dir}/no/t.tflite: the folder {dir}/no does not exist"),
])
def test_export_refuses_an_output_that_would_overwrite_an_input_or_another_output(outputs, expected, tmp_path):
    """--model=m.keras --out=m.keras replaced the model with the .tflite."""
    model = tmp_path / "m.keras"
    model.write_bytes(b"the user's model")
    (tmp_path / "link.keras").symlink_to(model)
    names = {"model": model, "link": tmp_path / "link.keras", "dir": tmp_path}
    done = _tool("export.py", f"--model={model}", *(o.format(**names) for o in outputs), f"--data_dir={DATA_ROOT}")
    _refused(done, f"export.py: error: {expected.format(**names)}")
    assert model.read_bytes() == b"the user's model" and sorted(p.name for p in tmp_path.iterdir()) == ["link.keras", "m.keras"]


# --------------------------------------------------------------------------- flag ranges
@pytest.mark.parametrize("script,args,expected", [
    ("summarize.py", ["--dense_kb=-5"], "Invalid value received for --dense_kb. Expected a positive number of KB (1024 bytes). Received: dense_kb=-5.0"),
    ("summarize.py", ["--dense_kb=0"], "Received: dense_kb=0.0"),
    ("summarize.py", ["--sp_mo_kb=inf"], "Invalid value received for --sp_mo_kb. Expected a positive number of KB"),
    ("rank_at_size.py", ["--seeds=0"], "Invalid value received for --seeds. Expected a positive integer"),
    ("rank_at_size.py", ["--first_seed=-1"], "Invalid value received for --first_seed. Expected an integer in [0, 2**32). Received: first_seed=-1"),
    ("rank_at_size.py", ["--first_seed=4294967295", "--seeds=2"], "Invalid value received for --seeds."),
    ("rank_at_size.py", ["--train_limit=-5"], "Invalid value received for --train_limit. Expected a positive integer. Received: train_limit=-5"),
])
def test_flags_out_of_range_are_refused_when_parsed(script, args, expected, tmp_path):
    done = _tool(script, *args, f"--out={tmp_path / 'o.md'}" if script == "rank_at_size.py" else str(tmp_path))
    _refused(done, expected)
    assert "Flags parsing error" in done.stderr and not (tmp_path / "o.md").exists()


def test_rank_at_size_seeds_is_not_checked_with_from_runs(tmp_path):
    """--from_runs trains nothing, so --seeds plays no part: not refused for it."""
    done = _tool("rank_at_size.py", "--seeds=0", f"--from_runs={tmp_path / 'none.json'}")
    _refused(done, f"--from_runs: cannot read {tmp_path / 'none.json'}")
    assert "--seeds" not in done.stderr


def test_an_output_path_with_a_tilde_is_written_where_it_was_checked(tmp_path):
    """The check expanded '~' (a shell leaves `--out=~/x` as it is) but the tool wrote
    to the literal path: a '~' folder in the working directory."""
    runs = tmp_path / "runs.jsonl"
    runs.write_text('{"candidate": "base", "seed": 1, "test_error": 2.0, "val_error": null, "train_images": 100, '
                    '"model_kb": 1.0, "mean_mo_kb": 2.0, "seconds": 3.0, "units": [4, 3, 2]}\n')
    home = tmp_path / "home"
    home.mkdir()
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "rank_at_size.py"), "--candidates=base",
                           f"--from_runs={runs}", "--out=~/tables/t.md"], capture_output=True, text=True,
                          timeout=180, env={**ENV, "HOME": str(home)}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (home / "tables" / "t.md").is_file() and (home / "tables" / "t.md.json").is_file()
    assert not (tmp_path / "~").exists()


@pytest.mark.parametrize("flag,expected", [("benchmark", "--benchmark="), ("long_runs", "--long_runs=")])
def test_report_refuses_a_named_benchmark_or_long_runs_path_that_is_not_there(tmp_path, flag, expected):
    """A named --benchmark / --long_runs that did not exist was passed over: exit 0 and the
    section silently missing from the report."""
    (tmp_path / "runs").mkdir()
    missing = tmp_path / "no_such"
    done = _tool("report.py", f"--runs={tmp_path / 'runs'}", f"--out={tmp_path / 'R.md'}", f"--{flag}={missing}")
    _refused(done, f"{expected}{missing}: no such")
    assert not (tmp_path / "R.md").exists()


# --------------------------------------------------------------------------- the secondary tools (a probe of each)
def test_an_output_that_is_a_device_or_a_pipe_is_refused(tmp_path):
    """The atomic write replaced it by a regular file (as root, /dev/null too)."""
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    (tmp_path / "runs").mkdir()
    done = _tool("report.py", f"--runs={tmp_path / 'runs'}", f"--out={pipe}")
    _refused(done, "that is not a regular file")
    assert pipe.is_fifo()


def test_report_and_summarize_leave_out_a_config_of_another_kind_and_go_on(tmp_path):
    import json
    import shutil

    sweep = ROOT / "results" / "sweep"
    good = next(p for p in sorted(sweep.iterdir()) if (p / "metrics.json").exists())
    runs = tmp_path / "runs"
    shutil.copytree(good, runs / good.name)
    shutil.copytree(good, runs / "damaged")
    config = json.loads((runs / "damaged" / "config.json").read_text())
    (runs / "damaged" / "config.json").write_text(json.dumps({**config, "hidden": "abc", "dataset": ["mnist"]}))
    done = _tool("summarize.py", str(runs / good.name), str(runs / "damaged"))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert f"skipped {runs / 'damaged'}: its config.json is damaged" in done.stderr and good.name in done.stdout
    (runs / "damaged" / "config.json").write_text(json.dumps({**config, "hidden": "abc"}))
    done = _tool("report.py", f"--runs={runs}", f"--out={tmp_path / 'R.md'}")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "config.json is not a run's configuration (ValueError" in done.stderr and "run damaged left out" in done.stderr


def test_rank_at_size_from_runs_refuses_what_it_cannot_tabulate_and_shows_only_its_rows(tmp_path):
    import json

    record = {"candidate": "base", "seed": 1, "dataset": "mnist", "target_kb": 205.0, "alpha_bs": 0.973, "epochs": 20,
              "test_error": 2.0, "val_error": 1.9, "train_images": 50000, "model_kb": 204.0, "mean_mo_kb": 400.0,
              "seconds": 10.0, "units": [1, 2, 3]}
    other = {**record, "candidate": "cosine", "seed": 7, "val_error": None, "train_images": None}
    good = tmp_path / "runs.jsonl"
    good.write_text("\n".join(json.dumps(r) for r in (record, other)) + "\n")
    done = _tool("rank_at_size.py", f"--from_runs={good}", "--candidates=base", f"--out={tmp_path / 't.md'}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "seeds 1," in done.stdout and "7" not in done.stdout.split("seeds ")[1].split(",")[0]  # not the other candidate's seed
    assert "ranked on the validation error" in done.stdout  # the other candidate's missing split decides nothing
    for bad in ({k: v for k, v in record.items() if k != "model_kb"}, {**record, "seed": "1"}, {**record, "train_images": None}):
        (tmp_path / "bad.jsonl").write_text(json.dumps(bad) + "\n")
        _refused(_tool("rank_at_size.py", f"--from_runs={tmp_path / 'bad.jsonl'}", "--candidates=base"),
                 "holds a record that is not a run of this tool")
    (tmp_path / "latin.jsonl").write_bytes(b"\xff\xfe not utf-8")
    _refused(_tool("rank_at_size.py", f"--from_runs={tmp_path / 'latin.jsonl'}", "--candidates=base"), "--from_runs: cannot read")
    _refused(_tool("rank_at_size.py", f"--from_runs={good}", "--candidates=base,base"), "a candidate is named twice")


def test_edge_table_behaviour_digest_benchmark_step_and_workspace_figures_refuse_bad_input_at_once(tmp_path):
    done = _tool("edge_table.py", f"--dynhp_model={tmp_path / 'no.keras'}", f"--out_dir={tmp_path / 'edge'}")
    _refused(done, "--dynhp_model=")
    assert not (tmp_path / "edge").exists()  # it made the folder, then failed in export.py with a traceback
    _refused(_tool("behaviour_digest.py", "--runs=nope"), "--runs: unknown ['nope']")
    (tmp_path / "list.json").write_text("[]")
    _refused(_tool("behaviour_digest.py", f"--check={tmp_path / 'list.json'}"), "received a JSON list")
    _refused(_tool("behaviour_digest.py", "--runs=sp_mlp", "stray"), "Unexpected arguments")
    for flag in ("--parts=1,9", "--repeats=0", "--examples=0", "--batch_sizes=0", "--steps_per_execution=0"):
        done = _tool("benchmark_step.py", flag)
        assert done.returncode != 0 and "Traceback" not in done.stderr and flag.split("=")[0] in done.stderr, done.stderr[-1000:]
    done = subprocess.run(["bash", str(ROOT / "tools" / "workspace_figures.sh"), "nosuch"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown section 'nosuch'" in done.stderr


@pytest.fixture(scope="module")
def npz_and_model(tmp_path_factory):
    import keras

    from tf_dynhp import datasets

    if not DATA_ROOT.exists():
        pytest.skip("datasets not found")
    root = tmp_path_factory.mktemp("edge")
    (x, y), (xt, yt) = datasets.load("mnist", DATA_ROOT, download=False)
    u8 = lambda a: np.round(a * 255).astype(np.uint8)  # noqa: E731 - exact inverse of /255
    (root / "cache" / "datasets").mkdir(parents=True)
    npz = root / "cache" / "datasets" / "mnist.npz"
    np.savez(npz, x_train=u8(x), y_train=y, x_test=u8(xt), y_test=yt)
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])
    model.save(root / "m.keras")
    return root, npz


def test_edge_table_reads_mnist_from_an_npz(npz_and_model, tmp_path):
    """--data_dir=<mnist.npz> (and mnist.npz found only in the Keras cache, the same
    path through find_dataset_dir) ended in StopIteration: the tool globbed for IDX files
    inside a file."""
    root, npz = npz_and_model
    env = {k: v for k, v in os.environ.items() if k != "TF_DYNHP_DATA"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", KERAS_HOME=str(root / "cache"))
    args = [f"--dynhp_model={root / 'm.keras'}", f"--out_dir={tmp_path / 'out'}", "--limit=50", f"--data_dir={npz}"]
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "edge_table.py"), *args],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stdout.count("| DynHP | ") >= 5, done.stdout
    for base in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):  # the test split, byte for byte
        written = gzip.decompress((tmp_path / "out" / f"mnist-{base}.gz").read_bytes())
        assert written == gzip.decompress((DATA_ROOT / "mnist" / f"{base}.gz").read_bytes())


def test_report_and_summarize_take_run_folders_with_a_tilde(tmp_path):
    """`~` in report's --runs and in summarize's (quoted) folders was read as a folder named
    "~": "no such folder" for a folder that exists."""
    import shutil

    sweep = ROOT / "results" / "sweep"
    good = next(p for p in sorted(sweep.iterdir()) if (p / "metrics.json").exists())
    shutil.copytree(good, tmp_path / "runs" / good.name)
    env = {**ENV, "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "report.py"), "--runs=~/runs", f"--out={tmp_path / 'R.md'}"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0 and (tmp_path / "R.md").is_file(), done.stderr[-2000:]
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "summarize.py"), f"~/runs/{good.name}"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0 and good.name in done.stdout and "skipped" not in done.stderr, done.stderr[-2000:]
