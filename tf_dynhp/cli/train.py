"""Train an MLP or LeNet-5 with tf_dynhp (dense, SP, HP or DynHP) and write the run folder.

    python tools/train.py --dataset=mnist --method=dynhp --alpha_bs=0.972 \
        --budget_kb=2609.4 --epochs=20 --out_dir=runs/dynhp
    python tools/train.py --arch=lenet5 --method=dynhp --alpha_bs=0.972 --epochs=50 --out_dir=runs/lenet5

(`tf-dynhp-train` is the same program, installed with the package.)

Prints one line per epoch (epoch, loss, val error, batch size, active units per
layer, MO KB, seconds) and writes into --out_dir: `config.json` (the resolved
flags), `history.jsonl` (one JSON object per epoch), `metrics.json` (final test
error, model size, training memory), `model.keras` (the stripped plain model)
and `gated_model.keras` (with its L0Dense layers, to continue training).
One run per folder: a folder in use by another run is refused at once, and a folder
holding an earlier run needs --resume (same configuration) or --overwrite. Flags
out of range (e.g. --gamma=1, --epochs=0) are refused when the flags are parsed.
"""

from __future__ import annotations

import math
import sys

from absl import app, flags

from tf_dynhp.cli.flag_rules import ToolError, expect, load_dataset, one_line_usage, output_folder

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", "mnist", ["mnist", "fashion_mnist"], "Dataset to train on.")
flags.DEFINE_string("data_dir", None, "Folder with the IDX files (default: TF_DYNHP_DATA, /usr/share/datasets, Keras cache).")
flags.DEFINE_enum("arch", "mlp", ["mlp", "lenet5"], "Model: the paper's MLP (--hidden) or LeNet-5-Caffe (conv 20-50, dense 500).")
flags.DEFINE_enum("method", "dynhp", ["dense", "sp", "hp", "dynhp"], "Training method.")
flags.DEFINE_integer("epochs", 20, "Number of epochs.")
flags.DEFINE_integer("batch_size", None, "(Initial) batch size; default 16 for dynhp, 100 otherwise.")
flags.DEFINE_list("l0_lambda", ["0.01"], "Lambda of the expected-L0 penalty (reference scale, see L0Dense): one value, "
                  "or one per gated layer, comma-separated (e.g. 0.01,0.003,0.003 for the MLP's three Dense layers; "
                  "with --target_kb the largest starts the size multiplier and each layer's share of it is its value's "
                  "ratio to the largest, fit(l0_lambda=[...])).")
flags.DEFINE_float("learning_rate", 1e-3, "Learning rate of Adam (AdamW with --decoupled_weight_decay); fixed, or the "
                   "start of --lr_decay's schedule (with --target_kb the recipe's, a cosine).")
flags.DEFINE_float("alpha_bs", None, "Eq. 8 smoothing of dynhp (the paper's best: 0.972 MNIST, 0.980 Fashion-MNIST; "
                   "left out: fit's default, tf_dynhp.training.DEFAULT_ALPHA_BS = 0.972, which config.json records).")
flags.DEFINE_float("budget_kb", None, "Memory budget in KB; default for dynhp: MO of SP at --budget_batch.")
flags.DEFINE_integer("budget_batch", 512, "Batch whose SP memory (MO) is the default dynhp budget (512 MNIST, 128 Fashion-MNIST in the paper).")
flags.DEFINE_enum("budget_on", "paper", ["paper", "full"], "Budget on the paper's MO or the full footprint.")
flags.DEFINE_float("gamma", 0.5, "Eq. 7 pruning threshold.")
flags.DEFINE_enum("batch_growth", "step_mean", ["step_mean", "step", "epoch"], "Reading of Eq. 8.")
flags.DEFINE_string("hidden", "300,100", "Hidden layer sizes of the MLP (--arch=mlp).")
flags.DEFINE_integer("train_limit", None, "Use only the first N training images (quick runs).")
flags.DEFINE_integer("test_limit", None, "Evaluate on only the first N test images (quick runs; the report's runs of a "
                     "sweep with --test_limit).")
