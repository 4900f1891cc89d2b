"""`fit(augment=...)` and `tf_dynhp.augment`: the shift against a pixel-by-pixel NumPy
reference, the draws, the refusals, and runs that stay identical for a seed and
resume exactly while input features are pruned."""

from __future__ import annotations

import functools
import json

import keras
import numpy as np
import pytest
from conftest import assert_same_run, stop_after

import tf_dynhp
from tf_dynhp import augment
from tf_dynhp.data import FeatureSelection
from tf_dynhp.training import RUNTIME_KEYS


def _shift_reference(images, dy, dx):
    out = np.zeros_like(images)
    n, h, w = images.shape[:3]
    for i in range(n):
        for r in range(h):
            for c in range(w):
                if 0 <= r - dy[i] < h and 0 <= c - dx[i] < w:
                    out[i, r, c] = images[i, r - dy[i], c - dx[i]]
    return out


@pytest.mark.parametrize("shape", [(40, 6, 5), (40, 6, 5, 3)])
def test_shift_matches_a_pixel_by_pixel_reference(shape):
    rng = np.random.default_rng(0)
    images = rng.random(shape).astype(np.float32)
    dy = rng.integers(-7, 8, shape[0])  # some shifts move the whole image out
    dx = rng.integers(-3, 4, shape[0])
    np.testing.assert_array_equal(augment.shift_images(images, dy, dx), _shift_reference(images, dy, dx))


def test_random_shift_draws_in_range_mirrors_about_half_and_is_a_function_of_the_generator():
    rng = np.random.default_rng(1)
    images = rng.random((400, 7, 7)).astype(np.float32) + 1.0  # no zero pixels: a shift shows as zeros
    out = augment.RandomShift(2, flip=True)(images, augment.epoch_rng(5, 3))
    again = augment.RandomShift(2, flip=True)(images, augment.epoch_rng(5, 3))
    other = augment.RandomShift(2, flip=True)(images, augment.epoch_rng(5, 4))
    np.testing.assert_array_equal(out, again)
    assert not np.array_equal(out, other)
    mirrored = 0
    for i in range(len(images)):
        found = [
            (a, b, f)
            for f in (False, True)
            for a in range(-2, 3)
            for b in range(-2, 3)
            if np.array_equal(out[i], _shift_reference((images[i : i + 1, :, ::-1] if f else images[i : i + 1]), [a], [b])[0])
        ]
        assert found, i  # every output is one shift (and mirror) of its input
        mirrored += found[0][2]
    assert 140 < mirrored < 260
    np.testing.assert_array_equal(augment.RandomShift(0)(images, augment.epoch_rng(0, 0)), images)
    assert augment.RandomShift(2, flip=True).get_config() == {"class": "RandomShift", "max_shift": 2, "flip": True}


@pytest.mark.parametrize("kwargs,match", [({"max_shift": -1}, "max_shift"), ({"max_shift": 1.5}, "max_shift"),
                                          ({"flip": "yes"}, "flip")])
def test_random_shift_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        augment.RandomShift(**kwargs)


def test_epoch_inputs_take_the_kept_features_of_the_augmented_images():
    rng = np.random.default_rng(2)
    images = rng.random((30, 6, 6)).astype(np.float32)
    shift = augment.RandomShift(1, flip=True)
    data = FeatureSelection()
    data.set_data(images.reshape(30, -1), np.zeros(30, np.int32), np.arange(36), augment=shift, image_shape=(6, 6), seed=4)
    features = np.array([0, 7, 8, 20, 35])
    data.select(features)
    expected = shift(images, augment.epoch_rng(4, 2)).reshape(30, -1)[:, features]
    np.testing.assert_array_equal(data.epoch_inputs(2).numpy(), expected)
    assert len(data) == 30


def test_augmented_epochs_round_up():
    assert [augment.augmented_epochs(u, 200) for u in (1.0, 0.75, 0.5, 0.001)] == [200, 150, 100, 1]
    assert augment.augmented_epochs(0.3, 4) == 2
    assert augment.augmented_epochs(0.55, 100) == 55 and augment.augmented_epochs(0.07, 100) == 7  # not 56, 8
    assert augment.augmented_epochs(1e-11, 10) == 1  # at least the first epoch, as the docstring says
    assert augment.augmented_epochs(np.float32(0.55), 100) == 55  # holds 0.550000011920929: not 56
    assert augment.augmented_epochs(float(np.float32(0.55)), 100) == 55  # as fit's checks hand it on
    assert augment.augmented_epochs(0.5501, 100) == 56  # a fraction that means more than 55 epochs still does


