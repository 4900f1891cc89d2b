"""Print a Markdown table of finished run folders (metrics.json + config.json).

    python tools/summarize.py runs/i4_*

Every figure in the table comes from the run folders; nothing is typed by hand.
"""

from __future__ import annotations

import json
import os

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_float("dense_kb", 1041.4, "Reference dense model size in KB (the paper's 784-300-100-10 MLP).")
flags.DEFINE_float("sp_mo_kb", 2609.4, "Reference SP memory per epoch in KB (MO of SP at batch 512 on MNIST).")


def _row(folder: str) -> str | None:
    try:
        with open(os.path.join(folder, "metrics.json")) as f:
            m = json.load(f)
        with open(os.path.join(folder, "config.json")) as f:
            c = json.load(f)
    except FileNotFoundError:
        return None
    sizes = "-".join(str(s) for s in m["layer_sizes"]) if m.get("layer_sizes") else "n/a"
    batches = m["batch_sizes"]
    budget = f"{m['budget_kb']:.1f}" if m.get("budget_kb") else ""
    return (
        f"| {os.path.basename(folder.rstrip('/'))} | {c['method']} | {c.get('batch_growth', '') if c['method'] == 'dynhp' else ''} "
        f"| {c.get('alpha_bs') or ''} "
        f"| {c['l0_lambda']} | {m['epochs_run']} | {m['test_error']:.2f} | {m['model_kb']:.1f} "
        f"({100 * m['model_kb'] / FLAGS.dense_kb:.1f}%) | {sizes} | {batches[0]}→{batches[-1]} "
        f"| {m['mean_memory_kb']:.1f} ({100 * m['mean_memory_kb'] / FLAGS.sp_mo_kb:.1f}%) | {m['max_memory_kb']:.1f} "
        f"| {budget} | {m['train_seconds']:.0f} |"
    )


def main(argv):
    folders = argv[1:]
    print(
        "| run | method | batch_growth | alpha_bs | lambda | epochs | test error % | model KB (% of --dense_kb) "
        "| units per axis (input-...) | batch first→last | mean MO KB (% of --sp_mo_kb) | max MO KB | budget KB | seconds |"
    )
    print("|" + "---|" * 14)
    for folder in folders:
        row = _row(folder)
        if row:
            print(row)


if __name__ == "__main__":
    app.run(main)
