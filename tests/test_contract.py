"""Issue 15: the Keras contract on users' own setups, for `fit` itself (models, data
pipelines, precision, callbacks, progress). Each test reproduces a reported failure."""

from __future__ import annotations

import functools
import re
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import assert_same_run, stop_after

import tf_dynhp
from tf_dynhp.training import RUNTIME_KEYS


# --------------------------------------------------------------------------- item 1
class ClosePlan(keras.callbacks.Callback):
    """At the end of epochs 1 and 2, closes a random share of every gated layer's gates
    (conv output channels, single flattened rows, dense units, input features): the next
    boundary prunes them. The plan is drawn from `seed`, the same in every run."""

    def __init__(self, seed, share=0.15):
        super().__init__()
        self.rng = np.random.default_rng(seed)
        self.share = share

    def on_epoch_end(self, epoch, logs=None):
        if epoch > 1:
            return
        for layer in self.model.gated_layers:
            la = layer.log_alpha.numpy()
            n = la.shape[0]
            k = int(self.rng.integers(1, max(2, int(self.share * n))))
            la[self.rng.choice(n, size=min(k, n - 1), replace=False)] = tf_dynhp.gates.LOG_ALPHA_MIN
            layer.log_alpha.assign(la)


def _shape(kind, seed):
    keras.utils.set_random_seed(seed)
    if kind == "mlp":
        layers = [keras.Input((28, 28)), keras.layers.Flatten()]
    else:
        layers = [keras.Input((28, 28, 1))]
        for filters, kernel in {"cnn1": [(6, 5)], "cnn2": [(6, 5), (8, 3)]}[kind]:
            layers += [keras.layers.Conv2D(filters, kernel, activation="relu"), keras.layers.MaxPooling2D(2)]
        layers.append(keras.layers.Flatten())
    layers += [keras.layers.Dense(24, activation="relu"), keras.layers.Dense(10, activation="softmax")]
    return keras.Sequential(layers)


@pytest.mark.parametrize("kind,seed", [("cnn1", 0), ("cnn2", 1), ("mlp", 3)])
def test_random_prune_plans_give_the_same_run_traced_once_or_per_rebuild(mnist, kind, seed):
    """A rebuild that inserts a SelectFeatures into a conv body (single flattened rows
    pruned) crashed the one-trace step (its indices are constants of the traced graph)."""
    (x, y), (xt, yt) = mnist
    x, xt = (x[:600], xt[:200]) if kind == "mlp" else (x[:600, ..., None], xt[:200, ..., None])
    runs = []
    for trace_once in (True, False):
        result = tf_dynhp.fit(
            _shape(kind, seed), x, y[:600], method="dynhp", alpha_bs=0.9, budget_kb=20000.0, epochs=3, gamma=0.5,
            batch_size=32, seed=seed, verbose=0, trace_once=trace_once, validation_data=(xt, yt[:200]),
            callbacks=[ClosePlan(seed)],
        )
        runs.append(result)
    a, b = runs
    assert sum(a.history["pruned_units"][1], 0) > 0  # the plan was applied
    for key in a.history:
        if key not in RUNTIME_KEYS:
            assert a.history[key] == b.history[key], key
    assert len(a.model.weights) == len(b.model.weights)
    for u, v in zip(a.model.weights, b.model.weights):
        np.testing.assert_array_equal(u.numpy(), v.numpy())


# --------------------------------------------------------------------------- helpers
def _mlp(seed=0, input_shape=(28, 28), **dense_kwargs):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(), keras.layers.Dense(16, activation="relu", **dense_kwargs),
                             keras.layers.Dense(10, activation="softmax")])


QUICK = dict(method="sp", epochs=1, batch_size=50, seed=1, verbose=0)


# --------------------------------------------------------------------------- item 2
def test_batched_tf_data_with_a_short_last_batch_is_read_like_arrays(mnist):
    (x, y), (xt, yt) = mnist
    x, y, xt, yt = x[:530], y[:530], xt[:130], yt[:130]
    batched = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)  # last batch of 18
    val = tf.data.Dataset.from_tensor_slices((xt, yt)).batch(64)
    a = tf_dynhp.fit(_mlp(), batched, validation_data=val, **QUICK)
    b = tf_dynhp.fit(_mlp(), x, y, validation_data=(xt, yt), **QUICK)
    assert a.history["loss"] == b.history["loss"] and a.history["val_error"] == b.history["val_error"]
    unbatched = tf.data.Dataset.from_tensor_slices((x, y))
    c = tf_dynhp.fit(_mlp(), unbatched, validation_data=tf.data.Dataset.from_tensor_slices((xt, yt)), **QUICK)
    assert c.history["loss"] == b.history["loss"]


def test_a_dataset_of_features_by_input_name_is_read_like_arrays(mnist):
    # Keras takes ({input name: images}, label) elements; fit refused them ("no dicts").
    (x, y), (xt, yt) = mnist
    x, y, xt, yt = x[:300], y[:300], xt[:100], yt[:100]

    def named():
        keras.utils.set_random_seed(0)
        pixels = keras.Input((28, 28), name="pixels")
        hidden = keras.layers.Dense(16, activation="relu")(keras.layers.Flatten()(pixels))
        return keras.Model(pixels, keras.layers.Dense(10, activation="softmax")(hidden))

    by_name = tf.data.Dataset.from_tensor_slices(({"pixels": x}, y)).batch(64)
    val = tf.data.Dataset.from_tensor_slices(({"pixels": xt}, yt))
    a = tf_dynhp.fit(named(), by_name, validation_data=val, **QUICK)
    b = tf_dynhp.fit(named(), x, y, validation_data=(xt, yt), **QUICK)
    assert a.history["loss"] == b.history["loss"] and a.history["val_error"] == b.history["val_error"]


def test_unbatched_images_of_another_shape_are_named_not_mistaken_for_batches(mnist):
    (x, y), _ = mnist
    ds = tf.data.Dataset.from_tensor_slices((x[:224, ..., None], y[:224]))  # (28, 28, 1) for a (28, 28) model
    with pytest.raises(ValueError, match=r"features shaped \(28, 28, 1\); the model expects examples of shape \(28, 28\)"):
        tf_dynhp.fit(_mlp(), ds, **QUICK)


def test_an_infinite_dataset_is_refused_at_once(mnist):
    (x, y), _ = mnist
    ds = tf.data.Dataset.from_tensor_slices((x[:64], y[:64])).repeat()
    with pytest.raises(ValueError, match="`x` is an infinite tf.data.Dataset"):
        tf_dynhp.fit(_mlp(), ds, **QUICK)
    with pytest.raises(ValueError, match="`validation_data` is an infinite"):
        tf_dynhp.fit(_mlp(), x[:64], y[:64], validation_data=ds, **QUICK)


def test_a_dataset_of_unknown_cardinality_is_read_only_up_to_a_bound(mnist):
    # `.repeat().filter(...)` has unknown (not infinite) cardinality: it was read until
    # the machine ran out of memory. A finite filtered one is read whole.
    (x, y), _ = mnist
    base = tf.data.Dataset.from_tensor_slices((x[:64], y[:64]))
    endless = base.repeat().filter(lambda a, b: b < 10)
    assert int(endless.cardinality()) == int(tf.data.UNKNOWN_CARDINALITY)
    with pytest.raises(ValueError, match=r"`x` is a tf.data.Dataset of unknown cardinality that has given \d+ examples .*probably infinite"):
        tf_dynhp.data._materialize(endless, "x", (28, 28), max_bytes=2**20)
    finite = base.filter(lambda a, b: b < 5)
    xs, ys, _ = tf_dynhp.data._materialize(finite, "x", (28, 28), max_bytes=2**20)
    assert len(xs) == len(ys) == int(np.sum(y[:64] < 5))
    # A batched dataset of known size is read whole past the bound (unbatch() alone
    # would report an unknown cardinality).
    batched = tf.data.Dataset.from_tensor_slices((x[:1000], y[:1000])).batch(32)
    xs, _, _ = tf_dynhp.data._materialize(batched, "x", (28, 28), max_bytes=2**20)
    assert len(xs) == 1000 and xs.nbytes > 2**20


def test_a_dataset_of_unknown_rank_is_refused_by_name(mnist):
    (x, y), _ = mnist
    ds = tf.data.Dataset.from_generator(lambda: ((x[i], y[i]) for i in range(8)),
                                        output_signature=(tf.TensorSpec(None, tf.float32), tf.TensorSpec(None, tf.uint8)))
    with pytest.raises(ValueError, match=r"features shaped of unknown rank; the model expects examples of shape \(28, 28\)"):
        tf_dynhp.fit(_mlp(), ds, **QUICK)


# --------------------------------------------------------------------------- item 3
def test_mixed_precision_and_distribution_strategies_are_refused_by_name(mnist):
    (x, y), _ = mnist
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with pytest.raises(ValueError, match="mixed_float16"):
            tf_dynhp.fit(_mlp(), x[:64], y[:64], **QUICK)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(8, dtype="mixed_bfloat16"), keras.layers.Dense(10)])
    with pytest.raises(ValueError, match="layer 'dense.*mixed_bfloat16"):
        tf_dynhp.fit(model, x[:64], y[:64], **QUICK)
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        with pytest.raises(ValueError, match="OneDeviceStrategy"):
            tf_dynhp.fit(_mlp(), x[:64], y[:64], **QUICK)


@pytest.mark.parametrize("kind", ["mlp", "cnn1"])
def test_float64_models_train_with_dynhp_and_a_size_target(mnist, kind):
    # A float64 model's layers get the float32 data: the variance of Eq. 8 and the
    # expected size of the target's penalty mixed the two dtypes and crashed the trace.
    (x, y), _ = mnist
    keras.utils.set_random_seed(0)
    shape = (28, 28) if kind == "mlp" else (28, 28, 1)
    layers = [keras.Input(shape, dtype="float64")]
    if kind == "cnn1":
        layers += [keras.layers.Conv2D(6, 5, activation="relu", dtype="float64"), keras.layers.MaxPooling2D(2, dtype="float64")]
    layers += [keras.layers.Flatten(dtype="float64"), keras.layers.Dense(24, activation="relu", dtype="float64"),
               keras.layers.Dense(10, activation="softmax", dtype="float64")]
    model = keras.Sequential(layers)
    x = x[:300] if kind == "mlp" else x[:300, ..., None]
    dense_kb = tf_dynhp.memory.floats_to_kb(tf_dynhp.memory.weight_count(model))
    result = tf_dynhp.fit(model, x, y[:300], method="dynhp", alpha_bs=0.9, budget_kb=1e5, epochs=2, batch_size=32,
                          target_kb=0.5 * dense_kb, target_deadline=0.5, seed=1, verbose=0)
    assert all(np.isfinite(result.history["loss"])) and all(v >= 0 for v in result.history["variance_ratio"])
    assert tf_dynhp.memory.floats_to_kb(tf_dynhp.memory.weight_count(result.model)) <= 0.5 * dense_kb
    assert {w.dtype for w in result.model.weights} == {"float64"}



def test_a_float64_cnn_trains_dense_too(mnist):
    # The plain Conv2D of method="dense" got the float32 data (tf.nn.conv2d does not promote).
    (x, y), _ = mnist
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((28, 28, 1), dtype="float64"),
                              keras.layers.Conv2D(4, 3, activation="relu", dtype="float64"),
                              keras.layers.MaxPooling2D(2, dtype="float64"), keras.layers.Flatten(dtype="float64"),
                              keras.layers.Dense(10, activation="softmax", dtype="float64")])
    result = tf_dynhp.fit(model, x[:200, ..., None], y[:200], **{**QUICK, "method": "dense"})
    assert np.isfinite(result.history["loss"][0]) and {w.dtype for w in result.model.weights} == {"float64"}


