"""L0Dense, L0Conv2D and SelectFeatures: build, call, serialize, penalty scale, errors."""

import math

import keras
import numpy as np
import pytest

import tf_dynhp
from tf_dynhp import gates
from tf_dynhp.layers import L0Conv2D, L0Dense, SelectFeatures


def np_conv2d(x, kernel, strides=(1, 1), padding="valid"):
    """Plain NumPy channels_last convolution (cross-correlation) with TensorFlow's SAME padding."""
    kh, kw = kernel.shape[:2]
    sh, sw = strides
    if padding == "same":
        pads = []
        for size, k, st in ((x.shape[1], kh, sh), (x.shape[2], kw, sw)):
            total = max((-(-size // st) - 1) * st + k - size, 0)
            pads.append((total // 2, total - total // 2))
        x = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    oh, ow = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    out = np.zeros((x.shape[0], oh, ow, kernel.shape[3]))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * sh : i * sh + kh, j * sw : j * sw + kw, :]
            out[:, i, j, :] = np.einsum("bhwc,hwcf->bf", patch, kernel)
    return out


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


DENSE_IN = (6, 7)
CONV_IN = (3, 7, 6, 2)


@pytest.mark.parametrize(
    "layer,shape",
    [
        (lambda: L0Dense(4, activation="relu", dataset_size=10, seed=3), DENSE_IN),
        (lambda: L0Dense(3, use_bias=False, l0_lambda=0.1, weight_decay=1e-4, droprate_init=0.2, dataset_size=5), DENSE_IN),
        (lambda: SelectFeatures([0, 2, 5]), DENSE_IN),
        (lambda: L0Conv2D(3, 3, activation="relu", dataset_size=10, seed=3), CONV_IN),
        (lambda: L0Conv2D(4, (3, 2), strides=2, padding="same", use_bias=False, weight_decay=1e-4, droprate_init=0.2, dataset_size=5), CONV_IN),
    ],
)
def test_layer_roundtrip(layer, shape, tmp_path, rng):
    x = rng.normal(size=shape).astype("float32")
    layer_roundtrip(layer(), x, tmp_path)


@pytest.mark.parametrize(
    "layer,shape,reference",
    [
        (lambda: L0Dense(3, dataset_size=10), (4, 5), lambda l, x, g: (x * g) @ l.kernel.numpy() + l.bias.numpy()),
        (
            lambda: L0Conv2D(4, 3, dataset_size=10),
            (2, 7, 6, 2),
            lambda l, x, g: (np_conv2d(x, l.kernel.numpy()) + l.bias.numpy()) * g,
        ),
        (
            lambda: L0Conv2D(5, (3, 2), strides=(2, 1), padding="same", activation="relu", dataset_size=10),
            (2, 7, 6, 2),
            lambda l, x, g: np.maximum((np_conv2d(x, l.kernel.numpy(), (2, 1), "same") + l.bias.numpy()) * g, 0.0),
        ),
    ],
)
def test_inference_uses_deterministic_gates(layer, shape, reference, rng):
    layer = layer()
    x = rng.normal(size=shape).astype("float32")
    layer.build(x.shape)
    layer.bias.assign(rng.normal(size=layer.bias.shape).astype("float32"))
    layer.log_alpha.assign(np.linspace(-3.0, 2.0, layer.log_alpha.shape[0]).astype("float32"))
    y = np.asarray(layer(x, training=False))
    la = layer.log_alpha.numpy().astype(np.float64)
    g = np.clip(1 / (1 + np.exp(-la)) * 1.2 - 0.1, 0, 1)  # NumPy deterministic gate, (r - l) = 1.2
    assert g[0] == 0.0 and 0.0 < g[-1] < 1.0  # a closed gate and a fractional one
    np.testing.assert_allclose(y, reference(layer, x.astype(np.float64), g), rtol=1e-5, atol=1e-5)


def test_integer_inputs_are_gated_as_floats(rng):
    """A uint8 `keras.Input`: the deterministic gates in [0, 1] were cast to the input's
    dtype, 0, so the gated model answered the same for every image."""
    x = rng.integers(0, 256, (4, 12)).astype("uint8")
    model = keras.Sequential([keras.Input((12,), dtype="uint8"), keras.layers.Dense(5, activation="relu"),
                              keras.layers.Dense(3)])
    gated = tf_dynhp.to_l0(model, dataset_size=100)
    h = x.astype("float32")
    for layer in gated.layers:
        if not isinstance(layer, keras.layers.InputLayer):
            h = layer(h, training=False)
    np.testing.assert_allclose(gated.predict(x, verbose=0), keras.ops.convert_to_numpy(h), rtol=1e-6)
    layer = next(layer for layer in gated.layers if isinstance(layer, L0Dense))
    for training in (True, False):  # the training path too (TF ops), and its per-example gates see the pixels
        out = layer.forward(keras.ops.convert_to_tensor(x), training=training, gate_kernel="tf")
        assert out.outputs.dtype == "float32"


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_training_gates_are_per_example_and_seeded(kind, rng):
    if kind == "dense":
        x, make = np.ones((64, 6), "float32"), lambda: L0Dense(2, dataset_size=10, seed=7)
    else:
        x, make = rng.normal(size=(64, 5, 5, 2)).astype("float32"), lambda: L0Conv2D(6, 3, dataset_size=10, seed=7)
    a, b = make(), make()
    a.build(x.shape)
    b.build(x.shape)
    b.set_weights(a.get_weights())
    ra, rb = a.forward(x, training=True), b.forward(x, training=True)
    open_a = np.asarray(ra.gate_open)
    np.testing.assert_array_equal(open_a, np.asarray(rb.gate_open))
    assert open_a.shape == (64, 6)
    # Independent samples per example: rows differ.
    assert len({tuple(r) for r in open_a}) > 1
    if kind == "dense":
        # The indicator is exactly z > 0 of the gated inputs (x = 1).
        np.testing.assert_array_equal(open_a, (np.asarray(ra.gated_inputs) > 0).astype("float32"))
    else:
        # Given noise: z from the NumPy hard-concrete sample, the output is pre * z per channel.
        u = rng.uniform(gates.EPSILON, 1 - gates.EPSILON, size=(64, 6))
        r = a.forward(x, training=True, noise=u.astype("float32"))
        s = 1 / (1 + np.exp(-(np.log(u) - np.log(1 - u) + a.log_alpha.numpy()) / a.temperature))
        z = np.clip(s * 1.2 - 0.1, 0, 1)
        np.testing.assert_array_equal(np.asarray(r.gate_open), (z > 0).astype("float32"))
        pre = np_conv2d(x.astype(np.float64), a.kernel.numpy()) + a.bias.numpy()
        np.testing.assert_allclose(np.asarray(r.pre_activation), pre, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(r.outputs), pre * z[:, None, None, :], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_log_alpha_initialisation(kind):
    if kind == "dense":
        layer = L0Dense(3, droprate_init=0.2, dataset_size=1, seed=1)
        layer.build((None, 4000))
    else:
        layer = L0Conv2D(4000, 1, droprate_init=0.2, dataset_size=1, seed=1)
        layer.build((None, 2, 2, 1))
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


def test_conv_penalty_reference_scale(rng):
    """(1/N) sum_c P(z_c>0) (lambda * kh*kw*in + 0.5 wd (||W_c||^2 + b_c^2)): the decay of the gated bias too."""
    layer = L0Conv2D(50, 5, l0_lambda=0.1, weight_decay=1e-3, dataset_size=60000, seed=0)
    layer.build((None, 12, 12, 20))
    layer.log_alpha.assign(rng.normal(0.0, 2.0, size=50).astype("float32"))
    b = np.linspace(-1, 1, 50).astype("float32")
    layer.bias.assign(b)
    la, w = layer.log_alpha.numpy().astype(np.float64), layer.kernel.numpy().astype(np.float64)
    p = np.clip(1 - 1 / (1 + np.exp(-((2 / 3) * np.log(0.1 / 1.1) - la))), 1e-6, 1 - 1e-6)  # NumPy Eq. 4
    per_channel = 0.1 * 5 * 5 * 20 + 0.5e-3 * (np.sum(w**2, axis=(0, 1, 2)) + b.astype(np.float64) ** 2)
    assert float(layer.penalty()) == pytest.approx(np.sum(p * per_channel) / 60000, rel=1e-5)
    no_decay = L0Conv2D(50, 5, l0_lambda=0.1, use_bias=False, dataset_size=60000)
    no_decay.build((None, 12, 12, 20))
    no_decay.log_alpha.assign(layer.log_alpha.numpy())
    assert float(no_decay.penalty()) == pytest.approx(np.sum(p * 0.1 * 500) / 60000, rel=1e-5)


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_penalty_added_in_training_call_only(kind, rng):
    if kind == "dense":
        layer, x = L0Dense(2, dataset_size=100), rng.normal(size=(3, 4)).astype("float32")
    else:
        layer, x = L0Conv2D(2, 2, dataset_size=100), rng.normal(size=(3, 4, 4, 2)).astype("float32")
    layer(x, training=False)
    assert len(layer.losses) == 0
    layer(x, training=True)
    assert len(layer.losses) == 1
    assert float(layer.losses[0]) == pytest.approx(float(layer.penalty()))


@pytest.mark.parametrize("make,shape", [(lambda: L0Dense(2, name="gated"), (None, 3)), (lambda: L0Conv2D(2, 1, name="gated"), (None, 3, 3, 1))])
def test_penalty_without_dataset_size_is_a_clear_error(make, shape):
    layer = make()
    layer.build(shape)
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


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"filters": 0, "kernel_size": 3}, "filters"),
        ({"filters": 2, "kernel_size": 0}, "kernel_size"),
        ({"filters": 2, "kernel_size": (3, 3, 3)}, "kernel_size"),
        ({"filters": 2, "kernel_size": 3, "strides": (1, 0)}, "strides"),
        ({"filters": 2, "kernel_size": 3, "padding": "causal"}, "padding.*'valid' or 'same'"),
        ({"filters": 2, "kernel_size": 3, "data_format": "channels_first"}, "data_format.*channels_last"),
        ({"filters": 2, "kernel_size": 3, "droprate_init": 0.0}, "droprate_init"),
    ],
)
def test_conv_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        L0Conv2D(**kwargs)


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


def test_layers_train_with_keras_fit_under_a_mixed_policy():
    # Under mixed_float16 the penalty was computed from float16 reads of the variables:
    # keras.Model.fit failed summing it with the float32 loss ("Cannot convert a list
    # containing a tensor of dtype float16 to float32").
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 8, 8, 1)).astype("float32"), rng.integers(0, 3, 64)
    keras.config.set_dtype_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8, 8, 1)), L0Conv2D(4, 3, activation="relu", dataset_size=64),
                                  keras.layers.Flatten(), L0Dense(8, activation="relu", dataset_size=64, weight_decay=1e-4),
                                  L0Dense(3, dataset_size=64), keras.layers.Activation("softmax", dtype="float32")])
        model.compile("adam", "sparse_categorical_crossentropy")
        history = model.fit(x, y, epochs=1, batch_size=32, verbose=0)
        assert np.isfinite(history.history["loss"][0])
        for layer in (model.layers[0], model.layers[2]):
            assert layer.compute_dtype == "float16" and layer.penalty().dtype == "float32"
    finally:
        keras.config.set_dtype_policy("float32")


