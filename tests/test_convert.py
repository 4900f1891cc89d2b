"""to_l0 / strip: equivalence, real shrinking, unsupported models rejected up front."""

import keras
import numpy as np
import pytest

from conftest import make_mlp
from tf_dynhp import L0Conv2D, L0Dense, SelectFeatures, parse_chain, strip, to_l0


def _close_some_gates(model, every=3, value=-8.0):
    for k, layer in enumerate(l for l in model.layers if isinstance(l, L0Dense)):
        la = layer.log_alpha.numpy()
        la[k % every :: every] = value
        layer.log_alpha.assign(la)


def test_to_l0_copies_weights_and_converts_every_dense():
    keras.utils.set_random_seed(0)
    model = make_mlp()
    gated = to_l0(model, l0_lambda=0.05, dataset_size=100, seed=3)
    dense = [l for l in model.layers if isinstance(l, keras.layers.Dense)]
    l0 = [l for l in gated.layers if isinstance(l, L0Dense)]
    assert len(l0) == len(dense) == 3
    for d, g in zip(dense, l0):
        np.testing.assert_array_equal(d.kernel.numpy(), g.kernel.numpy())
        np.testing.assert_array_equal(d.bias.numpy(), g.bias.numpy())
        assert g.l0_lambda == 0.05 and g.dataset_size == 100
    # Reference L0 MLP: input gates start at drop rate 0.2, hidden gates at 0.5.
    assert l0[0].droprate_init == 0.2 and l0[1].droprate_init == 0.5


def test_to_l0_with_open_gates_matches_the_dense_model(rng):
    model = make_mlp(dtype="float64")
    gated = to_l0(model, dataset_size=10)
    for layer in gated.layers:
        if isinstance(layer, L0Dense):
            layer.log_alpha.assign(np.full(layer.log_alpha.shape, 4.6))  # gate == 1 exactly
    x = rng.random((5, 28, 28))
    np.testing.assert_allclose(gated.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-12)


def test_strip_equals_gated_inference_and_shrinks(rng, tmp_path):
    keras.utils.set_random_seed(1)
    gated = to_l0(make_mlp(hidden=(20, 12), dtype="float64"), dataset_size=10)
    _close_some_gates(gated)
    x = rng.random((16, 28, 28))
    stripped = strip(gated)
    np.testing.assert_allclose(stripped.predict(x, verbose=0), gated.predict(x, verbose=0), rtol=1e-10, atol=1e-12)
    kernels = [l.kernel.shape for l in stripped.layers if isinstance(l, keras.layers.Dense)]
    assert kernels[0][0] < 784 and kernels[0][1] < 20 and kernels[1] == (kernels[0][1], kernels[1][1])
    assert kernels[1][1] < 12 and kernels[2][1] == 10
    assert any(isinstance(l, SelectFeatures) for l in stripped.layers)
    assert not any(isinstance(l, L0Dense) for l in stripped.layers)
    # Saves and loads back (SelectFeatures is registered), same predictions.
    stripped.save(tmp_path / "s.keras")
    loaded = keras.models.load_model(tmp_path / "s.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), stripped.predict(x, verbose=0))
    # And trains on: to_l0 accepts SelectFeatures.
    again = to_l0(loaded, dataset_size=10)
    assert parse_chain(again).input_dim == kernels[0][0]
    open_again = [l for l in again.layers if isinstance(l, L0Dense)]
    assert open_again[0].kernel.shape == kernels[0]


def test_strip_float32_relative_tolerance(rng):
    gated = to_l0(make_mlp(hidden=(64,)), dataset_size=10, seed=0)
    _close_some_gates(gated)
    x = rng.random((32, 28, 28)).astype("float32")
    a = gated.predict(x, verbose=0)
    b = strip(gated).predict(x, verbose=0)
    assert np.max(np.abs(a - b)) <= 1e-5 * max(1.0, float(np.max(np.abs(a))))


def test_functional_and_flat_inputs_supported(rng):
    inputs = keras.Input((784,))
    h = keras.layers.Dense(16, activation="relu")(inputs)
    h = keras.layers.Dropout(0.2)(h)
    h = keras.layers.Activation("relu")(h)
    out = keras.layers.Dense(10)(h)
    model = keras.Model(inputs, out)
    chain = parse_chain(model)
    assert chain.input_shape == (784,) and chain.features is None and len(chain.body) == 4
    gated = to_l0(model, dataset_size=3)
    assert sum(isinstance(l, L0Dense) for l in gated.layers) == 2


def _two_input_model():
    a, b = keras.Input((4,)), keras.Input((4,))
    return keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Concatenate()([a, b])))