@pytest.mark.parametrize("method", ["dense", "dynhp"])
def test_the_models_returned_keep_the_name_of_the_users_input(mnist, tmp_path, method):
    # They were built on a new Input named by Keras: predict({"pixels": x}), which the
    # user's model takes, failed on them.
    (x, y), (xt, _) = mnist
    keras.utils.set_random_seed(0)
    pixels = keras.Input((28, 28), name="pixels")
    hidden = keras.layers.Dense(16, activation="relu")(keras.layers.Flatten()(pixels))
    model = keras.Model(pixels, keras.layers.Dense(10, activation="softmax")(hidden))
    result = tf_dynhp.fit(model, x[:200], y[:200], method=method, alpha_bs=0.9, budget_kb=1e5, epochs=1, batch_size=50,
                          seed=1, verbose=0)
    for returned in (result.model, result.gated_model):
        assert returned.inputs[0].name == "pixels"
        np.testing.assert_array_equal(returned.predict({"pixels": xt[:4]}, verbose=0), returned.predict(xt[:4], verbose=0))
    result.model.save(tmp_path / "m.keras")
    assert keras.models.load_model(tmp_path / "m.keras").inputs[0].name == "pixels"


@pytest.mark.parametrize("kind", ["sequential", "functional", "cnn"])
def test_x_and_y_in_a_list_of_one_for_a_model_on_bare_tensors_train_as_the_arrays(mnist, kind):
    """keras.Model.fit([x], y) trains a Sequential or a functional model on a bare input (with
    a warning); fit read the list as one example of n images ("x has 1 examples but y has 300
    labels"). A list of one example stays one example."""
    (x, y), (xt, yt) = mnist
    if kind == "cnn":
        x, xt = x[..., None], xt[..., None]
    shape = x.shape[1:]

    def build():
        keras.utils.set_random_seed(0)
        first = [keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.Flatten()] if kind == "cnn" else [keras.layers.Flatten()]
        if kind == "functional":
            inp = keras.Input(shape)
            return keras.Model(inp, keras.layers.Dense(10)(keras.layers.Dense(16, activation="relu")(first[0](inp))))
        return keras.Sequential([keras.Input(shape), *first, keras.layers.Dense(16, activation="relu"), keras.layers.Dense(10)])

    kw = dict(method="hp", epochs=2, batch_size=50, seed=1, verbose=0)
    w = np.linspace(0.5, 2.0, 300).astype(np.float32)
    listed = tf_dynhp.fit(build(), [x[:300]], [y[:300]], sample_weight=[w], validation_data=([xt[:100]], [yt[:100]]), **kw)
    bare = tf_dynhp.fit(build(), x[:300], y[:300], sample_weight=w, validation_data=(xt[:100], yt[:100]), **kw)
    assert listed.history["loss"] == bare.history["loss"] and listed.history["val_error"] == bare.history["val_error"]
    one = tf_dynhp.fit(build(), [x[0]], [y[0]], **{**kw, "batch_size": 1, "epochs": 1})  # one image, one label
    assert len(one.history["loss"]) == 1
    with pytest.raises(ValueError, match=r"x has 1 examples but y has 2 labels|1 example.*2 label"):
        tf_dynhp.fit(build(), [x[0]], y[:2], **kw)


@pytest.mark.parametrize("wrap", ["dict", "list", "nested"])
def test_data_in_the_structure_the_model_takes_and_gives_trains_as_bare_arrays(mnist, wrap):
    """keras.Model.fit takes `[x]`, `[y]` for keras.Model([img], [logits]) (and
    `{"logits": y}` for a dict output); fit read `[x]` as one example ("`x` has 1
    examples but `y` has 200 labels")."""
    (x, y), (xt, yt) = mnist
    img = keras.Input((28, 28), name="img")

    def build():
        keras.utils.set_random_seed(0)
        logits = keras.layers.Dense(10)(keras.layers.Dense(16, activation="relu")(keras.layers.Flatten()(img)))
        return {"dict": lambda: keras.Model({"img": img}, {"logits": logits}), "list": lambda: keras.Model([img], [logits]),
                "nested": lambda: keras.Model(img, {"out": [logits]})}[wrap]()

    def inputs(a):
        return {"dict": {"img": a}, "list": [a], "nested": a}[wrap]

    def labels(a):
        return {"dict": {"logits": a}, "list": [a], "nested": {"out": [a]}}[wrap]

    kw = dict(method="hp", epochs=2, batch_size=50, seed=1, verbose=0)
    wrapped = tf_dynhp.fit(build(), inputs(x[:200]), labels(y[:200]), validation_data=(inputs(xt[:100]), labels(yt[:100])), **kw)
    bare = tf_dynhp.fit(build(), x[:200], y[:200], validation_data=(xt[:100], yt[:100]), **kw)
    assert wrapped.history["loss"] == bare.history["loss"] and wrapped.history["val_error"] == bare.history["val_error"]
    # A Dataset's elements nesting them so (tf.data reads a list as a tensor: tuples), with weights too.
    def tuples(v):
        return tuple(tuples(e) for e in v) if isinstance(v, list) else {k: tuples(e) for k, e in v.items()} if isinstance(v, dict) else v

    def nest(a, b):
        return tuples(a), tuples(b)

    ds = tf.data.Dataset.from_tensor_slices(nest(inputs(x[:200]), labels(y[:200]))).batch(32)
    val = tf.data.Dataset.from_tensor_slices(nest(inputs(xt[:100]), labels(yt[:100])))
    from_ds = tf_dynhp.fit(build(), ds, validation_data=val, **kw)
    assert from_ds.history["loss"] == bare.history["loss"] and from_ds.history["val_error"] == bare.history["val_error"]
    w = np.linspace(0.5, 2.0, 200).astype(np.float32)
    weighted = tf_dynhp.fit(build(), tf.data.Dataset.from_tensor_slices((*nest(inputs(x[:200]), labels(y[:200])), w)), **kw)
    expected = tf_dynhp.fit(build(), x[:200], y[:200], sample_weight=w, **kw).history["loss"]
    assert weighted.history["loss"] == expected
    # The weights nested as the outputs, as Keras takes them (refused: "received shape ()").
    nested_w = tf_dynhp.fit(build(), inputs(x[:200]), labels(y[:200]), sample_weight=labels(w), **kw)
    ds_w = tf.data.Dataset.from_tensor_slices((*nest(inputs(x[:200]), labels(y[:200])), tuples(labels(w))))
    assert nested_w.history["loss"] == tf_dynhp.fit(build(), ds_w, **kw).history["loss"] == expected
    np.testing.assert_array_equal(tf_dynhp.data.unwrap_structure([[1, 2]], [0]), [1, 2])
    assert tf_dynhp.data.unwrap_structure([{"img": 5}], [{"img": 0}]) == 5
    assert tf_dynhp.data.unwrap_structure([3], [0]) == [3]  # one label of one example: data, not a structure


@pytest.mark.parametrize("wrap", ["dict", "list", "nested"])
def test_the_models_returned_take_and_give_what_the_users_model_does(mnist, tmp_path, wrap):
    """keras.Model({"img": x}, {"logits": y}): the returned models gave a bare array, so
    `predict({"img": x})["logits"]` failed on them (and Keras warned of the input's
    structure, an error here); they keep both structures, through save, strip and export."""
    (x, y), (xt, _) = mnist
    keras.utils.set_random_seed(0)
    img = keras.Input((28, 28), name="img")
    logits = keras.layers.Dense(10)(keras.layers.Dense(16, activation="relu")(keras.layers.Flatten()(img)))
    model = {"dict": lambda: keras.Model({"img": img}, {"logits": logits}), "list": lambda: keras.Model([img], [logits]),
             "nested": lambda: keras.Model(img, {"out": [logits]})}[wrap]()

    def feed(images):
        return {"dict": {"img": images}, "list": [images], "nested": images}[wrap]

    users = type(model.predict(feed(xt[:4]), verbose=0))  # Keras gives a list of one output as the array

    shape = keras.tree.map_structure(lambda _: 0, model.predict(feed(xt[:4]), verbose=0))

    def out(given):
        assert type(given) is users and keras.tree.map_structure(lambda _: 0, given) == shape
        return {"dict": lambda: given["logits"], "list": lambda: given, "nested": lambda: given["out"][0]}[wrap]()

    result = tf_dynhp.fit(model, feed(x[:200]), y[:200], method="hp", epochs=2,
                          batch_size=50, seed=1, verbose=0, callbacks=[ClosePlan(0)])
    expected = out(result.model.predict(feed(xt[:4]), verbose=0))
    for returned in (result.gated_model, tf_dynhp.strip(result.gated_model)):
        np.testing.assert_allclose(out(returned.predict(feed(xt[:4]), verbose=0)), expected, rtol=1e-5, atol=1e-6)
    result.model.save(tmp_path / "m.keras")
    np.testing.assert_array_equal(out(keras.models.load_model(tmp_path / "m.keras").predict(feed(xt[:4]), verbose=0)), expected)
    report = tf_dynhp.export.to_tflite(result.model, tmp_path / "m.tflite")
    assert report.signatures["serving_default"]["outputs"] == ["output"]


# --------------------------------------------------------------------------- item 10
@pytest.mark.parametrize("setting,value", [("kernel_regularizer", keras.regularizers.L2(10.0)),
                                           ("kernel_constraint", keras.constraints.NonNeg()),
                                           ("bias_regularizer", "l1"), ("activity_regularizer", "l2")])
def test_layer_settings_the_rebuild_would_drop_are_refused(mnist, setting, value):
    (x, y), _ = mnist
    for method in ("dense", "dynhp"):
        with pytest.raises(ValueError, match=f"Layer 'dense.*has `{setting}`"):
            tf_dynhp.fit(_mlp(**{setting: value}), x[:64], y[:64], **{**QUICK, "method": method, "budget_kb": 1e5})


@keras.saving.register_keras_serializable(package="tf_dynhp_tests")
def doubled_relu(t):
    return keras.ops.relu(t) * 2.0


def _plain_relu(t):
    return keras.ops.relu(t)


@pytest.mark.parametrize("activation", [_plain_relu, lambda t: keras.ops.relu(t), np.tanh,
                                        functools.partial(keras.activations.leaky_relu, negative_slope=0.01), keras.ops.gelu])
def test_an_activation_keras_cannot_rebuild_is_refused_naming_the_layer(mnist, activation):
    # It crashed deep in the conversion (Keras' "Could not locate function"); a partial or a
    # NumPy function failed in Keras' get_config; keras.ops.gelu (tanh approximation) came
    # back from the layer's config as keras.activations.gelu (exact), 4e-4 apart.
    (x, y), _ = mnist
    model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(8, activation=activation, name="odd"),
                              keras.layers.Dense(10, activation="softmax")])
    with pytest.raises(ValueError, match=r"Layer 'odd' has activation .*(register_keras_serializable|another function)"):
        tf_dynhp.fit(model, x[:64], y[:64], **QUICK)


def test_a_registered_activation_trains_and_survives_the_rebuild(mnist):
    (x, y), (xt, _) = mnist
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(8, activation=doubled_relu),
                              keras.layers.Dense(10, activation="softmax")])
    result = tf_dynhp.fit(model, x[:64], y[:64], **{**QUICK, "method": "hp"})
    assert result.model.layers[-2].activation is doubled_relu
    np.testing.assert_allclose(result.model.predict(xt[:4], verbose=0), result.gated_model.predict(xt[:4], verbose=0), rtol=1e-5, atol=1e-6)


