"""Eq. 8's ||S||_1 and F from the train step, against brute-force per-example gradients."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import make_mlp
from tf_dynhp import gates, to_l0
from tf_dynhp.training import _core_from
from tf_dynhp.variance import dense_variance_l1


def _brute_force_variance(core, x, y, noise):
    """Per-example gradients of each example's own data loss, one GradientTape each."""
    params = [v for layer in core.dense_layers for v in (layer.kernel, layer.bias)]
    grads = []
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            _, logits, _ = core.forward(x[i : i + 1], training=True, noise=[u[i : i + 1] for u in noise])
            loss = tf.reduce_mean(keras.ops.sparse_categorical_crossentropy(y[i : i + 1], logits, from_logits=True))
        grads.append([g.numpy() for g in tape.gradient(loss, params)])
    total = 0.0
    for p in range(len(params)):
        g = np.stack([grads[i][p] for i in range(len(x))])
        total += float(np.sum(np.var(g, axis=0, ddof=1)))
    return total


@pytest.mark.parametrize("method_model,weight_decay", [("gated", 0.0), ("gated", 0.5), ("dense", 0.0)])
def test_variance_matches_brute_force(method_model, weight_decay, rng):
    keras.utils.set_random_seed(0)
    model = make_mlp(input_shape=(12,), hidden=(7, 5), classes=4, dtype="float64")
    core, _, _ = _core_from(to_l0(model, dataset_size=50, weight_decay=weight_decay) if method_model == "gated" else model)
    core.compile(optimizer=keras.optimizers.SGD(0.0))
    core.track_variance = True
    x = rng.normal(size=(9, 12))
    y = rng.integers(0, 4, size=9).astype("int32")
    noise = [rng.uniform(gates.EPSILON, 1 - gates.EPSILON, size=(9, layer.kernel.shape[0])) for layer in core.gated_layers]
    stats = core.train_stats(tf.constant(x), tf.constant(y), noise=noise or None, apply=False)
    expected = _brute_force_variance(core, x, y, noise)
    assert float(stats["variance_l1"]) == pytest.approx(expected, rel=1e-9)
    # F is the mean *data* loss (no penalty).
    _, logits, _ = core.forward(tf.constant(x), training=True, noise=noise or None)
    f = float(np.mean(keras.ops.sparse_categorical_crossentropy(y, logits, from_logits=True)))
    assert float(stats["data_loss"]) == pytest.approx(f, rel=1e-12)
    if method_model == "gated":
        assert float(stats["loss"]) > float(stats["data_loss"])


def test_dense_variance_l1_numpy_reference(rng):
    a = rng.normal(size=(6, 3))
    d = rng.normal(size=(6, 2))
    per_example = np.einsum("bi,bj->bij", a, d)
    expected = np.var(per_example, axis=0, ddof=1).sum() + np.var(d, axis=0, ddof=1).sum()
    got = dense_variance_l1(a, d, per_example.mean(axis=0), d.mean(axis=0))
    assert float(got) == pytest.approx(expected, rel=1e-10)
    no_bias = dense_variance_l1(a, d, per_example.mean(axis=0))
    assert float(no_bias) == pytest.approx(np.var(per_example, axis=0, ddof=1).sum(), rel=1e-10)
    assert float(dense_variance_l1(a[:1], d[:1], per_example[0], d[0])) == 0.0
