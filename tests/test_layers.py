"""L0Dense and SelectFeatures: build, call, serialize, penalty scale, errors."""

import math

import keras
import numpy as np
import pytest

import tf_dynhp
from tf_dynhp import gates
from tf_dynhp.layers import L0Dense, SelectFeatures


def layer_roundtrip(layer, x, tmp_path):
    """larq-style layer test: build, call, save in a model, load, compare, config round trip."""
    inputs = keras.Input(x.shape[1:])
    model = keras.Model(inputs, layer(inputs))
    expected = model.predict(x, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    return expected


@pytest.mark.parametrize(
    "layer",
    [
        lambda: L0Dense(4, activation="relu", dataset_size=10, seed=3),
        lambda: L0Dense(3, use_bias=False, l0_lambda=0.1, weight_decay=1e-4, droprate_init=0.2, dataset_size=5),
        lambda: SelectFeatures([0, 2, 5]),
    ],
)
def test_layer_roundtrip(layer, tmp_path, rng):
    x = rng.normal(size=(6, 7)).astype("float32")
    layer_roundtrip(layer(), x, tmp_path)


def test_inference_uses_deterministic_gates(rng):
    layer = L0Dense(3, dataset_size=10)
    x = rng.normal(size=(4, 5)).astype("float32")
    y = np.asarray(layer(x, training=False))
    g = np.asarray(gates.deterministic_gates(layer.log_alpha))
    expected = (x * g) @ layer.kernel.numpy() + layer.bias.numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_training_gates_are_per_example_and_seeded(rng):
    x = np.ones((64, 6), "float32")
    a = L0Dense(2, dataset_size=10, seed=7)
    b = L0Dense(2, dataset_size=10, seed=7)
    a.build(x.shape)
    b.build(x.shape)
    b.set_weights(a.get_weights())
    ra, rb = a.forward(x, training=True), b.forward(x, training=True)
    open_a = np.asarray(ra.gate_open)
    np.testing.assert_array_equal(open_a, np.asarray(rb.gate_open))
    assert open_a.shape == (64, 6)
    # Independent samples per example: rows differ.
    assert len({tuple(r) for r in open_a}) > 1
    # The indicator is exactly z > 0 of the gated inputs (x = 1).
    np.testing.assert_array_equal(open_a, (np.asarray(ra.gated_inputs) > 0).astype("float32"))


def test_log_alpha_initialisation():
    layer = L0Dense(3, droprate_init=0.2, dataset_size=1, seed=1)
    layer.build((None, 4000))
    la = layer.log_alpha.numpy()
    assert la.mean() == pytest.approx(math.log(0.8 / 0.2), abs=2e-3)
    assert la.std() == pytest.approx(1e-2, rel=0.1)


def test_penalty_reference_scale():
    """Eq. 5 on the reference L0 code's scale: (1/N) sum_j P(z_j>0) (lambda * units + 0.5 wd ||W_j||^2) + bias decay."""
    layer = L0Dense(300, l0_lambda=0.01, weight_decay=1e-3, dataset_size=60000, seed=0)
    layer.build((None, 784))
    p = np.asarray(gates.prob_open(layer.log_alpha.numpy()))
    w, b = layer.kernel.numpy(), np.linspace(-1, 1, 300).astype("float32")
    layer.bias.assign(b)
    expected = (np.sum(p * (0.01 * 300 + 0.5e-3 * np.sum(w**2, axis=1))) + 0.5e-3 * np.sum(b**2)) / 60000
    assert float(layer.penalty()) == pytest.approx(expected, rel=1e-5)
    # droprate_init 0.5 => P(z>0) ~ 0.80: lambda=0.01 gives ~0.031 for the 784-300 layer.
    assert float(layer.penalty()) == pytest.approx(0.01 * 300 * 784 * float(np.mean(p)) / 60000, rel=0.05)


def test_penalty_added_in_training_call_only(rng):
    layer = L0Dense(2, dataset_size=100)
    x = rng.normal(size=(3, 4)).astype("float32")
    layer(x, training=False)
    assert len(layer.losses) == 0
    layer(x, training=True)
    assert len(layer.losses) == 1
    assert float(layer.losses[0]) == pytest.approx(float(layer.penalty()))


def test_penalty_without_dataset_size_is_a_clear_error():
    layer = L0Dense(2, name="gated")
    layer.build((None, 3))
    with pytest.raises(ValueError, match="gated.*dataset_size"):
        layer.penalty()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"units": 0}, "units"),
        ({"units": 2, "l0_lambda": -1.0}, "l0_lambda"),
        ({"units": 2, "droprate_init": 1.0}, "droprate_init"),
        ({"units": 2, "temperature": 0.0}, "temperature"),
        ({"units": 2, "limit_l": 0.1}, "limit_l"),
        ({"units": 2, "dataset_size": 0}, "dataset_size"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        L0Dense(**kwargs)


def test_log_alpha_is_clipped_after_updates():
    layer = L0Dense(2, dataset_size=1, l0_lambda=0.0)
    layer.build((None, 3))
    opt = keras.optimizers.SGD(learning_rate=100.0)
    opt.apply_gradients([(np.array([1.0, -1.0, 0.0], "float32"), layer.log_alpha)])
    la = layer.log_alpha.numpy()
    assert la[0] == pytest.approx(gates.LOG_ALPHA_MIN)
    assert la[1] == pytest.approx(gates.LOG_ALPHA_MAX)


def test_select_features(rng):
    x = rng.normal(size=(2, 6)).astype("float32")
    np.testing.assert_array_equal(np.asarray(SelectFeatures([1, 4])(x)), x[:, [1, 4]])
    with pytest.raises(ValueError, match="indices"):
        SelectFeatures([3, 1])
    with pytest.raises(ValueError, match="out of range"):
        SelectFeatures([0, 9])(x)


def test_public_api_exports():
    for name in tf_dynhp.__all__:
        assert hasattr(tf_dynhp, name), name