def test_epoch_images_is_the_epochs_transform_until_augment_epochs():
    images = np.random.default_rng(0).random((6, 4, 4)).astype(np.float32)
    shift = augment.RandomShift(1)
    np.testing.assert_array_equal(augment.epoch_images(shift, images, 7, 2), shift(images, augment.epoch_rng(7, 2)))
    np.testing.assert_array_equal(augment.epoch_images(shift, images, 7, 2, augment_epochs=3), shift(images, augment.epoch_rng(7, 2)))
    assert augment.epoch_images(shift, images, 7, 3, augment_epochs=3) is images
    with pytest.raises(ValueError, match="shape"):
        augment.epoch_images(lambda x, rng: x[:1], images, 7, 0)


def test_epoch_inputs_are_the_images_as_they_are_from_augment_epochs_on():
    rng = np.random.default_rng(3)
    images = rng.random((20, 5, 5)).astype(np.float32)
    calls = []

    def spy(batch, rng):
        calls.append(1)
        return augment.RandomShift(1)(batch, rng)

    data = FeatureSelection()
    data.set_data(images.reshape(20, -1), np.zeros(20, np.int32), np.arange(25), augment=spy, image_shape=(5, 5),
                  seed=1, augment_epochs=2)
    features = np.array([1, 6, 12, 24])
    data.select(features)
    np.testing.assert_array_equal(data.epoch_inputs(1).numpy(),
                                  augment.RandomShift(1)(images, augment.epoch_rng(1, 1)).reshape(20, -1)[:, features])
    for epoch in (2, 5):
        np.testing.assert_array_equal(data.epoch_inputs(epoch).numpy(), images.reshape(20, -1)[:, features])
    assert len(calls) == 1


def _mlp(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(40, activation="relu"),
                             keras.layers.Dense(20, activation="relu"), keras.layers.Dense(10, activation="softmax")])


FAST = dict(method="dynhp", alpha_bs=0.95, budget_kb=1e5, epochs=4, batch_size=32, seed=2, verbose=0)


def test_augmented_run_is_identical_for_a_seed_and_resumes_exactly_through_prunes(mnist, tmp_path):
    (x, y), _ = mnist
    # gamma 0.9 (gates open less than 90% of the epoch go) prunes input features from epoch 1 on
    kw = dict(l0_lambda=0.5, gamma=0.9, droprate_init=0.2, learning_rate=3e-3, augment=augment.RandomShift(2, flip=True),
              **{**FAST, "batch_size": 20})
    a = tf_dynhp.fit(_mlp(), x[:2000], y[:2000], **kw)
    b = tf_dynhp.fit(_mlp(), x[:2000], y[:2000], **kw)
    plain = tf_dynhp.fit(_mlp(), x[:2000], y[:2000], **{**kw, "augment": None})
    assert a.history["active_units"][2][0] < 784  # input features were pruned before the resume point
    for key in a.history:
        if key not in RUNTIME_KEYS:
            assert a.history[key] == b.history[key], key
    assert a.history["loss"] != plain.history["loss"]
    folder = tmp_path / "ck"
    tf_dynhp.fit(_mlp(), x[:2000], y[:2000], checkpoint_dir=folder, callbacks=[stop_after(3)], **kw)
    c = tf_dynhp.fit(_mlp(), x[:2000], y[:2000], checkpoint_dir=folder, resume=True, **kw)
    assert_same_run(c, a, a.model, c.model)
    with pytest.raises(ValueError, match="augment"):  # another augmentation is another run
        tf_dynhp.fit(_mlp(), x[:2000], y[:2000], checkpoint_dir=folder, resume=True,
                     **{**kw, "augment": augment.RandomShift(1)})


def _noise(images, rng, scale=0.1):
    return images + scale * rng.standard_normal(images.shape).astype(np.float32)