def _branchy_model():
    x = keras.Input((4,))
    h = keras.layers.Dense(3, name="left")(x)
    return keras.Model(x, keras.layers.Add(name="merge")([h, keras.layers.Dense(3)(x)]))


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: keras.Sequential([keras.Input((5, 3)), keras.layers.LSTM(4, name="rnn"), keras.layers.Dense(2)]), "rnn.*LSTM"),
        (lambda: keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(name="bn"), keras.layers.Dense(2)]), "bn.*BatchNormalization"),
        (lambda: keras.Sequential([keras.Input((8, 1)), keras.layers.Conv1D(2, 3, name="conv"), keras.layers.Flatten(), keras.layers.Dense(2)]), "conv.*Conv1D"),
        (lambda: keras.Sequential([keras.Input((1, 8, 8)), keras.layers.Conv2D(2, 3, data_format="channels_first", name="cf"), keras.layers.Flatten(), keras.layers.Dense(2)]), "cf.*Conv2D.*channels_last"),
        (lambda: keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3, dilation_rate=2, name="dil"), keras.layers.Flatten(), keras.layers.Dense(2)]), "dil.*dilation_rate"),
        (lambda: keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3, activation="sigmoid", name="sig"), keras.layers.Flatten(), keras.layers.Dense(2)]), "sig.*sigmoid.*f\\(0\\) = 0"),
        (lambda: keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(64), keras.layers.Reshape((8, 8, 1), name="back"), keras.layers.Conv2D(2, 3), keras.layers.Flatten(), keras.layers.Dense(2)]), "back.*Reshape"),
        (lambda: keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3), keras.layers.Reshape((36, 2, 2), name="mix"), keras.layers.Flatten(), keras.layers.Dense(2)]), "mix.*mixing the units"),
        (lambda: keras.Sequential([keras.Input((8, 8, 3)), keras.layers.GlobalAveragePooling2D(name="gap"), keras.layers.Dense(2)]), "gap.*before any Conv2D"),
        (lambda: keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3), keras.layers.GlobalMaxPooling2D(data_format="channels_first", name="gmp"), keras.layers.Dense(2)]), "gmp.*channels_last"),
        (_two_input_model, "2 inputs"),
        (_branchy_model, "not supported"),
        (lambda: keras.Sequential([keras.Input((4, 4)), keras.layers.Dense(2, name="d3")]), "d3.*Flatten"),
        (lambda: keras.Sequential([keras.Input((4,)), keras.layers.Activation("relu")]), "no Dense"),
    ],
)
def test_unsupported_models_raise_naming_the_layer(build, match):
    with pytest.raises(ValueError, match=match) as err:
        to_l0(build(), dataset_size=1)
    assert "Supported layers" in str(err.value) or "Dense" in str(err.value)


def test_not_a_model_is_a_type_error():
    with pytest.raises(TypeError, match="keras.Model"):
        to_l0("model")


# --------------------------------------------------------------------------- conv models
def make_cnn(dtype=None, padding="valid"):
    """Input(12,12,1) -> Conv2D(6,3) -> MaxPool -> Conv2D(5,2) -> AvgPool -> Flatten -> Dense(8) -> Dense(4)."""
    return keras.Sequential([
        keras.Input((12, 12, 1), dtype=dtype),
        keras.layers.Conv2D(6, 3, activation="relu", dtype=dtype, name="c1"),
        keras.layers.MaxPooling2D(2, dtype=dtype),
        keras.layers.Conv2D(5, 2, padding=padding, activation="relu", dtype=dtype, name="c2"),
        keras.layers.AveragePooling2D(2, dtype=dtype),
        keras.layers.Dropout(0.1, dtype=dtype),
        keras.layers.Flatten(dtype=dtype),
        keras.layers.Dense(8, activation="relu", dtype=dtype),
        keras.layers.Dense(4, activation="softmax", dtype=dtype),
    ])


