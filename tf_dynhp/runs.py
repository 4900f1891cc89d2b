"""A training run with its folder: the one routine behind `tools/train.py` and
`tools/reproduce.py` (Model Garden style: the scripts hold the flags, this takes
plain arguments).

A run folder holds `config.json` (the resolved configuration), `checkpoints/`
(one atomic checkpoint per epoch, see `tf_dynhp.checkpoint`), and once finished
`history.jsonl` (one JSON object per epoch), `metrics.json` (final test error,
sizes, training memory), `model.keras` (stripped) and `gated_model.keras`. A run
with a sound `metrics.json` (`is_finished`) is finished; an unfinished one resumes
from its checkpoints.

A folder never holds two runs:

* one process at a time: `run` holds an exclusive lock on the folder (`flock` on the
  folder itself, released when the process ends, however it ends); a second run
  into it fails at once with `RunFolderError` naming the folder;
* a folder that already holds a run's files (`config.json`, `history.jsonl`,
  `metrics.json`, `model.keras`, `gated_model.keras`, checkpoints) is refused
  unless `resume=True` with the same configuration (only `epochs` and
  `on_nonfinite` may change; resuming a finished run with more epochs first removes
  its `metrics.json`: the folder is unfinished until the new one is written), or
  `overwrite=True`, which deletes those files (and nothing else) once `fit` has
  accepted the new run's arguments and data: a refused run costs the earlier one nothing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from typing import Any, Sequence

import numpy as np

from tf_dynhp._checks import invalid, real_number, write_atomic
from tf_dynhp.cli import run_metrics

__all__ = ["ARCHS", "LR_DECAYS", "RunConfig", "augmentation", "loss", "lr_callbacks", "restart_epoch", "optimizer", "RunFolderError", "RunArgumentError", "build_mlp", "build_lenet5", "build_model", "run", "is_finished", "read_history"]

#: Architectures of `RunConfig.arch`: the paper's MLP family (`hidden`) and LeNet-5-Caffe.
ARCHS = ("mlp", "lenet5")
#: Learning-rate schedules of `RunConfig.lr_decay`.
LR_DECAYS = ("none", "cosine", "cosine_restart")


@dataclasses.dataclass
class RunConfig:
    """Everything that defines a run (the flags of tools/train.py).

    `arch` is "mlp" (Flatten -> Dense(relu) x `hidden` -> Dense(softmax); inputs
    (28, 28)) or "lenet5" (`build_lenet5`; inputs (28, 28, 1): the (n, 28, 28) images
    get a channel axis in `run`; `hidden` is ignored).
    """

    dataset: str = "mnist"
    arch: str = "mlp"
    method: str = "dynhp"
    epochs: int = 20
    batch_size: int | None = None
    l0_lambda: float | list[float] = 0.01  # one value, or one per gated layer (fit's per-layer shares)
    learning_rate: float = 1e-3
    alpha_bs: float | None = None
    budget_kb: float | None = None
    budget_batch: int = 512
    budget_on: str = "paper"
    gamma: float = 0.5
    batch_growth: str = "step_mean"
    hidden: Sequence[int] = (300, 100)
    train_limit: int | None = None
    test_limit: int | None = None
    seed: int = 1
    steps_per_execution: int = 50
    droprate_init: float = 0.5
    input_droprate_init: float = 0.2
    on_nonfinite: str = "raise"
    gate_kernel: str = "auto"
    target_kb: float | None = None  # fit(target_kb=...): the stripped model's size at most (hp, dynhp)
    # > 0: hold out this fraction of the training set as the per-epoch validation data
    # (anything selected on it never saw the test set); 0: the test set is the per-epoch
    # validation data, as the paper's figures show it (nothing is selected on it).
    validation_split: float = 0.0
    # Learning-rate schedule over the run (`LR_DECAYS`): "none" keeps `learning_rate`;
    # "cosine" decays it to 0 on a half cosine over `epochs` (a Keras LearningRateScheduler);
    # "cosine_restart" starts a second one at the `target_deadline` epoch (`lr_callbacks`).
    lr_decay: str = "none"
    lambda_floor: float = 0.0  # fit(lambda_floor=...): the size multiplier's floor under a target
    lambda_step: float = 0.05  # fit(lambda_step=...): how fast the size multiplier follows the size
    size_penalty: str = "coupled"  # fit(size_penalty=...): what the size multiplier presses under a target
    target_schedule: str = "constant"  # fit(target_schedule=...): the size aimed at over the run
    target_deadline: float = 0.25  # fit(target_deadline=...): the fraction of epochs by which the target is reached
    # > 0: Adam keeps an exponential moving average of the weights with this momentum and
    # the model ends with it (keras.optimizers.Adam(use_ema=True)); None: no average.
    ema_momentum: float | None = None
    # L2 strength per weight in the mean training loss (Louizos et al.'s expected-L2 term,
    # their code's 5e-4): fit gets weight_decay = this x the number of training examples,
    # since L0Dense divides its penalty by that number (Eq. 5's 1/N).
    weight_decay_per_weight: float = 0.0
    # > 0: AdamW's decoupled weight decay (Loshchilov & Hutter) with this `weight_decay`, on
    # every variable; 0: Adam.
    decoupled_weight_decay: float = 0.0
    # > 0: `Dropout` with this rate after every hidden layer of the MLP (`build_mlp`); "mlp" only.
    dropout: float = 0.0
    # Data augmentation (`tf_dynhp.augment.RandomShift`, fit's `augment`): every epoch moves
    # each training image by up to this many pixels per axis (0: none) and, with
    # `augment_flip`, mirrors a random half of them left-right.
    augment_shift: int = 0
    augment_flip: bool = False
    # Fraction of the epochs, from the first, trained on the augmented images (fit's
    # `augment_until`); the rest train on the images as they are. 1: every epoch.
    augment_until: float = 1.0
    # Share of the images moved each augmented epoch (`RandomShift(fraction=...)`); 1: all.
    augment_fraction: float = 1.0
    # > 0: every augmented epoch also blanks a random rectangle of this share of the images
    # (`tf_dynhp.augment.RandomErasing(probability=...)`, after the shift); 0: none.
    augment_erase: float = 0.0
    # > 0: the cross-entropy's targets are label-smoothed by this share (fit's `loss`:
    # `tf_dynhp.losses.SparseCategoricalCrossentropy(label_smoothing=...)`); 0: plain.
    label_smoothing: float = 0.0
    # > 0: after this fraction of the epochs the step trains with the test-time gates
    # (fit's `deterministic_from`); 0: the gates are sampled in every step.
    deterministic_from: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d


def build_mlp(hidden: Sequence[int], input_shape: tuple[int, ...] = (28, 28), num_classes: int = 10,
              dropout: float = 0.0):
    """The paper's MLP family: Flatten -> Dense(relu) x len(hidden) -> Dense(softmax), with
    `Dropout(dropout)` after every hidden layer when `dropout` > 0 (Srivastava et al. 2014;
    not in the paper: a regularizer for the epochs after a size target is reached)."""
    import keras

    if not 0.0 <= dropout < 1.0:
        raise invalid("dropout", "a rate in [0, 1)", dropout)
    layers = [keras.Input(input_shape), keras.layers.Flatten(data_format="channels_last")]  # whatever keras.config says
    for units in hidden:
        layers.append(keras.layers.Dense(int(units), activation="relu"))
        if dropout:
            layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(num_classes, activation="softmax"))
    return keras.Sequential(layers, name="mlp_" + "_".join(str(h) for h in hidden))


def build_lenet5(input_shape: tuple[int, ...] = (28, 28, 1), num_classes: int = 10):
    """LeNet-5-Caffe (as in Louizos et al. 2018): Conv2D(20, 5) -> MaxPool(2) -> Conv2D(50, 5)
    -> MaxPool(2) -> Flatten -> Dense(500, relu) -> Dense(softmax); valid padding, relu
    after each conv. 431 080 weights and biases (1683.9 KB) for 28x28x1 inputs."""
    import keras

    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(20, 5, activation="relu", data_format="channels_last", name="conv1"),
            keras.layers.MaxPooling2D(2, data_format="channels_last", name="pool1"),
            keras.layers.Conv2D(50, 5, activation="relu", data_format="channels_last", name="conv2"),
            keras.layers.MaxPooling2D(2, data_format="channels_last", name="pool2"),
            keras.layers.Flatten(data_format="channels_last", name="flatten"),
            keras.layers.Dense(500, activation="relu", name="fc1"),
            keras.layers.Dense(num_classes, activation="softmax", name="fc2"),
        ],
        name="lenet5",
    )


def loss(config: RunConfig) -> Any:
    """`fit`'s `loss` for `config`: label-smoothed cross-entropy, or None (fit's default)."""
    from tf_dynhp.losses import SparseCategoricalCrossentropy

    return SparseCategoricalCrossentropy(config.label_smoothing) if config.label_smoothing else None


def augmentation(config: RunConfig) -> Any:
    """`fit`'s `augment` for `config`: a `tf_dynhp.augment.RandomShift`, a
    `RandomErasing`, both in turn (`Augmentations`), or None."""
    from tf_dynhp.augment import Augmentations, RandomErasing, RandomShift

    if isinstance(config.augment_shift, bool) or not isinstance(config.augment_shift, (int, np.integer)) or config.augment_shift < 0:
        raise invalid("augment_shift", "an integer >= 0", config.augment_shift)
    fraction = real_number("augment_fraction", config.augment_fraction, "a number in [0, 1]", lambda v: 0.0 <= v <= 1.0)
    erase = real_number("augment_erase", config.augment_erase, "a probability in [0, 1]", lambda v: 0.0 <= v <= 1.0)
    steps = []
    if config.augment_shift or config.augment_flip:
        steps.append(RandomShift(int(config.augment_shift), bool(config.augment_flip), fraction))
    elif fraction != 1.0:
        raise invalid("augment_fraction", "1 without augment_shift or augment_flip (it is the share of the images they "
                      "transform)", fraction)
    if erase:
        steps.append(RandomErasing(erase))
    if len(steps) > 1:
        return Augmentations(tuple(steps))
    return steps[0] if steps else None


def restart_epoch(lr_decay: str, target_deadline: float, epochs: int) -> int | None:
    """Where "cosine_restart" starts its second cosine: the epoch by which a size target
    is reached (`tf_dynhp.target.deadline_epoch(target_deadline, epochs)`; at `epochs` or
    later when the deadline is the last epoch: no restart in the run); None for the other
    schedules."""
    from tf_dynhp.target import deadline_epoch

    if lr_decay not in LR_DECAYS:
        raise invalid("lr_decay", f"one of {list(LR_DECAYS)}", lr_decay)
    if lr_decay != "cosine_restart":
        return None
    target_deadline = real_number("target_deadline", target_deadline, "a fraction of the epochs in (0, 1]", lambda v: 0.0 < v <= 1.0)
    return deadline_epoch(target_deadline, epochs)


def lr_callbacks(lr_decay: str, learning_rate: float, epochs: int, restart_epoch: int | None = None) -> list[Any]:
    """The Keras callbacks of learning-rate schedule `lr_decay` (one of `LR_DECAYS`):
    none for "none", or for "cosine" a `LearningRateScheduler` setting epoch e (0-based) to
    `learning_rate * (1 + cos(pi * e / epochs)) / 2`. It depends on the epoch index
    only, so a resumed run gets the same rates.

    "cosine_restart" (with `restart_epoch` > 0; `restart_epoch()` gives the target
    deadline's) is "cosine" with a warm restart there (Loshchilov & Hutter 2017, "SGDR"):
    from that epoch on the rate starts again at `learning_rate` and decays on a cosine to 0
    over the epochs left; the epochs before it are "cosine"'s. Restarted at the size
    target's deadline, the model at its final size gets a whole anneal of its own. A
    `restart_epoch` at or past `epochs` (a run too short to have epochs after its
    deadline) leaves plain "cosine": there is nothing to restart.
    """
    import keras

    if lr_decay not in LR_DECAYS:
        raise invalid("lr_decay", f"one of {list(LR_DECAYS)}", lr_decay)
    if lr_decay != "cosine_restart":
        if restart_epoch is not None:
            raise invalid("restart_epoch", f'None with lr_decay="{lr_decay}" (it is "cosine_restart"\'s)', restart_epoch)
        if lr_decay == "none":
            return []
        start = int(epochs)  # "cosine": the first cosine runs to the end
    elif isinstance(restart_epoch, bool) or not isinstance(restart_epoch, (int, np.integer)) or restart_epoch <= 0:
        raise invalid("restart_epoch", 'an integer > 0 with lr_decay="cosine_restart"', restart_epoch)
    else:
        start = int(restart_epoch)
    rest = max(int(epochs) - start, 1)

    def rate(e: int, lr: Any) -> float:
        if e < start:
            return learning_rate * 0.5 * (1.0 + math.cos(math.pi * e / epochs))
        return learning_rate * 0.5 * (1.0 + math.cos(math.pi * (e - start) / rest))

    return [keras.callbacks.LearningRateScheduler(rate)]


def optimizer(config: RunConfig):
    """Adam at `config.learning_rate` (fit's "adam"), with the moving average of
    `config.ema_momentum`; AdamW with `config.decoupled_weight_decay`, on every variable (the
    gates' `log_alpha` too: their decay toward 0 pulls a gate toward P(open) ~0.83, never
    closed). That is what the ranked and frontier runs did: they meant to exclude the gates,
    but before the `clone_optimizer` fix the exclusion was lost at the first prune."""
    import keras

    ema = {} if config.ema_momentum is None else {"use_ema": True, "ema_momentum": float(config.ema_momentum)}
    decay = getattr(config, "decoupled_weight_decay", 0.0)
    if decay:
        return keras.optimizers.AdamW(config.learning_rate, weight_decay=float(decay), **ema)
    if not ema:
        return "adam"
    return keras.optimizers.Adam(config.learning_rate, **ema)


def check_arch(config: RunConfig) -> None:
    """Refuses an unknown `arch`, and dropout on an arch other than the MLP's (`build_mlp`'s option)."""
    if config.arch not in ARCHS:
        raise invalid("arch", f"one of {list(ARCHS)}", config.arch)
    if config.arch != "mlp" and config.dropout:
        raise invalid("dropout", f"0 with arch={config.arch!r} (build_mlp's option)", config.dropout)


def build_model(config: RunConfig):
    """The untrained model of `config.arch` (the Keras seed must be set first)."""
    check_arch(config)
    if config.arch == "mlp":
        return build_mlp(config.hidden, dropout=config.dropout)
    return build_lenet5()


def is_finished(out_dir: str | os.PathLike) -> bool:
    """True when the run folder holds its final `metrics.json`, sound
    (`tf_dynhp.cli.run_metrics.problem`: a JSON object with its fields of their kinds). A
    damaged one (cut short by a full disk, edited by hand) is not finished: a resume from
    the last checkpoint writes it again, training no further epoch."""
    return _sound_metrics(out_dir) is not None


def _sound_metrics(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The folder's metrics.json when it is sound (`run_metrics.problem`), else None."""
    try:
        with open(os.path.join(out_dir, "metrics.json")) as f:
            metrics = json.load(f)
    except (OSError, ValueError):
        return None
    return metrics if run_metrics.problem(metrics) is None else None


def read_history(out_dir: str | os.PathLike) -> dict[str, list[Any]]:
    """`history.jsonl` of a finished run as a dict of per-epoch lists.

    Raises:
        ValueError: a line is not a JSON object (names the file and the line).
    """
    path = os.path.join(out_dir, "history.jsonl")
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            try:
                row = json.loads(line)
            except ValueError as err:
                raise ValueError(f"{path}, line {number}: not valid JSON ({err}); expected one JSON object per epoch") from err
            if not isinstance(row, dict):
                raise ValueError(f"{path}, line {number}: expected a JSON object per epoch; received {type(row).__name__}")
            rows.append(row)
    return {k: [r.get(k) for r in rows] for k in rows[0]} if rows else {}


class RunFolderError(RuntimeError):
    """A run folder is in use by another process, or holds another run's files."""


class RunArgumentError(ValueError):
    """`fit` refused the run's settings before training anything (e.g. a target with a
    method that removes no units, or a budget smaller than the model): nothing was
    written. A `ValueError`, so it is caught as one."""


#: The files a run writes into its folder (besides `checkpoints/`).
RUN_FILES = ("config.json", "history.jsonl", "metrics.json", "model.keras", "gated_model.keras")
#: Settings a resumed run may change: the number of epochs (to extend a run) and what
#: happens on a non-finite loss. What is set as a share of the epochs follows the new
#: length from the resumed epoch on, as if the run had been planned that long: the
#: learning-rate decay and its restart (`restart_epoch`), the target's deadline and
#: schedule, `augment_until`; epochs already trained are kept as they were.
RESUMABLE_CHANGES = ("epochs", "on_nonfinite")


def _locked(out_dir: str):
    """The folder lock of `out_dir` (`tf_dynhp.checkpoint.folder_lock`)."""
    from tf_dynhp import checkpoint

    return checkpoint.folder_lock(out_dir, RunFolderError(
        f"Run folder {out_dir} is in use: another run (tools/train.py, tools/reproduce.py or runs.run) "
        "is writing into it. Wait for it to end, or choose another folder."))


def _previous_files(out_dir: str) -> list[str]:
    """The files of a run already in `out_dir` (names relative to it)."""
    import tf_dynhp

    found = [name for name in RUN_FILES if os.path.exists(os.path.join(out_dir, name))]
    found += [os.path.join("checkpoints", p.name) for p in tf_dynhp.checkpoint.list_checkpoints(os.path.join(out_dir, "checkpoints"))]
    return found


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return a == b or math.isclose(float(a), float(b), rel_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _prepare_folder(out_dir: str, resume: bool, overwrite: bool) -> None:
    """Refuses a folder holding a run unless resuming or overwriting (see the module
    docstring). Overwriting removes nothing here: `_clear_run_files` does, once `fit`
    has accepted every argument (and `fit` itself removes the old checkpoints then), so
    a refused run never costs the earlier one."""
    previous = _previous_files(out_dir)
    if not previous or overwrite:
        return
    if not resume:
        raise RunFolderError(
            f"Run folder {out_dir} already holds a run ({', '.join(previous)}). Pass resume=True "
            "(tools/train.py --resume) to continue it with the same configuration, overwrite=True "
            "(--overwrite) to delete its files and start again, or choose another folder."
        )


def _clear_run_files(out_dir: str) -> None:
    for name in RUN_FILES:
        path = os.path.join(out_dir, name)
        if os.path.exists(path):
            os.remove(path)


def _start_callback(out_dir: str | None, resolved: dict[str, Any], overwrite: bool, reopened: bool = False) -> Any:
    """A Keras callback whose `on_train_begin` (called by `fit` after all its checks, the
    resume's included, before the first step) sets its `began`, and in `out_dir` writes the
    run's config.json: for a new run after clearing an overwritten run's files; for a
    resumed one that trains on past its finish (`reopened`) after removing its metrics.json.
    So a run `fit` refuses leaves the folder as it was."""
    import keras

    class _RunStart(keras.callbacks.Callback):
        began = False

        def on_train_begin(self, logs=None):
            self.began = True
            if out_dir is not None:
                if overwrite:
                    _clear_run_files(out_dir)
                finished = os.path.join(out_dir, "metrics.json")
                if reopened and os.path.exists(finished):
                    os.remove(finished)  # config.json is about to describe the extended run
                write_atomic(os.path.join(out_dir, "config.json"), json.dumps(resolved, indent=2, sort_keys=True))

    return _RunStart()


def _earlier_train_seconds(out_dir: str) -> float | None:
    """`train_seconds` of the folder's metrics.json when it is sound and has it, else None."""
    metrics = _sound_metrics(out_dir)
    return None if metrics is None or metrics.get("train_seconds") is None else float(metrics["train_seconds"])


def _check_resumed_config(out_dir: str, resolved: dict[str, Any]) -> bool:
    """A resumed folder's config.json must be `resolved` but for `RESUMABLE_CHANGES`.
    Returns whether the resume reopens a finished run (one of those changed): its
    metrics.json goes once `fit` accepts the resume. Changes nothing in the folder."""
    path = os.path.join(out_dir, "config.json")
    if not os.path.exists(path):
        return False  # checkpoints without a config (an interrupted start): the checkpoints' settings are checked by fit
    try:
        saved = json.loads(open(path).read())
    except (OSError, ValueError) as err:
        raise RunFolderError(f"Cannot resume in {out_dir}: its config.json is not readable ({err}).") from err
    if not isinstance(saved, dict):
        raise RunFolderError(f"Cannot resume in {out_dir}: its config.json is not readable (expected a JSON object of "
                             f"the run's settings, received a {type(saved).__name__}).")
    if saved.get("alpha_bs") is None and saved.get("method") == "dynhp":  # written before alpha_bs was resolved
        from tf_dynhp.training import DEFAULT_ALPHA_BS

        saved["alpha_bs"] = DEFAULT_ALPHA_BS
    differ = [k for k in resolved if k in saved and k not in RESUMABLE_CHANGES and not _same(saved[k], resolved[k])]
    if differ:
        changes = ", ".join(f"{k}={saved[k]!r} there, {resolved[k]!r} now" for k in differ)
        raise RunFolderError(
            f"Cannot resume in {out_dir}: it holds a run of another configuration ({changes}). Only "
            f"{' and '.join(RESUMABLE_CHANGES)} may change on resume; pass overwrite=True (--overwrite) "
            "to start a new run there, or choose another folder."
        )
    from tf_dynhp import checkpoint

    trained = checkpoint.latest_valid_epoch(os.path.join(out_dir, "checkpoints"))
    if "epochs" in resolved and trained > int(resolved["epochs"]):
        raise RunFolderError(
            f"Cannot resume in {out_dir} with epochs={resolved['epochs']}: its run has trained {trained} epochs, and a "
            "resume cannot take them back (its config.json and history would disagree). Resume with at least "
            f"epochs={trained}, or pass overwrite=True (--overwrite) to train a shorter run there."
        )
    return any(not _same(saved.get(k), resolved[k]) for k in RESUMABLE_CHANGES if k in resolved)


def _layer_sizes(model: Any) -> list[int]:
    """The unit count of every axis of a stripped model but the classes (the input
    features, then each hidden layer; for a CNN the channels too), as `active_units`."""
    from tf_dynhp.chain import parse_chain
    from tf_dynhp.units import unit_axes

    axes, _ = unit_axes(parse_chain(model).body)
    return [int(axis.size) for axis in axes[:-1]]


def _write_history(out_dir: str, history: dict[str, list[Any]]) -> None:
    lines = [json.dumps({k: v[i] for k, v in history.items()}) for i in range(len(history.get("loss", [])))]
    write_atomic(os.path.join(out_dir, "history.jsonl"), "\n".join(lines) + ("\n" if lines else ""))


def run(
    config: RunConfig,
    out_dir: str | os.PathLike | None = None,
    *,
    data_dir: str | None = None,
    data: Any = None,
    resume: bool = False,
    verbose: int = 1,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Trains one model as `config` says and writes its run folder.

    Args:
        config: the run's settings.
        out_dir: run folder (None: nothing written, no checkpoints).
        data_dir: where the dataset is (see `tf_dynhp.datasets.load`).
        data: already loaded `((x, y), (x_test, y_test))` (a sweep loads it once).
        resume: continue from the newest valid checkpoint of `out_dir` (the folder's
            `config.json` must match `config` but for `RESUMABLE_CHANGES`).
        verbose: 1 prints one line per epoch and a summary.
        overwrite: delete the files of a run already in `out_dir` first (else such a
            folder is refused unless resuming it).

    Returns:
        The metrics written to `metrics.json`.

    Raises:
        RunFolderError: `out_dir` is in use by another process, or holds another run
            (see the module docstring), before any training.
        RunArgumentError: settings refused before any training (by `fit`, or here: an
            unknown arch, dropout with LeNet-5, a bad schedule or augmentation).
    """
    try:  # settings refused before the folder is made: one RunArgumentError (tools/train.py prints one line)
        check_arch(config)
        restart_epoch(config.lr_decay, config.target_deadline, config.epochs)  # a bad lr_decay or target_deadline
        augmentation(config)  # and bad augment_* fields
    except ValueError as err:
        raise RunArgumentError(str(err)) from err
    if resume and overwrite:
        raise ValueError("`resume=True` continues the run in `out_dir`, `overwrite=True` deletes it: pass one of them.")
    if out_dir is None:
        return _run(config, None, data_dir, data, resume, verbose, overwrite)
    out_dir = os.fspath(out_dir)
    created = _missing_folders(out_dir)  # out_dir and the parents makedirs will make, innermost first
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as err:
        raise OSError(err.errno, f"run folder '{out_dir}' cannot be created: {err.strerror or err}") from err
    try:
        with _locked(out_dir):
            return _run(config, out_dir, data_dir, data, resume, verbose, overwrite)
    except RunArgumentError:
        if created:  # a refused run leaves no empty folder behind (the tools would list it as unfinished)
            _remove_empty_folder(out_dir)
            for parent in created[1:]:  # nor the parents made for it
                try:
                    os.rmdir(parent)  # only if empty
                except OSError:
                    break
        raise


def _missing_folders(path: str) -> list[str]:
    """`path` and its ancestors that do not exist yet, innermost first ([] when it exists)."""
    missing = []
    path = os.path.abspath(path)
    while not os.path.exists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def _remove_empty_folder(out_dir: str) -> None:
    """Removes `out_dir` if it holds nothing but an empty `checkpoints/` (what a run
    refused before training made); anything else stays."""
    checkpoints = os.path.join(out_dir, "checkpoints")
    try:
        if os.path.isdir(checkpoints) and not os.listdir(checkpoints):
            os.rmdir(checkpoints)
        if not os.listdir(out_dir):
            os.rmdir(out_dir)
    except OSError:
        pass  # left as it is: nothing was written into it


def _run(config: RunConfig, out_dir: str | None, data_dir: str | None, data: Any, resume: bool, verbose: int, overwrite: bool) -> dict[str, Any]:
    import keras

    import tf_dynhp

    checkpoint_dir = None
    if out_dir is not None:
        _prepare_folder(out_dir, resume, overwrite)
        checkpoint_dir = tf_dynhp.checkpoint.probe_writable(os.path.join(out_dir, "checkpoints"))
    (x, y), (x_test, y_test) = data if data is not None else tf_dynhp.datasets.load(config.dataset, data_dir)
    if config.train_limit:
        x, y = x[: config.train_limit], y[: config.train_limit]
    if config.test_limit:
        x_test, y_test = x_test[: config.test_limit], y_test[: config.test_limit]
    keras.utils.set_random_seed(config.seed)  # the initial weights depend on the seed too
    model = build_model(config)
    shape = tuple(model.inputs[0].shape[1:])
    x, x_test = tf_dynhp.data.reshape_to_input(x, shape, "the training images"), tf_dynhp.data.reshape_to_input(x_test, shape, "the test images")
    budget_kb = config.budget_kb
    if budget_kb is None and config.method == "dynhp":
        if config.budget_on != "paper":  # the default is SP's MO, the paper's measure: no budget of the full footprint
            raise RunArgumentError(
                f"budget_on={config.budget_on!r} (--budget_on) needs a budget_kb (--budget_kb): the default budget is SP's "
                f"memory in the paper's measure (MO, weights + batch at budget_batch={config.budget_batch}), which the full "
                "footprint (gates, optimizer state, activations) always exceeds.")
        budget_kb = tf_dynhp.memory.mo_kb(model, batch_size=config.budget_batch)
    alpha_bs = config.alpha_bs
    if alpha_bs is None and config.method == "dynhp":  # the value fit uses, so config.json says what ran
        alpha_bs = tf_dynhp.training.DEFAULT_ALPHA_BS
    resolved = {**config.to_dict(), "alpha_bs": alpha_bs, "budget_kb": budget_kb, "train_examples": int(len(x))}
    # The folder's run goes on with the new epochs: its config.json says so once fit has accepted the resume.
    reopened = out_dir is not None and resume and _check_resumed_config(out_dir, resolved)
    # The run's files appear, or change, once fit has accepted it (all its checks come before on_train_begin).
    start = _start_callback(out_dir, resolved, overwrite, reopened)
    trained_before = (tf_dynhp.checkpoint.latest_valid_epoch(checkpoint_dir)
                      if resume and checkpoint_dir is not None else 0)
    earlier_seconds = _earlier_train_seconds(out_dir) if resume and out_dir is not None else None
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            if overwrite:  # asked for: fit removes the earlier run's checkpoints once it accepts the run
                warnings.filterwarnings("ignore", message=r"Starting a new run in .*removed \d+ checkpoint", category=RuntimeWarning)
            result = tf_dynhp.fit(
                model, x, y, method=config.method, epochs=config.epochs, batch_size=config.batch_size,
                l0_lambda=config.l0_lambda, learning_rate=config.learning_rate, alpha_bs=alpha_bs,
                budget_kb=budget_kb, budget_on=config.budget_on, gamma=config.gamma,
                batch_growth=config.batch_growth, seed=config.seed,
                validation_data=None if config.validation_split else (x_test, y_test), validation_split=config.validation_split,
                steps_per_execution=config.steps_per_execution, verbose=verbose,
                droprate_init=config.droprate_init, input_droprate_init=config.input_droprate_init,
                checkpoint_dir=checkpoint_dir, resume=resume, on_nonfinite=config.on_nonfinite,
                gate_kernel=config.gate_kernel, target_kb=config.target_kb, lambda_floor=config.lambda_floor,
                lambda_step=config.lambda_step,
                size_penalty=config.size_penalty, target_schedule=config.target_schedule,
                target_deadline=config.target_deadline, augment=augmentation(config), augment_until=config.augment_until,
                loss=loss(config), deterministic_from=config.deterministic_from or None,
                weight_decay=config.weight_decay_per_weight * (len(x) - int(len(x) * config.validation_split)),
                optimizer=optimizer(config),
                callbacks=lr_callbacks(config.lr_decay, config.learning_rate, config.epochs,
                                       restart_epoch(config.lr_decay, config.target_deadline, config.epochs)) + [start],
            )
    except (ValueError, TypeError) as err:
        if start.began:
            raise
        raise RunArgumentError(str(err)) from err
    except tf_dynhp.NonFiniteError as err:
        if out_dir is not None:  # the folder keeps the last good model (no metrics.json: unfinished)
            good = err.last_good
            _write_history(out_dir, good.history)
            good.model.save(os.path.join(out_dir, "model.keras"))
            good.gated_model.save(os.path.join(out_dir, "gated_model.keras"))
        raise
    h = result.history
    # A resumed run: this call's time plus the recorded times of the epochs it did not
    # train (a resume of a finished run would otherwise report the second it took). A
    # call that trained no epoch (the run was finished) keeps the time its metrics.json
    # recorded, else the epochs' recorded times: its own seconds are no training.
    trained_now = len(h["loss"]) > trained_before
    seconds = ((time.perf_counter() - t0 if trained_now else 0.0)
               + sum(float(v or 0.0) for key in tf_dynhp.training.TIMING_KEYS for v in h.get(key, [])[:trained_before]))
    if not trained_now and earlier_seconds is not None:
        seconds = earlier_seconds
    probs = result.model.predict(x_test, batch_size=2000, verbose=0)
    test_error = 100.0 * float(np.mean(np.argmax(probs, -1) != y_test))
    dense_kb = tf_dynhp.memory.floats_to_kb(tf_dynhp.memory.weight_count(model))
    model_kb = tf_dynhp.memory.floats_to_kb(tf_dynhp.memory.weight_count(result.model))
    metrics = {
        "test_error": test_error,
        "model_kb": model_kb,
        "dense_model_kb": dense_kb,
        "model_fraction": model_kb / dense_kb,
        # Of the model returned: `strip` also drops units whose gates closed after pruning
        # stopped at a target, which the last epoch's `active_units` still counts.
        "layer_sizes": _layer_sizes(result.model) if config.method != "sp" else None,
        "training_memory_mb": tf_dynhp.memory.training_memory_mb(h["memory_kb"]),
        "mean_memory_kb": float(np.mean(h["memory_kb"])),
        "max_memory_kb": float(np.max(h["memory_kb"])),
        "budget_kb": budget_kb,
        "batch_sizes": h["batch_size"],
        "epochs_run": len(h["loss"]),
        "gate_kernel": result.state.gate_kernel,
        "train_seconds": seconds,
        "total_epoch_seconds": float(np.sum(h["epoch_seconds"])),
    }
    if verbose:
        print(
            f"test_error {test_error:.2f}% - model {model_kb:.1f} KB ({100 * model_kb / dense_kb:.1f}% of dense) - "
            f"mean MO {metrics['mean_memory_kb']:.1f} KB (max {metrics['max_memory_kb']:.1f}) - "
            f"final batch {h['batch_size'][-1]} - {seconds:.0f}s",
            flush=True,
        )
    if out_dir is not None:
        _write_history(out_dir, h)
        result.model.save(os.path.join(out_dir, "model.keras"))
        result.gated_model.save(os.path.join(out_dir, "gated_model.keras"))
        write_atomic(os.path.join(out_dir, "metrics.json"), json.dumps(metrics, indent=2))  # last: marks it finished
    return metrics
