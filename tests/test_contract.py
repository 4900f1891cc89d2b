"""Issue 15: the Keras contract on users' own setups, for `fit` itself (models, data
pipelines, precision, callbacks, progress). Each test reproduces a reported failure."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

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