def test_a_loss_scale_optimizer_is_refused_naming_the_optimizer_it_wraps(mnist):
    # Loss scaling is for mixed precision, refused too; with "hp" it crashed at the first rebuild.
    (x, y), _ = mnist
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(1e-3))
    with pytest.raises(ValueError, match=r"LossScaleOptimizer .*pass the optimizer it wraps \(optimizer.inner_optimizer, a Adam\)"):
        tf_dynhp.fit(_mlp(), x[:64], y[:64], **{**QUICK, "method": "hp", "optimizer": optimizer})


def test_a_frozen_layer_is_refused_naming_it(mnist):
    # fit trained it anyway (its kernel moved by 0.06 where keras.Model.fit leaves it).
    (x, y), _ = mnist
    model = _mlp()
    model.layers[1].trainable = False
    for method in ("dense", "dynhp"):
        with pytest.raises(ValueError, match=f"Layer '{model.layers[1].name}' is frozen"):
            tf_dynhp.fit(model, x[:64], y[:64], **{**QUICK, "method": method, "budget_kb": 1e5})


# --------------------------------------------------------------------------- item 4
class Record(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.calls = []

    def set_params(self, params):
        super().set_params(params)
        self.calls.append(("set_params", dict(params)))

    def set_model(self, model):
        super().set_model(model)
        self.calls.append(("set_model", id(model)))

    def on_train_batch_begin(self, batch, logs=None):
        self.calls.append(("begin", batch))

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(("batch", batch, sorted(logs)))

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("epoch", epoch, dict(logs)))

    def on_test_begin(self, logs=None):
        self.calls.append(("test_begin",))

    def on_test_end(self, logs=None):
        self.calls.append(("test_end", dict(logs)))

    def on_train_end(self, logs=None):
        self.calls.append(("train_end", None if logs is None else dict(logs)))


def test_callbacks_get_keras_contract(mnist):
    (x, y), (xt, yt) = mnist
    rec = Record()
    tf_dynhp.fit(_mlp(), x[:600], y[:600], method="dynhp", alpha_bs=0.9, budget_kb=1e5, epochs=3, batch_size=50, seed=1,
                 verbose=0, steps_per_execution=4, validation_data=(xt[:100], yt[:100]), callbacks=[rec, ClosePlan(0)])
    kinds = [c[0] for c in rec.calls]
    assert kinds.count("set_params") == 1
    params = next(c[1] for c in rec.calls if c[0] == "set_params")
    assert params["epochs"] == 3 and params["steps"] == 12
    # set_model: once at the start, then only after the rebuilds (the plan prunes at epochs 2 and 3)
    assert 2 <= kinds.count("set_model") <= 3
    batches = [c for c in rec.calls if c[0] == "batch"]
    assert batches[0][2] == ["accuracy", "loss"]
    # as keras.Model.fit with steps_per_execution=4: begin at a call's first step, end at its last (0-based)
    assert [c[1] for c in rec.calls if c[0] == "begin"][:3] == [0, 4, 8] and [b[1] for b in batches[:3]] == [3, 7, 11]
    assert kinds.index("begin") < kinds.index("batch")
    logs = [c[2] for c in rec.calls if c[0] == "epoch"]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "val_error"} <= set(logs[0]) and "epoch" not in logs[0]
    assert logs[0]["val_accuracy"] == pytest.approx(1 - logs[0]["val_error"] / 100)
    assert all(round(log["val_accuracy"] * 100) / 100 == log["val_accuracy"] for log in logs)  # correct / n, no 0.15000000000000002
    # as keras.Model.fit: validation inside on_test_begin / on_test_end (before on_epoch_end), the
    # last epoch's logs to on_train_end
    assert kinds.count("test_begin") == kinds.count("test_end") == 3
    ends = [i for i, k in enumerate(kinds) if k == "test_end"]
    assert all(kinds[i - 1] == "test_begin" or kinds[i - 1] == "batch" for i in ends) and kinds.index("test_end") < kinds.index("epoch")
    assert [c[1] for c in rec.calls if c[0] == "test_end"][0] == {"loss": logs[0]["val_loss"], "accuracy": logs[0]["val_accuracy"]}
    assert rec.calls[-1] == ("train_end", logs[-1])