def _gated_model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((20,))
    hidden = L0Dense(8, activation="relu", dataset_size=64)(inp)
    return tf_dynhp.GatedModel(inp, L0Dense(3, activation="softmax", dataset_size=64)(hidden))


def test_keras_fit_on_a_gated_model_follows_compiled_loss_metrics_and_sample_weight():
    # train_step ignored the compiled loss and sample_weight, and any compiled metric made
    # fit fail ("Cannot get result() since the metric has not yet been built").
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 20)).astype("float32"), rng.integers(0, 3, 64)
    model = _gated_model()
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    logs = model.fit(x, y, epochs=1, batch_size=64, verbose=0).history
    assert set(logs) == {"loss", "accuracy"} and 0 <= logs["accuracy"][0] <= 1

    def first_loss(loss):
        model = _gated_model()
        model.compile("adam", loss)
        return model.fit(x, y, epochs=1, batch_size=64, verbose=0, shuffle=False).history["loss"][0]

    plain = first_loss(keras.losses.SparseCategoricalCrossentropy())
    assert first_loss(keras.losses.SparseCategoricalCrossentropy(ignore_class=0)) != pytest.approx(plain, rel=1e-3)
    # All weights 0: no data gradient reaches the kernels (no weight decay), as with Keras' Dense.
    for compiled in (True, False):
        model = _gated_model()
        model.compile("adam", "sparse_categorical_crossentropy" if compiled else None)
        before = [layer.kernel.numpy() for layer in model.gated_layers]
        model.fit(x, y, sample_weight=np.zeros(64), epochs=1, batch_size=64, verbose=0)
        for layer, kernel in zip(model.gated_layers, before, strict=True):
            np.testing.assert_array_equal(layer.kernel.numpy(), kernel)