flags.DEFINE_integer("seed", 1, "Seed (identical runs for identical seeds).")
flags.DEFINE_integer("steps_per_execution", 50, "Train steps per compiled call.")
flags.DEFINE_float("droprate_init", 0.5, "Initial drop rate of hidden-unit gates.")
flags.DEFINE_float("input_droprate_init", 0.2, "Initial drop rate of input-feature gates.")
flags.DEFINE_string("out_dir", None, "Run folder to write (checkpoints go to <out_dir>/checkpoints after every epoch).")
flags.DEFINE_bool("resume", False, "Continue the run in --out_dir from its newest valid checkpoint (same configuration; only --epochs and --on_nonfinite may change).")
flags.DEFINE_bool("overwrite", False, "Delete the files of an earlier run in --out_dir first (without it, a folder holding a run is refused unless --resume).")
flags.DEFINE_enum("on_nonfinite", "raise", ["raise", "rollback"], "What to do on a non-finite loss or gradient.")
flags.DEFINE_enum("gate_kernel", "auto", ["auto", "fused", "tf"],
                  "How L0Dense samples its gates in training: the fused CPU kernel (compiled on first use), "
                  "TensorFlow ops, or the kernel when it builds (see tf_dynhp/fused.py).")
flags.DEFINE_integer("verbose", 1, "0 silent, 1 a progress bar and one line per epoch, 2 one line per epoch.")
flags.DEFINE_float("target_kb", None, "Size of the stripped model at most, in KB (hp, dynhp): --l0_lambda starts a multiplier "
                   "driven by the size (see tf_dynhp/target.py). The run folder name of tools/reproduce.py encodes it.")
flags.DEFINE_enum("lr_decay", None, ["none", "cosine", "cosine_restart"], "Learning-rate schedule: none, cosine to 0 over the epochs, "
                  "or cosine_restart: that with a second cosine from the --target_deadline epoch on (without "
                  "--target_kb too: a quarter of the epochs by default; none when that epoch is the last) "
                  "(default: the target-size recipe's with --target_kb, see tf_dynhp.cli.paper.target_recipe; else none).")
flags.DEFINE_float("lambda_floor", None, "With --target_kb: the size multiplier never falls below this "
                   "(default: the target-size recipe's).")
flags.DEFINE_float("lambda_step", None, "With --target_kb: how fast the size multiplier follows the size, "
                   "λ += lambda_step x (size / aim - 1) per epoch (fit(lambda_step=...); default: the target-size recipe's).")
flags.DEFINE_enum("size_penalty", None, ["coupled", "outgoing"], "With --target_kb: what the size multiplier presses "
                  "(coupled: a unit's incoming and outgoing weights; outgoing: Eq. 5's count; default: the target-size recipe's).")
flags.DEFINE_enum("target_schedule", None, ["constant", "cubic"], "With --target_kb: the size aimed at over the run "
                  "(constant: the target from the first epoch; cubic: from the dense size down to it, Zhu & Gupta; "
                  "default: the target-size recipe's).")
flags.DEFINE_float("ema_momentum", None, "Adam keeps a moving average of the weights with this momentum and the model "
                   "ends with it (0: none; default: the target-size recipe's with --target_kb, else none).")
flags.DEFINE_float("weight_decay_per_weight", None, "L2 strength per weight in the mean loss (Louizos et al.'s "
                   "expected-L2 term; fit gets it times the training-set size; default: the target-size recipe's "
                   "with --target_kb, else 0).")
flags.DEFINE_float("decoupled_weight_decay", None, "AdamW's weight_decay instead of Adam (decoupled decay of every "
                   "variable; 0: Adam; default: the target-size recipe's with --target_kb, else 0).")
flags.DEFINE_float("target_deadline", None, "With --target_kb: the fraction of the epochs by which the model is "
                   "brought down to the target (default: the target-size recipe's).")
flags.DEFINE_float("dropout", None, "Dropout rate after every hidden layer of the MLP (0: none; default: the "
                   "target-size recipe's with --target_kb, else 0).")
flags.DEFINE_integer("augment_shift", None, "Data augmentation: every epoch moves each training image by up to this "
                     "many pixels per axis (0: none; default: the target-size recipe's with --target_kb, else 0).")