class StepsAtEpochBegin(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.steps = []

    def on_epoch_begin(self, epoch, logs=None):
        self.steps.append(self.params["steps"])


def test_params_steps_follow_the_batch_dynhp_grows(mnist):
    # `params["steps"]` stayed the first epoch's count while the batch grew (2 -> 100+).
    (x, y), _ = mnist
    rec = StepsAtEpochBegin()
    result = tf_dynhp.fit(_mlp(), x[:200], y[:200], method="dynhp", alpha_bs=0.5, budget_kb=1e5, epochs=3, batch_size=2,
                          seed=1, verbose=0, callbacks=[rec])
    batches = result.history["batch_size"]
    assert len(set(batches)) > 1
    assert rec.steps == [-(-200 // b) for b in batches]


def test_one_callback_or_a_callback_list_is_taken_as_keras_fit_takes_them(mnist):
    (x, y), _ = mnist
    for given in (Record(), keras.callbacks.CallbackList([Record()])):
        tf_dynhp.fit(_mlp(), x[:100], y[:100], method="sp", epochs=1, batch_size=50, seed=1, verbose=0, callbacks=given)
        rec = given if isinstance(given, Record) else given.callbacks[0]
        assert [c[0] for c in rec.calls].count("epoch") == 1
    with pytest.raises(ValueError, match="callbacks"):
        tf_dynhp.fit(_mlp(), x[:100], y[:100], method="sp", epochs=1, verbose=0, callbacks="csv")


def test_stop_training_in_a_batch_hook_ends_the_epoch_after_that_call(mnist):
    (x, y), _ = mnist

    class StopAtStep(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch >= 3:
                self.model.stop_training = True

    rec = Record()
    # gamma 0.9: the boundary of the stopped epoch prunes, so the run goes on with a new core: still stopped
    result = tf_dynhp.fit(_mlp(), x[:600], y[:600], method="hp", epochs=3, batch_size=50, seed=1, verbose=0, gamma=0.9,
                          steps_per_execution=2, callbacks=[StopAtStep(), rec])
    assert any(result.history["pruned_units"][0])
    assert [c[1] for c in rec.calls if c[0] == "batch"] == [1, 3] and len(result.history["loss"]) == 1


def test_of_two_early_stoppings_the_last_listed_decides_as_in_keras(mnist):
    """Keras' EarlyStopping restores its best in on_train_end, in the callbacks' order: the
    last one's best is the model fit ends with (tf_dynhp took the first one's)."""
    (x, y), (xt, yt) = mnist
    scores, seen = {"score": [3.0, 1.0, 2.0], "score2": [1.0, 2.0, 3.0]}, []

    class Scores(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs.update({k: v[epoch] for k, v in scores.items()})
            seen.append(self.model.predict(xt[:20].reshape(20, -1), verbose=0))  # the core takes flat rows

    def run(*monitors):
        seen.clear()
        stops = [keras.callbacks.EarlyStopping(monitor=m, mode="min", patience=5, restore_best_weights=True) for m in monitors]
        result = tf_dynhp.fit(_mlp(), x[:300], y[:300], callbacks=[Scores(), *stops], **{**QUICK, "epochs": 3})
        return result.gated_model.predict(xt[:20], verbose=0), list(seen)

    ended, epochs = run("score", "score2")
    np.testing.assert_allclose(ended, epochs[0], atol=1e-6)  # score2's best: epoch 1
    ended, epochs = run("score2", "score")
    np.testing.assert_allclose(ended, epochs[1], atol=1e-6)  # score's best: epoch 2
    scores["score3"] = [3.0, 2.0, 1.0]
    ended, epochs = run("score", "score3")  # the last one's best is the last epoch: that model stays
    np.testing.assert_allclose(ended, epochs[2], atol=1e-6)


def test_early_stopping_restores_nothing_it_never_scored(mnist, capsys):
    """As Keras: without its metric (no validation data) or before `start_from_epoch`,
    EarlyStopping has no best epoch to restore; the last model is the result."""
    (x, y), _ = mnist
    for stop in (keras.callbacks.EarlyStopping(monitor="val_loss", restore_best_weights=True),
                 keras.callbacks.EarlyStopping(monitor="loss", start_from_epoch=5, restore_best_weights=True)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras warns that val_loss is not available
            result = tf_dynhp.fit(_mlp(), x[:300], y[:300], method="dynhp", alpha_bs=0.9, budget_kb=1e5, epochs=3,
                                  batch_size=50, seed=1, verbose=2, callbacks=[stop])
        assert result.state.epoch == 3 and "Restored" not in capsys.readouterr().out


def test_early_stopping_on_val_accuracy_with_keras_default_mode_and_restoring_the_best(mnist, capsys):
    (x, y), (xt, yt) = mnist
    stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=1, restore_best_weights=True)
    result = tf_dynhp.fit(_mlp(), x[:600], y[:600], method="dynhp", alpha_bs=0.9, budget_kb=1e5, epochs=6, batch_size=50,
                          seed=1, verbose=2, validation_data=(xt[:100], yt[:100]), callbacks=[stop, ClosePlan(1, share=0.9)])
    acc = result.history["val_accuracy"]
    best = int(np.argmax(acc))
    assert stop.restore_best_weights  # the user's callback is given back as it was
    if best + 1 != len(acc):  # restored: the model is the best epoch's
        assert "Restored the model of the end of epoch" in capsys.readouterr().out
        assert result.state.epoch == best + 1
        assert result.history["val_accuracy"] == acc  # the whole history is kept
        err = 100 * (1 - acc[best])
        (_, _), (xt2, yt2) = mnist
        pred = np.argmax(result.model.predict(xt[:100], verbose=0), -1)
        assert 100 * np.mean(pred != yt[:100]) == pytest.approx(err, abs=1e-9)


class HalfOpen(keras.callbacks.Callback):
    """At the start of epoch `at`, log_alpha -1 on a third of the hidden gates: open in a
    fifth of the deterministic gate (the model scored uses them), but at P(z > 0) = 0.65
    < gamma 0.8, so that epoch's boundary prunes them."""

    def __init__(self, at=0):
        super().__init__()
        self.at = at

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at:
            layer = self.model.gated_layers[1]
            la = layer.log_alpha.numpy()
            la[: len(la) // 3] = -1.0
            layer.log_alpha.assign(la)


def test_early_stopping_restores_the_model_its_logs_scored_before_the_epochs_prune(mnist, capsys):
    """The val_ logs score the model before the boundary's prune; a pruned epoch's best was
    restored as the model after it, which scored otherwise (0.625 against the logged
    0.66 in a probe). By `loss` in "max" mode the first epoch is the best."""
    (x, y), (xt, yt) = mnist
    stop = keras.callbacks.EarlyStopping(monitor="loss", mode="max", patience=5, restore_best_weights=True)
    result = tf_dynhp.fit(_mlp(), x[:600], y[:600], method="hp", epochs=3, batch_size=50, seed=1, verbose=2,
                          gamma=0.8, validation_data=(xt[:500], yt[:500]), callbacks=[HalfOpen(), stop])
    assert "Restored the model of the end of epoch 1" in capsys.readouterr().out
    assert sum(result.history["pruned_units"][0]) > 0 and result.state.epoch == 1
    pred = np.argmax(result.model.predict(xt[:500], verbose=0), -1)
    assert 100 * np.mean(pred != yt[:500]) == pytest.approx(result.history["val_error"][0], abs=1e-9)


def test_the_error_log_scores_the_model_before_the_prune_and_a_callbacks_own_error_is_its_column(mnist, capsys):
    """`error` (the callbacks' twin of val_error, from `accuracy`) scores the model before
    the epoch's prune as `accuracy` does: EarlyStopping on it restores that model (it
    restored nothing, and the model after the prune was returned). A callback that logs
    an `error` of its own gets it recorded as its column, as before fit logged one."""
    (x, y), (xt, yt) = mnist

    def run(monitor, mode, extra=()):
        stop = keras.callbacks.EarlyStopping(monitor=monitor, mode=mode, patience=5, restore_best_weights=True)
        return tf_dynhp.fit(_mlp(), x[:600], y[:600], method="hp", epochs=3, batch_size=50, seed=1, verbose=2,
                            gamma=0.8, callbacks=[HalfOpen(2), *extra, stop])

    class LastIsBest(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["accuracy"], logs["error"] = 0.5 + 0.1 * epoch, 50.0 - 10.0 * epoch

    by_accuracy = run("accuracy", "max", [LastIsBest()])
    assert "before its prune" in capsys.readouterr().out and sum(by_accuracy.history["pruned_units"][2]) > 0
    by_error = run("error", "min", [LastIsBest()])
    assert "before its prune" in capsys.readouterr().out
    assert by_error.model.count_params() == by_accuracy.model.count_params()
    assert by_error.history["error"] == [50.0, 40.0, 30.0]  # the callback's own, recorded
    assert "error" not in run("loss", "min").history  # fit's derived log is not a history column


def test_the_best_last_epoch_that_pruned_is_restored_as_the_model_its_logs_scored(mnist, capsys):
    """The best by val_loss is the last epoch, whose boundary prunes: the model returned was
    the one after that prune (the last), which the logs never scored. By `model_kb`, a
    size of the model after the prune, nothing is restored."""
    (x, y), (xt, yt) = mnist

    class LastIsBest(keras.callbacks.Callback):  # before EarlyStopping: it reads the logs as left here
        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = -float(epoch)

    for monitor, mode in (("val_loss", "min"), ("model_kb", "min")):
        stop = keras.callbacks.EarlyStopping(monitor=monitor, mode=mode, patience=5, restore_best_weights=True)
        result = tf_dynhp.fit(_mlp(), x[:600], y[:600], method="hp", epochs=3, batch_size=50, seed=1, verbose=2,
                              gamma=0.8, validation_data=(xt[:500], yt[:500]),
                              callbacks=[HalfOpen(2), LastIsBest(), stop])
        out = capsys.readouterr().out
        assert sum(result.history["pruned_units"][2]) > 0 and result.state.epoch == 3
        pred = np.argmax(result.model.predict(xt[:500], verbose=0), -1)
        error = 100 * np.mean(pred != yt[:500])
        if monitor == "val_loss":
            assert "Restored the model of the end of epoch 3 (before its prune, the model its logs scored)" in out
            assert error == pytest.approx(result.history["val_error"][2], abs=1e-9)
            assert tf_dynhp.memory.floats_to_kb(tf_dynhp.memory.weight_count(result.model)) > result.history["model_kb"][2]
        else:
            assert "Restored" not in out
            assert tf_dynhp.memory.floats_to_kb(tf_dynhp.memory.weight_count(result.model)) == pytest.approx(result.history["model_kb"][2])


def test_model_checkpoint_save_best_only_with_pruning_says_what_it_saves(mnist, tmp_path):
    (x, y), _ = mnist
    save = keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"), monitor="loss", save_best_only=True)
    with pytest.warns(RuntimeWarning, match=r"ModelCheckpoint\(save_best_only=True\) with method='hp'.*after the epoch's prune"):
        tf_dynhp.fit(_mlp(), x[:100], y[:100], **{**QUICK, "method": "hp"}, callbacks=[save])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tf_dynhp.fit(_mlp(), x[:100], y[:100], **QUICK, callbacks=[save])  # sp prunes nothing: no warning


@pytest.mark.parametrize("patience", [0, 10])
def test_a_finished_run_resumed_trains_nothing_and_ends_with_its_restored_best(mnist, tmp_path, capsys, patience):
    """EarlyStopping ends the run (patience 0: at epoch 2) or not (10: all 3 epochs) and
    restores epoch 1's model (by `loss` in "max" mode: the first epoch is the best), larger
    than the last after the prunes. Resumed, the run trains nothing (an early-stopped run
    trained on to `epochs`) and ends with the restored model, not the last checkpoint's."""
    (x, y), _ = mnist

    def run(**kw):
        stop = keras.callbacks.EarlyStopping(monitor="loss", mode="max", patience=patience, restore_best_weights=True)
        return tf_dynhp.fit(_mlp(), x[:300], y[:300], method="hp", epochs=3, batch_size=50, seed=1, verbose=2,
                            checkpoint_dir=tmp_path, callbacks=[stop, ClosePlan(0)], **kw)

    a = run()
    trained = 2 if patience == 0 else 3
    assert len(a.history["loss"]) == trained and a.state.epoch == 1 and a.state.early_stopped == (patience == 0)
    assert "Restored the model of the end of epoch 1" in capsys.readouterr().out
    b = run(resume=True)
    out = capsys.readouterr().out
    assert ("ended by EarlyStopping after epoch 2" in out) == (patience == 0)
    assert "Epoch 3/3" not in out and "Restored" not in out  # nothing trained, nothing restored again
    assert_same_run(b, a, a.model, b.model)
    assert b.state.epoch == 1 and len(b.history["loss"]) == trained
    assert [w.shape for w in b.model.weights] == [w.shape for w in a.model.weights]


def test_an_ema_optimizer_leaves_its_averages_in_the_model_as_keras_fit_does(mnist):
    """Adam(use_ema=True): the averages are carried across the rebuilds (sliced like the
    weights) and, at the end, are the model's weights (keras.Model.fit's
    `finalize_variable_values`); without it the raw weights of the last step."""
    (x, y), (xt, yt) = mnist
    seen = {}

    class Capture(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen["raw"] = [v.numpy().copy() for v in self.model.trainable_variables]

        def on_train_end(self, logs=None):
            opt = self.model.optimizer
            seen["averages"] = [opt._model_variables_moving_average[opt._get_variable_index(v)].numpy().copy()
                                for v in self.model.trainable_variables]
            seen["final"] = [v.numpy().copy() for v in self.model.trainable_variables]

    opt = keras.optimizers.Adam(1e-3, use_ema=True, ema_momentum=0.9)
    result = tf_dynhp.fit(_mlp(), x[:600], y[:600], method="hp", epochs=3, batch_size=50, seed=1, verbose=0, optimizer=opt,
                          callbacks=[Capture(), ClosePlan(0)])
    assert any(not np.array_equal(a, b) for a, b in zip(seen["raw"], seen["averages"]))
    for a, b in zip(seen["final"], seen["averages"]):
        np.testing.assert_array_equal(a, b)
    last_kernel = [v for v in seen["final"] if v.ndim == 2][-1]  # the output layer's units are never pruned
    np.testing.assert_array_equal(result.gated_model.layers[-1].kernel.numpy(), last_kernel)


def test_an_ema_run_resumes_exactly_through_prunes(mnist, tmp_path):
    """The moving averages are optimizer state: a run stopped after its prunes and resumed
    from its checkpoint ends as the run that was never stopped, final averages included."""
    (x, y), _ = mnist

    def run(*callbacks, **kw):
        return tf_dynhp.fit(_mlp(), x[:600], y[:600], method="hp", epochs=5, batch_size=50, seed=1, verbose=0,
                            optimizer=keras.optimizers.Adam(1e-3, use_ema=True, ema_momentum=0.9),
                            callbacks=[ClosePlan(0), *callbacks], **kw)

    a = run()
    run(stop_after(3), checkpoint_dir=tmp_path)
    c = run(checkpoint_dir=tmp_path, resume=True)
    assert a.history["active_units"][-1] != a.history["active_units"][0]
    assert_same_run(c, a, a.model, c.model)


def test_csv_logger_writes_epoch_once(mnist, tmp_path):
    (x, y), _ = mnist
    path = tmp_path / "log.csv"
    tf_dynhp.fit(_mlp(), x[:100], y[:100], callbacks=[keras.callbacks.CSVLogger(str(path))], **QUICK)
    header = path.read_text().splitlines()[0].split(",")
    assert header.count("epoch") == 1


def test_csv_logger_keeps_val_error_when_the_first_epoch_is_not_validated(mnist, tmp_path):
    """Keras' CSVLogger makes its val_ columns from the training keys when the first epoch
    has no validation: val_error had no training twin and was dropped. `error` is logged."""
    import csv

    (x, y), (xt, yt) = mnist
    path = tmp_path / "log.csv"
    result = tf_dynhp.fit(_mlp(), x[:200], y[:200], validation_data=(xt[:100], yt[:100]), validation_freq=2,
                          callbacks=[keras.callbacks.CSVLogger(str(path))], **{**QUICK, "epochs": 2})
    rows = list(csv.DictReader(open(path)))
    assert rows[0]["val_error"] == "NA" and float(rows[1]["val_error"]) == pytest.approx(result.history["val_error"][1])
    assert float(rows[1]["error"]) == pytest.approx(100 * (1 - result.history["accuracy"][1]))
    assert "error" not in result.history  # a log of the callbacks', as Keras' History would have it; fit's history is unchanged


def test_backup_and_restore_is_refused_pointing_to_checkpoints(mnist, tmp_path):
    (x, y), _ = mnist
    with pytest.raises(ValueError, match="checkpoint_dir=.*resume=True"):
        tf_dynhp.fit(_mlp(), x[:64], y[:64], callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path))], **QUICK)


# --------------------------------------------------------------------------- item 5
def test_verbose_1_shows_a_progress_bar_and_2_one_line_per_epoch(mnist, capsys):
    (x, y), _ = mnist
    tf_dynhp.fit(_mlp(), x[:400], y[:400], **{**QUICK, "epochs": 2, "verbose": 1, "steps_per_execution": 2})
    out = capsys.readouterr().out
    assert "Epoch 1/2\n" in out and "8/8" in out and "Epoch 2/2 - loss" in out and "gates " in out
    tf_dynhp.fit(_mlp(), x[:400], y[:400], **{**QUICK, "epochs": 2, "verbose": 2})
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch")]
    assert len(lines) == 2 and all(" - loss " in line for line in lines)
    with pytest.raises(ValueError, match="Expected 0 \\(silent\\), 1"):
        tf_dynhp.fit(_mlp(), x[:400], y[:400], **{**QUICK, "verbose": 3})


# --------------------------------------------------------------------------- smaller things
def test_a_budget_without_a_method_runs_dynhp_with_the_default_alpha(mnist):
    (x, y), _ = mnist
    result = tf_dynhp.fit(_mlp(), x[:200], y[:200], budget_kb=np.float32(5000.0), epochs=1, seed=1, verbose=0)
    assert result.state.method == "dynhp"
    assert result.history["budget_kb"] == [5000.0]
    assert tf_dynhp.training.DEFAULT_ALPHA_BS == 0.972


@pytest.mark.parametrize("lr", [0.0, -1e-3, float("nan")])
def test_a_learning_rate_that_cannot_train_is_refused(mnist, lr):
    (x, y), _ = mnist
    with pytest.raises(ValueError, match="Invalid value received for argument `learning_rate`"):
        tf_dynhp.fit(_mlp(), x[:64], y[:64], learning_rate=lr, **QUICK)


def test_validation_split_holds_out_the_last_examples_as_keras_does(mnist):
    (x, y), _ = mnist
    a = tf_dynhp.fit(_mlp(), x[:500], y[:500], validation_split=0.2, **QUICK)
    b = tf_dynhp.fit(_mlp(), x[:400], y[:400], validation_data=(x[400:500], y[400:500]), **QUICK)
    assert a.history["val_error"] == b.history["val_error"] and a.history["loss"] == b.history["loss"]
    for bad in (1.0, -0.1, 0.0001):
        with pytest.raises(ValueError, match="validation_split"):
            tf_dynhp.fit(_mlp(), x[:500], y[:500], validation_split=bad, **QUICK)


def test_per_layer_l0_lambda_reaches_each_layer(mnist):
    (x, y), _ = mnist
    model = _mlp()
    names = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    gated = tf_dynhp.to_l0(model, {names[1]: 0.5}, dataset_size=10)
    assert [layer.l0_lambda for layer in gated.layers if isinstance(layer, tf_dynhp.L0Dense)] == [0.01, 0.5]
    gated = tf_dynhp.to_l0(model, [0.2, 0.0], dataset_size=10)
    assert [layer.l0_lambda for layer in gated.layers if isinstance(layer, tf_dynhp.L0Dense)] == [0.2, 0.0]
    with pytest.raises(ValueError, match="one value each"):
        tf_dynhp.to_l0(model, [0.2], dataset_size=10)
    with pytest.raises(ValueError, match="not dense / conv layers"):
        tf_dynhp.to_l0(model, {"nope": 0.2}, dataset_size=10)
    result = tf_dynhp.fit(model, x[:200], y[:200], l0_lambda=[0.2, 0.0], **QUICK)
    assert [layer.l0_lambda for layer in result.gated_model.layers if isinstance(layer, tf_dynhp.L0Dense)] == [0.2, 0.0]
    with pytest.raises(ValueError, match="all are 0"):  # under a target, shares of the multiplier: none to scale
        tf_dynhp.fit(model, x[:200], y[:200], l0_lambda=[0.0, 0.0], target_kb=10.0, **{**QUICK, "method": "hp"})


def test_tensorboard_callback_writes_its_logs(mnist, tmp_path):
    pytest.importorskip("tensorboard", reason="the tools extra installs tensorboard")
    (x, y), (xt, yt) = mnist
    tf_dynhp.fit(_mlp(), x[:300], y[:300], validation_data=(xt[:100], yt[:100]),
                 callbacks=[keras.callbacks.TensorBoard(str(tmp_path / "tb"))], **{**QUICK, "epochs": 2})
    assert list((tmp_path / "tb" / "train").glob("events.out.tfevents.*"))


def test_x_as_a_dict_of_the_input_name_trains_and_other_shapes_of_x_are_named(mnist):
    """Keras takes x as {input name: array}: so does fit (it failed with an IndexError);
    another key, a generator and a single value are refused naming `x` or `y`."""
    (x, y), _ = mnist
    model = keras.Sequential([keras.Input((28, 28), name="pixels"), keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])
    kw = dict(method="sp", epochs=1, batch_size=50, seed=1, verbose=0)
    by_name = tf_dynhp.fit(model, {"pixels": x[:100]}, y[:100], validation_data=({"pixels": x[:50]}, y[:50]), **kw)
    plain = tf_dynhp.fit(model, x[:100], y[:100], validation_data=(x[:50], y[:50]), **kw)
    assert by_name.history["loss"] == plain.history["loss"] and by_name.history["val_loss"] == plain.history["val_loss"]
    with pytest.raises(ValueError, match=r"`x` is a dict with keys \['image'\]; the model has one input, named 'pixels'"):
        tf_dynhp.fit(model, {"image": x[:100]}, y[:100], **kw)
    with pytest.raises(TypeError, match=r"`x` is a Python generator.*from_generator"):
        tf_dynhp.fit(model, (image for image in x[:100]), y[:100], **kw)
    with pytest.raises(ValueError, match=r"`y` must hold one entry per example"):
        tf_dynhp.fit(model, x[:100], 3, **kw)
    for seed in (-1, 2**32, 1.5, True):
        with pytest.raises(ValueError, match=r"`seed`"):
            tf_dynhp.fit(model, x[:100], y[:100], **{**kw, "seed": seed})
    with pytest.raises(ValueError, match=r"`checkpoint_dir`"):
        tf_dynhp.fit(model, x[:100], y[:100], checkpoint_dir="", **kw)


def test_a_compiled_model_hears_that_fit_trains_with_its_own_optimizer_and_loss(mnist):
    """model.compile(SGD(0.1), "mse") before tf_dynhp.fit (a Keras habit) trained silently
    with Adam and the cross-entropy; the same settings as fit's say nothing."""
    (x, y), _ = mnist
    model = _mlp()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    with pytest.warns(RuntimeWarning) as seen:
        tf_dynhp.fit(model, x[:64], y[:64], **QUICK)
    said = [str(w.message) for w in seen]
    assert any(re.search(r"compiled with SGD \(learning rate 0\.1\); tf_dynhp.fit trains with its own `optimizer` "
                         r"argument, here Adam \(learning rate 0\.001\).*optimizer=model.optimizer", m) for m in said), said
    assert any("compiled with loss 'mse'" in m for m in said), said
    for same in ("sparse_categorical_crossentropy", ["sparse_categorical_crossentropy"],
                 keras.losses.SparseCategoricalCrossentropy(from_logits=True)):  # fit takes the logits either way
        model.compile(optimizer="adam", loss=same)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            tf_dynhp.fit(model, x[:64], y[:64], **QUICK)
            tf_dynhp.fit(model, x[:64], y[:64], **QUICK, optimizer=keras.optimizers.SGD(0.1))  # chosen: says nothing
    model.compile(optimizer="adam", loss=tf_dynhp.losses.SparseCategoricalCrossentropy(label_smoothing=0.2))
    with pytest.warns(RuntimeWarning, match="compiled with loss <tf_dynhp.losses.SparseCategoricalCrossentropy"):
        tf_dynhp.fit(model, x[:64], y[:64], **QUICK)  # the smoothing is not what fit trains with


def test_fit_with_the_compiled_optimizer_leaves_it_to_the_users_own_keras_fit(mnist):
    """fit(..., optimizer=model.optimizer), as the warning above advises, built the user's
    (unbuilt) optimizer on fit's gated variables: the user's model.fit afterwards failed with
    Keras' "Unknown variable ... can only be called for the variables it was originally
    built with". The run is the same as with an equal, separate optimizer."""
    (x, y), _ = mnist
    keras.utils.set_random_seed(1)
    model = _mlp()
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    runs = [tf_dynhp.fit(model, x[:256], y[:256], **{**QUICK, "method": "hp", "epochs": 2}, optimizer=opt)
            for opt in (model.optimizer, keras.optimizers.Adam(1e-3))]
    assert not model.optimizer.built and int(model.optimizer.iterations.numpy()) == 0
    for a, b in zip(*(r.model.get_weights() for r in runs), strict=True):
        np.testing.assert_array_equal(a, b)
    model.fit(x[:64], y[:64], epochs=1, verbose=0)  # the user's own training goes on with it

    class Scaled(keras.optimizers.SGD):  # its get_config lacks `factor`: from_config cannot make one
        def __init__(self, factor, **kwargs):
            super().__init__(learning_rate=0.01 * factor, **kwargs)

    tf_dynhp.fit(model, x[:64], y[:64], **QUICK, optimizer=Scaled(2.0))  # sp: trained as given, as before the copies
    with pytest.raises(ValueError, match=r"optimizer: the methods that remove units rebuild .*Scaled's failed: TypeError"):
        tf_dynhp.fit(model, x[:64], y[:64], **{**QUICK, "method": "hp"}, optimizer=Scaled(2.0))

    class Constant(keras.optimizers.schedules.LearningRateSchedule):  # not registered with Keras
        def __call__(self, step):
            return 1e-3

        def get_config(self):
            return {}

    for rate in (Constant(), lambda: 1e-3):  # their configs do not rebuild: the copy takes the schedule itself
        for method in ("sp", "hp"):
            tf_dynhp.fit(model, x[:64], y[:64], **{**QUICK, "method": method}, optimizer=keras.optimizers.Adam(rate))


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_a_sequential_model_loaded_from_a_keras_file_trains_as_the_one_saved(mnist, tmp_path, kind):
    """keras.models.load_model builds a Sequential more than once, leaving its layers calls
    outside its graph: 'flatten' was refused as 'called 2 times (shared layers are not
    supported)', so a user's saved model could not be trained or exported."""
    (x, y), _ = mnist
    keras.utils.set_random_seed(0)
    layers = ([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(16, activation="relu")] if kind == "mlp" else
              [keras.Input((28, 28, 1)), keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.MaxPooling2D(),
               keras.layers.Flatten()])
    saved = keras.Sequential([*layers, keras.layers.Dense(10, activation="softmax")])
    saved.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    images = x[:300, ..., None] if kind == "cnn" else x[:300]
    a, b = (tf_dynhp.fit(m, images, y[:300], **{**QUICK, "method": "hp", "epochs": 2}) for m in (saved, loaded))
    assert a.history["loss"] == b.history["loss"]
    for u, v in zip(a.model.get_weights(), b.model.get_weights(), strict=True):
        np.testing.assert_array_equal(u, v)


# --------------------------------------------------------------------------- sample and class weights
def test_weights_of_one_train_exactly_as_no_weights_and_class_weight_equals_its_sample_weight(mnist):
    (x, y), (xt, yt) = mnist
    x, y = x[:400], y[:400]
    kw = dict(method="dynhp", alpha_bs=0.5, budget_kb=1e5, epochs=2, batch_size=8, seed=1, verbose=0,
              validation_data=(xt[:100], yt[:100]))
    plain = tf_dynhp.fit(_mlp(), x, y, **kw)
    ones = tf_dynhp.fit(_mlp(), x, y, sample_weight=np.ones(len(y)), **kw)
    assert ones.history["loss"] == plain.history["loss"] and ones.history["batch_size"] == plain.history["batch_size"]
    for a, b in zip(ones.model.weights, plain.model.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    table = {0: 3.0, 1: 0.0, 7: 0.5}
    by_class = tf_dynhp.fit(_mlp(), x, y, class_weight=table, **kw)
    by_example = tf_dynhp.fit(_mlp(), x, y, sample_weight=np.array([table.get(int(c), 1.0) for c in y]), **kw)
    assert by_class.history["loss"] == by_example.history["loss"] != plain.history["loss"]
    # A class of weight 0 teaches nothing: it is predicted less than without weights.
    def predicted(result, c):
        return int(np.sum(np.argmax(result.model.predict(xt[:1000], verbose=0), axis=1) == c))
    assert predicted(by_class, 1) < predicted(plain, 1)


def test_weights_are_part_of_the_data_a_resume_checks(mnist, tmp_path):
    (x, y), _ = mnist
    kw = dict(method="hp", epochs=1, batch_size=50, seed=1, verbose=0, checkpoint_dir=tmp_path)
    tf_dynhp.fit(_mlp(), x[:200], y[:200], class_weight={0: 2.0}, **kw)
    with pytest.raises(ValueError, match="data"):
        tf_dynhp.fit(_mlp(), x[:200], y[:200], class_weight={0: 3.0}, resume=True, **{**kw, "epochs": 2})


@pytest.mark.parametrize("change,err,match", [
    (dict(sample_weight=np.ones(10), class_weight={0: 1.0}), ValueError, r"`class_weight` and `sample_weight` cannot be given together"),
    (dict(sample_weight=np.ones(99)), ValueError, r"`sample_weight` must hold one weight per example, shape \(100,\); received shape \(99,\)"),
    (dict(sample_weight=np.r_[np.ones(99), -1.0]), ValueError, r"`sample_weight` must be finite and >= 0; example 99 has"),
    (dict(sample_weight=np.r_[np.ones(99), np.nan]), ValueError, r"example 99 has nan"),
    (dict(sample_weight=np.zeros(100)), ValueError, r"every training example the weight 0"),
    (dict(sample_weight=np.array(["a"] * 100)), TypeError, r"`sample_weight` must be real numbers"),
    (dict(class_weight={10: 1.0}), ValueError, r"`class_weight` has the key 10; expected class ids in \[0, 10\)"),
    (dict(class_weight={0: -1.0}), ValueError, r"`class_weight\[0\]` must be a finite number >= 0"),
    (dict(class_weight=[1.0] * 10), TypeError, r"`class_weight` must be a dict"),
    (dict(sample_weight=np.r_[np.zeros(50), np.ones(50)], validation_split=0.5), ValueError, r"left by `validation_split` the weight 0"),
])
def test_bad_weights_are_refused_by_name(mnist, change, err, match):
    (x, y), _ = mnist
    with pytest.raises(err, match=match):
        tf_dynhp.fit(_mlp(), x[:100], y[:100], **{**QUICK, **change})


def test_sample_weight_with_a_dataset_is_refused_and_class_weight_taken(mnist):
    (x, y), _ = mnist
    ds = tf.data.Dataset.from_tensor_slices((x[:100], y[:100])).batch(32)
    with pytest.raises(ValueError, match=r"`sample_weight` needs NumPy inputs.*pass `class_weight`"):
        tf_dynhp.fit(_mlp(), ds, sample_weight=np.ones(100), **QUICK)
    a = tf_dynhp.fit(_mlp(), ds, class_weight={3: 2.0}, **QUICK)
    b = tf_dynhp.fit(_mlp(), x[:100], y[:100], class_weight={3: 2.0}, **QUICK)
    assert a.history["loss"] == b.history["loss"]


@pytest.mark.parametrize("form", ["batched", "unbatched", "column", "named", "shuffled"])
def test_a_dataset_of_x_y_weight_trains_as_arrays_with_sample_weight(mnist, form):
    """Keras takes a Dataset of (x, y, sample_weight) elements; fit refused them ("no
    sample weights") although it takes `sample_weight` with arrays."""
    (x, y), _ = mnist
    x, y = x[:300], y[:300]
    w = np.random.default_rng(0).uniform(0.0, 3.0, len(y)).astype(np.float32)
    def build():
        if form != "named":
            return _mlp()
        keras.utils.set_random_seed(0)
        pixels = keras.Input((28, 28), name="pixels")
        hidden = keras.layers.Dense(16, activation="relu")(keras.layers.Flatten()(pixels))
        return keras.Model(pixels, keras.layers.Dense(10, activation="softmax")(hidden))

    features = {"pixels": x} if form == "named" else x
    weights = w[:, None] if form == "column" else w
    ds = tf.data.Dataset.from_tensor_slices((features, y, weights))
    if form == "shuffled":  # reshuffled at every read: each weight must stay with its example
        order = np.random.default_rng(1).permutation(len(y))
        ds = tf.data.Dataset.from_tensor_slices((x[order], y[order], w[order]))
        x, y, w = x[order], y[order], w[order]
    if form != "unbatched":
        ds = ds.batch(64)
    kw = {**QUICK, "method": "hp", "epochs": 2}
    a = tf_dynhp.fit(build(), ds, **kw)
    b = tf_dynhp.fit(build(), x, y, sample_weight=w, **kw)
    plain = tf_dynhp.fit(build(), x, y, **kw)
    assert a.history["loss"] == b.history["loss"] != plain.history["loss"]
    for u, v in zip(a.model.get_weights(), b.model.get_weights(), strict=True):
        np.testing.assert_array_equal(u, v)


def test_a_dataset_shuffled_at_every_read_keeps_each_weight_with_its_example(mnist):
    (x, y), _ = mnist
    x, y = x[:200], y[:200]
    w = (y == 3).astype(np.float32) * 5.0 + 1.0  # the weight is a function of the label
    ds = tf.data.Dataset.from_tensor_slices((x, y, w)).shuffle(200, reshuffle_each_iteration=True)
    xs, ys, ws = tf_dynhp.data._materialize(ds, "x", (28, 28))
    np.testing.assert_array_equal(ws, (ys == 3) * 5.0 + 1.0)


@pytest.mark.parametrize("kind,change,match", [
    ("x", dict(sample_weight=np.ones(100)), r"`x` is a tf.data.Dataset of \(features, label, sample_weight\); `sample_weight` cannot be given with it"),
    ("x", dict(class_weight={0: 2.0}), r"`class_weight` cannot be given with it"),
    ("negative", {}, r"the sample weights of `x` \(its elements' third part\) must be finite and >= 0; example 5 has -1.0"),
    ("zeros", {}, r"the sample weights of `x` \(its elements' third part\) gives every training example the weight 0"),
    ("two", {}, r"whose weights are shaped \(None, 2\); expected one weight per example \(shape \(batch,\)\)"),
    ("validation", {}, r"`validation_data` is a tf.data.Dataset of \(features, label, sample_weight\); fit scores validation unweighted"),
    ("validation_tuple", {}, r"`validation_data` is a tuple of 3, \(x_val, y_val, sample_weight_val\)"),
    ("split_zeros", dict(validation_split=0.5), r"the sample weights of `x` gives every training example left by `validation_split` the weight 0"),
])
def test_bad_dataset_weights_are_refused_by_name(mnist, kind, change, match):
    (x, y), _ = mnist
    x, y = x[:100], y[:100]
    w = np.ones(100, np.float32)
    if kind == "negative":
        w[5] = -1.0
    elif kind == "zeros":
        w[:] = 0.0
    elif kind == "split_zeros":
        w[:50] = 0.0  # validation_split holds out the last half: the first half trains
    weights = np.ones((100, 2), np.float32) if kind == "two" else w
    ds = tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(32)
    with pytest.raises(ValueError, match=match):
        if kind == "validation":
            tf_dynhp.fit(_mlp(), x, y, validation_data=ds, **QUICK)
        elif kind == "validation_tuple":
            tf_dynhp.fit(_mlp(), x, y, validation_data=(x, y, w), **QUICK)
        else:
            tf_dynhp.fit(_mlp(), ds, **{**QUICK, **change})


# --------------------------------------------------------------------------- shuffle
def test_shuffle_false_trains_every_epoch_in_the_order_given(mnist, monkeypatch):
    """`shuffle=False`, as keras.Model.fit takes it: fit refused the argument."""
    (x, y), _ = mnist
    x, y = x[:200], y[:200]
    kw = dict(method="dynhp", alpha_bs=0.5, budget_kb=1e5, epochs=2, batch_size=16, seed=3, verbose=0)
    in_order = tf_dynhp.fit(_mlp(), x, y, shuffle=False, **kw)
    shuffled = tf_dynhp.fit(_mlp(), x, y, **kw)
    assert in_order.history["loss"] != shuffled.history["loss"]
    np.testing.assert_array_equal(tf_dynhp.data.epoch_order(3, 1, 5, shuffle=False), np.arange(5))
    # The same as a shuffled run whose every epoch order is the identity.
    import tf_dynhp.trainer as trainer_module
    monkeypatch.setattr(trainer_module, "epoch_order", lambda seed, epoch, n, shuffle=True: np.arange(n))
    identity = tf_dynhp.fit(_mlp(), x, y, **kw)
    assert identity.history["loss"] == in_order.history["loss"]
    for a, b in zip(identity.model.get_weights(), in_order.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_shuffle_is_checked_and_part_of_what_a_resume_checks(mnist, tmp_path):
    (x, y), _ = mnist
    with pytest.raises(ValueError, match=r"`shuffle`.*True or False \(Keras' 'batch' is not supported\).*'batch'"):
        tf_dynhp.fit(_mlp(), x[:100], y[:100], shuffle="batch", **QUICK)
    kw = dict(method="hp", epochs=1, batch_size=50, seed=1, verbose=0, checkpoint_dir=tmp_path)
    tf_dynhp.fit(_mlp(), x[:200], y[:200], shuffle=False, **kw)
    with pytest.raises(ValueError, match="shuffle"):
        tf_dynhp.fit(_mlp(), x[:200], y[:200], resume=True, **{**kw, "epochs": 2})


# --------------------------------------------------------------------------- monitored logs
@pytest.mark.parametrize("make", [
    lambda m: keras.callbacks.EarlyStopping(monitor=m, patience=1),
    lambda m: keras.callbacks.ReduceLROnPlateau(monitor=m, patience=1),
])
@pytest.mark.parametrize("monitor", ["val_error", "model_kb"])
def test_a_monitoring_callback_on_fits_own_logs_knows_lower_is_better(mnist, make, monitor):
    """Keras' mode 'auto' knows only "loss" and compiled metrics: EarlyStopping(monitor=
    "val_error"), fit's headline log, raised at the end of the first epoch."""
    (x, y), (xt, yt) = mnist
    cb = make(monitor)
    tf_dynhp.fit(_mlp(), x[:200], y[:200], method="hp", epochs=2, batch_size=50, seed=1, verbose=0,
                 validation_data=(xt[:100], yt[:100]), callbacks=[cb])
    assert cb.mode == "min" and cb.monitor_op is keras.ops.less


# --------------------------------------------------------------------------- validation_freq
@pytest.mark.parametrize("freq, validated", [(2, [2, 4]), ([1, 3], [1, 3]), ((4,), [4])])
def test_validation_freq_validates_the_epochs_keras_would_and_trains_the_same(mnist, freq, validated):
    """`validation_freq`, as keras.Model.fit reads it: fit refused the argument. The other
    epochs have no val_ logs and no test hooks, and None in the history; training is
    the same to the bit as with a validation after every epoch."""
    (x, y), (xt, yt) = mnist
    x, y = x[:200], y[:200]
    kw = dict(method="dynhp", alpha_bs=0.5, budget_kb=1e5, epochs=4, batch_size=16, seed=3, verbose=0,
              validation_data=(xt[:100], yt[:100]))
    every, record = tf_dynhp.fit(_mlp(), x, y, **kw), Record()
    some = tf_dynhp.fit(_mlp(), x, y, validation_freq=freq, callbacks=[record], **kw)
    for key in ("val_loss", "val_error", "val_accuracy"):
        assert [e + 1 for e, v in enumerate(some.history[key]) if v is not None] == validated
        assert [v for e, v in enumerate(every.history[key]) if e + 1 in validated] == [v for v in some.history[key] if v is not None]
    logged = [c[1] + 1 for c in record.calls if c[0] == "epoch" and "val_loss" in c[2]]
    assert logged == validated
    assert sum(c[0] == "test_begin" for c in record.calls) == len(validated)
    assert every.history["loss"] == some.history["loss"]
    for a, b in zip(every.model.get_weights(), some.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("freq", [0, -1, True, 1.5, "2", [], [0, 2], [True], None])
def test_validation_freq_is_checked_by_name(mnist, freq):
    (x, y), _ = mnist
    with pytest.raises(ValueError, match=r"`validation_freq`.*a positive int"):
        tf_dynhp.fit(_mlp(), x[:100], y[:100], validation_freq=freq, **QUICK)


# --------------------------------------------------------------------------- settings bound to a layer's width
@pytest.mark.parametrize("kind", ["dropout", "cnn_dropout", "input_dropout", "bias", "kernel"])
def test_settings_bound_to_the_units_are_refused_before_pruning_by_name(mnist, kind):
    """A Dropout noise_shape fixing the units axis, or a Constant initializer of an array,
    made the rebuilt layer fail at the first prune (a TensorFlow graph error, an epoch
    lost), and with sp at the final strip; dense rebuilds nothing."""
    (x, y), _ = mnist
    keras.utils.set_random_seed(0)
    if kind == "cnn_dropout":
        layers = [keras.Input((28, 28, 1)), keras.layers.Conv2D(8, 3, activation="relu"),
                  keras.layers.Dropout(0.3, noise_shape=(None, 1, 1, 8), name="drop"), keras.layers.Flatten()]
        images = x[:100, ..., None]
    else:
        dense = dict(bias_initializer=keras.initializers.Constant(np.full(16, 0.1))) if kind == "bias" else \
            dict(kernel_initializer=keras.initializers.Constant(np.full((784, 16), 0.01))) if kind == "kernel" else {}
        layers = [keras.Input((28, 28)), keras.layers.Flatten()]
        if kind == "input_dropout":
            layers.append(keras.layers.Dropout(0.2, noise_shape=(None, 784), name="drop"))
        layers.append(keras.layers.Dense(16, activation="relu", name="hidden", **dense))
        if kind == "dropout":
            layers.append(keras.layers.Dropout(0.3, noise_shape=(None, 16), name="drop"))
        images = x[:100]
    model = keras.Sequential([*layers, keras.layers.Dense(10, activation="softmax")])
    match = (r"Layer 'drop' has noise_shape=.*fixes its last axis.*Leave that axis to the input" if "dropout" in kind else
             rf"Layer 'hidden' has {kind}_initializer=Constant of an array of shape")
    for method in ("hp", "sp"):  # sp prunes nothing, but the final strip rebuilds closed units' layers narrower
        with pytest.raises(ValueError, match=match):
            tf_dynhp.fit(model, images, y[:100], **{**QUICK, "method": method})
    tf_dynhp.fit(model, images, y[:100], **{**QUICK, "method": "dense"})  # nothing rebuilt


def test_the_classifiers_bias_may_start_from_an_array(mnist):
    """Its units are never pruned: Constant(log class priors), the imbalanced-data habit, builds at every prune."""
    (x, y), _ = mnist
    keras.utils.set_random_seed(0)
    priors = np.log(np.bincount(y[:300], minlength=10) / 300.0)
    model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(10, bias_initializer=keras.initializers.Constant(priors))])
    result = tf_dynhp.fit(model, x[:300], y[:300], **{**QUICK, "method": "hp", "epochs": 3}, callbacks=[ClosePlan(0)])
    assert any(result.history["pruned_units"][1])


def test_a_noise_shape_leaving_the_units_axis_to_the_input_prunes(mnist):
    (x, y), _ = mnist
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dropout(0.3, noise_shape=(None, None)), keras.layers.Dense(10, activation="softmax")])
    result = tf_dynhp.fit(model, x[:300], y[:300], **{**QUICK, "method": "hp", "epochs": 3}, callbacks=[ClosePlan(0)])
    assert any(result.history["pruned_units"][1])


# --------------------------------------------------------------------------- a final phase with deterministic gates
def test_a_final_phase_with_deterministic_gates(mnist, tmp_path):
    """fit(deterministic_from=0.5): the first half of the epochs is the run without it; then
    the step trains with the test-time gates: no samples, so the training accuracy of a
    step is the model's own, and Eq. 6 counts each gate open for all examples or none.
    One trace and two agree, and a resume across the phase's start is the run unstopped."""
    (x, y), (xt, yt) = mnist
    x, y = x[:400], y[:400]
    kw = dict(method="dynhp", alpha_bs=0.5, budget_kb=1e5, epochs=4, batch_size=16, seed=2, verbose=0,
              validation_data=(xt[:200], yt[:200]))
    plain = tf_dynhp.fit(_mlp(), x, y, **kw)
    fixed = tf_dynhp.fit(_mlp(), x, y, deterministic_from=0.5, **kw)
    assert fixed.history["loss"][:2] == plain.history["loss"][:2] and fixed.history["loss"][2:] != plain.history["loss"][2:]
    assert fixed.history["retraces"][2] > fixed.history["retraces"][1] == plain.history["retraces"][1]  # traced again for the phase
    untraced = tf_dynhp.fit(_mlp(), x, y, deterministic_from=0.5, trace_once=False, **kw)
    assert untraced.history["loss"] == fixed.history["loss"]
    # Paused after epoch 2 (before the phase), resumed: the run unstopped.
    class StopAfter2(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.model.stop_training = True

    tf_dynhp.fit(_mlp(), x, y, deterministic_from=0.5, checkpoint_dir=tmp_path, callbacks=[StopAfter2()], **kw)
    resumed = tf_dynhp.fit(_mlp(), x, y, deterministic_from=0.5, checkpoint_dir=tmp_path, resume=True, **kw)
    assert resumed.history["loss"] == fixed.history["loss"]
    with pytest.raises(ValueError, match="deterministic_from"):  # a checkpoint of other settings
        tf_dynhp.fit(_mlp(), x, y, checkpoint_dir=tmp_path, resume=True, **kw)


def test_deterministic_gates_train_the_model_that_is_evaluated(mnist):
    """In the phase a step's accuracy (deterministic gates, before the update) is the
    model's own: a one-step epoch with the learning rate 0 gives the training accuracy of
    predict()."""
    (x, y), _ = mnist
    x, y = x[:100], y[:100]
    result = tf_dynhp.fit(_mlp(), x, y, method="hp", epochs=2, batch_size=100, seed=1, verbose=0, learning_rate=1e-12,
                          deterministic_from=0.5, gamma=1e-6)
    gated = result.gated_model
    accuracy = float(np.mean(np.argmax(gated.predict(x, verbose=0), -1) == y))
    assert result.history["accuracy"][1] == pytest.approx(accuracy, abs=1e-6)
    assert result.history["active_units"][1] == result.history["active_units"][0]


@pytest.mark.parametrize("value,match", [(0.0, r"None or a float in \(0, 1\)"), (1.0, r"None or a float in \(0, 1\)"),
                                         (True, "deterministic_from")])
def test_deterministic_from_is_checked(mnist, value, match):
    (x, y), _ = mnist
    with pytest.raises(ValueError, match=match):
        tf_dynhp.fit(_mlp(), x[:100], y[:100], deterministic_from=value, **QUICK)
    with pytest.raises(ValueError, match="method='dense' has no gates"):
        tf_dynhp.fit(_mlp(), x[:100], y[:100], deterministic_from=0.5, **{**QUICK, "method": "dense"})


def test_deterministic_gates_before_a_targets_deadline_are_refused_and_a_phase_after_the_last_epoch_warns(mnist):
    """Their activation rates are all 1: the deadline's forced cut would rank units by index."""
    (x, y), _ = mnist
    kw = dict(method="hp", epochs=4, batch_size=50, seed=1, verbose=0)
    with pytest.raises(ValueError, match=r"`deterministic_from`=0.25 starts the deterministic gates before `target_deadline`=0.5"):
        tf_dynhp.fit(_mlp(), x[:100], y[:100], target_kb=10.0, target_deadline=0.5, deterministic_from=0.25, **kw)
    with pytest.warns(RuntimeWarning, match=r"`deterministic_from`=0.9 of 4 epochs leaves no epoch after it"):
        tf_dynhp.fit(_mlp(), x[:100], y[:100], deterministic_from=0.9, **kw)


# --------------------------------------------------------------------------- keras.config.image_data_format
@pytest.fixture()
def channels_first():
    before = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    yield
    keras.config.set_image_data_format(before)


@pytest.mark.parametrize("method", ["dense", "sp", "hp"])
def test_a_global_channels_first_format_leaves_fits_own_layers_row_major(mnist, channels_first, method):
    """With keras.config.image_data_format() "channels_first", the Flatten layers tf_dynhp
    builds took it: fit refused its own gated core's Flatten (sp, hp), and method "dense"
    returned a model flattening columns first, predicting other values than it trained."""
    (x, y), _ = mnist
    model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(data_format="channels_last"),
                              keras.layers.Dense(16, activation="relu"), keras.layers.Dense(10, activation="softmax")])
    result = tf_dynhp.fit(model, x[:200], y[:200], method=method, epochs=1, batch_size=50, seed=1, verbose=0)
    flat = result.model.layers[0] if isinstance(result.model.layers[0], keras.layers.Flatten) else None
    assert flat is None or flat.data_format == "channels_last"
    expected = x[:20].reshape(20, -1)  # row-major rows through the model's own layers
    for layer in result.model.layers:
        if isinstance(layer, tf_dynhp.SelectFeatures):
            expected = expected[:, np.asarray(layer.indices)]
        elif isinstance(layer, keras.layers.Dense):
            expected = keras.ops.convert_to_numpy(layer(expected))
    np.testing.assert_allclose(result.model.predict(x[:20], verbose=0), expected, rtol=1e-5, atol=1e-6)
    tf_dynhp.parse_chain(result.model)  # the returned model is a chain tf_dynhp reads again


def test_a_global_channels_first_format_leaves_the_tools_models_channels_last(channels_first):
    from tf_dynhp import runs

    for model in (runs.build_mlp((8,)), runs.build_lenet5()):
        assert tf_dynhp.memory.mo_kb(model, batch_size=16) > 0  # parse_chain refused them


def test_a_channels_first_flatten_that_moves_nothing_is_taken(mnist):
    (x, y), _ = mnist
    model = keras.Sequential([keras.Input((1, 784)), keras.layers.Flatten(data_format="channels_first"),
                              keras.layers.Dense(10, activation="softmax")])
    tf_dynhp.fit(model, x[:100].reshape(100, 1, 784), y[:100], method="hp", epochs=1, batch_size=50, verbose=0)


# --------------------------------------------------------------------------- what callbacks do at an epoch's end
class _AddLog(keras.callbacks.Callback):
    """A metric of its own added to the epoch logs (e.g. an F1 score computed in a callback)."""

    def __init__(self, values):
        super().__init__()
        self.values = values

    def on_epoch_end(self, epoch, logs=None):
        logs["val_custom"] = self.values[epoch]


def test_logs_a_callback_adds_reach_early_stopping_and_the_history(mnist):
    """Keras' CallbackList hands the callbacks a copy of the logs: EarlyStopping on a log
    another callback added restored nothing, silently, and the history lacked those keys
    (no `learning_rate` column of LearningRateScheduler, which keras.Model.fit's has)."""
    (x, y), (xt, yt) = mnist
    stop = keras.callbacks.EarlyStopping("val_custom", mode="max", patience=5, restore_best_weights=True)
    schedule = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 1e-3 * 0.5**epoch)
    result = tf_dynhp.fit(_mlp(), x[:300], y[:300], method="hp", epochs=4, batch_size=50, seed=1, verbose=0,
                          validation_data=(xt[:100], yt[:100]), callbacks=[_AddLog([0.1, 0.9, 0.3, 0.2]), stop, schedule])
    assert stop.best_epoch == 1 and result.state.epoch == 2  # the model of the end of epoch 2
    assert result.history["val_custom"] == [0.1, 0.9, 0.3, 0.2]
    assert result.history["learning_rate"] == pytest.approx([1e-3, 5e-4, 2.5e-4, 1.25e-4])


class _EndRate(keras.callbacks.Callback):
    """Sets the learning rate at each epoch's end (as ReduceLROnPlateau does)."""

    def on_epoch_end(self, epoch, logs=None):
        self.model.optimizer.learning_rate.assign(1e-2 * 0.3 ** (epoch + 1))


def test_what_a_callback_changes_at_an_epochs_end_is_in_its_checkpoint(mnist, tmp_path):
    """The checkpoint was written before on_epoch_end: a rate set there was lost, and the
    resumed run differed from the unstopped one without a word."""
    (x, y), _ = mnist
    kw = dict(method="hp", epochs=4, batch_size=50, seed=1, verbose=0, learning_rate=1e-2)
    a = tf_dynhp.fit(_mlp(), x[:300], y[:300], callbacks=[_EndRate()], checkpoint_dir=tmp_path / "a", **kw)
    tf_dynhp.fit(_mlp(), x[:300], y[:300], callbacks=[_EndRate(), stop_after(2)], checkpoint_dir=tmp_path / "b", **kw)
    c = tf_dynhp.fit(_mlp(), x[:300], y[:300], callbacks=[_EndRate()], checkpoint_dir=tmp_path / "b", resume=True, **kw)
    assert_same_run(c, a, a.gated_model, c.gated_model)


class _NaNAtStart(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            self.epoch = None  # once: the retry runs clean
            kernel = self.model.dense_layers[0].kernel
            kernel.assign(np.full(kernel.shape, np.nan, "float32"))


def test_a_rollback_halves_the_rate_a_callback_set_at_the_epochs_end(mnist):
    """The rollback point was taken before on_epoch_end: after a ReduceLROnPlateau-like cut
    to 0.003 the retry ran at half the rate before it, 0.005, and said "halved"."""
    (x, y), _ = mnist
    with pytest.warns(RuntimeWarning, match=r"rolled back to the end of epoch 1, learning rate halved to 0\.0015 "):
        tf_dynhp.fit(_mlp(), x[:300], y[:300], method="hp", epochs=2, batch_size=50, seed=1, verbose=0, learning_rate=1e-2,
                     on_nonfinite="rollback", callbacks=[_EndRate(), _NaNAtStart(1)])


class _AtEnd(keras.callbacks.Callback):
    def __init__(self, fail=False):
        super().__init__()
        self.fail = fail

    def on_train_end(self, logs=None):
        self.bias = self.model.dense_layers[-1].bias.numpy()
        if self.fail:
            raise ConnectionError("upload failed")


def test_callbacks_end_with_the_model_the_run_ends_with(mnist, tmp_path):
    """EarlyStopping's best was restored after on_train_end: a callback there saw the last
    model (Keras restores in EarlyStopping's own on_train_end), and one that raised there
    lost the early stop: a resume trained on instead of ending as the run had."""
    (x, y), (xt, yt) = mnist

    def run(end, resume=False):
        stop = keras.callbacks.EarlyStopping("val_loss", patience=1, restore_best_weights=True)
        return tf_dynhp.fit(_mlp(), x[:300], y[:300], method="hp", epochs=12, batch_size=50, seed=1, verbose=0,
                            learning_rate=0.05, validation_data=(xt[:100], yt[:100]), callbacks=[stop, end],
                            checkpoint_dir=tmp_path, resume=resume)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "Restored the model of the end of epoch ..." is printed, not warned
        end = _AtEnd()
        a = run(end)
        assert len(a.history["loss"]) < 12 and a.state.epoch < len(a.history["loss"])  # stopped early, a best restored
        np.testing.assert_array_equal(end.bias, a.gated_model.get_layer(index=-1).bias.numpy())
        for path in tmp_path.iterdir():
            path.unlink()
        with pytest.raises(ConnectionError):
            run(_AtEnd(fail=True))
        b = run(_AtEnd(), resume=True)
    assert b.history["loss"] == a.history["loss"]  # nothing trained: the run had ended
    for u, v in zip(a.model.get_weights(), b.model.get_weights(), strict=True):
        np.testing.assert_array_equal(u, v)


def test_a_progbar_logger_of_the_users_is_the_only_bar(mnist, capsys):
    (x, y), _ = mnist
    tf_dynhp.fit(_mlp(), x[:200], y[:200], method="hp", epochs=2, batch_size=50, seed=1, verbose=1,
                 callbacks=[keras.callbacks.ProgbarLogger()])
    assert capsys.readouterr().out.count("Epoch 1/2\n") == 1  # the bar's header, once (fit drew a second bar)


def test_early_stopping_listed_before_the_callback_adding_its_log_restores_nothing(mnist):
    """It never sees the log (Keras warns and keeps best None); fit restored the first epoch's model."""
    (x, y), _ = mnist
    stop = keras.callbacks.EarlyStopping("val_custom", mode="max", patience=5, restore_best_weights=True)
    with pytest.warns(UserWarning, match="val_custom"):
        result = tf_dynhp.fit(_mlp(), x[:300], y[:300], method="hp", epochs=3, batch_size=50, seed=1, verbose=0,
                              callbacks=[stop, _AddLog([0.1, 0.9, 0.3])])
    assert stop.best is None and result.state.epoch == 3


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, epoch, where="end"):
        super().__init__()
        self.epoch, self.where = epoch, where

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def test_a_callback_raising_at_an_epochs_end_keeps_the_history_columns_aligned_on_resume(mnist, tmp_path):
    """The checkpoint written for a raise in on_epoch_end had a callback's column one entry
    short: the resumed history put the next values in the wrong epochs."""
    (x, y), _ = mnist
    values = [9.1, 4.2, 1.3, 0.4]
    kw = dict(method="hp", epochs=4, batch_size=50, seed=1, verbose=0)
    a = tf_dynhp.fit(_mlp(), x[:300], y[:300], callbacks=[_AddLog(values)], checkpoint_dir=tmp_path / "a", **kw)
    with pytest.raises(KeyboardInterrupt):
        tf_dynhp.fit(_mlp(), x[:300], y[:300], callbacks=[_AddLog(values), _Interrupt(1)], checkpoint_dir=tmp_path / "b", **kw)
    c = tf_dynhp.fit(_mlp(), x[:300], y[:300], callbacks=[_AddLog(values)], checkpoint_dir=tmp_path / "b", resume=True, **kw)
    assert a.history["val_custom"] == values
    assert c.history["val_custom"] == [9.1, None, 1.3, 0.4]  # epoch 2's callbacks never finished; its value is lost
    assert {len(v) for v in c.history.values()} == {4}


class _PoisonAtEnd(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            self.epoch = None
            kernel = self.model.dense_layers[0].kernel
            kernel.assign(np.full(kernel.shape, np.nan, "float32"))


def test_a_callback_leaving_nan_keeps_the_columns_aligned_and_is_caught_in_the_last_epoch(mnist):
    (x, y), _ = mnist
    kw = dict(method="hp", epochs=4, batch_size=50, seed=1, verbose=0)
    with pytest.raises(tf_dynhp.NonFiniteError) as err:
        tf_dynhp.fit(_mlp(), x[:300], y[:300], callbacks=[_AddLog([1.0, 2.0, 3.0, 4.0]), _PoisonAtEnd(1)], **kw)
    good = err.value.last_good.history
    assert {len(v) for v in good.values()} == {2} and good["val_custom"] == [1.0, None]  # lengths differed
    # in the last epoch no next step finds it: fit returned the NaN model
    with pytest.raises(tf_dynhp.NonFiniteError, match="A callback left non-finite weights .* end of epoch 4, the run's last"):
        tf_dynhp.fit(_mlp(), x[:300], y[:300], callbacks=[_PoisonAtEnd(3)], **kw)


# --------------------------------------------------------------------------- rebuilds: Dropout streams and layer names
class _CloseThird(keras.callbacks.Callback):
    """Closes a third of every gated layer's gates at each epoch's end: every boundary prunes."""

    def on_epoch_end(self, epoch, logs=None):
        for layer in self.model.gated_layers:
            la = layer.log_alpha.numpy()
            la[np.arange(0, la.shape[0] - 1, 3)] = tf_dynhp.gates.LOG_ALPHA_MIN
            layer.log_alpha.assign(la)


def test_a_dropout_without_a_seed_resumes_to_the_bit_through_prunes(mnist, tmp_path):
    """Each rebuild made the Dropout anew, drawing a seed from Python's random: its masks
    after a prune depended on the rebuilds before, so a resumed run diverged."""
    (x, y), _ = mnist

    def model():
        keras.utils.set_random_seed(1)
        return keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(24, activation="relu"),
                                 keras.layers.Dropout(0.3), keras.layers.Dense(10, activation="softmax")])

    kw = dict(method="hp", epochs=5, batch_size=50, seed=1, verbose=0)
    a = tf_dynhp.fit(model(), x[:300], y[:300], callbacks=[_CloseThird()], checkpoint_dir=tmp_path / "a", **kw)
    tf_dynhp.fit(model(), x[:300], y[:300], callbacks=[_CloseThird(), stop_after(3)], checkpoint_dir=tmp_path / "b", **kw)
    c = tf_dynhp.fit(model(), x[:300], y[:300], callbacks=[_CloseThird()], checkpoint_dir=tmp_path / "b", resume=True, **kw)
    assert_same_run(c, a, a.gated_model, c.gated_model)


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_a_layer_named_as_a_rebuilt_selection_does_not_break_the_first_prune(mnist, kind):
    """The SelectFeatures a prune inserts was named '<flatten>_select' (a CNN) or
    'select_features' (pruned inputs): a layer of the user's of that name made the rebuilt
    model fail at the first prune, after an epoch's work."""
    (x, y), _ = mnist
    keras.utils.set_random_seed(0)
    if kind == "cnn":
        layers = [keras.Input((28, 28, 1)), keras.layers.Conv2D(3, 5, activation="relu"), keras.layers.MaxPooling2D(4),
                  keras.layers.Flatten(name="flat"), keras.layers.Dense(12, activation="relu", name="flat_select")]
        x = x[..., None]
    else:
        layers = [keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(12, activation="relu", name="select_features")]
    model = keras.Sequential(layers + [keras.layers.Dense(10, activation="softmax", name="flatten")])
    result = tf_dynhp.fit(model, x[:200], y[:200], method="hp", epochs=2, batch_size=50, seed=1, verbose=0, callbacks=[_CloseThird()])
    assert any(isinstance(layer, tf_dynhp.SelectFeatures) for layer in result.model.layers)
    assert len({layer.name for layer in result.model.layers}) == len(result.model.layers)


def test_a_resumed_run_counts_the_retraces_the_unstopped_run_counts(mnist, tmp_path):
    """Tracing the restored model was counted as a retrace ([2, 2, 4, 4] against [2, 2, 2, 2])."""
    (x, y), _ = mnist
    kw = dict(method="hp", epochs=4, batch_size=50, seed=1, verbose=0)
    a = tf_dynhp.fit(_mlp(), x[:200], y[:200], callbacks=[_CloseThird()], **kw)
    tf_dynhp.fit(_mlp(), x[:200], y[:200], callbacks=[_CloseThird(), stop_after(2)], checkpoint_dir=tmp_path, **kw)
    c = tf_dynhp.fit(_mlp(), x[:200], y[:200], callbacks=[_CloseThird()], checkpoint_dir=tmp_path, resume=True, **kw)
    assert c.history["retraces"] == a.history["retraces"]