def test_l0dense_refuses_inputs_of_rank_above_2_when_called():
    # Inference took (batch, steps, features) and a training call then failed on the
    # per-example noise, shaped (batch, features); the gates are per example and input.
    layer = L0Dense(4, dataset_size=10)
    with pytest.raises(ValueError, match=r"expected ndim=2, found ndim=3"):
        layer(np.zeros((2, 3, 6), "float32"))
    assert layer(np.zeros((2, 6), "float32")).shape == (2, 4)


def _kernel_update(policy, model_class, loss, sample_weight=None):
    """Largest change of the first kernel after one SGD step of keras.Model.fit."""
    rng = np.random.default_rng(0)
    x, y = rng.random((32, 20)).astype("float32"), rng.integers(0, 3, 32)
    keras.config.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        inp = keras.Input((20,))
        hidden = L0Dense(16, activation="relu", dataset_size=256, l0_lambda=0.0)(inp)
        out = keras.layers.Activation("softmax", dtype="float32")(L0Dense(3, dataset_size=256, l0_lambda=0.0)(hidden))
        model = model_class(inp, out)
        model.compile(keras.optimizers.SGD(0.1), loss)
        before = model.layers[1].kernel.numpy().copy()
        model.fit(x, y, sample_weight=sample_weight, epochs=1, batch_size=32, verbose=0, shuffle=False)
        return float(np.abs(model.layers[1].kernel.numpy() - before).max())
    finally:
        keras.config.set_dtype_policy("float32")