def test_describe_tells_augmentations_apart_as_a_resume_must():
    # a checkpoint refuses a resume whose augmentation's description differs
    assert augment.describe(None) is None
    assert augment.describe(augment.RandomShift(1)) != augment.describe(augment.RandomShift(2))
    assert augment.describe(_noise) == "_noise"  # a plain function: its name, as checkpoints always recorded
    one, other = functools.partial(_noise, scale=0.1), functools.partial(_noise, scale=0.2)
    assert augment.describe(one) == augment.describe(functools.partial(_noise, scale=0.1))
    assert augment.describe(one) != augment.describe(other)
    assert augment.describe(functools.partial(_noise, rng=None)) != augment.describe(one)
    json.dumps(augment.describe(one))  # checkpoint settings are JSON
    big = np.zeros(5000, np.float32)
    other_big = big.copy()
    other_big[2500] = 1  # repr shows neither: "[0., 0., 0., ..., 0., 0., 0.]"
    assert augment.describe(functools.partial(_noise, scale=big)) != augment.describe(functools.partial(_noise, scale=other_big))
    assert augment.describe(functools.partial(_noise, scale=big)) == augment.describe(functools.partial(_noise, scale=big.copy()))


def _make_scale(scale):
    def scale_images(images, rng):
        return images * scale

    return scale_images


class _Noise:
    def __init__(self, scale):
        self.scale = scale

    def __call__(self, images, rng):
        return _noise(images, rng, self.scale)


class _Config:
    def __init__(self, scale):
        self.scale = scale


def _noise_of(images, rng, config=None):
    return _noise(images, rng, config.scale)


def test_describe_tells_lambdas_closures_and_callable_objects_apart():
    """What only a name recorded before: every lambda is `<lambda>`, two closures of one
    factory share a name, two objects of one class too; a resume with another of them
    was accepted. Objects whose repr is an address are described by their attributes
    (two equal configs are one), a random generator by its identity (its state is not
    in the checkpoint: a resume in another process is refused, saying why)."""
    d = augment.describe
    assert d(lambda images, rng: images) != d(lambda images, rng: images + 3.0)
    assert d(lambda images, rng: images) == d(lambda images, rng: images)  # the same code, written twice
    assert d(_make_scale(0.1)) == d(_make_scale(0.1)) != d(_make_scale(5.0))
    assert d(_Noise(0.1)) == d(_Noise(0.1)) != d(_Noise(5.0))
    assert d(functools.partial(_noise_of, config=_Config(0.1))) == d(functools.partial(_noise_of, config=_Config(0.1)))
    assert d(functools.partial(_noise_of, config=_Config(0.1))) != d(functools.partial(_noise_of, config=_Config(0.2)))
    held = d(functools.partial(_noise, scale=np.random.default_rng(0)))
    assert held != d(functools.partial(_noise, scale=np.random.default_rng(0))) and "not in the checkpoint" in json.dumps(held)
    for value in (_make_scale(0.1), _Noise(0.1), lambda images, rng: images):
        json.dumps(d(value))


def test_descriptions_read_the_same_in_another_process():
    """A resume runs in a new process: a description must not hold memory addresses."""
    import subprocess
    import sys
    from pathlib import Path

    script = ("import functools, importlib.util, json, sys\n"
              "spec = importlib.util.spec_from_file_location('aug', sys.argv[1]); a = importlib.util.module_from_spec(spec)\n"
              "sys.modules['aug'] = a; spec.loader.exec_module(a)\n"
              "class Config:\n    def __init__(self, k): self.k = k\n"
              "def make(k):\n    return lambda x, rng: x * k\n"
              "def noise(x, rng, config=None): return x\n"
              "print(json.dumps([a.describe(make(0.5)), a.describe(lambda x, rng: x[:, ::-1]), "
              "a.describe(functools.partial(noise, config=Config(2)))], sort_keys=True))")
    path = str(Path(augment.__file__))
    runs = [subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True, timeout=120) for _ in range(2)]
    assert runs[0].returncode == 0, runs[0].stderr
    assert runs[0].stdout == runs[1].stdout and "0x" not in runs[0].stdout


def test_a_resume_with_another_lambda_is_refused(mnist, tmp_path):
    (x, y), _ = mnist
    tf_dynhp.fit(_mlp(), x[:128], y[:128], checkpoint_dir=tmp_path, augment=lambda images, rng: images, **{**FAST, "epochs": 1})
    with pytest.raises(ValueError, match=r"was made with augment\.code="):
        tf_dynhp.fit(_mlp(), x[:128], y[:128], checkpoint_dir=tmp_path, resume=True,
                     augment=lambda images, rng: images * 0.5, **{**FAST, "epochs": 2})


