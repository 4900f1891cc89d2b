"""Hard-concrete gate math (Louizos, Welling, Kingma 2018; DynHP paper Eq. 2-5).

Pure functions written with `keras.ops`, so they accept NumPy arrays and tensors
alike. Each is checked against a plain NumPy reference in `tests/test_gates.py`.

Notation follows the paper and the reference L0 code: `log_alpha` is the gate
logit (phi in the paper), `temperature` the concrete temperature (beta),
`limit_l < 0` and `limit_r > 1` the stretch interval (gamma, zeta in Louizos et al.).
"""

from __future__ import annotations

import math

from keras import ops

__all__ = [
    "TEMPERATURE",
    "LIMIT_L",
    "LIMIT_R",
    "EPSILON",
    "LOG_ALPHA_MIN",
    "LOG_ALPHA_MAX",
    "log_alpha_init_mean",
    "prob_open",
    "sample_gates",
    "deterministic_gates",
]

#: The hard-concrete constants of the reference L0 code (Louizos et al. 2018), the one
#: place they are stated: temperature beta = 2/3 and the stretch interval
#: (gamma, zeta) = (-0.1, 1.1). Every layer, kernel and conversion defaults to these.
TEMPERATURE = 2.0 / 3.0
LIMIT_L = -0.1
LIMIT_R = 1.1
#: Uniform noise is drawn from U(EPSILON, 1 - EPSILON), and P(z > 0) is clipped
#: to [EPSILON, 1 - EPSILON], as in the reference implementation.
EPSILON = 1e-6
#: Range the gate logits are clipped to after every update (reference code:
#: log(1e-2) .. log(1e2)).
LOG_ALPHA_MIN = math.log(1e-2)
LOG_ALPHA_MAX = math.log(1e2)


def log_alpha_init_mean(droprate_init: float) -> float:
    """Mean of the initial gate logits for a drop rate: `log(1 - d) - log(d)`.

    Args:
        droprate_init: initial probability that a gate is closed, in (0, 1).

    Returns:
        The mean of the normal initializer of `log_alpha` (std 1e-2 in the layers).

    Raises:
        ValueError: if `droprate_init` is not in (0, 1).
    """
    if not 0.0 < droprate_init < 1.0:
        raise ValueError(
            "Invalid value received for argument `droprate_init`. Expected a float "
            f"in (0, 1). Received: droprate_init={droprate_init!r}"
        )
    return math.log(1.0 - droprate_init) - math.log(droprate_init)


def _stretch(limit_l: float, limit_r: float) -> float:
    """`limit_l / limit_r`, for finite `limit_l < 0` and `limit_r > 1` (else a ValueError
    naming them: a math domain error, or a silently wrong probability, before)."""
    if not (math.isfinite(limit_l) and math.isfinite(limit_r) and limit_l < 0.0 and limit_r > 1.0):
        raise ValueError("Invalid values received for arguments `limit_l`, `limit_r`. Expected finite limit_l < 0 "
                         f"and limit_r > 1. Received: limit_l={limit_l!r}, limit_r={limit_r!r}")
    return limit_l / limit_r


def prob_open(log_alpha, temperature: float = TEMPERATURE, limit_l: float = LIMIT_L, limit_r: float = LIMIT_R):
    """P(z > 0) = 1 - Q_s(0 | phi), paper Eq. 4.

    Q_s is the CDF of the stretched concrete variable: at 0 it equals
    `sigmoid(temperature * log(-limit_l / limit_r) - log_alpha)`. The result is
    clipped to [EPSILON, 1 - EPSILON] like the reference code. This is the
    per-gate term of the expected-L0 penalty of Eq. 5.

    Args:
        log_alpha: gate logits, any shape.
        temperature: concrete temperature (beta).
        limit_l: lower end of the stretch interval (< 0).
        limit_r: upper end of the stretch interval (> 1).

    Returns:
        Probabilities of each gate being non-zero, same shape as `log_alpha`.
    """
    shift = temperature * math.log(-_stretch(limit_l, limit_r))
    cdf_zero = ops.sigmoid(shift - log_alpha)
    return ops.clip(1.0 - cdf_zero, EPSILON, 1.0 - EPSILON)


