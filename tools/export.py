"""Entry point `python tools/export.py`: the program is `tf_dynhp/cli/export.py` (also the `tf-dynhp-export`
console script); this file only starts it, from this checkout.

The module is loaded from its file, not imported as `tf_dynhp.cli.export`: importing the
`tf_dynhp` package imports TensorFlow, and the flags are checked before that (an instant
--help, flag errors in a fraction of a second).
"""

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `tf_dynhp` of this checkout, installed or not
_spec = importlib.util.spec_from_file_location("tf_dynhp.cli.export", REPO / "tf_dynhp" / "cli" / "export.py")
_cli = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _cli  # one copy of the module (and of its flags) in this process
_spec.loader.exec_module(_cli)
main = _cli.main

if __name__ == "__main__":
    _cli.run()