def test_a_gated_model_under_a_mixed_policy_steps_as_keras_does():
    # Keras' compile wraps the optimizer in a LossScaleOptimizer, which divides the
    # gradients by its scale: the step did not scale the loss, so it moved 1/32768 as far.
    keras_step = _kernel_update("mixed_float16", keras.Model, "sparse_categorical_crossentropy")
    assert _kernel_update("mixed_float16", tf_dynhp.GatedModel, "sparse_categorical_crossentropy") == pytest.approx(keras_step, rel=1e-2)
    assert _kernel_update("mixed_float16", tf_dynhp.GatedModel, None, np.ones(32)) == pytest.approx(keras_step, rel=1e-2)
    assert _kernel_update("float32", tf_dynhp.GatedModel, "sparse_categorical_crossentropy") == pytest.approx(
        _kernel_update("float32", keras.Model, "sparse_categorical_crossentropy"), rel=1e-6)


def test_a_gated_model_takes_one_hot_labels_and_evaluates_without_a_compiled_loss():
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 20)).astype("float32"), rng.integers(0, 3, 64)
    model = _gated_model()
    model.compile("adam", "categorical_crossentropy", metrics=["categorical_accuracy"])  # the accuracy reshaped y and failed
    logs = model.fit(x, keras.utils.to_categorical(y, 3), epochs=1, batch_size=32, verbose=0).history
    assert np.isfinite(logs["loss"][0]) and 0 <= logs["categorical_accuracy"][0] <= 1
    model = _gated_model()
    model.compile("adam")  # no loss: fit's own; evaluate and validation said "No loss to compute"
    logs = model.fit(x, y, epochs=1, batch_size=32, verbose=0, validation_data=(x, y)).history
    assert {"val_loss", "val_accuracy"} <= set(logs)
    scores = model.evaluate(x, y, verbose=0, return_dict=True)
    truth = float(np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y))
    assert scores["accuracy"] == pytest.approx(truth)