@pytest.mark.parametrize("head", ["average", "max", "average_keepdims"])
def test_global_pooling_heads_prune_train_strip_save_and_export(head, tmp_path):
    """A CNN ending in global pooling (no Flatten): the pooling keeps the channel axis, so
    the first Dense layer is fed the last conv's channels. DynHP to a size target: the
    stripped model computes what the gated one does, fits the target, saves, loads and
    exports to TFLite with the same outputs."""
    import tf_dynhp
    from tf_dynhp import export, memory

    rng = np.random.default_rng(0)
    x, y = rng.random((400, 12, 12, 1)).astype("float32"), rng.integers(0, 4, 400)
    pool = {"average": lambda: keras.layers.GlobalAveragePooling2D(), "max": lambda: keras.layers.GlobalMaxPooling2D(),
            "average_keepdims": lambda: keras.layers.GlobalAveragePooling2D(keepdims=True)}[head]
    keras.utils.set_random_seed(0)
    layers = [keras.Input((12, 12, 1)), keras.layers.Conv2D(12, 3, activation="relu"), keras.layers.MaxPooling2D(2),
              keras.layers.Conv2D(16, 3, activation="relu"), pool()]
    if head == "average_keepdims":
        layers.append(keras.layers.Flatten())
    model = keras.Sequential([*layers, keras.layers.Dense(10, activation="relu"), keras.layers.Dense(4)])
    goal = 0.5 * memory.floats_to_kb(memory.weight_count(model))
    result = tf_dynhp.fit(model, x, y, method="dynhp", epochs=3, budget_kb=1e5, target_kb=goal, seed=1, verbose=0)
    assert memory.floats_to_kb(memory.weight_count(result.model)) <= goal
    units = result.history["active_units"][-1]
    assert units[2] < 16  # the last conv lost channels, and the Dense after the pooling their rows
    dense = [layer for layer in result.model.layers if isinstance(layer, keras.layers.Dense)][0]
    assert dense.kernel.shape[0] == units[2]
    expected = result.gated_model.predict(x[:50], verbose=0)
    np.testing.assert_allclose(result.model.predict(x[:50], verbose=0), expected, atol=1e-5)
    result.model.save(tmp_path / "m.keras")
    np.testing.assert_allclose(keras.models.load_model(tmp_path / "m.keras").predict(x[:50], verbose=0), expected, atol=1e-5)
    path = export.to_tflite(result.model, tmp_path / "m.tflite", "none").path
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner("serving_default")
    out = np.concatenate([runner(x=x[i : i + 1])["output"] for i in range(50)])
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_global_pooling_sp_counts_a_channel_open_only_when_both_its_gates_are():
    """After a global pooling the last conv's channels carry two gates (the conv's and the
    Dense layer's rows): SP's active_units read only the conv's (6.65 of 8 channels with
    every Dense row closed). A variable-size input (what global pooling makes buildable)
    was a bare TypeError; it is refused by name."""
    import tf_dynhp

    rng = np.random.default_rng(0)
    x, y = rng.random((200, 10, 10, 1)).astype("float32"), rng.integers(0, 3, 200)
    keras.utils.set_random_seed(0)
    gated = to_l0(keras.Sequential([keras.Input((10, 10, 1)), keras.layers.Conv2D(8, 3, activation="relu"),
                                    keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)]))
    dense = gated.layers[-1]
    dense.log_alpha.assign(np.full(dense.log_alpha.shape, -10.0, "float32"))  # every row closed
    result = tf_dynhp.fit(gated, x, y, method="sp", epochs=1, batch_size=50, learning_rate=1e-7, seed=1, verbose=0)
    assert result.history["active_units"][-1][1] < 0.5  # the rows' rare samples above 0; 6.65 before
    with pytest.raises(ValueError, match="every input dimension but the batch must be known"):
        to_l0(keras.Sequential([keras.Input((None, None, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                                keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)]))


def test_to_l0_converts_conv_layers_and_keeps_the_function(rng):
    keras.utils.set_random_seed(0)
    model = make_cnn(dtype="float64")
    gated = to_l0(model, l0_lambda=0.05, dataset_size=100, seed=3)
    assert [type(l).__name__ for l in gated.layers] == [
        "InputLayer", "L0Conv2D", "MaxPooling2D", "L0Conv2D", "AveragePooling2D", "Dropout", "Flatten", "L0Dense", "L0Dense"]
    convs = [l for l in gated.layers if isinstance(l, L0Conv2D)]
    for src, dst in zip([l for l in model.layers if isinstance(l, keras.layers.Conv2D)], convs):
        np.testing.assert_array_equal(src.kernel.numpy(), dst.kernel.numpy())
        np.testing.assert_array_equal(src.bias.numpy(), dst.bias.numpy())
        assert dst.log_alpha.shape == (src.filters,) and dst.dataset_size == 100
    # No input-feature gates in a conv model: every gate starts at droprate_init 0.5.
    assert {l.droprate_init for l in gated.layers if hasattr(l, "droprate_init")} == {0.5}
    chain = parse_chain(gated)
    assert chain.spatial and chain.features is None and chain.input_dim == 144
    for layer in gated.layers:
        if hasattr(layer, "log_alpha"):
            layer.log_alpha.assign(np.full(layer.log_alpha.shape, 4.6))  # gate == 1 exactly
    x = rng.random((5, 12, 12, 1))
    np.testing.assert_allclose(gated.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-12)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_strip_cnn_equals_gated_inference_and_shrinks(padding, rng, tmp_path):
    keras.utils.set_random_seed(1)
    gated = to_l0(make_cnn(dtype="float64", padding=padding), dataset_size=10)
    c1, c2, d1, d2 = [l for l in gated.layers if hasattr(l, "log_alpha")]
    for layer in (c1, c2, d1, d2):  # fractional gates everywhere, so that folding matters
        layer.log_alpha.assign(rng.uniform(-1.0, 2.0, size=layer.log_alpha.shape))
    la = c1.log_alpha.numpy()
    la[[1, 4]] = -8.0  # conv channels closed
    c1.log_alpha.assign(la)
    flat_c = 5  # c2 has 5 channels; after pooling, (h, w, c) flattens to (h*W + w)*5 + c
    n_flat = d1.log_alpha.shape[0]
    la = d1.log_alpha.numpy()
    la[np.arange(n_flat) % flat_c == 3] = -8.0  # every row of c2's channel 3: the channel goes too
    la[0] = -8.0  # one single flattened feature
    d1.log_alpha.assign(la)
    la = d2.log_alpha.numpy()
    la[2] = -8.0  # a hidden unit
    d2.log_alpha.assign(la)
    x = rng.random((16, 12, 12, 1))
    stripped = strip(gated)
    np.testing.assert_allclose(stripped.predict(x, verbose=0), gated.predict(x, verbose=0), rtol=1e-10, atol=1e-12)
    kinds = [type(l).__name__ for l in stripped.layers]
    assert "L0Conv2D" not in kinds and "L0Dense" not in kinds and "SelectFeatures" in kinds
    convs = [l for l in stripped.layers if isinstance(l, keras.layers.Conv2D)]
    assert convs[0].kernel.shape == (3, 3, 1, 4) and convs[1].kernel.shape == (2, 2, 4, 4)
    dense = [l for l in stripped.layers if isinstance(l, keras.layers.Dense)]
    assert dense[0].kernel.shape == (n_flat // 5 * 4 - 1, 7) and dense[1].kernel.shape == (7, 4)
    stripped.save(tmp_path / "cnn.keras")
    loaded = keras.models.load_model(tmp_path / "cnn.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), stripped.predict(x, verbose=0))
    again = to_l0(loaded, dataset_size=10)  # trains on: the SelectFeatures after Flatten is accepted
    assert [l.kernel.shape for l in again.layers if isinstance(l, L0Dense)][0] == dense[0].kernel.shape


def test_to_l0_of_a_gated_model_keeps_its_gates_and_takes_the_new_penalty(rng):
    """`fit` on a gated model (a refit of `result.gated_model`) kept the λ, L2 term and
    training-set size N of the first training, whatever it was given: the penalty of the
    second training was the first one's. Now the weights, gate logits, temperature and
    limits stay, and the penalty settings are this call's."""
    gated = to_l0(make_mlp(hidden=(8,)), l0_lambda=0.01, dataset_size=400, temperature=0.5)
    first = [layer for layer in gated.layers if isinstance(layer, L0Dense)]
    first[0].log_alpha.assign(rng.normal(size=first[0].log_alpha.shape).astype("float32"))
    again = to_l0(gated, l0_lambda=[1.0, 0.5], weight_decay=1e-3, dataset_size=100)
    second = [layer for layer in again.layers if isinstance(layer, L0Dense)]
    assert [(layer.l0_lambda, layer.weight_decay, layer.dataset_size) for layer in second] == [(1.0, 1e-3, 100), (0.5, 1e-3, 100)]
    assert all(layer.temperature == 0.5 for layer in second)  # the gate's shape stays
    for old, new in zip(first, second, strict=True):
        for a, b in zip(old.weights, new.weights, strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_strip_keeps_a_plain_layers_regularizers_constraints_and_freezing_and_to_l0_refuses_them():
    """strip rebuilt plain layers without their regularizers (model.losses went from 1 to
    0), constraints and trainable=False; to_l0 dropped them silently too."""
    model = keras.Sequential([keras.Input((20,)),
                              keras.layers.Dense(16, kernel_regularizer="l2", kernel_constraint=keras.constraints.MaxNorm(1),
                                                 name="a"),
                              keras.layers.Dense(3, activation="softmax", trainable=False, name="b")])
    stripped = strip(model)
    assert len(stripped.losses) == len(model.losses) == 1
    assert isinstance(stripped.get_layer("a").kernel_constraint, keras.constraints.MaxNorm)
    assert not stripped.get_layer("b").trainable and stripped.get_layer("a").trainable
    with pytest.raises(ValueError, match=r"Layer 'a' has `kernel_regularizer`, `kernel_constraint`, which its gated version"):
        to_l0(model)
