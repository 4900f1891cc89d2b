"""The paper's numbers and settings moved to `tf_dynhp/cli/paper.py` (the installed
`tf-dynhp-reproduce` needs them); `import paper` from tools/ gives that module itself."""

import importlib
import sys
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tf_dynhp` of this checkout, installed or not
sys.modules[__name__] = importlib.import_module("tf_dynhp.cli.paper")
