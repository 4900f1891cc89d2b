"""Eq. 8 as training applies it: the increments the compiled epoch loop accumulates and
the candidate batch `fit` records, against a float64 NumPy computation from brute-force
per-example gradients (issue 17).

The step uses the fused gate kernel, whose noise `tf_dynhp.fused.noise_reference`
reproduces in NumPy (its bits are checked against the kernel in test_fused.py), so the
reference sees the same gates as the step. The model is float32 (the kernel's dtype);
the reference is float64, and a floor whose argument lies within the float32 error of
an integer is allowed either value (the test asserts that this leaves little slack).
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import load_gate_kernel, make_mlp
import tf_dynhp
from tf_dynhp import batching, fused, to_l0

# The loop's pieces, imported in one place (issue 14 moved them out of tf_dynhp.training).
from tf_dynhp.data import epoch_order as _epoch_order
from tf_dynhp.loop import Accumulators as _Accumulators
from tf_dynhp.loop import make_epoch_runner as _make_epoch_runner
from tf_dynhp.pruning import core_from as _core_from

ALPHA_BS = 0.2  # 1 - alpha = 0.8: neither 0.5 * (1 - alpha) = 0.4 nor alpha = 0.2 gives the same floors
RTOL = 2e-4  # float32 step against the float64 reference


@pytest.fixture(scope="module")
def kernel():
    return load_gate_kernel()


# ------------------------------------------------------------------ NumPy reference
def _sample(u, log_alpha, t, l, r):
    """Hard-concrete sample (Eq. 2, stretched and clipped) in float64."""
    s = 1.0 / (1.0 + np.exp(-(np.log(u) - np.log1p(-u) + log_alpha) / t))
    return np.clip(s * (r - l) + l, 0.0, 1.0)


def _reference_step(layers, x, y):
    """(||S||_1, F) of one step: per-example gradients of each example's own data loss
    by hand-written backpropagation through the gated MLP (gates on each layer's inputs,
    relu between layers, cross-entropy on the last layer's logits), float64.

    `layers`: per layer a dict with kernel, bias, log_alpha, the noise `u` of the step and
    the gate constants t, l, r."""
    a = np.asarray(x, np.float64)
    cache = []
    for k, p in enumerate(layers):
        z = _sample(p["u"], p["log_alpha"], p["t"], p["l"], p["r"])
        g = a * z
        pre = g @ p["kernel"] + p["bias"]
        cache.append((g, z, pre))
        a = np.maximum(pre, 0.0) if k < len(layers) - 1 else pre
    logits = a
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    per_example_loss = -log_p[np.arange(len(y)), y]
    d = np.exp(log_p)
    d[np.arange(len(y)), y] -= 1.0  # d loss_i / d logits_i
    variance = 0.0
    for k in range(len(layers) - 1, -1, -1):
        g, z, _ = cache[k]
        per_kernel = np.einsum("bi,bj->bij", g, d)
        variance += np.var(per_kernel, axis=0, ddof=1).sum() + np.var(d, axis=0, ddof=1).sum()
        if k > 0:
            d = (d @ layers[k]["kernel"].T) * z * (cache[k - 1][2] > 0)
    return variance, float(per_example_loss.mean())


def _snapshot(core, batch):
    """The variables and the next step's gate noise of every layer, as the step will see them."""
    out = []
    for layer in core.gated_layers:
        key = layer.seed_generator.state.numpy().copy()
        out.append({
            "kernel": layer.kernel.numpy().astype(np.float64),
            "bias": layer.bias.numpy().astype(np.float64),
            "log_alpha": layer.log_alpha.numpy().astype(np.float64),
            "u": fused.noise_reference(key, batch, layer.num_gates),
            "t": layer.temperature, "l": layer.limit_l, "r": layer.limit_r,
        })
    return out


def _floor_range(values):
    """Smallest and largest sum of floors of `values` within the float32 step's error."""
    lo = sum(math.floor(v * (1 - RTOL) - 1e-9) for v in values)
    hi = sum(math.floor(v * (1 + RTOL) + 1e-9) for v in values)
    return lo, hi


def _model(n):
    keras.utils.set_random_seed(4)
    model = make_mlp(input_shape=(12,), hidden=(9, 6), classes=4, dtype="float32")
    return to_l0(model, l0_lambda=0.1, weight_decay=1e-3, dataset_size=n, seed=2)


def _data(n):
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(n, 12)) * 30.0).astype(np.float32)  # large inputs: large ||S||_1 / F
    y = rng.integers(0, 4, size=n).astype(np.int32)
    return x, y


