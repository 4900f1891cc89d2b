r"""Accuracy at a given size (issue 16 item 2): candidate recipes ranked at one target.

    python tools/rank_at_size.py --dataset=mnist --target_kb=205 --alpha_bs=0.973 --epochs=20 --seeds=3 \
        --candidates=base,cosine,deadline50 --out=results/rank_at_size/mnist-t205-e20.md

Every candidate trains the paper's 784-300-100 MLP with `tf_dynhp.fit(method="dynhp",
target_kb=...)` (budget: MO of SP at the data set's SP batch) on the full training
set less its last `--holdout` images, for each seed. The candidates are ranked on the
error on those held-out training images (a validation split, issue 16 item 3), read at
the final epoch; the test error is shown beside it for information and chooses nothing.
(`--holdout=0` trains on the full set and shows the test error only: the tables of
`results/rank_at_size` made before the hold-out existed are of that kind.) Candidates:

* ``base``: the defaults (fixed learning rate 1e-3, target forced from a quarter of
  the epochs on).
* ``cosine``: the learning rate decays to 0 on a cosine over the run
  (`keras.callbacks.LearningRateScheduler`).
* ``deadline50``: the target forced from half of the epochs on (`target_deadline=0.5`).
* ``cosine_deadline50``: both.
* ``floor``: the size multiplier never falls below its start, 0.01 (`lambda_floor=0.01`),
  so the model at its size keeps an L0 penalty and noisy gates.
* ``cosine_floor``: ``cosine`` and ``floor``.
* ``step01``: a slower multiplier (`lambda_step=0.01` instead of 0.05): the target is
  reached later, after the gates have seen more of the data.
* ``wd``: Louizos et al.'s expected-L2 term with the reference code's strength,
  5e-4 per weight (`weight_decay=5e-4 * N`, N the training-set size: `L0Dense`
  divides the penalty by N).
* ``outgoing``: the size penalty counts each gate's outgoing weights only
  (`size_penalty="outgoing"`, Eq. 5's and Louizos et al.'s form) instead of a unit's
  incoming and outgoing ones: it presses input features as hard as hidden units.
* ``cosine_outgoing``: ``cosine`` and ``outgoing``.
* ``ema``: the model ends with the exponential moving average of its weights (Adam with
  `use_ema=True, ema_momentum=0.999`, as the L0 reference code evaluates with
  `beta_ema=0.999`; `fit` finalizes it as `keras.Model.fit` does).
* ``cosine_ema``: ``cosine`` and ``ema``.
* ``cubic``: the size aimed at falls from the dense size to the target on Zhu & Gupta's
  cubic schedule by the deadline (`target_schedule="cubic"`), instead of the target
  from the first epoch.
* ``cubic_ema``: ``cubic`` and ``ema``.
* ``cosine_outgoing_cubic``: ``cosine``, ``outgoing`` and ``cubic`` (the tools' target recipe).
* ``coc_wd``, ``coc_floor``: that recipe with ``wd``'s weight decay, or with ``floor``'s
  λ floor (regularizers for the epochs after the target is reached, when λ decays to 0).
* ``coc_wd1e3``: that recipe with twice ``wd``'s weight decay (1e-3 per weight).
* ``coc_adamw01``, ``coc_adamw04``: that recipe with decoupled weight decay instead
  (`keras.optimizers.AdamW`, `weight_decay` 0.01 or 0.04, on every variable: it pulls
  the gates' `log_alpha` toward 0, i.e. toward open, and closes none). The ranked runs
  (commit 7d2a498) meant to exclude `log_alpha`, but `fit` lost that exclusion at the
  first prune (fixed since, `tf_dynhp.optim.clone_optimizer`): they decayed the gates
  from epoch 2 on, which this candidate now does from the start.
* ``coca_do02``, ``coca_do04``: ``coc_adamw01`` (the tools' recipe before ``coca_dl50``) with `Dropout(0.2)` or
  `Dropout(0.4)` after each hidden layer (Srivastava et al. 2014): the model overfits once
  its size is reached (training loss near 0, validation loss rising).
* ``coca_dl50``, ``coca_dl75``: ``coc_adamw01`` with the target reached by half or three
  quarters of the epochs (`target_deadline` 0.5 or 0.75) instead of a quarter: a slower
  cubic descent to the size.
* ``coca_dl50_sh1``, ``coca_dl50_sh2``, ``coca_dl50_flip``, ``coca_dl50_sh1flip``,
  ``coca_dl50_sh2flip``: ``coca_dl50`` (the tools' recipe) with data augmentation
  (`fit(augment=tf_dynhp.augment.RandomShift(...))`): every epoch each training image
  moves by up to 1 or 2 pixels per axis, and/or a random half is mirrored left-right.
* ``coca_dl50_ls1``, ``coca_dl50_sh1_ls1``, ``coca_dl50_sh2_ls1``: ``coca_dl50``, without
  or with 1 or 2 pixel shifts, trained on label-smoothed targets
  (`tf_dynhp.losses.SparseCategoricalCrossentropy(label_smoothing=0.1)`): against the
  overconfidence of the small model on its training set once its size is reached.
* ``coc_dl50_sh1``, ``coca_dl50_sh1_lr2``, ``coca_dl25_sh1``: ``coca_dl50_sh1`` (the tools'
  Fashion-MNIST recipe before ``coc_dl50_sh1_clean25``) without the decoupled weight decay (plain Adam), with twice the
  paper's learning rate (2e-3, still cosine-decayed), or with the target reached by a
  quarter of the epochs: with the shifts the model at its size no longer overfits (its
  training accuracy under the shifts and sampled gates is about its validation accuracy),
  so these take regularization away or give the final model more steps.
* ``coc_dl50_sh1_clean25``: ``coc_dl50_sh1`` trained on the images as they are (no shift)
  for the last quarter of the epochs (`fit(augment_until=0.75)`), after its size is reached: the shifts' bias against
  the unshifted test images is then fitted away at a small learning rate.
* ``coc_dl50_sh1_coupled``: ``coc_dl50_sh1`` with the coupled size penalty (a unit's
  incoming and outgoing weights, `size_penalty="coupled"`) instead of ``outgoing``.
* ``coc_dl50_sh1_clean50``: ``coc_dl50_sh1_clean25`` with the last half of the epochs
  unshifted (from the deadline on); ``coc_dl50_sh1_coupled_clean25``: both of the above;
  ``coc_dl50_sh1_coupled_clean50``: the coupled penalty with the last half unshifted.
* ``coc_dl50_sh1_clean10``, ``coc_dl50_sh1_clean25_lr05``, ``coc_dl50_sh1_clean25_ema``: the
  tools' Fashion-MNIST recipe of the time (``coc_dl50_sh1_clean25``) with only the last tenth of the epochs
  unshifted (`augment_until=0.9`; in the unshifted phase the training loss keeps falling
  below the shifted phase's, so a shorter one may overfit less), with half the paper's
  learning rate (5e-4, cosine-decayed; twice it, ``coca_dl50_sh1_lr2``, ranked worst), or
  ending with the moving average of its weights (``ema``'s `ema_momentum=0.999`, the L0
  reference's `beta_ema`). Ranked in a second round, after the test error of
  ``coc_dl50_sh1_clean25`` on the full training set was known; they are chosen on the
  validation split like the first round.
* ``coc_dl40_sh1_clean25``, ``coc_dl60_sh1_clean25``: that recipe with the size reached by
  40% or 60% of the epochs instead of half (`target_deadline`; half was chosen on
  Fashion-MNIST before the shifts and the unshifted phase): more epochs at the final size,
  or a slower descent to it. Third round, chosen the same way.
* ``coc_dl50_sh1_clean25_wd``, ``coc_dl50_sh1_clean25_floor``, ``coc_dl50_sh1_clean25_g03``,
  ``coc_dl50_sh1_clean25_g07``: that recipe with regularizers for the epochs at the final
  size, where the unshifted phase's training loss falls below the validation loss
  (``wd``'s expected-L2 term, 5e-4 per weight, Louizos et al.'s; or ``floor``'s λ floor
  0.01, which keeps the L0 penalty and the gates' noise on), or with another pruning
  threshold γ (0.3 or 0.7 instead of Eq. 7's 0.5: which units fall below it, and so which
  are removed on the way down to the size). Fourth round, chosen the same way.
* ``coc_dl50_sh1half_clean25``: that recipe with only a random half of the images shifted
  each augmented epoch (`RandomShift(1, fraction=0.5)`): half of every epoch keeps the
  unshifted test distribution, which the unshifted last quarter otherwise has to fit back.
* ``coc_dl50_sh1_clean25_restart``: that recipe with a warm restart of the cosine at the
  deadline (`lr_decay="cosine_restart"`, `runs.lr_callbacks`, Loshchilov & Hutter's SGDR): the
  descent to the size is unchanged, then the model at its size gets a whole anneal from
  the paper's learning rate to 0 instead of the second half of one. Fifth round, chosen
  the same way: the restart won, and is the tools' Fashion-MNIST recipe since.
* ``coc_dl50_sh1_clean25_restart_step20`` / ``_step50``: the recipe with a faster multiplier
  (`lambda_step` 0.2 / 0.5 instead of 0.05). In the recipe's frontier runs the real size
  lags the cubic schedule (287-298 KB at epoch 60 where the schedule aims at 193 KB, 211-223
  KB at epoch 80 against 142), so the forced prune at the deadline cuts 28-32% of the
  weights at once (184-199 KB to 135 KB at epoch 100); a faster λ follows the schedule and
  spreads that cut over the descent, as Zhu & Gupta's gradual pruning means to. Seventh
  round, with the same rule fixed before the runs: the lowest validation mean becomes the
  recipe.
* ``coc_dl50_sh1_clean25_restart_step02`` / ``_step01``: the recipe with a slower multiplier
  (`lambda_step` 0.02 / 0.01 instead of 0.05). The seventh round's faster multipliers lost
  (0.2: 10.27 ± 0.14 against the recipe's 9.96 ± 0.19): the model made small earlier
  trained worse than the larger model cut late. These go the other way: the model stays
  larger until the deadline, which then cuts more of it at once (the recipe cuts 28-32%).
  Eighth round, same rule fixed before the runs: the lowest validation mean becomes the
  recipe.
* ``coc_dl50_sh1_clean25_restart_det50``: the recipe with a final phase of deterministic
  gates (`fit(deterministic_from=0.5)`, issue 16's "a final phase with pruning frozen and
  deterministic gates", not measured until then): from the deadline on, when the size is
  reached (pruning then stops: the model is at its target), the step trains with the
  test-time gates instead of samples. The samples of a
  gate at log_alpha 2 are below 1 in 40% of the examples (4.7% at the clip, 4.6), a
  multiplicative noise on the inputs the model is tested without; the rounds so far
  found less regularization better at this size (Adam over AdamW, the unshifted last
  quarter). Ninth round, same rule fixed before the runs.
* ``coc_dl50_sh1_clean25_restart_t05`` / ``_t10``: the recipe with another concrete
  temperature of the gates (0.5 / 1.0 instead of Louizos et al.'s 2/3; `to_l0(temperature=...)`
  before `fit`, which keeps a gated layer's temperature). The ninth round found the gates'
  noise a regularizer the model at its size needs (without it: +0.45 points); the
  temperature shapes that noise: lower, the samples are more often exactly 0 or 1 (closer
  to dropout); higher, they are smoother and nearer their mean. Tenth round, same rule
  fixed before the runs: the lowest validation mean over seeds 1-3 becomes the recipe; a
  candidate whose first seed loses by more than twice the recipe's spread (0.38) is stopped.
* ``coc_dl50_sh1_clean25_restart_in3`` / ``_hid3``: the recipe with per-layer shares of the
  size multiplier (`fit(target_kb=..., l0_lambda=[...])`, `tf_dynhp.target.relative_lambdas`):
  the input features' layer pressed three times as hard as the hidden layers
  (`[0.01, 0.01/3, 0.01/3]`), or the hidden layers three times as hard as the inputs
  (`[0.01/3, 0.01, 0.01]`); λ starts at 0.01 in both, as in the recipe. The rounds so
  far changed how hard and how fast the model is cut, never where: the recipe ends at
  215-117-72 units (seed 1), where Louizos et al.'s MNIST model at λ 0.1/N keeps
  219-214-100, wider hidden layers. Eleventh round, same rule fixed before the runs: the
  lowest validation mean over seeds 1-3 becomes the recipe; a candidate whose first seed
  loses by more than twice the recipe's spread (0.38) is stopped.
* ``coc_dl50_sh1_clean25_restart2``: the recipe with a second warm restart where the
  unshifted last quarter starts (`segmented_cosine` with segments at 0.5 and 0.75 of the
  epochs, each from the paper's rate to 0): the shifted epochs at the final size anneal
  to 0, then the unshifted quarter, which fits the shifts' bias away, gets a whole anneal
  of its own instead of the second half of one (the restart, which won the fifth round,
  did the same for the model at its size).
* ``coc_dl50_sh1_clean25_reanneal``: the recipe's schedule without the jump: from the
  deadline the rate falls on a cosine from where it is (half the paper's rate) to 0 over
  the epochs left (`segmented_cosine` with `((0.5, None),)`): whether the restart won by
  its higher rate at the final size or by its complete anneal.
  Twelfth round, same rule fixed before the runs: the lowest validation mean over seeds
  1-3 becomes the recipe; a candidate whose first seed loses by more than twice the
  recipe's spread (0.38) is stopped.
* ``coc_dl40_sh1_clean25_restart`` / ``coc_dl60_sh1_clean25_restart``: the recipe with the
  size reached, and the cosine restarted, by 40% or 60% of the epochs instead of half.
  The twelfth round found that the restart wins by its complete anneal at the final size;
  the deadline sets both how long that anneal is (120 or 80 epochs instead of 100) and how
  fast the model gets to its size. Ranked without the restart in the third round (half
  won then, when the model at its size had only the second half of one cosine).
  Thirteenth round, same rule fixed before the runs: the lowest validation mean over seeds
  1-3 becomes the recipe; a candidate whose first seed loses by more than twice the
  recipe's spread (0.38) is stopped.
* ``coc_dl50_sh1_clean50_restart`` / ``coc_dl50_sh1_restart``: the recipe with the whole
  anneal at the final size on the images as they are (`augment_until=0.5`: the shifts stop
  at the deadline, where the restart begins) or shifted to the end (`augment_until=1.0`),
  instead of its first half shifted and its second half not. The twelfth round found the
  anneal at the final size is what the restart wins by; the second round ranked this split
  before the restart existed (a quarter unshifted won then). Fourteenth round, same rule
  fixed before the runs: the lowest validation mean over seeds 1-3 becomes the recipe; a
  candidate whose first seed loses by more than twice the recipe's spread (0.38) is stopped.
* ``coc_dl50_sh1_clean25_restart_bs8`` / ``_bs32``: the recipe from a batch of 8 or 32
  instead of the paper's 16 (`fit(batch_size=...)`, DynHP's initial batch; Eq. 8-10 grow
  it from there under the same budget). The rounds so far found the noise of the gates'
  samples a regularizer the model at its size needs (ninth round) and less of the other
  regularizers better; the batch sets the gradient's own noise and the number of steps
  per epoch (twice as many at 8, half at 32). Fifteenth round, same rule fixed before the
  runs: the lowest validation mean over seeds 1-3 becomes the recipe; a candidate whose
  first seed loses by more than twice the recipe's spread (0.38) is stopped.
* ``coc_dl50_sh1_clean25_restart_in05``: the recipe with the input features' gates started
  as the hidden units' are (`fit(input_droprate_init=0.5)` instead of the L0 reference's
  0.2): more noise on the pixels from the first epoch, and the pixels' gates start nearer
  Eq. 7's threshold. ``coc_dl50_sh1_clean25_peak2``: the recipe with its restart
  from twice the paper's rate (`segmented_cosine` with `((0.5, 2.0),)`): the twelfth round
  found the restart wins by a whole anneal at the final size, and a reanneal from half the
  rate tied it; this asks whether the cut model gains from a larger step. Sixteenth round,
  same rule fixed before the runs: the lowest validation mean over seeds 1-3 becomes the
  recipe; a candidate whose first seed loses by more than twice the recipe's spread (0.38)
  is stopped.
* ``coc_dl50_sh1_clean25_restart_in01`` / ``_hd03``: the recipe with the pixels' gates
  started more open (`input_droprate_init=0.1` instead of 0.2), or the hidden units' gates
  (`droprate_init=0.3` instead of 0.5). The sixteenth round's pixels' gates at 0.5 lost
  their first seed by 0.80, the largest effect of a single knob since the first round
  (they also cut the model elsewhere: 162-138-80 units against 215-117-72); these go the
  other way, on each axis. Seventeenth round, same rule fixed before the runs: the lowest
  validation mean over seeds 1-3 becomes the recipe; a candidate whose first seed loses by
  more than twice the recipe's spread (0.38) is stopped.
* ``coc_dl50_sh1_clean25_restart_constant`` / ``_coupled``: the recipe with the size aimed
  at from the first epoch (`target_schedule="constant"` instead of Zhu & Gupta's cubic), or
  with the multiplier pressing a unit's incoming and outgoing weights (`size_penalty=
  "coupled"` instead of Eq. 5's outgoing count). Both were ranked before the restart
  existed (the cubic schedule on MNIST at 60 epochs, the coupled penalty in the first
  Fashion-MNIST round); the restart changed what the model at its size gets, not how it
  gets there. Eighteenth round, same rule fixed before the runs: the lowest validation
  mean over seeds 1-3 becomes the recipe; a candidate whose first seed loses by more than
  twice the recipe's spread (0.38) is stopped.

It prints (and writes to `--out`) a Markdown table: final size, validation and test
error mean ± std over the seeds, mean MO, seconds, with the command that made it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tools/_load.py, also under python -m tools.<name>
from _load import cli_module  # noqa: E402

_rules = cli_module("flag_rules")  # loaded by its path: the flags are checked before TensorFlow loads
FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", "mnist", ["mnist", "fashion_mnist"], "Data set.")
flags.DEFINE_string("data_dir", None, "Data folder (see tf_dynhp.datasets.load).")
flags.DEFINE_float("target_kb", 205.0, "Size target in KB.")
flags.DEFINE_float("alpha_bs", 0.973, "alpha_bs of DynHP.")
flags.DEFINE_integer("epochs", 20, "Epochs of every run.")
flags.DEFINE_integer("seeds", 3, "Number of seeds of every candidate: first_seed, first_seed + 1, ...")
flags.DEFINE_integer("first_seed", 1, "The first seed (split the seeds of one ranking across processes, then "
                     "merge their `<out>.json` with --from_runs).")
flags.DEFINE_list("candidates", ["base", "cosine", "deadline50"], "Recipes to compare (see the module docstring).")
flags.DEFINE_integer("train_limit", None, "Use only the first N training images (smoke runs).")
flags.DEFINE_integer("holdout", 10000, "Hold out the last N training images as the validation split the candidates "
                     "are ranked on; 0 trains on all of them and shows the test error only.", lower_bound=0)
flags.DEFINE_list("from_runs", None, "Train nothing: build the table from these earlier `<out>.json` files or logs "
                  "(one JSON object per line), e.g. candidates run in separate processes.")
flags.DEFINE_string("out", None, "Markdown file to write the table to (and <out>.json with every run).")
for _name in ("epochs", "train_limit"):
    _rules.expect(_name, "a positive integer", lambda v: v >= 1)
_rules.expect("first_seed", "an integer in [0, 2**32)", lambda v: 0 <= v < 2**32)  # NumPy's seed range


def _seeds_ok(values: dict) -> bool:
    """--seeds: at least one seed, the last below 2**32 (ignored with --from_runs, which trains nothing)."""
    seeds, first = values["seeds"], values["first_seed"]
    if values["from_runs"] or first is None or (seeds >= 1 and first + seeds <= 2**32):
        return True
    raise flags.ValidationError(f"Invalid value received for --seeds. Expected a positive integer, with "
                                f"--first_seed + --seeds <= 2**32. Received: seeds={seeds!r} (first_seed={first!r})")


flags.register_multi_flags_validator(["seeds", "first_seed", "from_runs"], _seeds_ok)

_BASE = dict(cosine=False, target_deadline=0.25, lambda_floor=0.0)
_COS = dict(_BASE, cosine=True)
_COC = dict(_COS, size_penalty="outgoing", target_schedule="cubic")  # the tools' target recipe before weight decay
_FASHION = dict(_COC, target_deadline=0.5, augment_shift=1, augment_until=0.75)  # coc_dl50_sh1_clean25: the Fashion-MNIST recipe until the fifth round added the restart
CANDIDATES = {
    "base": _BASE,
    "cosine": _COS,
    "deadline50": dict(_BASE, target_deadline=0.5),
    "cosine_deadline50": dict(_COS, target_deadline=0.5),
    "floor": dict(_BASE, lambda_floor=0.01),
    "cosine_floor": dict(_COS, lambda_floor=0.01),
    "step01": dict(_BASE, lambda_step=0.01),
    "wd": dict(_BASE, weight_decay_per_weight=5e-4),
    "outgoing": dict(_BASE, size_penalty="outgoing"),
    "cosine_outgoing": dict(_COS, size_penalty="outgoing"),
    "ema": dict(_BASE, ema_momentum=0.999),
    "cosine_ema": dict(_COS, ema_momentum=0.999),
    "cubic": dict(_BASE, target_schedule="cubic"),
    "cubic_ema": dict(_BASE, target_schedule="cubic", ema_momentum=0.999),
    "cosine_outgoing_cubic": _COC,
    "coc_wd": dict(_COC, weight_decay_per_weight=5e-4),
    "coc_floor": dict(_COC, lambda_floor=0.01),
    "coc_wd1e3": dict(_COC, weight_decay_per_weight=1e-3),
    "coc_adamw01": dict(_COC, adamw=0.01),
    "coc_adamw04": dict(_COC, adamw=0.04),
    "coca_do02": dict(_COC, adamw=0.01, dropout=0.2),
    "coca_do04": dict(_COC, adamw=0.01, dropout=0.4),
    "coca_dl50": dict(_COC, adamw=0.01, target_deadline=0.5),
    "coca_dl75": dict(_COC, adamw=0.01, target_deadline=0.75),
    "coca_dl50_sh1": dict(_COC, adamw=0.01, target_deadline=0.5, augment_shift=1),
    "coca_dl50_sh2": dict(_COC, adamw=0.01, target_deadline=0.5, augment_shift=2),
    "coca_dl50_flip": dict(_COC, adamw=0.01, target_deadline=0.5, augment_flip=True),
    "coca_dl50_sh1flip": dict(_COC, adamw=0.01, target_deadline=0.5, augment_shift=1, augment_flip=True),
    "coca_dl50_sh2flip": dict(_COC, adamw=0.01, target_deadline=0.5, augment_shift=2, augment_flip=True),
    "coca_dl50_ls1": dict(_COC, adamw=0.01, target_deadline=0.5, label_smoothing=0.1),
    "coca_dl50_sh1_ls1": dict(_COC, adamw=0.01, target_deadline=0.5, augment_shift=1, label_smoothing=0.1),
    "coca_dl50_sh2_ls1": dict(_COC, adamw=0.01, target_deadline=0.5, augment_shift=2, label_smoothing=0.1),
    "coc_dl50_sh1": dict(_COC, target_deadline=0.5, augment_shift=1),
    "coca_dl50_sh1_lr2": dict(_COC, adamw=0.01, target_deadline=0.5, augment_shift=1, learning_rate=2e-3),
    "coca_dl25_sh1": dict(_COC, adamw=0.01, target_deadline=0.25, augment_shift=1),
    "coc_dl50_sh1_clean25": _FASHION,
    "coc_dl50_sh1_coupled": dict(_COC, target_deadline=0.5, augment_shift=1, size_penalty="coupled"),
    "coc_dl50_sh1_clean50": dict(_COC, target_deadline=0.5, augment_shift=1, augment_until=0.5),
    "coc_dl50_sh1_coupled_clean25": dict(_COC, target_deadline=0.5, augment_shift=1, size_penalty="coupled", augment_until=0.75),
    "coc_dl50_sh1_coupled_clean50": dict(_COC, target_deadline=0.5, augment_shift=1, size_penalty="coupled", augment_until=0.5),
    "coc_dl50_sh1_clean10": dict(_FASHION, augment_until=0.9),
    "coc_dl50_sh1_clean25_lr05": dict(_FASHION, learning_rate=5e-4),
    "coc_dl50_sh1_clean25_ema": dict(_FASHION, ema_momentum=0.999),
    "coc_dl40_sh1_clean25": dict(_FASHION, target_deadline=0.4),
    "coc_dl60_sh1_clean25": dict(_FASHION, target_deadline=0.6),
    "coc_dl50_sh1_clean25_wd": dict(_FASHION, weight_decay_per_weight=5e-4),
    "coc_dl50_sh1_clean25_floor": dict(_FASHION, lambda_floor=0.01),
    "coc_dl50_sh1_clean25_g03": dict(_FASHION, gamma=0.3),
    "coc_dl50_sh1_clean25_g07": dict(_FASHION, gamma=0.7),
    "coc_dl50_sh1half_clean25": dict(_FASHION, augment_fraction=0.5),
    "coc_dl50_sh1_clean25_restart": dict(_FASHION, lr_restart=True),
    "coc_dl50_sh1_clean25_restart_er25": dict(_FASHION, lr_restart=True, augment_erase=0.25),
    "coc_dl50_sh1_clean25_restart_er50": dict(_FASHION, lr_restart=True, augment_erase=0.5),
    "coc_dl50_sh1_clean25_restart_step20": dict(_FASHION, lr_restart=True, lambda_step=0.2),
    "coc_dl50_sh1_clean25_restart_step50": dict(_FASHION, lr_restart=True, lambda_step=0.5),
    "coc_dl50_sh1_clean25_restart_step02": dict(_FASHION, lr_restart=True, lambda_step=0.02),
    "coc_dl50_sh1_clean25_restart_step01": dict(_FASHION, lr_restart=True, lambda_step=0.01),
    "coc_dl50_sh1_clean25_restart_det50": dict(_FASHION, lr_restart=True, deterministic_from=0.5),
    "coc_dl50_sh1_clean25_restart_t05": dict(_FASHION, lr_restart=True, temperature=0.5),
    "coc_dl50_sh1_clean25_restart_t10": dict(_FASHION, lr_restart=True, temperature=1.0),
    "coc_dl50_sh1_clean25_restart_in3": dict(_FASHION, lr_restart=True, l0_lambda=[0.01, 0.01 / 3, 0.01 / 3]),
    "coc_dl50_sh1_clean25_restart_hid3": dict(_FASHION, lr_restart=True, l0_lambda=[0.01 / 3, 0.01, 0.01]),
    "coc_dl50_sh1_clean25_restart2": dict(_FASHION, cosine_segments=((0.5, 1.0), (0.75, 1.0))),
    "coc_dl50_sh1_clean25_reanneal": dict(_FASHION, cosine_segments=((0.5, None),)),
    "coc_dl40_sh1_clean25_restart": dict(_FASHION, lr_restart=True, target_deadline=0.4),
    "coc_dl60_sh1_clean25_restart": dict(_FASHION, lr_restart=True, target_deadline=0.6),
    "coc_dl50_sh1_clean50_restart": dict(_FASHION, lr_restart=True, augment_until=0.5),
    "coc_dl50_sh1_restart": dict(_FASHION, lr_restart=True, augment_until=1.0),
    "coc_dl50_sh1_clean25_restart_bs8": dict(_FASHION, lr_restart=True, batch_size=8),
    "coc_dl50_sh1_clean25_restart_bs32": dict(_FASHION, lr_restart=True, batch_size=32),
    "coc_dl50_sh1_clean25_restart_in05": dict(_FASHION, lr_restart=True, input_droprate_init=0.5),
    "coc_dl50_sh1_clean25_peak2": dict(_FASHION, cosine_segments=((0.5, 2.0),)),
    "coc_dl50_sh1_clean25_restart_in01": dict(_FASHION, lr_restart=True, input_droprate_init=0.1),
    "coc_dl50_sh1_clean25_restart_hd03": dict(_FASHION, lr_restart=True, droprate_init=0.3),
    "coc_dl50_sh1_clean25_restart_constant": dict(_FASHION, lr_restart=True, target_schedule="constant"),
    "coc_dl50_sh1_clean25_restart_coupled": dict(_FASHION, lr_restart=True, size_penalty="coupled"),
}


def _one(name: str, seed: int, data) -> dict:
    import keras
    import numpy as np

    import tf_dynhp
    from tf_dynhp.cli.paper import PAPER_LR, sp_mo_kb

    recipe = CANDIDATES[name]
    (x, y), (xv, yv), (xt, yt) = data
    keras.utils.set_random_seed(seed)
    model = tf_dynhp.runs.build_mlp((300, 100), dropout=recipe.get("dropout", 0.0))
    if "temperature" in recipe:  # gated here with fit's gate seeds (seed + k); fit keeps a gated layer's temperature
        model = tf_dynhp.to_l0(model, temperature=recipe["temperature"], seed=seed)
    learning_rate = recipe.get("learning_rate", PAPER_LR)
    lr_decay = ("cosine_restart" if recipe.get("lr_restart") else "cosine") if recipe["cosine"] else "none"
    restart = tf_dynhp.runs.restart_epoch(lr_decay, recipe["target_deadline"], FLAGS.epochs)
    callbacks = tf_dynhp.runs.lr_callbacks(lr_decay, learning_rate, FLAGS.epochs, restart)
    if "cosine_segments" in recipe:
        callbacks = [keras.callbacks.LearningRateScheduler(segmented_cosine(learning_rate, FLAGS.epochs, recipe["cosine_segments"]))]
    config = tf_dynhp.runs.RunConfig(  # what runs.optimizer / augmentation / loss build the run's pieces from
        learning_rate=learning_rate, ema_momentum=recipe.get("ema_momentum"), decoupled_weight_decay=recipe.get("adamw", 0.0),
        augment_shift=recipe.get("augment_shift", 0), augment_flip=recipe.get("augment_flip", False),
        augment_until=recipe.get("augment_until", 1.0), augment_fraction=recipe.get("augment_fraction", 1.0),
        augment_erase=recipe.get("augment_erase", 0.0),
        label_smoothing=recipe.get("label_smoothing", 0.0))
    t0 = time.perf_counter()
    result = tf_dynhp.fit(
        model, x, y, method="dynhp", alpha_bs=FLAGS.alpha_bs, batch_size=recipe.get("batch_size"),
        input_droprate_init=recipe.get("input_droprate_init", 0.2), droprate_init=recipe.get("droprate_init", 0.5), budget_kb=sp_mo_kb(FLAGS.dataset), epochs=FLAGS.epochs,
        target_kb=FLAGS.target_kb, l0_lambda=recipe.get("l0_lambda", 0.01), target_deadline=recipe["target_deadline"], gamma=recipe.get("gamma", 0.5),
        lambda_floor=recipe["lambda_floor"], lambda_step=recipe.get("lambda_step", 0.05),
        weight_decay=recipe.get("weight_decay_per_weight", 0.0) * len(x), size_penalty=recipe.get("size_penalty", "coupled"),
        target_schedule=recipe.get("target_schedule", "constant"), deterministic_from=recipe.get("deterministic_from"),
        validation_data=(xv, yv) if len(xv) else None, seed=seed,
        augment=tf_dynhp.runs.augmentation(config), augment_until=config.augment_until,
        loss=tf_dynhp.runs.loss(config),
        verbose=0, callbacks=callbacks, learning_rate=learning_rate, optimizer=tf_dynhp.runs.optimizer(config),
    )
    seconds = time.perf_counter() - t0
    def error(images, labels):
        return float(100 * np.mean(np.argmax(result.model.predict(images, batch_size=2000, verbose=0), -1) != labels))

    return {
        "candidate": name, "seed": seed, "dataset": FLAGS.dataset, "target_kb": FLAGS.target_kb, "alpha_bs": FLAGS.alpha_bs,
        "epochs": FLAGS.epochs, "test_error": error(xt, yt),
        "val_error": error(xv, yv) if len(xv) else None, "train_images": int(len(x)),
        "model_kb": tf_dynhp.memory.floats_to_kb(tf_dynhp.memory.weight_count(result.model)),
        "mean_mo_kb": float(np.mean(result.history["memory_kb"])), "seconds": seconds,
        "units": [int(u) for u in result.history["active_units"][-1]],
    }


def segmented_cosine(learning_rate: float, epochs: int, segments) -> Callable[[int, float], float]:
    """The rate of epoch e (0-based) for the twelfth round's candidates: the plain cosine
    over all `epochs` (`runs.lr_callbacks("cosine")`) until the first segment, then from
    each segment's start (a fraction of the epochs, `ceil` as `target.deadline_epoch` and
    `augment.augmented_epochs` round) a cosine from its peak (a factor of `learning_rate`;
    None: the rate the schedule had reached there, no jump) to 0 at the next segment's
    start or the end. `((0.5, 1.0),)` is "cosine_restart" at a deadline of half the epochs."""
    import math

    starts = [math.ceil(round(f * epochs, 6)) for f, _ in segments] + [epochs]

    def plain(e: float) -> float:
        return learning_rate * 0.5 * (1.0 + math.cos(math.pi * e / epochs))

    def rate(e: int, lr: float = 0.0) -> float:
        if e < starts[0]:
            return plain(e)
        k = max(i for i in range(len(segments)) if starts[i] <= e)
        peak = segments[k][1]
        top = plain(starts[0]) if peak is None and k == 0 else learning_rate * (1.0 if peak is None else peak)
        length = max(starts[k + 1] - starts[k], 1)
        return top * 0.5 * (1.0 + math.cos(math.pi * (e - starts[k]) / length))

    return rate


#: What a run's record must hold for `table` (the JSON line `_one` prints; a record with a
#: `val_error` also its `train_images`: records made before the hold-out have neither).
RUN_KEYS = ("candidate", "seed", "test_error", "model_kb", "mean_mo_kb", "seconds", "units")


def _is_run(r) -> bool:
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    return (isinstance(r, dict) and set(RUN_KEYS) <= set(r) and isinstance(r["candidate"], str)
            and isinstance(r["seed"], int) and not isinstance(r["seed"], bool)
            and all(number(r[k]) for k in ("test_error", "model_kb", "mean_mo_kb", "seconds"))
            and (r.get("val_error") is None or (number(r["val_error"]) and number(r.get("train_images"))))
            and isinstance(r["units"], list))


def read_runs(paths: list[str]) -> list[dict]:
    """The runs of earlier `--out` files (`<out>.json`) or logs (one JSON object per line),
    the first of each (candidate, seed) kept."""
    runs, seen = [], set()
    for path in paths:
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise app.UsageError(f"--from_runs: cannot read {path} ({getattr(err, 'strerror', None) or err})") from err
        try:
            found = json.loads(text)
        except ValueError:
            try:
                found = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
            except ValueError as err:
                raise app.UsageError(f"--from_runs: {path} is neither a JSON list nor JSON lines ({err})") from err
        for r in found if isinstance(found, list) else [found]:
            if not _is_run(r):
                raise app.UsageError(f"--from_runs: {path} holds a record that is not a run of this tool "
                                     f"(expected {', '.join(map(repr, RUN_KEYS))} of their kinds): {str(r)[:120]}")
            # Records made since they carry them must be of the flags' ranking (older ones do not say).
            differ = [f"{k}={r[k]!r} there, {FLAGS[k].value!r} now" for k in ("dataset", "target_kb", "alpha_bs", "epochs")
                      if k in r and r[k] != FLAGS[k].value]
            if differ:
                raise app.UsageError(f"--from_runs: {path} holds runs of another ranking ({', '.join(differ)}); "
                                     "give the flags they were made with")
            if (r["candidate"], r["seed"]) not in seen:
                seen.add((r["candidate"], r["seed"]))
                runs.append(r)
    return runs


def _mean_std(values) -> str:
    return f"{values.mean():.2f} ± {values.std(ddof=1) if len(values) > 1 else 0:.2f}"


def table(runs: list[dict], candidates: list[str], command: str) -> str:
    """The Markdown table of `runs`, one row per candidate, in the order given."""
    import numpy as np

    runs = [r for r in runs if r["candidate"] in candidates]  # the header describes the rows shown, no other record
    seeds = sorted({r["seed"] for r in runs})
    held_out = all(r.get("val_error") is not None for r in runs)
    lines = [
        f"Accuracy at {FLAGS.target_kb:g} KB, {FLAGS.dataset}, DynHP alpha_bs {FLAGS.alpha_bs}, {FLAGS.epochs} epochs, "
        f"seeds {', '.join(map(str, seeds))}, final epoch, made by `{command}`:",
        "",
    ]
    if held_out:
        lines += [
            f"Trained on the first {runs[0]['train_images']} training images; ranked on the validation error (the "
            "held-out rest of the training set); the test error chooses nothing.",
            "",
            "| candidate | seeds | final size KB (min-max) | validation error % (mean ± std) | per seed | test error % (mean ± std) "
            "| mean MO KB | units (first seed) | seconds per run |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
    else:
        lines += [
            "| candidate | seeds | final size KB (min-max) | test error % (mean ± std) | per seed | mean MO KB | units (first seed) | seconds per run |",
            "|---|---|---|---|---|---|---|---|",
        ]
    for name in candidates:
        rs = sorted((r for r in runs if r["candidate"] == name), key=lambda r: r["seed"])
        if not rs:
            continue
        err = np.array([r["val_error" if held_out else "test_error"] for r in rs])
        test = np.array([r["test_error"] for r in rs])
        lines.append(
            f"| {name} | {len(rs)} | {min(r['model_kb'] for r in rs):.1f}-{max(r['model_kb'] for r in rs):.1f} | {_mean_std(err)} | "
            f"{', '.join(f'{e:.2f}' for e in err)} | {_mean_std(test) + ' | ' if held_out else ''}"
            f"{np.mean([r['mean_mo_kb'] for r in rs]):.1f} | "
            f"{'-'.join(map(str, rs[0]['units']))} | {np.mean([r['seconds'] for r in rs]):.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]} (every setting is a --flag)")
    out = None
    if FLAGS.out:  # checked before hours of training, not after them; the path written ("~" expanded)
        out = str(_rules.output_file("out", FLAGS.out, "a Markdown file"))
        if Path(out + ".json").is_dir():
            raise app.UsageError(f"--out={FLAGS.out}: expected {FLAGS.out}.json, the runs beside the table, to be a file "
                                 "to write; that is a folder")
    from tf_dynhp import _checks

    if not FLAGS.candidates:
        raise app.UsageError("--candidates: expected at least one candidate (see the module docstring)")
    for name in FLAGS.candidates:
        if name not in CANDIDATES:
            raise app.UsageError(f"--candidates: unknown {name!r}; expected some of {list(CANDIDATES)}")
    if len(set(FLAGS.candidates)) != len(FLAGS.candidates):  # each would train (and count) its seeds twice
        raise app.UsageError(f"--candidates={','.join(FLAGS.candidates)}: a candidate is named twice")
    command = "python tools/rank_at_size.py " + " ".join(sys.argv[1:])
    if FLAGS.from_runs:
        runs = read_runs(FLAGS.from_runs)
    else:
        (x, y), test = _rules.load_dataset(FLAGS.dataset, FLAGS.data_dir, download=False)
        if FLAGS.train_limit:
            x, y = x[: FLAGS.train_limit], y[: FLAGS.train_limit]
        if FLAGS.holdout >= len(x):
            raise app.UsageError(f"--holdout={FLAGS.holdout}: expected fewer than the {len(x)} training images")
        cut = len(x) - FLAGS.holdout
        held = (x[cut:], y[cut:])
        x, y = x[:cut], y[:cut]
        runs = []
        for name in FLAGS.candidates:
            for seed in range(FLAGS.first_seed, FLAGS.first_seed + FLAGS.seeds):
                runs.append(_one(name, seed, ((x, y), held, test)))
                print(json.dumps(runs[-1]), flush=True)
    if not any(r["candidate"] in FLAGS.candidates for r in runs):
        raise app.UsageError(f"--candidates={','.join(FLAGS.candidates)}: no run of these in --from_runs "
                             f"(they hold {sorted({r['candidate'] for r in runs})})")
    text = table(runs, FLAGS.candidates, command)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        _checks.write_atomic(out, text)
        _checks.write_atomic(out + ".json", json.dumps(runs, indent=1) + "\n")


if __name__ == "__main__":
    app.run(_rules.one_line_usage(main))
