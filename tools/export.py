"""Entry point `python tools/export.py`: the program is `tf_dynhp/cli/export.py` (also the `tf-dynhp-export`
console script); this file only starts it, from this checkout.

The module is loaded from its file, not imported as `tf_dynhp.cli.export`: importing the
`tf_dynhp` package imports TensorFlow, and the flags are checked before that (an instant
--help, flag errors in a fraction of a second).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/_load.py (python -m tools.export has no tools/ on the path)
from _load import cli_module  # noqa: E402

cli_module("flag_rules")  # what tf_dynhp/cli/export.py imports before its flags are parsed, loaded without the package
_cli = cli_module("export")
main = _cli.main

if __name__ == "__main__":
    _cli.run()