# ------------------------------------------------------------------ the compiled loop
@pytest.mark.parametrize("growth", ["step_mean", "step", "epoch"])
def test_epoch_runner_accumulates_eq8_increments(kernel, growth):
    """Six steps of the compiled loop (the last one short), one per call, so that the
    reference sees each step's weights (Adam moves them) and noise; the accumulated
    `ratio`, `steps`, `increment` and the candidate they give match Eq. 8 on the
    brute-force per-example gradients."""
    n, batch = 44, 8
    core, _, _ = _core_from(_model(n))
    core.compile(optimizer=keras.optimizers.Adam(0.05), jit_compile=False)
    core.optimizer.build(core.trainable_variables)
    core.track_variance = True
    core.gate_kernel = "fused"
    acc = _Accumulators(core)
    runner = _make_epoch_runner(core, acc, 1, ALPHA_BS, growth)
    x, y = _data(n)
    order = np.random.default_rng(6).permutation(n).astype(np.int64)
    acc.reset()
    ratios, losses, sizes = [], [], []
    for start in range(0, n, batch):
        idx = order[start : start + batch]
        layers = _snapshot(core, len(idx))
        done = runner(tf.constant(x), tf.constant(y), tf.constant(order), tf.constant(start, tf.int64), tf.constant(batch, tf.int64))
        assert int(done) == 1
        s, f = _reference_step(layers, x[idx], y[idx])
        ratios.append(s / f)
        losses.append(f)
        sizes.append(len(idx))
    got = acc.read()
    assert sizes == [8, 8, 8, 8, 8, 4]
    assert got["steps"] == 6 and got["count"] == n and got["nonfinite"] == 0
    assert got["data_loss"] == pytest.approx(float(np.dot(losses, sizes)), rel=RTOL)
    assert got["ratio"] == pytest.approx(sum(ratios), rel=RTOL)  # sum over steps of ||S||_1 / F
    scale = 1.0 - ALPHA_BS
    if growth == "epoch":
        # One increment from the epoch's mean ratio, as _Run.end_epoch takes it.
        lo, hi = _floor_range([scale * sum(ratios) / len(ratios)])
        increment = batching.batch_increment(got["ratio"] / got["steps"], 1.0, ALPHA_BS)
    else:
        per_step = [scale * r / b for r, b in zip(ratios, sizes)] if growth == "step_mean" else [scale * r for r in ratios]
        lo, hi = _floor_range(per_step)
        increment = got["increment"]
    assert hi - lo <= 1  # the float32 slack does not hide a wrong factor
    assert lo >= 6, lo  # large enough that a wrong factor changes it
    assert lo <= increment <= hi, (increment, lo, hi)


# ------------------------------------------------------------------------ through fit
class _Snapshot(keras.callbacks.Callback):
    """The trained core's variables and noise keys as the first step will see them."""

    def __init__(self, batch):
        super().__init__()
        self.batch = batch
        self.layers = None

    def on_train_begin(self, logs=None):
        self.layers = _snapshot(self.model, self.batch)


@pytest.mark.parametrize("growth", ["step_mean", "step", "epoch"])
def test_fit_candidate_is_eq8_of_the_step(kernel, growth):
    """`fit`'s recorded candidate and variance ratio after one epoch of one step (the
    batch is the whole training set, in the epoch's shuffled order: noise rows follow
    the batch positions): Eq. 8 of that step,
    whichever place of the library computes it. For one step the three readings give
    floor((1 - a) ||S||_1 / F) (step, epoch) and floor((1 - a) ||S||_1 / (F B)) (step_mean)."""
    n = 40
    x, y = _data(n)
    snap = _Snapshot(n)
    result = tf_dynhp.fit(
        _model(n), x, y, method="dynhp", epochs=1, batch_size=n, alpha_bs=ALPHA_BS, budget_kb=1e4,
        batch_growth=growth, gate_kernel="fused", seed=1, verbose=0, callbacks=[snap],
    )
    order = _epoch_order(1, 0, n)
    s, f = _reference_step(snap.layers, x[order], y[order])
    h = result.history
    assert h["variance_ratio"][0] == pytest.approx(s / f, rel=RTOL)
    value = (1.0 - ALPHA_BS) * s / f / (n if growth == "step_mean" else 1)
    lo, hi = _floor_range([value])
    assert lo >= 6, lo
    assert h["batch_size"][0] == n
    assert lo <= h["candidate_batch_size"][0] - n <= hi, (h["candidate_batch_size"][0], value)
