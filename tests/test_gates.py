"""Gate math (paper Eq. 4, hard-concrete sampling) against plain NumPy references."""

import math

import numpy as np
import pytest

from tf_dynhp import gates

T, L, R = 2.0 / 3.0, -0.1, 1.1


def np_sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def np_prob_open(log_alpha, t=T, l=L, r=R):
    # Q_s(0) of the stretched concrete: P(s < 0) = P(sigmoid(...) < -l/(r-l)).
    xn = (0.0 - l) / (r - l)
    cdf = np_sigmoid((np.log(xn) - np.log(1 - xn)) * t - log_alpha)
    return np.clip(1.0 - cdf, gates.EPSILON, 1 - gates.EPSILON)


def np_sample(u, log_alpha, t=T, l=L, r=R):
    s = np_sigmoid((np.log(u) - np.log(1 - u) + log_alpha) / t)
    return np.clip(s * (r - l) + l, 0.0, 1.0)


@pytest.mark.parametrize("t,l,r", [(T, L, R), (0.5, -0.2, 1.3), (1.0, -0.05, 1.05)])
def test_prob_open_matches_numpy(t, l, r):
    la = np.linspace(-6, 6, 41)
    np.testing.assert_allclose(np.asarray(gates.prob_open(la, t, l, r)), np_prob_open(la, t, l, r), rtol=1e-6)


def test_prob_open_is_clipped_to_epsilon():
    # As the reference code: P(z > 0) never reaches 0 or 1.
    p = np.asarray(gates.prob_open(np.array([-50.0, 50.0])))
    assert p[0] == gates.EPSILON and p[1] == 1.0 - gates.EPSILON


def test_prob_open_known_value():
    # log_alpha = T*log(-L/R) is the point where P(z > 0) = 1/2.
    la = T * math.log(-L / R)
    assert float(gates.prob_open(np.float64(la))) == pytest.approx(0.5, abs=1e-9)


def test_sample_matches_numpy(rng):
    u = rng.uniform(gates.EPSILON, 1 - gates.EPSILON, size=(7, 5))
    la = rng.normal(size=(5,))
    np.testing.assert_allclose(np.asarray(gates.sample_gates(u, la)), np_sample(u, la), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("log_alpha", [-3.0, -1.0, 0.0, 0.5, 2.0])
def test_open_rate_of_samples_is_prob_open(log_alpha, rng):
    u = rng.uniform(gates.EPSILON, 1 - gates.EPSILON, size=200_000)
    z = np.asarray(gates.sample_gates(u, np.full_like(u, log_alpha)))
    expected = float(np_prob_open(np.array(log_alpha)))
    # Binomial standard error at n=2e5 is <= 1.2e-3; 5 sigma.
    assert np.mean(z > 0) == pytest.approx(expected, abs=6e-3)
    assert z.min() >= 0.0 and z.max() <= 1.0
    # The stretch and clip put mass on exact zeros and ones: P(z = 1) = P(s >= (1 - l) / (r - l))
    # = 1 - sigmoid(T * logit((1 - l) / (r - l)) - log_alpha), for every log_alpha (1% at -3).
    xo = (1.0 - L) / (R - L)
    p_one = 1.0 - float(np_sigmoid(T * (np.log(xo) - np.log(1 - xo)) - log_alpha))
    assert np.mean(z == 1.0) == pytest.approx(p_one, abs=5 * math.sqrt(p_one * (1 - p_one) / u.size))
    assert np.mean(z == 0.0) == pytest.approx(1.0 - expected, abs=6e-3)


def test_deterministic_gates_match_numpy():
    la = np.linspace(-5, 5, 21)
    expected = np.clip(np_sigmoid(la) * (R - L) + L, 0, 1)
    np.testing.assert_allclose(np.asarray(gates.deterministic_gates(la)), expected, rtol=1e-6)
    assert np.asarray(gates.deterministic_gates(np.array([-5.0])))[0] == 0.0


def test_log_alpha_init_mean():
    assert gates.log_alpha_init_mean(0.5) == 0.0
    assert gates.log_alpha_init_mean(0.2) == pytest.approx(math.log(4.0))
    with pytest.raises(ValueError, match="droprate_init"):
        gates.log_alpha_init_mean(1.0)
    with pytest.raises(ValueError) as info:
        gates.log_alpha_init_mean(0.0)
    assert str(info.value) == (
        "Invalid value received for argument `droprate_init`. Expected a float in (0, 1). Received: droprate_init=0.0"
    )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gated_product_matches_the_composition_and_its_gradient(dtype):
    """gated_product's values and hand-written gradient == autodiff of inputs * sample_gates(...)."""
    import tensorflow as tf

    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(size=(64, 9)).astype(dtype))
    u = tf.constant(rng.uniform(gates.EPSILON, 1 - gates.EPSILON, size=(64, 9)).astype(dtype))
    # logits from closed to open so that samples land below 0, inside (0, 1) and above 1
    log_alpha = tf.Variable(np.linspace(-3.0, 3.0, 9).astype(dtype))
    weights = tf.constant(rng.normal(size=(64, 9)).astype(dtype))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        gated, opened = gates.gated_product(x, u, log_alpha)
        loss = tf.reduce_sum(tf.sin(gated) * weights)
        z_ref = gates.sample_gates(u, log_alpha)
        loss_ref = tf.reduce_sum(tf.sin(x * z_ref) * weights)
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(gated.numpy(), (x * z_ref).numpy(), rtol=tol, atol=tol)
    np.testing.assert_array_equal(opened.numpy(), (z_ref.numpy() > 0).astype(dtype))
    z = z_ref.numpy()
    assert (z == 0).any() and ((z > 0) & (z < 1)).any() and (z == 1).any()
    for got, want in zip(tape.gradient(loss, [x, log_alpha]), tape.gradient(loss_ref, [x, log_alpha])):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=tol * 10, atol=tol)
