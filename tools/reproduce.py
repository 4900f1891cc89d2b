"""Entry point `python tools/reproduce.py`: the program is `tf_dynhp/cli/reproduce.py` (also the
`tf-dynhp-reproduce` console script); this file starts it, from this checkout.

It also keeps running the workers of sweeps started by older checkouts
(`python tools/reproduce.py --worker_config=... --worker_dir=...`), and lends the
module's names (`build_grid`, `budget_kb`, `run_name`, ...) to code that loads this file.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tf_dynhp` of this checkout, installed or not

from tf_dynhp.cli.reproduce import *  # noqa: E402,F403
from tf_dynhp.cli.reproduce import main, run  # noqa: E402,F401

if __name__ == "__main__":
    run()