def sample_gates(u, log_alpha, temperature: float = TEMPERATURE, limit_l: float = LIMIT_L, limit_r: float = LIMIT_R):
    """Hard-concrete gate sample z for uniform noise u (paper Sec. 3, z = min(1, max(0, s))).

    `s = sigmoid((log u - log(1 - u) + log_alpha) / temperature)` is stretched to
    `(limit_l, limit_r)` and clipped to [0, 1]. A gate is *open* when `z > 0`; those
    indicators are what the activation rate of Eq. 6 counts.

    Args:
        u: uniform noise in (0, 1); broadcast against `log_alpha` (one row per example).
        log_alpha: gate logits.
        temperature, limit_l, limit_r: see `prob_open`.

    Returns:
        Gate values in [0, 1] with the broadcast shape of `u` and `log_alpha`.
    """
    s = ops.sigmoid((ops.log(u) - ops.log(1.0 - u) + log_alpha) / temperature)
    return ops.clip(s * (limit_r - limit_l) + limit_l, 0.0, 1.0)


def deterministic_gates(log_alpha, limit_l: float = LIMIT_L, limit_r: float = LIMIT_R):
    """Test-time gate `clip(sigmoid(log_alpha) * (limit_r - limit_l) + limit_l, 0, 1)`.

    Args:
        log_alpha: gate logits.
        limit_l, limit_r: see `prob_open`.

    Returns:
        Deterministic gate values in [0, 1]; exactly 0 for gates the stripped model drops.
    """
    return ops.clip(ops.sigmoid(log_alpha) * (limit_r - limit_l) + limit_l, 0.0, 1.0)


def gated_product(inputs, u, log_alpha, temperature: float = TEMPERATURE, limit_l: float = LIMIT_L, limit_r: float = LIMIT_R):
    """`inputs * z` for per-example hard-concrete gates z (as `sample_gates`), and `z > 0`.

    The same values as `inputs * sample_gates(u, log_alpha, ...)`, with a hand-written
    gradient: per element, `d(x z)/d log_alpha = x (r - l) s (1 - s) / T` where the
    stretched sample lies in [0, 1] and 0 where the clip moved it, and
    `d(x z)/dx = z`. This skips the per-op gradients automatic differentiation
    builds for each step of the composition (the clip's masks, the stretch, the
    division by T, the broadcast sums of each addition), and the open indicator
    reuses the forward pass (`tools/benchmark_step.py` part 3 times the result). TensorFlow only (`tf.custom_gradient`);
    the training step of the `L0Dense` layer uses it. Checked against the
    composition, values and gradients, in `tests/test_gates.py`.

    Args:
        inputs: (batch, gates) what the gates multiply.
        u: (batch, gates) uniform noise in (0, 1).
        log_alpha: (gates,) gate logits.
        temperature, limit_l, limit_r: see `prob_open`.

    Returns:
        `(gated, open)`: `inputs * z` and the float indicator `z > 0`, both (batch, gates).
    """
    import tensorflow as tf

    scale = limit_r - limit_l
    inv_t = 1.0 / temperature
    inputs = tf.convert_to_tensor(inputs)
    u = tf.cast(u, inputs.dtype)

    @tf.custom_gradient
    def _gated(x, la):
        s = tf.sigmoid((tf.math.log(u / (1.0 - u)) + la) * inv_t)
        z_raw = s * scale + limit_l
        # One pass each: the raw clip op (tf.clip_by_value is a minimum and a maximum),
        # and sign(z) as the open indicator (z >= 0, so it is 1 exactly where z > 0).
        z = tf.raw_ops.ClipByValue(t=z_raw, clip_value_min=tf.zeros((), z_raw.dtype), clip_value_max=tf.ones((), z_raw.dtype))

        def grad(upstream, _upstream_open):
            # The clip passes the gradient where it did not move the sample (z == z_raw),
            # boundaries included, as tf.clip_by_value's own gradient does.
            d_la = tf.where(tf.equal(z, z_raw), upstream * x * (s - s * s), tf.zeros_like(s))
            return upstream * z, tf.reduce_sum(d_la, axis=0) * (scale * inv_t)

        return (x * z, tf.sign(z)), grad

    return _gated(inputs, tf.cast(log_alpha, inputs.dtype))