def test_augment_on_a_cnn_trains_on_shifted_images(mnist):
    (x, y), _ = mnist
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(4, 5, activation="relu"),
                              keras.layers.MaxPooling2D(4), keras.layers.Flatten(), keras.layers.Dense(10)])
    seen = []

    def spy(images, rng):
        seen.append(images.shape)
        return augment.RandomShift(1)(images, rng)

    result = tf_dynhp.fit(model, x[:256, :, :, None], y[:256], augment=spy, **{**FAST, "epochs": 2})
    assert seen == [(256, 28, 28, 1)] * 2 and len(result.history["loss"]) == 2


def test_augment_until_transforms_the_first_epochs_only_and_is_part_of_the_run(mnist, tmp_path):
    (x, y), _ = mnist
    epochs_seen = []

    def spy(images, rng):
        epochs_seen.append(1)
        return augment.RandomShift(1)(images, rng)

    kw = dict(FAST, augment=augment.RandomShift(1))
    half = tf_dynhp.fit(_mlp(), x[:256], y[:256], **{**kw, "augment_until": 0.5})
    full = tf_dynhp.fit(_mlp(), x[:256], y[:256], **kw)
    plain = tf_dynhp.fit(_mlp(), x[:256], y[:256], **{**kw, "augment": None})
    # the first ceil(0.5 * 4) = 2 epochs are the augmented run's, then the epochs differ from it
    assert half.history["loss"][:2] == full.history["loss"][:2]
    assert half.history["loss"][2:] != full.history["loss"][2:]
    assert half.history["loss"][0] != plain.history["loss"][0]
    tf_dynhp.fit(_mlp(), x[:256], y[:256], **{**kw, "augment": spy, "augment_until": 0.3})
    assert len(epochs_seen) == 2  # ceil(0.3 * 4)
    # without augment it changes nothing
    assert tf_dynhp.fit(_mlp(), x[:256], y[:256], **{**kw, "augment": None, "augment_until": 0.5}).history["loss"] == \
        plain.history["loss"]
    folder = tmp_path / "ck"
    tf_dynhp.fit(_mlp(), x[:256], y[:256], checkpoint_dir=folder, callbacks=[stop_after(1)], **{**kw, "augment_until": 0.5})
    resumed = tf_dynhp.fit(_mlp(), x[:256], y[:256], checkpoint_dir=folder, resume=True, **{**kw, "augment_until": 0.5})
    assert_same_run(resumed, half, half.model, resumed.model)
    with pytest.raises(ValueError, match="augment_until"):  # another final phase is another run
        tf_dynhp.fit(_mlp(), x[:256], y[:256], checkpoint_dir=folder, resume=True, **{**kw, "augment_until": 0.75})
    with pytest.raises(ValueError, match=r"this run has augment_until=None \(the default\)"):
        tf_dynhp.fit(_mlp(), x[:256], y[:256], checkpoint_dir=folder, resume=True, **kw)
    for bad in (0, 1.5, True, "0.5", float("nan")):
        with pytest.raises(ValueError, match=r"`augment_until`.*\(0, 1\]"):
            tf_dynhp.fit(_mlp(), x[:64], y[:64], **{**kw, "augment_until": bad})


def test_a_broken_augment_fails_before_an_earlier_runs_checkpoints_are_removed(mnist, tmp_path):
    from tf_dynhp import checkpoint

    (x, y), _ = mnist
    tf_dynhp.fit(_mlp(), x[:64], y[:64], checkpoint_dir=tmp_path, **{**FAST, "epochs": 1})
    kept = checkpoint.list_checkpoints(tmp_path)
    with pytest.raises(ValueError, match=r"`augment` returned images of shape"):
        tf_dynhp.fit(_mlp(), x[:64], y[:64], checkpoint_dir=tmp_path, augment=lambda images, rng: images[:, :-1], **FAST)
    assert kept and checkpoint.list_checkpoints(tmp_path) == kept


def test_a_new_run_over_an_earlier_runs_checkpoints_transforms_epoch_0_once(mnist, tmp_path):
    # The check before the earlier checkpoints are removed computed epoch 0's images, and
    # the first epoch computed them again; the run is the same either way.
    (x, y), _ = mnist
    tf_dynhp.fit(_mlp(), x[:64], y[:64], checkpoint_dir=tmp_path, **{**FAST, "epochs": 1})
    seen = []

    def spy(images, rng):
        seen.append(1)
        return augment.RandomShift(1)(images, rng)

    with pytest.warns(RuntimeWarning, match="Starting a new run"):
        over = tf_dynhp.fit(_mlp(), x[:64], y[:64], checkpoint_dir=tmp_path, augment=spy, **{**FAST, "epochs": 2})
    assert len(seen) == 2  # epochs 0 and 1, once each
    fresh = tf_dynhp.fit(_mlp(), x[:64], y[:64], augment=spy, **{**FAST, "epochs": 2})
    assert over.history["loss"] == fresh.history["loss"]