flags.DEFINE_bool("augment_flip", None, "Data augmentation: every epoch mirrors a random half of the training images "
                  "left-right (default: the target-size recipe's with --target_kb, else no).")
flags.DEFINE_float("augment_until", None, "Fraction of the epochs, from the first, that train on the augmented "
                   "images; the rest train on the images as they are (1: every epoch; default: the target-size "
                   "recipe's with --target_kb, else 1).")
flags.DEFINE_float("augment_fraction", None, "Share of the training images the augmentation transforms each augmented "
                   "epoch (tf_dynhp.augment.RandomShift's fraction; 1: all; default: the target-size recipe's with "
                   "--target_kb, else 1).")
flags.DEFINE_float("augment_erase", None, "Share of the training images that get a random rectangle blanked each "
                   "augmented epoch (tf_dynhp.augment.RandomErasing, Zhong et al. 2020; 0: none; default: the "
                   "target-size recipe's with --target_kb, else 0).")
flags.DEFINE_float("deterministic_from", None, "After this fraction of the epochs the step trains with the test-time "
                   "gates, not samples (fit(deterministic_from=...); 0: never; default: the target-size recipe's with "
                   "--target_kb, else 0).")
flags.DEFINE_float("label_smoothing", None, "Label smoothing of the cross-entropy's targets "
                   "(tf_dynhp.losses.SparseCategoricalCrossentropy; 0: none; default: the target-size recipe's with "
                   "--target_kb, else 0).")
flags.DEFINE_float("validation_split", 0.0, "Fraction of the training set held out as per-epoch validation data "
                   "(0: the test set is shown per epoch, as the paper's figures; nothing is selected on it).")


# ------------------------------------------------------------------ flag checks at parse time
# Plain checks here (importing tf_dynhp would import TensorFlow before --help); the same
# ranges as tf_dynhp.fit checks, and Keras' error wording.
for _name in ("epochs", "batch_size", "budget_batch", "train_limit", "test_limit", "steps_per_execution"):
    expect(_name, "a positive integer", lambda v: v >= 1)
expect("learning_rate", "a positive float", lambda v: v > 0 and math.isfinite(v))
expect("budget_kb", "a positive number of KB (1024 bytes)", lambda v: v > 0 and math.isfinite(v))
expect("alpha_bs", "a float in [0, 1]", lambda v: 0.0 <= v <= 1.0)
expect("gamma", "a float in (0, 1)", lambda v: 0.0 < v < 1.0)
expect("l0_lambda", "floats >= 0 (one, or one per gated layer)", lambda v: v >= 0 and math.isfinite(v))
flags.register_validator("l0_lambda", lambda v: bool(v), message="Invalid value received for --l0_lambda. Expected one "
                         "float >= 0, or one per gated layer. Received: an empty list")
expect("droprate_init", "a float in (0, 1)", lambda v: 0.0 < v < 1.0)
expect("input_droprate_init", "a float in (0, 1)", lambda v: 0.0 < v < 1.0)
expect("verbose", "0, 1 or 2", lambda v: v in (0, 1, 2))
expect("seed", "an integer in [0, 2**32)", lambda v: 0 <= v < 2**32)  # NumPy's seed range
expect("target_kb", "a positive number of KB (1024 bytes)", lambda v: v > 0 and math.isfinite(v))
expect("validation_split", "a float in [0, 1)", lambda v: 0.0 <= v < 1.0)
expect("lambda_floor", "a float >= 0", lambda v: v >= 0 and math.isfinite(v))
expect("lambda_step", "a float > 0", lambda v: v > 0 and math.isfinite(v))
expect("ema_momentum", "a float in [0, 1)", lambda v: 0.0 <= v < 1.0)
expect("weight_decay_per_weight", "a float >= 0", lambda v: v >= 0 and math.isfinite(v))
expect("decoupled_weight_decay", "a float >= 0", lambda v: v >= 0 and math.isfinite(v))
expect("target_deadline", "a float in (0, 1]", lambda v: 0.0 < v <= 1.0)
expect("dropout", "a float in [0, 1)", lambda v: 0.0 <= v < 1.0)
expect("augment_shift", "an integer >= 0", lambda v: v >= 0)
expect("augment_until", "a float in (0, 1]", lambda v: 0.0 < v <= 1.0)
expect("augment_fraction", "a float in [0, 1]", lambda v: 0.0 <= v <= 1.0)
expect("augment_erase", "a float in [0, 1]", lambda v: 0.0 <= v <= 1.0)
expect("label_smoothing", "a float in [0, 1)", lambda v: 0.0 <= v < 1.0)
expect("deterministic_from", "a float in [0, 1) (0: never)", lambda v: 0.0 <= v < 1.0)
expect("hidden", "comma-separated positive layer sizes, e.g. 300,100",
        lambda v: all(part.strip().isdigit() and int(part) >= 1 for part in v.split(",")))
