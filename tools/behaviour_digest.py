r"""Digest of three short seeded runs: the check that a refactoring changed no behaviour.

    python tools/behaviour_digest.py --out=results/refactor/digest-<commit>.json     # record
    python tools/behaviour_digest.py --check=results/refactor/digest-2c0b477.json  # compare

The three runs (issue 14's list), each on the first 4000 MNIST training and 1000
test images, seed 3, the default gate kernel:

* ``dynhp_mlp``: DynHP, 784-300-100-10 MLP, 5 epochs, alpha_bs 0.8, l0_lambda 2,
  gamma 0.7, input_droprate_init 0.4 (so that hidden units and input features are pruned);
* ``dynhp_lenet``: DynHP, a small LeNet (conv 6/5, pool, conv 12/5, pool, dense 64),
  3 epochs, alpha_bs 0.9, l0_lambda 1, gamma 0.8, `trace_once=False` (channels and flattened rows pruned);
* ``sp_mlp``: SP, the same MLP, 3 epochs.

For each run it records every history key but the runtime ones
(`tf_dynhp.training.RUNTIME_KEYS`), exactly (floats as their repr), and the SHA-256
of every weight of `result.model` and `result.gated_model`. `--check` recomputes and
names every key or weight that differs; it exits 1 if any does. The digest is exact:
compare only on the machine, gate kernel and thread settings that recorded it
(TF_NUM_INTRAOP_THREADS changes the order of float sums).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "Write the digest to this JSON file.")
flags.DEFINE_string("check", None, "Compare against this recorded digest (exit 1 on any difference).")
flags.DEFINE_string("data_dir", None, "MNIST folder (default: TF_DYNHP_DATA, /usr/share/datasets, Keras cache).")
RUN_NAMES = ("dynhp_mlp", "dynhp_lenet", "sp_mlp")
flags.DEFINE_list("runs", list(RUN_NAMES), "Which runs.")


def _mlp():
    import keras

    return keras.Sequential([
        keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(300, activation="relu"),
        keras.layers.Dense(100, activation="relu"), keras.layers.Dense(10, activation="softmax"),
    ])


def _lenet():
    import keras

    return keras.Sequential([
        keras.Input((28, 28, 1)), keras.layers.Conv2D(6, 5, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(12, 5, activation="relu"), keras.layers.MaxPooling2D(), keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10, activation="softmax"),
    ])


def _run(name: str, data) -> dict:
    import numpy as np

    import tf_dynhp
    from tf_dynhp.training import RUNTIME_KEYS

    import keras

    (x, y), (xt, yt) = data
    common = dict(seed=3, verbose=0)
    keras.utils.set_random_seed(3)  # the user's model's initial weights (fit seeds only what it builds)
    if name == "dynhp_mlp":
        model = _mlp()
        result = tf_dynhp.fit(model, x, y, method="dynhp", alpha_bs=0.8, l0_lambda=2.0, gamma=0.7, input_droprate_init=0.4, epochs=5,
                              budget_kb=tf_dynhp.memory.mo_kb(model, batch_size=256), validation_data=(xt, yt), **common)
    elif name == "dynhp_lenet":
        model = _lenet()
        x4, xt4 = x[..., None], xt[..., None]
        result = tf_dynhp.fit(model, x4, y, method="dynhp", alpha_bs=0.9, l0_lambda=1.0, gamma=0.8, epochs=3, budget_kb=8000,
                              validation_data=(xt4, yt), trace_once=False, **common)
    elif name == "sp_mlp":
        result = tf_dynhp.fit(_mlp(), x, y, method="sp", epochs=3, validation_data=(xt, yt), **common)
    else:
        raise ValueError(f"unknown run {name!r}")
    history = {k: v for k, v in result.history.items() if k not in RUNTIME_KEYS}
    weights = {}
    for which, model in (("model", result.model), ("gated_model", result.gated_model)):
        for i, w in enumerate(model.weights):
            arr = np.ascontiguousarray(w.numpy())
            weights[f"{which}/{i:02d}/{w.path}{list(arr.shape)}"] = hashlib.sha256(arr.tobytes()).hexdigest()[:20]
    return {"history": json.loads(json.dumps(history, default=repr)), "weights": weights,
            "gate_kernel": result.state.gate_kernel}


def _diff(want: dict, got: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(want) | set(got)):
        a, b = want.get(key, "<missing>"), got.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: recorded {str(a)[:120]} / now {str(b)[:120]}")
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]} (every setting is a --flag)")
    unknown = [name for name in FLAGS.runs if name not in RUN_NAMES]
    if unknown or not FLAGS.runs:  # before the data is read or any run trains
        raise app.UsageError(f"--runs: unknown {unknown}; expected some of {list(RUN_NAMES)}" if unknown else
                             f"--runs: expected some of {list(RUN_NAMES)}")
    from tf_dynhp.cli.flag_rules import load_dataset, output_file  # noqa: PLC0415 - loaded by its path under __main__

    out = output_file("out", FLAGS.out, "a JSON file") if FLAGS.out else None  # checked before the runs; "~" expanded
    recorded = None
    if FLAGS.check:
        try:
            recorded = json.loads(Path(FLAGS.check).read_text())
        except (OSError, ValueError) as err:
            raise app.UsageError(f"--check={FLAGS.check}: expected a digest written by --out; cannot read it ({err})") from err
        if not isinstance(recorded, dict):
            raise app.UsageError(f"--check={FLAGS.check}: expected a digest written by --out (a JSON object of runs); "
                                 f"received a JSON {type(recorded).__name__}")
    (x, y), (xt, yt) = load_dataset("mnist", FLAGS.data_dir, download=False)
    data = ((x[:4000], y[:4000]), (xt[:1000], yt[:1000]))
    digest = {name: _run(name, data) for name in FLAGS.runs}
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(digest, indent=1, sort_keys=True) + "\n")
        print(f"wrote {out}")
    if FLAGS.check:
        diffs = _diff({k: recorded.get(k) for k in FLAGS.runs}, digest)
        for line in diffs:
            print("DIFFERS", line)
        print(f"{len(FLAGS.runs)} runs compared with {FLAGS.check}: " + ("identical" if not diffs else f"{len(diffs)} differences"))
        if diffs:
            sys.exit(1)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tools/_load.py, also under python -m tools.<name>
    from _load import cli_module

    app.run(cli_module("flag_rules").one_line_usage(main))
