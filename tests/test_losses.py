"""`tf_dynhp.losses`: label-smoothed cross-entropy on class ids against a NumPy reference,
its refusals and serialization, and a `fit` with a Keras loss object that resumes (the
checkpoint settings once held the loss' `repr`, a memory address)."""

from __future__ import annotations

import functools

import keras
import numpy as np
import pytest
from conftest import assert_same_run, stop_after

import tf_dynhp
from tf_dynhp import losses


def _reference(labels, probs, smoothing):
    classes = probs.shape[-1]
    target = np.full(probs.shape, smoothing / classes)
    target[np.arange(len(labels)), labels] += 1 - smoothing
    return -(target * np.log(probs)).sum(-1)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("from_logits", [False, True])
def test_per_example_loss_matches_a_numpy_reference(smoothing, from_logits):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(12, 5)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    labels = rng.integers(0, 5, 12)
    loss = losses.SparseCategoricalCrossentropy(label_smoothing=smoothing, from_logits=from_logits)
    got = np.asarray(loss.call(labels, logits if from_logits else probs))
    np.testing.assert_allclose(got, _reference(labels, probs, smoothing), rtol=1e-5)
    np.testing.assert_allclose(float(loss(labels, logits if from_logits else probs)), got.mean(), rtol=1e-5)


def test_without_smoothing_it_is_keras_sparse_categorical_crossentropy():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(10), 30).astype(np.float32)
    labels = rng.integers(0, 10, (30, 1))  # Keras also takes (n, 1) ids
    np.testing.assert_allclose(np.asarray(losses.SparseCategoricalCrossentropy().call(labels, probs)),
                               np.asarray(keras.losses.sparse_categorical_crossentropy(labels, probs)), rtol=1e-5)


@pytest.mark.parametrize("bad", [1.0, -0.1, True, "0.1", None])
def test_refuses_a_smoothing_outside_0_1_naming_it(bad):
    with pytest.raises(ValueError, match="label_smoothing.*received"):
        losses.SparseCategoricalCrossentropy(label_smoothing=bad)


def test_serializes_and_describes_itself_stably():
    loss = losses.SparseCategoricalCrossentropy(label_smoothing=0.2, from_logits=True)
    back = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(back) is type(loss) and back.get_config() == loss.get_config()
    assert losses.describe(loss) == losses.describe(losses.SparseCategoricalCrossentropy(0.2, from_logits=True))
    assert losses.describe(loss) != losses.describe(losses.SparseCategoricalCrossentropy(0.1, from_logits=True))
    assert "0x" not in str(losses.describe(keras.losses.CategoricalCrossentropy()))
    assert losses.describe(None) == "None" and losses.describe("mse") == "'mse'"  # what checkpoints always held
    smooth = functools.partial(keras.losses.categorical_crossentropy, label_smoothing=0.1)
    assert losses.describe(smooth) == losses.describe(functools.partial(keras.losses.categorical_crossentropy, label_smoothing=0.1))
    assert losses.describe(smooth) != losses.describe(functools.partial(keras.losses.categorical_crossentropy, label_smoothing=0.2))
    assert "0x" not in str(losses.describe(smooth))
    weights, other = np.ones(2000, np.float32), np.ones(2000, np.float32)
    other[1000] = 2  # repr shows neither: "[1., 1., 1., ..., 1., 1., 1.]"
    assert losses.describe(functools.partial(keras.losses.mean_squared_error, w=weights)) != \
        losses.describe(functools.partial(keras.losses.mean_squared_error, w=other))
    named = keras.losses.sparse_categorical_crossentropy  # a named function: module and name, as checkpoints always held
    assert losses.describe(named) == "keras.src.losses.losses.sparse_categorical_crossentropy"
    assert losses.describe(lambda y, p: keras.losses.mse(y, p)) != losses.describe(lambda y, p: 2 * keras.losses.mse(y, p))


def _mlp():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(24, activation="relu"),
                             keras.layers.Dense(10, activation="softmax")])