#: Flags that set the size multiplier of --target_kb: given without it they changed nothing
#: but the run's name (tools/reproduce.py's recipe parts) and config.json.
_TARGET_ONLY = ("lambda_floor", "lambda_step", "size_penalty", "target_schedule")


def _check_no_effect(values: dict) -> None:
    """Refuses, before any work, a flag that the other flags make ineffective."""
    given = [name for name in _TARGET_ONLY if values[name] is not None]
    if values["target_deadline"] is not None and values["lr_decay"] != "cosine_restart":
        given.append("target_deadline")  # also where cosine_restart's second cosine starts
    if values["target_kb"] is None and given:
        raise app.UsageError(
            f"{', '.join('--' + n for n in given)}: no effect without --target_kb (settings of its size multiplier"
            + ("; --target_deadline also starts --lr_decay=cosine_restart's second cosine" if "target_deadline" in given else "")
            + f"). Received: {', '.join(f'{n}={values[n]!r}' for n in given)}")
    if values.get("arch") == "lenet5" and values.get("hidden_given"):
        raise app.UsageError(f"--hidden: no effect with --arch=lenet5 (LeNet-5-Caffe's widths are fixed; --hidden sets "
                             f"the MLP's). Received: hidden={values['hidden']!r}")
    if values.get("method") == "dense" and values.get("l0_lambda_given"):
        raise app.UsageError(f"--l0_lambda: no effect with --method=dense (no gates, no L0 penalty). "
                             f"Received: l0_lambda={','.join(values['l0_lambda'])}")
    dynhp_only = [name for name in ("alpha_bs",) if values[name] is not None]
    if values["batch_growth"] != "step_mean":
        dynhp_only.append("batch_growth")
    if values["method"] != "dynhp" and dynhp_only:
        raise app.UsageError(
            f"{', '.join('--' + n for n in dynhp_only)}: no effect with --method={values['method']} (Eq. 8's batch "
            f"growth is DynHP's). Received: {', '.join(f'{n}={values[n]!r}' for n in dynhp_only)}")
