"""Loads a module of `tf_dynhp/cli` of this checkout from its file, under its package
name, without importing the `tf_dynhp` package (which imports TensorFlow): the tools
parse their flags first (an instant --help, flag errors in a fraction of a second).
A later `import tf_dynhp.cli.<name>` finds the same module."""

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `tf_dynhp` of this checkout, installed or not


def cli_module(name: str):
    """`tf_dynhp.cli.<name>`, loaded from `tf_dynhp/cli/<name>.py` unless already loaded
    (one copy of the module, and of its flags, per process)."""
    full = f"tf_dynhp.cli.{name}"
    if full not in sys.modules:
        spec = importlib.util.spec_from_file_location(full, REPO / "tf_dynhp" / "cli" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        spec.loader.exec_module(module)
    return sys.modules[full]
