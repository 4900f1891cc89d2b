"""Bad input, tried on purpose (issue 7): every entry point gets a table of broken inputs.

Each case must raise one clear exception whose message names the argument or file at
fault, and must leave the disk as it was: a sentinel file at the output / checkpoint
location keeps its bytes and no file appears next to it.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import struct
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_mlp

import tf_dynhp
from tf_dynhp import datasets, export

ROOT = Path(__file__).resolve().parents[1]


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def guarded(tmp_path):
    """A folder holding a sentinel checkpoint and model; asserts nothing changed after the case."""
    folder = tmp_path / "guarded"
    folder.mkdir()
    (folder / "epoch-00001.dynhp").write_bytes(b"previous checkpoint")
    (folder / "model.tflite").write_bytes(b"previous model")
    before = _snapshot(folder)
    yield folder
    assert _snapshot(folder) == before, "a failing call changed files on disk"


def _lstm():
    return keras.Sequential([keras.Input((28, 28)), keras.layers.LSTM(4, name="rnn"), keras.layers.Dense(10, activation="softmax")])


def _batchnorm():
    return keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.BatchNormalization(name="bn"),
                             keras.layers.Dense(10, activation="softmax")])


def _two_inputs():
    a, b = keras.Input((28, 28)), keras.Input((28, 28))
    h = keras.layers.Concatenate()([keras.layers.Flatten()(a), keras.layers.Flatten()(b)])
    return keras.Model([a, b], keras.layers.Dense(10, activation="softmax")(h))


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__(name="sub")
        self.dense = keras.layers.Dense(10)

    def call(self, images):
        return self.dense(keras.ops.reshape(images, (-1, 784)))


def _hidden_softmax(as_layer: bool = False):
    hidden = ([keras.layers.Dense(8, name="hid"), keras.layers.Activation("softmax", name="act")] if as_layer
              else [keras.layers.Dense(8, activation="softmax", name="hid")])
    return keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), *hidden, keras.layers.Dense(10, activation="softmax")])


def _lora():
    model = make_mlp(hidden=(8,))
    model.layers[1].enable_lora(2)
    return model


class _Unregistered(keras.initializers.Initializer):
    def __call__(self, shape, dtype=None):
        return keras.random.normal(shape, stddev=0.05, dtype=dtype)


def _two_dtypes():
    return keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(8, activation="relu", dtype="float64"),
                             keras.layers.Dense(10, activation="softmax", dtype="float32")])


X = np.random.default_rng(0).random((20, 28, 28)).astype("float32")
Y = np.arange(20) % 10
MLP_KB = 4 * (784 * 8 + 8 + 8 * 10 + 10) / 1024  # make_mlp(hidden=(8,))


@keras.saving.register_keras_serializable(package="tests")
class _ScaledDense(keras.layers.Dense):
    def call(self, inputs):
        return 10.0 * super().call(inputs)


def _quantized():
    model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax", name="q")])
    model.quantize("int8")
    return model


def _ones(shape, dtype=None):
    return keras.ops.ones(shape, dtype=dtype)


FIT_CASES = [
    ("wrong shape", dict(x=X[:, :, :20]), ValueError, r"`x` has examples of shape \(28, 20\)"),
    ("NaN pixels", dict(x=np.where(X > 0.5, np.nan, X)), ValueError, r"`x` contains NaN"),
    ("inf pixels", dict(x=np.where(X > 0.5, np.inf, X)), ValueError, r"`x` contains NaN or infinite"),
    ("labels out of range", dict(y=Y + 10), ValueError, r"`y` has labels in \[10, 19\]"),
    ("negative labels", dict(y=Y - 5), ValueError, r"`y` has labels"),
    ("float labels", dict(y=Y + 0.25), TypeError, r"`y` must hold integer class ids, received dtype float64 with non-integer values"),
    ("string labels", dict(y=Y.astype(str)), TypeError, r"`y` must hold integer class ids, received dtype <U\d+\.$"),
    ("empty arrays", dict(x=X[:0], y=Y[:0]), ValueError, r"`x` is empty"),
    ("length mismatch", dict(y=Y[:7]), ValueError, r"`x` has 20 examples but `y` has 7"),
    ("LSTM model", dict(model=_lstm), ValueError, r"'rnn' of class LSTM"),
    ("BatchNormalization", dict(model=_batchnorm), ValueError, r"'bn' of class BatchNormalization"),
    ("two inputs", dict(model=_two_inputs), ValueError, r"2 inputs"),
    ("subclassed model", dict(model=_Subclassed), ValueError, r"'sub' is a subclassed keras.Model \(_Subclassed\).*Sequential"),
    ("budget negative", dict(budget_kb=-5.0), ValueError, r"`budget_kb`"),
    ("budget zero", dict(budget_kb=0.0), ValueError, r"`budget_kb`"),
    ("budget below the model", dict(budget_kb=MLP_KB * 0.9), ValueError, r"`budget_kb`=.* cannot hold the model"),
    ("alpha_bs below 0", dict(alpha_bs=-0.1), ValueError, r"`alpha_bs`"),
    ("alpha_bs above 1", dict(alpha_bs=1.5), ValueError, r"`alpha_bs`"),
    ("gamma 0", dict(gamma=0.0), ValueError, r"`gamma`"),
    ("gamma 1", dict(gamma=1.0), ValueError, r"`gamma`"),
    ("checkpoint_dir is a file", dict(checkpoint_dir="FILE"), OSError, r"checkpoint_dir '.*model.tflite/ck' is not writable: .*model.tflite is a file, not a folder"),
    ("one-hot loss name", dict(loss="categorical_crossentropy"), ValueError, r"`loss`.*integer class labels"),
    ("one-hot loss object", dict(loss=keras.losses.CategoricalCrossentropy()), ValueError, r"`loss`.*integer class labels"),
    # The step averages Loss.call's per-example values: a sum or a class mask was dropped
    # silently (a loss reported 100x smaller than Keras', or averaged over ignored examples).
    ("summed loss", dict(loss=keras.losses.SparseCategoricalCrossentropy(reduction="sum")), ValueError,
     r"`loss` is SparseCategoricalCrossentropy\(reduction='sum'\); tf_dynhp.fit trains on the mean"),
    ("weighted-mean loss", dict(loss=keras.losses.SparseCategoricalCrossentropy(reduction="mean_with_sample_weight")),
     ValueError, r"reduction='mean_with_sample_weight'"),
    ("ignore_class partial", dict(loss=functools.partial(keras.losses.sparse_categorical_crossentropy, ignore_class=2)),
     ValueError, r"`loss` is a partial of 'sparse_categorical_crossentropy' with ignore_class=2; .*does not mask classes"),
    ("ignore_class", dict(loss=keras.losses.SparseCategoricalCrossentropy(ignore_class=2)), ValueError,
     r"`loss` is SparseCategoricalCrossentropy\(ignore_class=2\); .*does not mask classes"),
    ("TerminateOnNaN", dict(callbacks=[keras.callbacks.TerminateOnNaN()]), ValueError, r"TerminateOnNaN has no effect.*on_nonfinite"),
    ("softmax on a hidden layer", dict(model=_hidden_softmax), ValueError, r"'hid' of class Dense.*'softmax' mixes the units"),
    ("softmax Activation on a hidden layer", dict(model=lambda: _hidden_softmax(as_layer=True)), ValueError,
     r"'act' of class Activation.*'softmax' mixes the units"),
    ("LoRA adapter", dict(model=_lora), ValueError, r"has a LoRA adapter \(lora_rank=2\).*would lose"),
    ("unregistered initializer", dict(model=lambda: keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(
        8, kernel_initializer=_Unregistered(), name="init"), keras.layers.Dense(10, activation="softmax")])), ValueError,
     r"'init' has a `kernel_initializer` that Keras cannot rebuild"),
    ("initializer get_config cannot describe", dict(model=lambda: keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(),
        keras.layers.Dense(8, activation="relu", kernel_initializer=functools.partial(_ones), name="init"),
        keras.layers.Dense(10, activation="softmax")])), ValueError,
     r"Layer 'init' cannot give its config \(get_config failed\).*Keras said: TypeError"),  # it blamed the activation
    ("two dtypes", dict(model=_two_dtypes), ValueError, r"different dtypes: float64 \(first in layer '.*'\), float32"),
    ("gradient accumulation", dict(optimizer=keras.optimizers.Adam(gradient_accumulation_steps=2)), ValueError,
     r"gradient_accumulation_steps=2.*trace_once=False"),
    *([("Muon", dict(optimizer=keras.optimizers.Muon(1e-3)), ValueError, r"Muon reads each variable's shape.*trace_once=False")]
      if hasattr(keras.optimizers, "Muon") else []),
    ("dataset of dicts", dict(x=tf.data.Dataset.from_tensor_slices(({"image": X}, Y)), y=None), ValueError,
     r"`x` is a tf.data.Dataset whose features are a dict with keys \['image'\]; the model has one input, named"),
    # Found by a probe: each crashed after tracing, was read as another value, or named the wrong argument.
    ("weight_decay a bool", dict(weight_decay=True), ValueError, r"argument `weight_decay`.*Received: weight_decay=True"),
    ("weight_decay a string", dict(weight_decay="0.1"), ValueError, r"argument `weight_decay`"),
    ("input_droprate_init out of range", dict(input_droprate_init=1.5), ValueError, r"argument `input_droprate_init`"),
    ("steps_per_execution beyond the int32 step counter", dict(steps_per_execution=2**31), ValueError,
     r"`steps_per_execution`\. Expected a positive integer up to 2147483647"),
    ("batch_size beyond int64", dict(batch_size=2**63), ValueError, r"`batch_size`\. Expected a positive integer up to"),
    ("complex x", dict(x=X.astype(complex)), TypeError, r"`x` must be real numbers, received dtype complex128"),
    ("x beyond float32", dict(x=X.astype("float64") * 1e300), ValueError, r"`x` has values beyond float32's range"),
    ("float label beyond int64", dict(y=np.where(Y == Y[0], 1e20, Y.astype("float64"))), ValueError,
     r"`y` has labels in \[\d, 1e\+20\]"),
    ("a convolution on a uint8 input", dict(model=lambda: keras.Sequential([
        keras.Input((28, 28, 1), dtype="uint8"), keras.layers.Conv2D(2, 3, name="conv"), keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax")]), x=X[..., None]), ValueError,
     r"Layer 'conv' of class Conv2D reads the model's uint8 input; Keras' Conv2D takes float inputs only"),
    ("scaled pixels for a uint8 input", dict(model=lambda: keras.Sequential([
        keras.Input((28, 28), dtype="uint8"), keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])),
     ValueError, r"`x` holds values that are not whole numbers.*the model's input is uint8"),
    ("dataset of one dict", dict(x=tf.data.Dataset.from_tensor_slices({"image": X, "label": Y}), y=None), ValueError,
     r"`x` is a tf.data.Dataset whose elements are \{'image'.*pairs or \(features, label, sample_weight\) triples of tensors"),
    # Found by a probe: each was accepted and gave a model other than the one given, or failed deep in Keras.
    ("Flatten channels_first on images", dict(model=lambda: keras.Sequential([
        keras.Input((28, 28)), keras.layers.Flatten(data_format="channels_first", name="flat"),
        keras.layers.Dense(10, activation="softmax")])), ValueError,
     r"'flat' of class Flatten.*data_format='channels_first'.*Flatten\(data_format='channels_last'\)"),
    ("Flatten channels_first in a CNN", dict(model=lambda: keras.Sequential([
        keras.Input((28, 28, 1)), keras.layers.Conv2D(2, 3, activation="relu"),
        keras.layers.Flatten(data_format="channels_first", name="flat"), keras.layers.Dense(10, activation="softmax")]),
        x=X[..., None]), ValueError, r"'flat' of class Flatten.*channels_first"),
    ("a subclass of Dense", dict(model=lambda: keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(),
        _ScaledDense(10, activation="softmax", name="scaled")])), ValueError,
     r"'scaled' of class _ScaledDense.*subclass of Dense: tf_dynhp rebuilds every Dense as a plain Dense"),
    ("a quantized model", dict(model=_quantized), ValueError, r"'q' of class Dense.*quantized \(quantization_mode='int8'\)"),
    ("SpatialDropout before the Flatten", dict(model=lambda: keras.Sequential([keras.Input((28, 28)),
        keras.layers.SpatialDropout1D(0.2, name="sd"), keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])),
     ValueError, r"'sd' of class SpatialDropout1D.*depends on that shape.*Move it after the Flatten"),
    ("Dropout noise_shape before the Flatten", dict(model=lambda: keras.Sequential([keras.Input((28, 28)),
        keras.layers.Dropout(0.2, noise_shape=(None, 28, 1), name="do"), keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax")])), ValueError, r"'do' of class Dropout.*noise_shape=\(None, 28, 1\)"),
    ("a hidden activation failing on 3 units", dict(model=lambda: keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(),
        keras.layers.Dense(8, activation="glu", name="g"), keras.layers.Dense(10, activation="softmax")])), ValueError,
     r"'g' of class Dense.*activation 'glu' fails on a row of 3 units"),
    ("rollback with a learning-rate schedule", dict(on_nonfinite="rollback", optimizer=keras.optimizers.Adam(
        keras.optimizers.schedules.ExponentialDecay(1e-3, 10, 0.9))), ValueError,
     r"on_nonfinite='rollback' retries .* a schedule \(ExponentialDecay\)"),
    ("EarlyStopping on a log of no known direction", dict(callbacks=[keras.callbacks.EarlyStopping(monitor="val_acc")]),
     ValueError, r"EarlyStopping\(monitor='val_acc', mode='auto'\): neither Keras nor tf_dynhp knows"),
]


@pytest.mark.parametrize("case,change,err,match", FIT_CASES, ids=[c[0] for c in FIT_CASES])
def test_fit_rejects(case, change, err, match, guarded):
    kwargs = dict(method="dynhp", epochs=1, alpha_bs=0.9, budget_kb=MLP_KB + 200, verbose=0, checkpoint_dir=guarded)
    x, y = change.pop("x", X), change.pop("y", Y)
    model = change.pop("model", lambda: make_mlp(hidden=(8,)))()
    if change.get("checkpoint_dir") == "FILE":
        change["checkpoint_dir"] = guarded / "model.tflite" / "ck"
    kwargs.update(change)
    with pytest.raises(err, match=match):
        tf_dynhp.fit(model, x, y, **kwargs)


def test_numpy_scalars_and_bools_are_read_as_keras_reads_them(mnist_small):
    # np.float32 gamma / weight_decay / droprate_init were refused (budget_kb, alpha_bs,
    # learning_rate took them); verbose=True was refused (Keras reads it as 1).
    (x, y), _ = mnist_small
    kwargs = dict(method="hp", epochs=1, seed=1, gamma=np.float32(0.5), weight_decay=np.float32(0.0),
                  droprate_init=np.float32(0.5), input_droprate_init=np.float32(0.2))
    keras.utils.set_random_seed(0)
    a = tf_dynhp.fit(make_mlp(hidden=(8,)), x[:200], y[:200], verbose=False, **kwargs)
    keras.utils.set_random_seed(0)
    b = tf_dynhp.fit(make_mlp(hidden=(8,)), x[:200], y[:200], verbose=0, method="hp", epochs=1, seed=1)
    assert a.history["loss"] == b.history["loss"]
    layer = tf_dynhp.L0Dense(4, l0_lambda=np.float32(0.1), droprate_init=np.float32(0.3))
    assert layer.get_config()["droprate_init"] == pytest.approx(0.3)


@pytest.mark.parametrize("build,match", [(_lstm, "'rnn' of class LSTM"), (_batchnorm, "'bn' of class BatchNormalization"),
                                         (_two_inputs, "2 inputs"), (_lora, r"LoRA adapter"),
                                         (_hidden_softmax, r"'softmax' mixes the units")])
def test_to_l0_rejects(build, match):
    with pytest.raises(ValueError, match=match):
        tf_dynhp.to_l0(build())


def _idx_images(path: Path, count: int, payload: bytes | None = None) -> None:
    data = struct.pack(">IIII", 0x803, count, 28, 28) + (payload if payload is not None else bytes(count * 784))
    with gzip.open(path, "wb") as f:
        f.write(data)


def _idx_labels(path: Path, count: int) -> None:
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">II", 0x801, count) + bytes(count))


def _fake_dataset(folder: Path, damage: str) -> Path:
    folder.mkdir(parents=True)
    for split, n in (("train", 5), ("t10k", 3)):
        _idx_images(folder / f"{split}-images-idx3-ubyte.gz", n)
        _idx_labels(folder / f"{split}-labels-idx1-ubyte.gz", n)
    target = folder / "train-images-idx3-ubyte.gz"
    if damage == "truncated":
        _idx_images(target, 5, bytes(784 * 2))
    elif damage == "garbage":
        target.write_bytes(b"this is not an IDX file at all")
    elif damage == "wrong magic":
        with gzip.open(target, "wb") as f:
            f.write(struct.pack(">IIII", 0x1234, 5, 28, 28) + bytes(5 * 784))
    return target


@pytest.mark.parametrize("damage,match", [("truncated", "train-images-idx3-ubyte.gz.*expected"),
                                          ("garbage", "train-images-idx3-ubyte.gz"),
                                          ("wrong magic", "train-images-idx3-ubyte.gz.*magic")])
def test_dataset_loader_rejects(damage, match, tmp_path):
    target = _fake_dataset(tmp_path / "mnist", damage)
    before = _snapshot(tmp_path / "mnist")
    with pytest.raises(ValueError, match=match):
        datasets.load("mnist", tmp_path, download=False)
    assert _snapshot(tmp_path / "mnist") == before
    assert target.exists()


def test_dataset_loader_unknown_name():
    with pytest.raises(ValueError, match="`name`"):
        datasets.load("cifar", download=False)


@pytest.fixture(scope="module")
def small_model():
    keras.utils.set_random_seed(0)
    return make_mlp(hidden=(8,))


@pytest.mark.parametrize(
    "args,kwargs,err,match",
    [
        (("not a model",), {"quantization": "none"}, TypeError, "keras"),
        (("MODEL",), {"quantization": "int4"}, ValueError, "quantization"),
        (("MODEL",), {"quantization": "int8"}, ValueError, "representative_data"),
    ],
)
def test_to_tflite_rejects(args, kwargs, err, match, small_model, guarded):
    model = small_model if args[0] == "MODEL" else args[0]
    with pytest.raises(err, match=match):
        export.to_tflite(model, guarded / "model.tflite", **kwargs)


def test_to_tflite_missing_folder(small_model, tmp_path):
    with pytest.raises((FileNotFoundError, ValueError), match="no_such_folder"):
        export.to_tflite(small_model, tmp_path / "no_such_folder" / "m.tflite")
    assert not (tmp_path / "no_such_folder").exists()


def _litert_runner():
    spec = importlib.util.spec_from_file_location("litert_runner_bad", ROOT / "deploy" / "litert_runner.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("content", [b"garbage bytes, not a flatbuffer", b"", b"\x00" * 64])
def test_deploy_rejects_a_file_that_is_not_tflite(content, tmp_path):
    lr = _litert_runner()
    bad = tmp_path / "model.tflite"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match="model.tflite"):
        lr.Classifier(bad)
    assert bad.read_bytes() == content


def test_deploy_rejects_a_missing_file(tmp_path):
    lr = _litert_runner()
    with pytest.raises((FileNotFoundError, ValueError), match="absent.tflite"):
        lr.Classifier(tmp_path / "absent.tflite")


def test_reshape_to_input_fits_any_shape_of_as_many_values_and_names_a_mismatch():
    from tf_dynhp.data import reshape_to_input

    x = np.arange(2 * 784, dtype=np.float32).reshape(2, 28, 28)
    assert reshape_to_input(x, (28, 28)) is not None and reshape_to_input(x, (28, 28)).shape == (2, 28, 28)
    np.testing.assert_array_equal(reshape_to_input(x, (28, 28, 1))[..., 0], x)
    np.testing.assert_array_equal(reshape_to_input(x, (784,)), x.reshape(2, 784))
    with pytest.raises(ValueError, match=r"inputs of shape \(32, 32, 3\) \(3072 values\); the test images are \(28, 28\) \(784 values\)"):
        reshape_to_input(x, (32, 32, 3), "the test images")
    with pytest.raises(ValueError, match=r"inputs of shape \(14, 56\) \(784 values\)"):  # as many values, other pixels
        reshape_to_input(x, (14, 56))
    np.testing.assert_array_equal(reshape_to_input(x.reshape(2, 784), (28, 28, 1)), x[..., None])
