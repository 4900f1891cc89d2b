"""The fused Adam path of the DynHP step against Keras' own Adam (tf_dynhp/optim.py)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_dynhp import gates, optim
from tf_dynhp.layers import L0Dense


def _variables(dtype, rng):
    """kernel (7, 5), bias (5,), log_alpha (7,) of a real L0Dense: the logits carry the clip constraint."""
    layer = L0Dense(5, dtype=dtype, dataset_size=100)
    layer.build((None, 7))
    for v in layer.trainable_variables:
        v.assign(rng.normal(size=v.shape).astype(dtype))
    layer.log_alpha.assign(np.linspace(4.0, -4.0, 7).astype(dtype))
    assert layer.log_alpha.constraint is not None
    return [layer.kernel, layer.bias, layer.log_alpha]


def _run(make_optimizer, fused: bool, dtype: str, steps: int = 25):
    rng = np.random.default_rng(0)
    variables = _variables(dtype, rng)
    opt = make_optimizer()
    opt.build(variables)
    grads = [[rng.normal(size=v.shape).astype(dtype) * 10 for v in variables] for _ in range(steps)]
    for gs in grads:  # push the first gate logits up, past the clip range
        gs[2][:3] = -np.abs(gs[2][:3])

    @tf.function
    def step(gs):
        if fused:
            optim.apply_gradients(opt, gs, variables)
        else:
            opt.apply(gs, variables)

    for gs in grads:
        step([tf.constant(g) for g in gs])
    return [v.numpy() for v in variables], [v.numpy() for v in opt.variables]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda: keras.optimizers.Adam(0.05),
        lambda: keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(0.05, 5, 0.5), beta_1=0.8, epsilon=1e-4),
    ],
    ids=["constant_lr", "schedule"],
)
def test_fused_adam_equals_keras_adam(make_optimizer, dtype, request):
    assert optim.fused_adam_supported(make_optimizer())
    w_fused, s_fused = _run(make_optimizer, True, dtype)
    w_keras, s_keras = _run(make_optimizer, False, dtype)
    # Keras rounds some of its scalars through float32 even for float64 variables: the
    # paths agree to float32 precision, not bit for bit.
    tol = 2e-5
    for a, b in zip(w_fused + s_fused, w_keras + s_keras):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    # The clip constraint holds; at the constant rate the logits were pushed past it.
    assert np.max(np.abs(w_fused[2])) <= gates.LOG_ALPHA_MAX * (1 + 1e-6)
    if request.node.callspec.id.startswith("constant_lr"):
        assert np.max(np.abs(w_fused[2])) == pytest.approx(gates.LOG_ALPHA_MAX, rel=1e-6)


@pytest.mark.parametrize(
    "optimizer",
    [
        keras.optimizers.Adam(amsgrad=True),
        keras.optimizers.Adam(weight_decay=0.1),
        keras.optimizers.Adam(clipnorm=1.0),
        keras.optimizers.Adam(use_ema=True),
        keras.optimizers.AdamW(),
        keras.optimizers.SGD(0.1),
    ],
    ids=["amsgrad", "weight_decay", "clipnorm", "ema", "adamw", "sgd"],
)
def test_other_optimizers_take_keras_path(optimizer):
    """Anything the kernel does not compute falls back to optimizer.apply (same result as Keras)."""
    assert not optim.fused_adam_supported(optimizer)
    rng = np.random.default_rng(1)
    variables = _variables("float32", rng)
    optimizer.build(variables)
    g = [tf.constant(rng.normal(size=v.shape).astype("float32")) for v in variables]
    before = [v.numpy() for v in variables]
    optim.apply_gradients(optimizer, g, variables)
    assert int(optimizer.iterations.numpy()) == 1
    assert any(not np.array_equal(b, v.numpy()) for b, v in zip(before, variables))
