"""Train an MLP with tf_dynhp (dense, SP, HP or DynHP) and write the run folder.

    python tools/train.py --dataset=mnist --method=dynhp --alpha_bs=0.972 \
        --budget_kb=2609.4 --epochs=20 --out_dir=runs/dynhp

Prints one line per epoch (epoch, loss, val error, batch size, active units per
layer, MO KB, seconds) and writes into --out_dir: `config.json` (the resolved
flags), `history.jsonl` (one JSON object per epoch), `metrics.json` (final test
error, model size, training memory), `model.keras` (the stripped plain model)
and `gated_model.keras` (with its L0Dense layers, to continue training).
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", "mnist", ["mnist", "fashion_mnist"], "Dataset to train on.")
flags.DEFINE_string("data_dir", None, "Folder with the IDX files (default: TF_DYNHP_DATA, /usr/share/datasets, Keras cache).")
flags.DEFINE_enum("method", "dynhp", ["dense", "sp", "hp", "dynhp"], "Training method.")
flags.DEFINE_integer("epochs", 20, "Number of epochs.")
flags.DEFINE_integer("batch_size", None, "(Initial) batch size; default 16 for dynhp, 100 otherwise.")
flags.DEFINE_float("l0_lambda", 0.01, "Lambda of the expected-L0 penalty (reference scale, see L0Dense).")
flags.DEFINE_float("learning_rate", 1e-3, "Fixed learning rate of Adam.")
flags.DEFINE_float("alpha_bs", None, "Eq. 8 smoothing; required for dynhp (0.972 MNIST, 0.980 Fashion-MNIST).")
flags.DEFINE_float("budget_kb", None, "Memory budget in KB; default for dynhp: MO of SP at --budget_batch.")
flags.DEFINE_integer("budget_batch", 512, "Batch whose SP memory (MO) is the default dynhp budget (512 MNIST, 128 Fashion-MNIST in the paper).")
flags.DEFINE_enum("budget_on", "paper", ["paper", "full"], "Budget on the paper's MO or the full footprint.")
flags.DEFINE_float("gamma", 0.5, "Eq. 7 pruning threshold.")
flags.DEFINE_enum("batch_growth", "step_mean", ["step_mean", "step", "epoch"], "Reading of Eq. 8.")
flags.DEFINE_string("hidden", "300,100", "Hidden layer sizes of the MLP.")
flags.DEFINE_integer("train_limit", None, "Use only the first N training images (quick runs).")
flags.DEFINE_integer("seed", 1, "Seed (identical runs for identical seeds).")
flags.DEFINE_integer("steps_per_execution", 50, "Train steps per compiled call.")
flags.DEFINE_float("droprate_init", 0.5, "Initial drop rate of hidden-unit gates.")
flags.DEFINE_float("input_droprate_init", 0.2, "Initial drop rate of input-feature gates.")
flags.DEFINE_string("out_dir", None, "Run folder to write (checkpoints go to <out_dir>/checkpoints after every epoch).")
flags.DEFINE_bool("resume", False, "Continue from the newest valid checkpoint in <out_dir>/checkpoints.")
flags.DEFINE_enum("on_nonfinite", "raise", ["raise", "rollback"], "What to do on a non-finite loss or gradient.")
flags.DEFINE_integer("verbose", 1, "0 silent, 1 one line per epoch.")


def build_mlp(hidden: list[int], num_classes: int = 10):
    import keras

    layers = [keras.Input((28, 28)), keras.layers.Flatten()]
    layers += [keras.layers.Dense(units, activation="relu") for units in hidden]
    layers.append(keras.layers.Dense(num_classes, activation="softmax"))
    return keras.Sequential(layers, name="mlp_" + "_".join(str(h) for h in hidden))


def main(argv):
    del argv
    import numpy as np

    import tf_dynhp

    checkpoint_dir = None
    if FLAGS.out_dir:
        checkpoint_dir = tf_dynhp.checkpoint.probe_writable(os.path.join(FLAGS.out_dir, "checkpoints"))
    (x, y), (x_test, y_test) = tf_dynhp.datasets.load(FLAGS.dataset, FLAGS.data_dir)
    if FLAGS.train_limit:
        x, y = x[: FLAGS.train_limit], y[: FLAGS.train_limit]
    hidden = [int(h) for h in FLAGS.hidden.split(",") if h]
    import keras

    keras.utils.set_random_seed(FLAGS.seed)  # the initial weights depend on the seed too
    model = build_mlp(hidden)
    budget_kb = FLAGS.budget_kb
    if budget_kb is None and FLAGS.method == "dynhp":
        budget_kb = tf_dynhp.memory.mo_kb(model, batch_size=FLAGS.budget_batch)
    config = {k: v.value for k, v in FLAGS.__flags.items() if k in _OWN_FLAGS}
    config["budget_kb"] = budget_kb
    config["train_examples"] = int(len(x))
    if FLAGS.out_dir:
        with open(os.path.join(FLAGS.out_dir, "config.json"), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
    t0 = time.perf_counter()
    result = tf_dynhp.fit(
        model, x, y, method=FLAGS.method, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size,
        l0_lambda=FLAGS.l0_lambda, learning_rate=FLAGS.learning_rate, alpha_bs=FLAGS.alpha_bs,
        budget_kb=budget_kb, budget_on=FLAGS.budget_on, gamma=FLAGS.gamma,
        batch_growth=FLAGS.batch_growth, validation_data=(x_test, y_test), seed=FLAGS.seed,
        steps_per_execution=FLAGS.steps_per_execution, verbose=FLAGS.verbose,
        droprate_init=FLAGS.droprate_init, input_droprate_init=FLAGS.input_droprate_init,
        checkpoint_dir=checkpoint_dir, resume=FLAGS.resume, on_nonfinite=FLAGS.on_nonfinite,
    )
    seconds = time.perf_counter() - t0
    probs = result.model.predict(x_test, batch_size=2000, verbose=0)
    test_error = 100.0 * float(np.mean(np.argmax(probs, -1) != y_test))
    dense_kb = tf_dynhp.memory.floats_to_kb(tf_dynhp.memory.weight_count(model))
    model_kb = tf_dynhp.memory.floats_to_kb(tf_dynhp.memory.weight_count(result.model))
    metrics = {
        "test_error": test_error,
        "model_kb": model_kb,
        "dense_model_kb": dense_kb,
        "model_fraction": model_kb / dense_kb,
        "layer_sizes": [int(n) for n in result.history["active_units"][-1]] if FLAGS.method != "sp" else None,
        "training_memory_mb": tf_dynhp.memory.training_memory_mb(result.history["memory_kb"]),
        "mean_memory_kb": float(np.mean(result.history["memory_kb"])),
        "max_memory_kb": float(np.max(result.history["memory_kb"])),
        "budget_kb": budget_kb,
        "batch_sizes": result.history["batch_size"],
        "epochs_run": len(result.history["loss"]),
        "train_seconds": seconds,
    }
    print(
        f"test_error {test_error:.2f}% - model {model_kb:.1f} KB ({100 * model_kb / dense_kb:.1f}% of dense) - "
        f"mean MO {metrics['mean_memory_kb']:.1f} KB (max {metrics['max_memory_kb']:.1f}) - "
        f"final batch {result.history['batch_size'][-1]} - {seconds:.0f}s"
    )
    if FLAGS.out_dir:
        with open(os.path.join(FLAGS.out_dir, "history.jsonl"), "w") as f:
            for i in range(len(result.history["loss"])):
                f.write(json.dumps({k: v[i] for k, v in result.history.items()}) + "\n")
        with open(os.path.join(FLAGS.out_dir, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
        result.model.save(os.path.join(FLAGS.out_dir, "model.keras"))
        result.gated_model.save(os.path.join(FLAGS.out_dir, "gated_model.keras"))


_OWN_FLAGS = (
    "dataset", "data_dir", "method", "epochs", "batch_size", "l0_lambda", "learning_rate", "alpha_bs",
    "budget_kb", "budget_batch", "budget_on", "gamma", "batch_growth", "hidden", "train_limit", "seed",
    "steps_per_execution", "out_dir", "droprate_init", "input_droprate_init", "on_nonfinite",
)

if __name__ == "__main__":
    app.run(main)