def test_fit_with_smoothing_trains_differs_from_plain_and_resumes_exactly(mnist, tmp_path):
    (x, y), _ = mnist
    kw = dict(method="dynhp", alpha_bs=0.95, budget_kb=1e5, epochs=3, batch_size=32, seed=3, verbose=0,
              loss=losses.SparseCategoricalCrossentropy(label_smoothing=0.1))
    a = tf_dynhp.fit(_mlp(), x[:1500], y[:1500], **kw)
    plain = tf_dynhp.fit(_mlp(), x[:1500], y[:1500], **{**kw, "loss": None})
    assert a.history["data_loss"][-1] < a.history["data_loss"][0]
    # A smoothed target has entropy > 0: its loss stays above the plain one.
    assert a.history["data_loss"][-1] > plain.history["data_loss"][-1]
    folder = tmp_path / "ck"
    tf_dynhp.fit(_mlp(), x[:1500], y[:1500], checkpoint_dir=folder, callbacks=[stop_after(1)], **kw)
    # A new loss object with the same config is the same run.
    c = tf_dynhp.fit(_mlp(), x[:1500], y[:1500], checkpoint_dir=folder, resume=True,
                     **{**kw, "loss": losses.SparseCategoricalCrossentropy(label_smoothing=0.1)})
    assert_same_run(c, a, a.model, c.model)
    with pytest.raises(ValueError, match="loss"):
        tf_dynhp.fit(_mlp(), x[:1500], y[:1500], checkpoint_dir=folder, resume=True,
                     **{**kw, "loss": losses.SparseCategoricalCrossentropy(label_smoothing=0.2)})


@pytest.mark.parametrize("trace_once", [True, False])
def test_fit_refuses_a_loss_that_is_not_per_example_before_an_epoch_ends(mnist, trace_once):
    """A mean loss would train, but Eq. 8's gradient variance (per example) would be silently wrong."""
    (x, y), _ = mnist
    ended = []

    class Spy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            ended.append(epoch)

    def mean_loss(labels, probs):
        return keras.ops.mean(keras.losses.sparse_categorical_crossentropy(labels, probs))

    with pytest.raises(ValueError, match=r"one value per example, shape \(batch,\); it returned shape \(\)"):
        tf_dynhp.fit(_mlp(), x[:300], y[:300], method="dynhp", alpha_bs=0.9, budget_kb=1e5, epochs=2, verbose=0,
                     loss=mean_loss, trace_once=trace_once, callbacks=[Spy()])
    assert ended == []


@pytest.mark.parametrize("loss", ["mse", "hinge", keras.losses.BinaryCrossentropy(), keras.losses.CosineSimilarity()])
def test_a_loss_of_other_labels_is_refused_before_any_work(mnist, loss):
    """Accepted by the argument checks, these failed in the compiled step with a graph error
    ("Incompatible shapes: [100] vs. [100,10]"): fit calls the loss once first, as the step will."""
    (x, y), _ = mnist
    with pytest.raises(ValueError, match=r"`loss` .* fails when called as the training step calls it: integer class "
                                         r"labels, shape \(batch,\), and the model's outputs, shape \(batch, 10\), "
                                         r"float32.*It raised"):
        tf_dynhp.fit(_mlp(), x[:64], y[:64], method="sp", epochs=1, verbose=0, loss=loss)


def test_a_float64_model_s_own_loss_is_probed_in_float64():
    """The probe fed float32 outputs to a float64 model's loss, which then failed (a dtype
    clash in a Mul) and was refused; the step gives it float64."""
    def loss(labels, probs):
        return -keras.ops.sum(keras.ops.one_hot(labels, 3, dtype="float64") * keras.ops.log(probs), axis=-1)

    rng = np.random.default_rng(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, activation="relu", dtype="float64"),
                              keras.layers.Dense(3, activation="softmax", dtype="float64")])
    result = tf_dynhp.fit(model, rng.random((40, 6)), rng.integers(0, 3, 40), method="sp", epochs=1, verbose=0, loss=loss)
    assert np.isfinite(result.history["loss"][0])
