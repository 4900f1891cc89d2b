"""The public functions beside `fit`, given what a user might pass at their edges: a
right value or a ValueError naming the argument, never a silently wrong value or a bare
error from deep inside (found by a probe of the public API)."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_dynhp
from tf_dynhp import augment, batching, gates, memory


# --------------------------------------------------------------------------- losses
def test_the_loss_refuses_labels_out_of_range_as_keras_does():
    """A label of 5 with 4 classes became a one-hot row of zeros: a loss of 0 for it."""
    p = np.full((2, 4), 0.25, np.float32)
    for bad in ([5, 0], [-1, 0]):
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"label values must be in \[0, classes\)"):
            tf_dynhp.losses.SparseCategoricalCrossentropy()(np.array(bad), p)


def test_the_loss_takes_predictions_of_any_rank_and_numpy_smoothing():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), (2, 3)).astype(np.float32)
    y = np.array([[0, 1, 2], [3, 0, 1]])
    ours = float(tf_dynhp.losses.SparseCategoricalCrossentropy()(y, p))
    assert ours == pytest.approx(float(keras.losses.SparseCategoricalCrossentropy()(y, p)), rel=1e-6)
    smooth = tf_dynhp.losses.SparseCategoricalCrossentropy(label_smoothing=np.float32(0.1))  # refused before
    assert smooth.label_smoothing == pytest.approx(0.1)


# --------------------------------------------------------------------------- layers and gates
@pytest.mark.parametrize("kwargs,name", [
    (dict(limit_l=-math.inf), "limit_l"), (dict(limit_r=math.inf), "limit_r"), (dict(limit_l="a"), "limit_l"),
    (dict(limit_l=None), "limit_l"), (dict(limit_r=math.nan), "limit_r"), (dict(dataset_size=True), "dataset_size"),
])
def test_gated_layers_refuse_bad_stretch_limits_and_sizes_by_name(kwargs, name):
    """-inf gave NaN outputs, inf a 'math domain error' in training, a string a bare TypeError."""
    for make in (lambda: tf_dynhp.L0Dense(3, **kwargs), lambda: tf_dynhp.L0Conv2D(2, 3, **kwargs)):
        with pytest.raises(ValueError, match=f"`{name}`"):
            make()


@pytest.mark.parametrize("limit_l,limit_r", [(0.0, 1.1), (0.1, 1.1), (-0.1, -1.0), (-0.1, 0.5), (-math.inf, 1.1)])
def test_prob_open_refuses_limits_outside_its_formula(limit_l, limit_r):
    """0 or 0.1 gave 'math domain error'; limit_r 0.5 a probability of no meaning."""
    with pytest.raises(ValueError, match=r"Expected finite limit_l < 0 and limit_r > 1"):
        gates.prob_open(np.zeros(2, np.float32), limit_l=limit_l, limit_r=limit_r)


# --------------------------------------------------------------------------- memory
def _mlp():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((20,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])


@pytest.mark.parametrize("value", [-5, True, "8", 3.7, np.float64(2.0)])
def test_memory_functions_take_whole_batch_sizes_only(value):
    """-5 gave less than the weights alone, True a batch of 1, 3.7 a batch of 3 in mo_kb
    and of 3.7 in memory_full_kb, "8" a TypeError in one and a batch of 8 in the other."""
    model = _mlp()
    with pytest.raises(ValueError, match="`batch_size`"):
        memory.mo_kb(model, batch_size=value)
    with pytest.raises(ValueError, match="`batch_size`"):
        memory.memory_full_kb(model, value)
    assert memory.mo_kb(model, batch_size=np.int64(4)) == memory.floats_to_kb(memory.weight_count(model) + 4 * 20)


@pytest.mark.parametrize("args,name", [((100.0, 10, 0), "input_dim"), ((100.0, 10, -5), "input_dim"),
                                       ((100.0, 10, 2.5), "input_dim"), ((math.inf, 10, 4), "budget_kb"),
                                       ((-1.0, 10, 4), "budget_kb"), ((100.0, -1, 4), "n_weights")])
def test_max_batch_for_mo_refuses_what_has_no_batch(args, name):
    """input_dim 0 divided by zero, -5 gave a batch of -5118, an infinite budget overflowed."""
    with pytest.raises(ValueError, match=f"`{name}`"):
        memory.max_batch_for_mo(*args)
    assert memory.max_batch_for_mo(1.0, 0, 16) == 16  # 256 floats: 16 rows of 16


# --------------------------------------------------------------------------- batching
def test_batch_increment_checks_alpha_and_caps_an_infinite_ratio():
    for bad in (-0.5, 1.5, True, math.nan):
        with pytest.raises(ValueError, match="`alpha_bs`"):
            batching.batch_increment(10.0, 1.0, bad)
    assert batching.batch_increment(1e300, 1e-300, 0.5) == batching.MAX_INCREMENT  # overflowed
    assert batching.batch_increment(1e300, 1e-300, 1.0) == 0  # alpha 1: no growth, whatever the ratio
    assert batching.batch_increment(30.0, 1.0, 0.5) == 15


@pytest.mark.parametrize("args,name", [((32.7, 64, 128), "batch_size"), (("32", 64, 128), "batch_size"),
                                       ((True, 5, 10), "batch_size"), ((0, 0, 0), "batch_size"),
                                       ((16, -3, 10), "candidate"), ((16, 20, -1), "max_batch"),
                                       ((16, math.inf, 10), "candidate")])
def test_next_batch_size_takes_whole_numbers(args, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        batching.next_batch_size(*args)
    assert batching.next_batch_size(np.int64(16), 40, 32) == 32 and batching.next_batch_size(16, 40, 8) == 16


# --------------------------------------------------------------------------- augment
def test_shift_images_wants_one_whole_shift_per_image():
    """dy/dx shorter than the images blanked the images past them; 0.9 was cut to 0."""
    images = np.ones((3, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"`dy` must hold one whole number of pixels per image, shape \(3,\)"):
        augment.shift_images(images, [0], [0, 0, 0])
    with pytest.raises(ValueError, match="`dx`"):
        augment.shift_images(images, [0, 0, 0], [0.9, 0, 0])
    with pytest.raises(ValueError, match=r"\(N, H, W\) or \(N, H, W, C\)"):
        augment.shift_images(np.ones((4, 4)), [0] * 4, [0] * 4)
    moved = augment.shift_images(images, np.array([1.0, 0.0, 0.0]), [0, 0, 0])  # whole floats are whole numbers
    assert moved[0].sum() == 12 and moved[1].sum() == 16


def test_epoch_rng_takes_whole_seeds():
    for name, args in (("seed", (1.5, 0)), ("seed", (-1, 0)), ("epoch", (1, True))):
        with pytest.raises(ValueError, match=f"`{name}`"):
            augment.epoch_rng(*args)
    assert augment.epoch_rng(np.int64(3), 2).integers(1 << 30) == augment.epoch_rng(3, 2).integers(1 << 30)
