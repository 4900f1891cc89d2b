"""Shared fixtures: the real datasets (read-only, from ../shared/datasets or TF_DYNHP_DATA)
and small models. Nothing here downloads."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DATA_ROOT = Path(os.environ.get("TF_DYNHP_DATA", Path(__file__).resolve().parents[2] / "shared" / "datasets"))


def _load(name: str):
    from tf_dynhp import datasets

    if not DATA_ROOT.exists():
        pytest.skip(f"dataset folder {DATA_ROOT} not found (set TF_DYNHP_DATA)")
    return datasets.load(name, DATA_ROOT, download=False)


@pytest.fixture(scope="session")
def mnist():
    """((x_train, y_train), (x_test, y_test)) of MNIST, float32 in [0, 1]."""
    return _load("mnist")


@pytest.fixture(scope="session")
def mnist_small(mnist):
    """3000 training and 1000 test images of MNIST (quick training tests)."""
    (x, y), (xt, yt) = mnist
    return (x[:3000], y[:3000]), (xt[:1000], yt[:1000])


def make_mlp(input_shape=(28, 28), hidden=(32, 16), classes=10, dtype=None, activation="softmax"):
    """A small Keras MLP: Input -> Flatten -> Dense(relu)... -> Dense(classes)."""
    import keras

    layers = [keras.Input(input_shape, dtype=dtype)]
    if len(input_shape) > 1:
        layers.append(keras.layers.Flatten(dtype=dtype))
    layers += [keras.layers.Dense(h, activation="relu", dtype=dtype) for h in hidden]
    layers.append(keras.layers.Dense(classes, activation=activation, dtype=dtype))
    return keras.Sequential(layers)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def load_gate_kernel():
    """The fused gate kernel's op module (compiled on first use into the current cache folder).
    Skipped only on a machine without a C++ compiler; a failing compilation fails."""
    from tf_dynhp import fused

    try:
        return fused.load_kernel()
    except fused.KernelBuildError as err:
        if str(err).startswith("No C++ compiler found"):
            pytest.skip(str(err))
        raise


def stop_after(epochs: int):
    """A Keras callback that stops `fit` after `epochs` epochs: a run cut short, to resume."""
    import keras

    class StopAfter(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 >= epochs:
                self.model.stop_training = True

    return StopAfter()


def assert_same_run(c, a, model_a, model_c):
    """`c` (a resumed run) equals `a` on every history key but the runtime ones, and the two
    models' weights are bit-identical."""
    from tf_dynhp.training import RUNTIME_KEYS

    for key in a.history:
        if key not in RUNTIME_KEYS:
            assert c.history[key] == a.history[key], key
    for u, v in zip(model_a.weights, model_c.weights, strict=True):
        np.testing.assert_array_equal(u.numpy(), v.numpy())