def test_a_gated_model_without_a_compiled_loss_takes_one_hot_labels():
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 20)).astype("float32"), rng.integers(0, 3, 64)
    ids, one_hot = _gated_model(), _gated_model()
    for model in (ids, one_hot):
        model.compile(keras.optimizers.SGD(0.1))
    a = ids.fit(x, y, epochs=1, batch_size=64, verbose=0, shuffle=False).history["loss"]
    b = one_hot.fit(x, keras.utils.to_categorical(y, 3), epochs=1, batch_size=64, verbose=0, shuffle=False).history["loss"]
    assert b == pytest.approx(a, rel=1e-6)  # it said "Argument output must have rank target.ndim - 1"
    assert one_hot.evaluate(x, keras.utils.to_categorical(y, 3), verbose=0) == pytest.approx(ids.evaluate(x, y, verbose=0), rel=1e-6)


def test_a_convolutional_gated_model_under_a_mixed_policy_is_refused_by_name():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        inp = keras.Input((8, 8, 1))
        h = keras.layers.Flatten()(L0Conv2D(2, 3, name="gconv", dataset_size=16)(inp))
        model = tf_dynhp.GatedModel(inp, keras.layers.Dense(3, activation="softmax", dtype="float32")(h))
        model.compile("adam", "sparse_categorical_crossentropy")
        with pytest.raises(ValueError, match=r"Layer 'gconv' of class L0Conv2D computes in float16 on float32 variables"):
            model.fit(np.zeros((16, 8, 8, 1), "float32"), np.zeros(16, "int32"), epochs=1, verbose=0)
    finally:
        keras.config.set_dtype_policy("float32")


DISTRIBUTED = """
import numpy as np, tensorflow as tf, contextlib
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, tf_dynhp
rng = np.random.default_rng(0)
x, y = rng.random((64, 20)).astype("float32"), rng.integers(0, 3, 64)
weights = []
for strategy in (None, tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])):
    with strategy.scope() if strategy else contextlib.nullcontext():
        keras.utils.set_random_seed(0)
        inp = keras.Input((20,))
        model = tf_dynhp.GatedModel(inp, keras.layers.Dense(3, activation="softmax")(keras.layers.Dense(8, activation="relu")(inp)))
        model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=3, batch_size=16, verbose=0, shuffle=False)
    weights.append(np.concatenate([w.ravel() for w in model.get_weights()]))
print("max difference", float(np.abs(weights[0] - weights[1]).max()))
"""


def test_a_gated_model_trains_under_a_mirrored_strategy_as_on_one_device():
    # The step applied each replica's gradients through tf_dynhp.fit's fused Adam, without
    # summing them: 0.12 off the single-device weights (Keras' own Model: 6e-8).
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", DISTRIBUTED], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) < 1e-6


def test_a_gated_model_refuses_a_layer_whose_loss_or_constraint_its_step_would_drop():
    """GatedModel's step is the data loss plus the gates' penalty: a Dense's L2 term (x100)
    was silently left out of keras.Model.fit's loss."""
    from tf_dynhp.model import GatedModel

    inputs = keras.Input((20,))
    hidden = keras.layers.Dense(16, activation="relu", kernel_regularizer=keras.regularizers.L2(100.0), name="reg")(inputs)
    outputs = tf_dynhp.L0Dense(3, activation="softmax", dataset_size=64)(hidden)
    with pytest.raises(ValueError, match=r"Layer 'reg' has `kernel_regularizer`, which GatedModel's training step does not apply"):
        GatedModel(inputs, outputs)
