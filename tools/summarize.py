"""Print a Markdown table of finished run folders (metrics.json + config.json).

    python tools/summarize.py runs/i4_*

Every figure in the table comes from the run folders; nothing is typed by hand. The
% columns compare each run with references of its own data set and architecture:
its unpruned model (`dense_model_kb` of metrics.json) and SP's MO, the MO of that
model at the paper's SP batch of the run's data set (`paper.sp_mo_kb`: 2609.4 KB for
the MLP on MNIST, batch 512; 1433.4 KB on Fashion-MNIST, batch 128). `--dense_kb`
and `--sp_mo_kb` replace them for every run.
"""

from __future__ import annotations

import json
import math
import os
import sys

from absl import app, flags

sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]

from _load import cli_module  # noqa: E402
from paper import PAPER, PAPER_HIDDEN, sp_mo_kb  # noqa: E402

_rules = cli_module("flag_rules")
_metrics = cli_module("run_metrics")  # what metrics.json holds

FLAGS = flags.FLAGS
flags.DEFINE_float("dense_kb", None, "Reference dense model size in KB for every run (default: each run's unpruned model).")
flags.DEFINE_float("sp_mo_kb", None, "Reference SP memory per epoch in KB for every run (default: MO of each run's unpruned "
                   "model at the paper's SP batch of its data set).")
for _name in ("dense_kb", "sp_mo_kb"):  # the denominators of the % columns
    _rules.expect(_name, "a positive number of KB (1024 bytes)", lambda v: v > 0 and math.isfinite(v))


def _pct(value: float, ref: float | None) -> str:
    return "n/a" if not ref else f"{100 * value / ref:.1f}%"


def references(config: dict, metrics: dict) -> tuple[float | None, float | None]:
    """(dense model KB, SP's MO KB) the run's % columns are taken against."""
    dense = FLAGS.dense_kb if FLAGS.dense_kb is not None else metrics.get("dense_model_kb")
    sp = FLAGS.sp_mo_kb
    if sp is None and config.get("dataset") in PAPER:
        sp = sp_mo_kb(config["dataset"], config.get("arch", "mlp"), tuple(config.get("hidden") or PAPER_HIDDEN))
    return dense, sp


def _row(folder: str) -> str | None:
    """The folder's table row, or None (with a line on stderr saying why) for a folder that
    is missing, unfinished (no metrics.json) or holds a damaged file."""
    read = {}
    for name in ("metrics.json", "config.json"):
        path = os.path.join(folder, name)
        try:
            with open(path) as f:
                read[name] = json.load(f)
        except FileNotFoundError:
            if os.path.isdir(folder) and any(os.path.exists(os.path.join(folder, sub, "config.json")) for sub in os.listdir(folder)):
                why = f"a folder of run folders: pass them ({os.path.join(folder, '*')})"
            else:
                why = "not a run folder" if not os.path.isdir(folder) else "unfinished"
            print(f"skipped {folder}: no {name} ({why})", file=sys.stderr)
            return None
        except (OSError, ValueError) as err:
            print(f"skipped {folder}: {path} is not readable JSON ({err})", file=sys.stderr)
            return None
        if not isinstance(read[name], dict):
            print(f"skipped {folder}: {path} is not a JSON object (damaged)", file=sys.stderr)
            return None
    m, c = read["metrics.json"], read["config.json"]
    wrong = _metrics.problem(m, _metrics.REQUIRED)
    missing = [k for k in ("method", "l0_lambda") if c.get(k) is None]
    if wrong or missing:
        what = f"its metrics.json {wrong}" if wrong else f"its config.json lacks {missing}"
        print(f"skipped {folder}: {what} (damaged, or written by another version)", file=sys.stderr)
        return None
    try:  # a config value of another kind ("hidden": "abc", a list for "dataset"): this folder only is skipped
        dense, sp = references(c, m)
    except (KeyError, TypeError, ValueError) as err:
        print(f"skipped {folder}: its config.json is damaged ({type(err).__name__}: {err})", file=sys.stderr)
        return None
    sizes = "-".join(str(s) for s in m["layer_sizes"]) if m.get("layer_sizes") else "n/a"
    batches = m["batch_sizes"]
    budget = f"{m['budget_kb']:.1f}" if m.get("budget_kb") else ""
    return (
        f"| {os.path.basename(folder.rstrip('/'))} | {c['method']} | {c.get('batch_growth', '') if c['method'] == 'dynhp' else ''} "
        f"| {c['alpha_bs'] if c['method'] == 'dynhp' and c.get('alpha_bs') is not None else ''} "  # 0.0 shown; unused by sp/hp
        f"| {_lambda_text(c['l0_lambda'])} | {m['epochs_run']} | {m['test_error']:.2f} | {m['model_kb']:.1f} "
        f"({_pct(m['model_kb'], dense)}) | {sizes} | {batches[0]}→{batches[-1]} "
        f"| {m['mean_memory_kb']:.1f} ({_pct(m['mean_memory_kb'], sp)}) | {m['max_memory_kb']:.1f} "
        f"| {budget} | {m['train_seconds']:.0f} |"
    )


def _lambda_text(value) -> str:
    """l0_lambda as tools/train.py's flag takes it: one number, or one per gated layer comma-separated."""
    return ",".join(str(v) for v in value) if isinstance(value, list) else str(value)


def main(argv):
    folders = [os.path.expanduser(f) for f in argv[1:]]  # "~" as the shell would (quoted, it reaches us as is)
    print(
        "| run | method | batch_growth | alpha_bs | lambda | epochs | test error % | model KB (% of dense) "
        "| units per axis (input-...) | batch first→last | mean MO KB (% of SP's MO) | max MO KB | budget KB | seconds |"
    )
    print("|" + "---|" * 14)
    for folder in folders:
        row = _row(folder)
        if row:
            print(row)


if __name__ == "__main__":
    app.run(_rules.one_line_usage(main))
