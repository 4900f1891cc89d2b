"""Saved work keeps loading across the restructuring of issue 14: `.keras` files and
checkpoints written by the code of commit 2c0b477 (tests/data/legacy-2c0b477/make.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

import tf_dynhp

LEGACY = Path(__file__).resolve().parent / "data" / "legacy-2c0b477"


def _model():
    return keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(12, activation="relu"),
                             keras.layers.Dense(10, activation="softmax")])


def test_legacy_keras_files_load_and_predict(mnist):
    (x, _), _ = mnist
    stripped = keras.models.load_model(LEGACY / "model.keras")
    gated = keras.models.load_model(LEGACY / "gated_model.keras")
    assert "SelectFeatures" in [type(layer).__name__ for layer in stripped.layers]
    assert any(isinstance(layer, tf_dynhp.L0Dense) for layer in gated.layers)
    # The stripped model is the gated one at inference (deterministic gates folded in).
    np.testing.assert_allclose(stripped.predict(x[:64], verbose=0), gated.predict(x[:64], verbose=0), rtol=1e-5, atol=1e-6)


def test_legacy_checkpoint_resumes(mnist, tmp_path):
    (x, y), _ = mnist
    folder = tmp_path / "checkpoints"
    shutil.copytree(LEGACY / "checkpoints", folder)
    saved = tf_dynhp.checkpoint.latest_checkpoint(folder)
    assert saved is not None and saved[0].name == "epoch-00003.dynhp"
    settings = saved[2]["settings"]
    assert {"method", "l0_lambda", "alpha_bs", "gamma", "budget_kb", "model", "data", "gate_kernel"} <= set(settings)

    def resume():
        return tf_dynhp.fit(_model(), x[:600], y[:600], method="dynhp", alpha_bs=0.8, l0_lambda=1.0, gamma=0.8,
                            input_droprate_init=0.5, budget_kb=400.0, epochs=4, seed=7, verbose=0, gate_kernel="tf",
                            checkpoint_dir=folder, resume=True)

    result = resume()
    history = saved[2]["state"]["history"]
    assert result.state.epoch == 4
    # The three saved epochs come back as they were; the fourth continues from the saved state.
    for key in ("loss", "active_units", "batch_size", "pruned_units"):
        assert result.history[key][:3] == history[key]
    assert result.history["active_units"][3][0] <= history["active_units"][2][0]
    # Exact: resuming the same checkpoint again gives the same fourth epoch.
    shutil.rmtree(folder)
    shutil.copytree(LEGACY / "checkpoints", folder)
    again = resume()
    assert again.history["loss"] == result.history["loss"]
    for a, b in zip(again.model.weights, result.model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_legacy_checkpoint_refuses_other_settings(mnist, tmp_path):
    (x, y), _ = mnist
    folder = tmp_path / "checkpoints"
    shutil.copytree(LEGACY / "checkpoints", folder)
    with pytest.raises(ValueError, match="gamma"):
        tf_dynhp.fit(_model(), x[:600], y[:600], method="dynhp", alpha_bs=0.8, l0_lambda=1.0, gamma=0.6,
                     input_droprate_init=0.5, budget_kb=400.0, epochs=4, seed=7, verbose=0, gate_kernel="tf",
                     checkpoint_dir=folder, resume=True)
