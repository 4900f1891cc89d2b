"""Packaging (issue 14): one version string, the console scripts, the files a wheel must carry.

The wheel is built from a copy of the sources (pyproject.toml, setup.py, README.md,
tf_dynhp/) in a temporary folder, so the working tree gets no build/ or egg-info.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {
    "tf-dynhp-train": ("tf_dynhp.cli.train:run", "--alpha_bs", "Train an MLP or LeNet-5 with tf_dynhp"),
    "tf-dynhp-export": ("tf_dynhp.cli.export:run", "--quantization", "Export a trained model to LiteRT"),
    "tf-dynhp-reproduce": ("tf_dynhp.cli.reproduce:run", "--grid", "Reproduce the paper's Tables 2-3"),
}
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
HELP_EXIT = 1  # absl exits with 1 after printing --help


def _can_build_without_isolation() -> bool:
    """setuptools >= 64 (pyproject metadata, PEP 660) and wheel in this environment."""
    if importlib.util.find_spec("setuptools") is None or importlib.util.find_spec("wheel") is None:
        return False
    major = int(importlib.metadata.version("setuptools").split(".")[0])
    return major >= 64


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel `pip wheel .` builds (a non-editable install gets exactly these files)."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "tf_dynhp", src / "tf_dynhp", ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc"))
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q", str(src),
           "-w", str(tmp / "dist")]
    if _can_build_without_isolation():
        cmd.insert(4, "--no-build-isolation")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = (tmp / "dist").glob("tf_dynhp-*.whl")
    with zipfile.ZipFile(path) as zf:
        yield zf


def _dist_info(wheel: zipfile.ZipFile, name: str) -> str:
    (path,) = [n for n in wheel.namelist() if n.endswith(f".dist-info/{name}")]
    return wheel.read(path).decode()


def test_version_is_single_sourced(wheel):
    """The wheel's version is `tf_dynhp.__version__`; no other file states one."""
    import tf_dynhp

    metadata = Parser().parsestr(_dist_info(wheel, "METADATA"))
    assert metadata["Version"] == tf_dynhp.__version__
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and 'version = {attr = "tf_dynhp.__version__"}' in pyproject
    assert not re.search(r'^version\s*=\s*["\']', pyproject, re.M), "pyproject.toml states a version of its own"
    assert "version" not in (REPO / "setup.py").read_text(), "setup.py states a version of its own"
    installed = _installed()
    assert installed is None or installed.version == tf_dynhp.__version__, "stale install: pip install -e . again"


def test_version_is_read_without_importing_tensorflow():
    """setuptools reads `__version__` from the file's syntax tree: building needs no TensorFlow."""
    code = ("import sys\n"
            "sys.modules['tensorflow'] = sys.modules['keras'] = None  # importing either now fails\n"
            "from setuptools.config.expand import read_attr\n"
            "print(read_attr('tf_dynhp.__version__', root_dir=sys.argv[1]))\n")
    done = subprocess.run([sys.executable, "-c", code, str(REPO)], capture_output=True, text=True, timeout=60, env=ENV)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == _static_version()


def _static_version() -> str:
    line = next(ln for ln in (REPO / "tf_dynhp" / "__init__.py").read_text().splitlines() if ln.startswith("__version__"))
    return line.split("=", 1)[1].strip().strip("\"'")


def test_wheel_carries_kernel_source_and_type_marker(wheel):
    """The fused kernel compiles from csrc/*.cc at run time; py.typed marks the package typed."""
    names = set(wheel.namelist())
    sources = sorted(p.name for p in (REPO / "tf_dynhp" / "csrc").glob("*.cc"))
    assert sources, "no kernel source in tf_dynhp/csrc"
    for name in sources:
        assert f"tf_dynhp/csrc/{name}" in names
        assert wheel.read(f"tf_dynhp/csrc/{name}") == (REPO / "tf_dynhp" / "csrc" / name).read_bytes()
    assert "tf_dynhp/py.typed" in names
    for module in ("__init__", "train", "export", "reproduce", "paper", "run_folders"):
        assert f"tf_dynhp/cli/{module}.py" in names
    assert not [n for n in names if n.startswith(("tests/", "tools/", "deploy/"))]


def test_wheel_declares_console_scripts_and_extras(wheel):
    entry_points = _dist_info(wheel, "entry_points.txt")
    for script, (target, _, _) in SCRIPTS.items():
        assert f"{script} = {target}" in entry_points
    requires = Parser().parsestr(_dist_info(wheel, "METADATA")).get_all("Requires-Dist")
    assert "keras<3.16,>=3.5" in requires
    assert 'tensorflow-cpu<2.22,>=2.16; extra == "cpu"' in requires
    assert 'tensorboard>=2.16; extra == "tools"' in requires  # keras.callbacks.TensorBoard needs it


def _installed() -> importlib.metadata.Distribution | None:
    """tf_dynhp as installed in this environment's site-packages (not a build's egg-info
    lying in the working folder, which `importlib.metadata` would find first)."""
    folders = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    found = list(importlib.metadata.distributions(name="tf_dynhp", path=folders))
    return found[0] if found else None


def _installed_scripts() -> dict[str, Path]:
    dist = _installed()
    if dist is None:
        pytest.skip("tf_dynhp is not installed in this environment (pip install -e .)")
    declared = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
    assert declared == {script: target for script, (target, _, _) in SCRIPTS.items()}, (
        "the installed console scripts differ from pyproject.toml: pip install -e . again")
    folder = Path(sysconfig.get_path("scripts"))
    found = {script: folder / script for script in SCRIPTS}
    missing = [str(path) for path in found.values() if not path.exists()]
    assert not missing, f"console scripts missing: {missing} (pip install -e . again)"
    return found


def test_console_scripts_print_their_help():
    """`--help` of each script: the program's usage text and its own flags (lent to __main__)."""
    scripts = _installed_scripts()
    procs = {script: subprocess.Popen([str(path), "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=ENV)
             for script, path in scripts.items()}
    for script, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=180)
        _, flag, usage = SCRIPTS[script]
        assert proc.returncode == HELP_EXIT and "Traceback" not in stderr, stderr[-2000:]
        assert stdout.startswith(usage), stdout[:300]
        assert f"\n  {flag}:" in stdout, stdout[-2000:]


@pytest.mark.parametrize("tool,flag", [("train.py", "--alpha_bs"), ("export.py", "--quantization")])
def test_tools_entry_points_parse_flags_before_tensorflow(tool, flag):
    """tools/train.py and tools/export.py load their program from its file: --help (and a flag
    error) comes before anything imports TensorFlow."""
    code = ("import runpy, sys\n"
            "sys.argv = [sys.argv[1], '--help']\n"
            "try:\n"
            "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
            "except SystemExit as stop:\n"
            f"    assert stop.code == {HELP_EXIT}, stop.code\n"
            "print('imported:', sorted(m for m in ('tensorflow', 'keras', 'tf_dynhp') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code, str(REPO / "tools" / tool)], capture_output=True, text=True,
                          timeout=60, env=ENV, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"\n  {flag}:" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "imported: []"