flags.register_multi_flags_validator(
    ["resume", "overwrite"], lambda v: not (v["resume"] and v["overwrite"]),
    message="--resume continues the run in --out_dir, --overwrite deletes it: pass one of them.",
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]} (every setting is a --flag)")
    _check_no_effect({**{name: FLAGS[name].value for name in (
        "target_kb", "target_deadline", "lr_decay", "method", "alpha_bs", "batch_growth", "arch", "hidden", "l0_lambda",
        *_TARGET_ONLY)}, "hidden_given": FLAGS["hidden"].present, "l0_lambda_given": FLAGS["l0_lambda"].present})
    out_dir = FLAGS.out_dir
    if out_dir is None:
        if FLAGS.resume:
            raise app.UsageError("--resume needs --out_dir, the run folder to continue.")
        print("No --out_dir given: nothing is saved (no run folder, no checkpoints, no model).", flush=True)
    else:
        out_dir = str(output_folder("out_dir", out_dir, "a run folder"))  # before TensorFlow loads; "~" expanded
    from tf_dynhp import runs
    from tf_dynhp.checkpoint import CheckpointError
    from tf_dynhp.trainer import NonFiniteError

    config = runs.RunConfig(**{name: FLAGS[name].value for name in _CONFIG_FLAGS}, l0_lambda=l0_lambda_value(FLAGS.l0_lambda))
    from tf_dynhp.cli.paper import PLAIN_RECIPE, recipe_for

    for name, value in recipe_for(FLAGS.target_kb, dataset=FLAGS.dataset, **{field: FLAGS[field].value for field in PLAIN_RECIPE}).items():
        setattr(config, name, value)
    config.hidden = [int(h) for h in FLAGS.hidden.split(",") if h]
    try:
        data = load_dataset(config.dataset, FLAGS.data_dir)  # a damaged data set file: ToolError, not any ValueError of the run
        runs.run(config, out_dir, data=data, resume=FLAGS.resume, verbose=FLAGS.verbose, overwrite=FLAGS.overwrite)
    except (runs.RunFolderError, runs.RunArgumentError, CheckpointError, ToolError) as err:  # before any training
        sys.exit(f"error: {err}")
    except NonFiniteError as err:  # the run folder keeps the last good epoch's model (runs.run wrote it)
        sys.exit(f"error: {nonfinite_message(err, out_dir, FLAGS.on_nonfinite)}")
    except KeyboardInterrupt:  # Ctrl-C: the checkpoints of the epochs done stay (exit status 130, as a shell's)
        again = (" with --resume" + (" instead of --overwrite" if FLAGS.overwrite else "")) if out_dir is not None else ""
        print(f"interrupted: run the same command{again} to go on from the last epoch saved"
              + (f" in {out_dir}" if out_dir is not None else " (nothing is saved without --out_dir)") + ".",
              file=sys.stderr)
        sys.exit(130)
    except OSError as err:  # the run folder or its checkpoints/ cannot be made or written, the data set cannot be read, ...
        sys.exit(f"error: {_os_message(err)}")


def nonfinite_message(err: Exception, out_dir: str | None, on_nonfinite: str) -> str:
    """A `NonFiniteError` in the tool's words: what failed (the library's first clause, which
    points to the exception's `last_good` a command-line user has no use for), what the run
    folder keeps, and what to try."""
    what = str(err).split("; training stopped")[0]
    good = getattr(getattr(getattr(err, "last_good", None), "state", None), "epoch", None)
    model = "the initial model (no epoch ended well)" if not good else f"the model of the last good epoch, {good}"
    kept = (f"{out_dir} keeps {model}: model.keras, gated_model.keras, history.jsonl"
            + (" and its checkpoints" if good else "") if out_dir is not None else "nothing is saved without --out_dir")
    advice = "lower --learning_rate" + ("" if on_nonfinite == "rollback" else ", or retry failed epochs with --on_nonfinite=rollback")
    return f"{what}; training stopped. {kept}. Try: {advice}."


def _os_message(err: OSError) -> str:
    """`err`'s message without Python's "[Errno N]" prefix: the file and what is wrong with it."""
    if err.errno is None or not err.strerror:  # raised with a message only (tf_dynhp.datasets' FileNotFoundError)
        return str(err)
    return f"{err.filename}: {err.strerror}" if err.filename else err.strerror


def l0_lambda_value(items: list[str]) -> float | list[float]:
    """--l0_lambda as fit takes it: one value as a float (config.json keeps the number, as
    before per-layer values existed, so such a run folder resumes), several as a list."""
    values = [float(item) for item in items]  # checked when the flags are parsed: numbers >= 0, at least one
    return values[0] if len(values) == 1 else values


_CONFIG_FLAGS = (
    "dataset", "arch", "method", "epochs", "batch_size", "learning_rate", "alpha_bs", "budget_kb",
    "budget_batch", "budget_on", "gamma", "batch_growth", "train_limit", "test_limit", "seed", "steps_per_execution",
    "droprate_init", "input_droprate_init", "on_nonfinite", "gate_kernel", "target_kb", "validation_split",
)


def run() -> None:
    """Entry point of `tf-dynhp-train` and `tools/train.py`: parses the flags, then calls `main`."""
    entry = sys.modules["__main__"]
    if entry is not sys.modules.get(__name__):
        entry.__doc__ = __doc__  # absl's --help prints __main__'s docstring
    for flag in FLAGS.get_flags_for_module(__name__):  # and the flags of the module named sys.argv[0]
        FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(one_line_usage(main))


if __name__ == "__main__":
    run()
