"""tf_dynhp.runs: the run-folder routine with --arch=lenet5 (images get their channel axis)."""

import json

import keras
import numpy as np
import pytest

import tf_dynhp
from tf_dynhp import runs


def test_lenet5_run_writes_a_folder(mnist, tmp_path):
    (x, y), (xt, yt) = mnist
    config = runs.RunConfig(arch="lenet5", method="hp", epochs=1, batch_size=50, l0_lambda=0.5, gamma=0.9,
                            droprate_init=0.2, train_limit=400, test_limit=200, seed=3)
    metrics = runs.run(config, tmp_path, data=((x, y), (xt, yt)), verbose=0)
    assert json.loads((tmp_path / "config.json").read_text())["arch"] == "lenet5"
    # One size per unit axis: input channels, conv1 and conv2 channels, flattened features, fc1 units.
    sizes = metrics["layer_sizes"]
    assert len(sizes) == 5 and sizes[0] == 1 and sizes[1] <= 20 and sizes[2] <= 50 and sizes[3] <= 800 and sizes[4] <= 500
    assert metrics["dense_model_kb"] == pytest.approx(tf_dynhp.memory.floats_to_kb(431_080))
    model = keras.models.load_model(tmp_path / "model.keras")
    assert tuple(model.inputs[0].shape[1:]) == (28, 28, 1)
    probs = model.predict(xt[:200, ..., None], verbose=0)
    assert 100.0 * np.mean(np.argmax(probs, 1) != yt[:200]) == pytest.approx(metrics["test_error"])
    gated = keras.models.load_model(tmp_path / "gated_model.keras")  # L0Conv2D layers load back
    assert sum(isinstance(layer, tf_dynhp.L0Conv2D) for layer in gated.layers) == 2
    np.testing.assert_allclose(gated.predict(xt[:200, ..., None], verbose=0), probs, atol=1e-5)


def test_unknown_arch_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="arch.*'mlp', 'lenet5'.*'vgg'"):
        runs.run(runs.RunConfig(arch="vgg"), tmp_path / "never", data=((None, None), (None, None)), verbose=0)
    assert not (tmp_path / "never").exists()
