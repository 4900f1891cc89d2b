"""Eq. 8's ||S||_1 and F from the train step, against brute-force per-example gradients
(dense and conv layers)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import make_mlp
from tf_dynhp import gates, to_l0
from tf_dynhp.pruning import core_from as _core_from
from tf_dynhp.variance import conv_patches, conv_variance_l1, dense_variance_l1


def make_cnn(dtype="float64"):
    """Conv (valid) -> MaxPool -> Conv (same, stride 2) -> Flatten -> Dense -> Dense: both paddings, a stride."""
    return keras.Sequential([
        keras.Input((9, 9, 2), dtype=dtype),
        keras.layers.Conv2D(3, 3, activation="relu", dtype=dtype),
        keras.layers.MaxPooling2D(2, dtype=dtype),
        keras.layers.Conv2D(4, 2, strides=2, padding="same", activation="relu", dtype=dtype),
        keras.layers.Flatten(dtype=dtype),
        keras.layers.Dense(5, activation="relu", dtype=dtype),
        keras.layers.Dense(4, dtype=dtype),
    ])


def _brute_force_variance(core, x, y, noise, weights=None):
    """Per-example gradients of each example's own data loss (times its weight, if
    given), one GradientTape each."""
    params = [v for layer in core.weighted_layers for v in (layer.kernel, layer.bias)]
    grads = []
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            _, logits, _ = core.forward(x[i : i + 1], training=True, noise=[u[i : i + 1] for u in noise])
            loss = tf.reduce_mean(keras.ops.sparse_categorical_crossentropy(y[i : i + 1], logits, from_logits=True))
            if weights is not None:
                loss = loss * weights[i]
        grads.append([g.numpy() for g in tape.gradient(loss, params)])
    total = 0.0
    for p in range(len(params)):
        g = np.stack([grads[i][p] for i in range(len(x))])
        total += float(np.sum(np.var(g, axis=0, ddof=1)))
    return total


@pytest.mark.parametrize(
    "arch,method_model,weight_decay",
    [("mlp", "gated", 0.0), ("mlp", "gated", 0.5), ("mlp", "dense", 0.0), ("cnn", "gated", 0.0), ("cnn", "gated", 0.5), ("cnn", "dense", 0.0)],
)
def test_variance_matches_brute_force(arch, method_model, weight_decay, rng):
    keras.utils.set_random_seed(0)
    if arch == "mlp":
        model, shape = make_mlp(input_shape=(12,), hidden=(7, 5), classes=4, dtype="float64"), (12,)
    else:
        model, shape = make_cnn(), (9, 9, 2)
    core, _, _ = _core_from(to_l0(model, dataset_size=50, weight_decay=weight_decay) if method_model == "gated" else model)
    core.compile(optimizer=keras.optimizers.SGD(0.0))
    core.track_variance = True
    x = rng.normal(size=(9,) + shape)
    y = rng.integers(0, 4, size=9).astype("int32")
    noise = [rng.uniform(gates.EPSILON, 1 - gates.EPSILON, size=(9, layer.num_gates)) for layer in core.gated_layers]
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


@pytest.mark.parametrize("padding,strides", [("valid", (1, 1)), ("same", (2, 1)), ("same", (1, 1))])
def test_conv_variance_l1_numpy_reference(padding, strides, rng):
    """Per-example conv kernel gradients from NumPy loops over output positions."""
    from test_layers import np_conv2d  # noqa: PLC0415 - the NumPy conv of the layer tests

    x = rng.normal(size=(5, 6, 5, 2))
    kernel_shape = (3, 2, 2, 3)
    out = np_conv2d(x, np.zeros(kernel_shape), strides, padding)
    d = rng.normal(size=out.shape)
    # d(sum(D * conv(x, W)))/dW by finite structure: conv is linear in W, one basis kernel at a time.
    per_example = np.zeros((5,) + kernel_shape)
    for idx in np.ndindex(kernel_shape):
        basis = np.zeros(kernel_shape)
        basis[idx] = 1.0
        per_example[(slice(None),) + idx] = np.sum(np_conv2d(x, basis, strides, padding) * d, axis=(1, 2, 3))
    per_bias = d.sum(axis=(1, 2))
    expected = np.var(per_example, axis=0, ddof=1).sum() + np.var(per_bias, axis=0, ddof=1).sum()
    got = conv_variance_l1(x, d, kernel_shape[:2], strides, padding, per_example.mean(axis=0), per_bias.mean(axis=0))
    assert float(got) == pytest.approx(expected, rel=1e-10)
    no_bias = conv_variance_l1(x, d, kernel_shape[:2], strides, padding, per_example.mean(axis=0))
    assert float(no_bias) == pytest.approx(np.var(per_example, axis=0, ddof=1).sum(), rel=1e-10)


@pytest.mark.parametrize(
    "shape,kernel,strides,padding",
    [((2, 9, 8, 3), (3, 2), (1, 1), "valid"), ((2, 9, 8, 3), (3, 3), (2, 3), "same"), ((1, 7, 7, 2), (4, 4), (2, 2), "same"),
     ((2, 7, 9, 2), (5, 5), (1, 1), "same")],  # 4 rows and columns of padding: 2 before, 2 after
)
def test_conv_patches_equal_extract_patches(shape, kernel, strides, padding, rng):
    x = tf.constant(rng.normal(size=shape))
    expected = tf.image.extract_patches(x, [1, *kernel, 1], [1, *strides, 1], [1, 1, 1, 1], padding.upper())
    got = conv_patches(x, kernel, strides, padding)
    np.testing.assert_array_equal(got.numpy(), expected.numpy().reshape(shape[0], -1, got.shape[-1]))


def test_conv_patches_with_dynamic_channels(rng):
    """Pruned channels make the channel count unknown in the traced step."""
    x = rng.normal(size=(2, 6, 5, 3))

    @tf.function(input_signature=[tf.TensorSpec([None, 6, 5, None], tf.float64)])
    def patches(inputs):
        return conv_patches(inputs, (3, 2), (1, 1), "same")

    expected = tf.image.extract_patches(tf.constant(x), [1, 3, 2, 1], [1, 1, 1, 1], [1, 1, 1, 1], "SAME")
    np.testing.assert_array_equal(patches(tf.constant(x)).numpy(), expected.numpy().reshape(2, 30, 18))


def test_variances_of_two_examples_and_of_small_gradients(rng):
    """B = 2 (the unbiased variance divides by B - 1 = 1) and a total below 1 (no floor but 0)."""
    a, d = rng.normal(size=(2, 3)) * 0.1, rng.normal(size=(2, 2)) * 0.1
    per_example = np.einsum("bi,bj->bij", a, d)
    expected = np.var(per_example, axis=0, ddof=1).sum() + np.var(d, axis=0, ddof=1).sum()
    assert expected < 1.0
    got = dense_variance_l1(a, d, per_example.mean(axis=0), d.mean(axis=0))
    assert float(got) == pytest.approx(expected, rel=1e-10)
    x, dc = rng.normal(size=(2, 4, 4, 1)) * 0.1, rng.normal(size=(2, 3, 3, 2)) * 0.1
    patches = conv_patches(tf.constant(x), (2, 2), (1, 1), "valid").numpy()  # (2, 9, 4)
    per_kernel = np.einsum("bpk,bpc->bkc", patches, dc.reshape(2, 9, 2)).reshape(2, 2, 2, 1, 2)
    per_bias = dc.sum(axis=(1, 2))
    expected = np.var(per_kernel, axis=0, ddof=1).sum() + np.var(per_bias, axis=0, ddof=1).sum()
    assert expected < 1.0
    got = conv_variance_l1(x, dc, (2, 2), (1, 1), "valid", per_kernel.mean(axis=0), per_bias.mean(axis=0))
    assert float(got) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_weighted_examples_give_f_and_variance_of_the_weighted_loss(arch, rng):
    # fit(sample_weight=... / class_weight=...): the step gathers (labels, weights); Eq. 8's
    # F is the mean weighted loss and ||S||_1 the variance of the weighted per-example gradients.
    keras.utils.set_random_seed(0)
    if arch == "mlp":
        model, shape = make_mlp(input_shape=(12,), hidden=(7, 5), classes=4, dtype="float64"), (12,)
    else:
        model, shape = make_cnn(), (9, 9, 2)
    core, _, _ = _core_from(to_l0(model, dataset_size=50))
    core.compile(optimizer=keras.optimizers.SGD(0.0))
    core.track_variance = True
    x = rng.normal(size=(9,) + shape)
    y = rng.integers(0, 4, size=9).astype("int32")
    w = np.array([0.0, 1.0, 2.5, 0.5, 1.0, 3.0, 0.0, 1.5, 1.0])
    noise = [rng.uniform(gates.EPSILON, 1 - gates.EPSILON, size=(9, layer.num_gates)) for layer in core.gated_layers]
    stats = core.train_stats(tf.constant(x), (tf.constant(y), tf.constant(w, tf.float32)), noise=noise, apply=False)
    assert float(stats["variance_l1"]) == pytest.approx(_brute_force_variance(core, x, y, noise, w), rel=1e-6)
    _, logits, _ = core.forward(tf.constant(x), training=True, noise=noise)
    f = float(np.mean(w * keras.ops.sparse_categorical_crossentropy(y, logits, from_logits=True)))
    assert float(stats["data_loss"]) == pytest.approx(f, rel=1e-6)
