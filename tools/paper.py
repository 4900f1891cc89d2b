"""The paper's numbers and settings moved to `tf_dynhp/cli/paper.py` (the installed
`tf-dynhp-reproduce` needs them); `import paper` from tools/ gives that module itself."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tools/_load.py
from _load import cli_module  # noqa: E402

# Loaded by its path, not through the `tf_dynhp` package, which imports TensorFlow: the
# tools that read the paper's numbers still parse their flags (and refuse bad ones) at once.
sys.modules[__name__] = cli_module("paper")