def test_augment_refusals_name_the_argument(mnist):
    (x, y), _ = mnist
    flat = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10)])
    with pytest.raises(ValueError, match=r"`augment` transforms images; this model's input has shape \(784,\)"):
        tf_dynhp.fit(flat, x[:64].reshape(64, -1), y[:64], augment=augment.RandomShift(1), **FAST)
    with pytest.raises(ValueError, match="augment"):
        tf_dynhp.fit(_mlp(), x[:64], y[:64], augment="shift", **FAST)
    with pytest.raises(ValueError, match=r"`augment` returned images of shape \(64, 28\)"):
        tf_dynhp.fit(_mlp(), x[:64], y[:64], augment=lambda images, rng: images[:, 0], **FAST)
    with pytest.raises(ValueError, match="non-finite"):
        tf_dynhp.fit(_mlp(), x[:64], y[:64], augment=lambda images, rng: images * np.nan, **FAST)


def test_random_shift_fraction_moves_only_that_share_and_keeps_the_old_draws_at_one():
    """`fraction` < 1 moves about that share of the images (the rest are returned as they
    are) and is recorded; `fraction=1` draws exactly as before the argument existed."""
    rng = np.random.default_rng(0)
    images = rng.random((4000, 6, 6)).astype(np.float32)
    half = augment.RandomShift(1, fraction=0.5)(images, augment.epoch_rng(3, 2))
    unmoved = np.all(half == images, axis=(1, 2))
    # Unmoved: the kept half, plus the moved ones that drew (0, 0) (1/9 of them).
    assert abs(unmoved.mean() - (0.5 + 0.5 / 9)) < 0.03
    assert augment.RandomShift(1, fraction=0.5).get_config()["fraction"] == 0.5
    assert "fraction" not in augment.RandomShift(1).get_config()
    gen = augment.epoch_rng(3, 2)
    dy, dx = gen.integers(-1, 2, 4000), gen.integers(-1, 2, 4000)
    np.testing.assert_array_equal(augment.RandomShift(1)(images, augment.epoch_rng(3, 2)), augment.shift_images(images, dy, dx))
    np.testing.assert_array_equal(augment.RandomShift(1, fraction=0.0)(images, augment.epoch_rng(3, 2)), images)
    # the fraction bounds the mirror too, and is recorded as a Python float (equal objects, equal configs)
    np.testing.assert_array_equal(augment.RandomShift(0, flip=True, fraction=0.0)(images, augment.epoch_rng(3, 2)), images)
    mirrored = augment.RandomShift(0, flip=True, fraction=0.5)(images, augment.epoch_rng(3, 2))
    assert abs(np.mean(np.any(mirrored != images, axis=(1, 2))) - 0.25) < 0.03
    assert type(augment.RandomShift(1, fraction=np.float32(0.5)).fraction) is float
    assert augment.RandomShift(1, fraction=np.float32(0.5)).get_config() == augment.RandomShift(1, fraction=0.5).get_config()


@pytest.mark.parametrize("fraction", [-0.1, 1.5, "half", None, True, float("nan")])
def test_random_shift_refuses_a_bad_fraction(fraction):
    with pytest.raises(ValueError, match="fraction"):
        augment.RandomShift(1, fraction=fraction)


def test_random_erasing_blanks_one_rectangle_of_the_drawn_share_of_images():
    """About `probability` of the images get exactly one zero rectangle, of an area within
    `area` of the image (up to rounding) and an aspect ratio within [ratio, 1 / ratio];
    the others come back as they were. One (seed, epoch), the same images; a channel
    axis is erased alike."""
    images = np.random.default_rng(0).uniform(0.5, 1.0, (4000, 28, 28)).astype(np.float32)
    erase = augment.RandomErasing(0.5)
    out = erase(images, augment.epoch_rng(2, 1))
    np.testing.assert_array_equal(out, erase(images, augment.epoch_rng(2, 1)))
    assert not np.array_equal(out, erase(images, augment.epoch_rng(2, 2)))
    zero = out == 0
    hit = zero.reshape(len(images), -1).any(1)
    assert 0.47 < hit.mean() < 0.53
    np.testing.assert_array_equal(out[~hit], images[~hit])
    for mask in zero[hit][:300]:
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert mask.sum() == len(rows) * len(cols)  # one full rectangle
        assert np.array_equal(rows, np.arange(rows[0], rows[-1] + 1)) and np.array_equal(cols, np.arange(cols[0], cols[-1] + 1))
        assert 0.02 * 784 * 0.5 <= mask.sum() <= 0.4 * 784 * 1.3
        assert 0.3 * 0.5 <= len(rows) / len(cols) <= 2.0 / 0.3
    np.testing.assert_array_equal(erase(images[..., None], augment.epoch_rng(2, 1))[..., 0], out)
    np.testing.assert_array_equal(augment.RandomErasing(0.0)(images, augment.epoch_rng(2, 1)), images)
    assert (augment.RandomErasing(1.0)(images, augment.epoch_rng(2, 1)) == 0).reshape(len(images), -1).any(1).all()


