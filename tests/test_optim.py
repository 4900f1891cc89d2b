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


MAKERS = [
    lambda: keras.optimizers.Adam(0.05),
    lambda: keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(0.05, 5, 0.5), beta_1=0.8, epsilon=1e-4),
]


def _normwise(a, b):
    """max |a - b| over max |b|: the error relative to the array's scale."""
    return float(np.max(np.abs(a - b))) / max(float(np.max(np.abs(b))), 1e-300)


@pytest.mark.parametrize("make_optimizer", MAKERS, ids=["constant_lr", "schedule"])
def test_fused_adam_equals_keras_adam(make_optimizer, request):
    """float32, 25 steps: variables and slots against Keras' `Adam.apply`. ResourceApplyAdam
    takes beta_2 and forms 1 - beta_2 in float32 (0.999 is not a float32: 1.3e-5 off the
    0.001 Keras uses), so the velocities differ by 1.3e-5 of their scale, the weights by
    a few 1e-6; nothing else differs."""
    assert optim.fused_adam_supported(make_optimizer())
    w_fused, s_fused = _run(make_optimizer, True, "float32")
    w_keras, s_keras = _run(make_optimizer, False, "float32")
    for a, b in zip(w_fused, w_keras):
        assert _normwise(a, b) <= 5e-6
    for a, b in zip(s_fused, s_keras):
        assert _normwise(a, b) <= 2e-5
    # The clip constraint holds; at the constant rate the logits were pushed past it.
    assert np.max(np.abs(w_fused[2])) <= gates.LOG_ALPHA_MAX * (1 + 1e-6)
    if request.node.callspec.id.startswith("constant_lr"):
        assert np.max(np.abs(w_fused[2])) == pytest.approx(gates.LOG_ALPHA_MAX, rel=1e-6)


@pytest.mark.parametrize("make_optimizer", MAKERS, ids=["constant_lr", "schedule"])
def test_fused_adam_equals_keras_adam_float64(make_optimizer):
    """float64 has room for Keras' scalars: the paths must agree to rounding."""
    w_fused, s_fused = _run(make_optimizer, True, "float64")
    w_keras, s_keras = _run(make_optimizer, False, "float64")
    for a, b in zip(w_fused + s_fused, w_keras + s_keras):
        assert _normwise(a, b) <= 1e-12


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda: keras.optimizers.Adam(amsgrad=True),
        lambda: keras.optimizers.Adam(weight_decay=0.1),
        lambda: keras.optimizers.Adam(clipnorm=1.0),
        lambda: keras.optimizers.Adam(use_ema=True, ema_overwrite_frequency=3),
        lambda: keras.optimizers.AdamW(),
        lambda: keras.optimizers.SGD(0.1, momentum=0.9),
    ],
    ids=["amsgrad", "weight_decay", "clipnorm", "ema", "adamw", "sgd"],
)
def test_other_optimizers_take_keras_path(make_optimizer):
    """Anything the kernel does not compute falls back to optimizer.apply: after several
    steps the variables and every optimizer variable equal Keras' own `apply`, bit for bit."""
    assert not optim.fused_adam_supported(make_optimizer())
    results = []
    for path in ("tf_dynhp", "keras"):
        rng = np.random.default_rng(1)
        variables = _variables("float32", rng)
        optimizer = make_optimizer()
        optimizer.build(variables)
        before = [v.numpy() for v in variables]
        for _ in range(6):
            g = [tf.constant(rng.normal(size=v.shape).astype("float32")) for v in variables]
            if path == "tf_dynhp":
                optim.apply_gradients(optimizer, g, variables)
            else:
                optimizer.apply(g, variables)
        assert int(optimizer.iterations.numpy()) == 6
        assert all(not np.array_equal(b, v.numpy()) for b, v in zip(before, variables))
        results.append([v.numpy() for v in variables] + [v.numpy() for v in optimizer.variables])
    assert len(results[0]) == len(results[1])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_an_optimizer_whose_slots_cannot_be_sliced_is_refused_before_training():
    """Adafactor's factored moments (a row and a column vector per kernel) are not shaped
    like their variable: the first prune failed, an epoch into the run."""
    import tf_dynhp

    rng = np.random.default_rng(0)
    x, y = rng.random((60, 20), dtype=np.float32), rng.integers(0, 3, 60)
    epochs = []

    class Spy(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            epochs.append(epoch)

    def model():
        return keras.Sequential([keras.Input((20,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])

    with pytest.raises(ValueError, match=r"Optimizer Adafactor: its slot '.*', shape \(\d+,\), .*method='sp'"):
        tf_dynhp.fit(model(), x, y, method="hp", epochs=2, verbose=0, optimizer=keras.optimizers.Adafactor(), callbacks=[Spy()])
    assert epochs == []
    tf_dynhp.fit(model(), x, y, method="sp", epochs=1, verbose=0, optimizer=keras.optimizers.Adafactor())  # prunes nothing