@pytest.mark.parametrize("kwargs", [dict(probability=1.5), dict(probability=-0.1), dict(probability=True), dict(probability="a"),
                                    dict(area=(0.0, 0.4)), dict(area=(0.5, 0.4)), dict(area=(0.1, 1.5)), dict(area=0.3),
                                    dict(ratio=0.0), dict(ratio=2.0)])
def test_random_erasing_refuses_bad_arguments_by_name(kwargs):
    with pytest.raises(ValueError, match=list(kwargs)[0]):
        augment.RandomErasing(**kwargs)


def test_augmentations_apply_in_turn_and_rebuild_from_their_config():
    """`Augmentations` is its steps applied in turn on one generator; every augmentation
    class comes back equal from its `get_config()` (how the tfmot process rebuilds it), and
    an unknown class or an empty chain is refused."""
    images = np.random.default_rng(1).random((50, 12, 12)).astype(np.float32)
    chain = augment.Augmentations((augment.RandomShift(1, flip=True), augment.RandomErasing(0.5, area=(0.1, 0.2))))
    rng = augment.epoch_rng(4, 0)
    expected = augment.RandomErasing(0.5, area=(0.1, 0.2))(augment.RandomShift(1, flip=True)(images, rng), rng)
    np.testing.assert_array_equal(chain(images, augment.epoch_rng(4, 0)), expected)
    for a in (chain, augment.RandomShift(2, fraction=0.5), augment.RandomErasing(0.3, ratio=0.5)):
        assert augment.from_config(a.get_config()) == a and augment.describe(a) == a.get_config()
    assert augment.describe(chain) != augment.describe(augment.Augmentations((augment.RandomShift(1, flip=True),)))
    with pytest.raises(ValueError, match="unknown augmentation class 'Cutout'"):
        augment.from_config({"class": "Cutout"})
    with pytest.raises(ValueError, match="`area` must be two numbers"):
        augment.from_config({"class": "RandomErasing", "area": 0.3})
    with pytest.raises(ValueError, match=r"RandomErasing has no field\(s\) \['bogus'\]"):
        augment.from_config({"class": "RandomErasing", "bogus": 1})
    with pytest.raises(ValueError, match="steps"):
        augment.Augmentations(())


def test_the_module_loads_from_its_file_without_the_package():
    """The benchmark's tfmot helper loads tf_dynhp/augment.py from its file in a venv without
    tf_dynhp, Keras 3 or TensorFlow: the module must import NumPy only (it had come to import
    `tf_dynhp._checks`, which imports the package)."""
    import subprocess
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tf_dynhp" / "augment.py"
    script = (
        "import importlib.abc, importlib.util, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('tf_dynhp', 'keras', 'tensorflow'):\n"
        "            raise ImportError(f'{name} is not in the tfmot venv')\n"
        "sys.meta_path.insert(0, Block())\n"
        "spec = importlib.util.spec_from_file_location('tf_dynhp_augment', sys.argv[1])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules[spec.name] = m; spec.loader.exec_module(m)\n"
        "import numpy as np\n"
        "shift = m.from_config(m.RandomShift(1).get_config())\n"
        "x = np.zeros((4, 6, 6), 'float32'); x[:, 3, 3] = 1\n"
        "print(m.epoch_images(shift, x, 7, 0).shape)\n"
        "try:\n"
        "    m.epoch_rng(1.5, 0)\n"
        "except ValueError as err:\n"
        "    print(err)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(4, 6, 6)" in done.stdout
    assert "Invalid value received for argument `seed`. Expected an integer >= 0. Received: seed=1.5" in done.stdout
