"""One trace of the step for every pruned model (`tf_dynhp.storage`, `fit(trace_once=...)`).

The decisive tests run the same pruned fit twice, with the step traced once and
with a new trace after every rebuild, and require the same history and weights to
the bit: any size the traced step took from Python (a stale `units`, a noise shape)
would change the numbers or fail with a shape error.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_dynhp
from tf_dynhp import storage
from tf_dynhp.training import RUNTIME_KEYS

from conftest import make_mlp


# --------------------------------------------------------------------------- the storage itself
def _dense(units=3, inputs=4):
    layer = keras.layers.Dense(units)
    layer.build((None, inputs))
    return layer


def test_relax_keeps_value_rank_and_the_keras_shape():
    layer = _dense()
    before = [v.numpy().copy() for v in layer.variables]
    storage.relax(layer.variables)
    for v, b in zip(layer.variables, before):
        assert storage.is_relaxed(v)
        assert v._value.shape.rank == b.ndim and tuple(v.shape) == b.shape
        np.testing.assert_array_equal(v.numpy(), b)
    storage.relax(layer.variables)  # idempotent
    assert all(storage.is_relaxed(v) for v in layer.variables)


def test_a_function_traced_once_follows_the_rebound_storage():
    old = _dense(3)
    storage.relax(old.variables)

    @tf.function(autograph=False)
    def step(x):
        y = tf.matmul(x, old.kernel) + old.bias
        old.kernel.assign(old.kernel * 2.0)  # an update inside the trace
        return y

    assert step(tf.ones((2, 4))).shape == (2, 3)
    new = _dense(2)
    kernel = new.kernel.numpy().copy()
    storage_before = old.kernel._value
    storage.rebind(old.variables, new.variables)
    assert new.kernel._value is storage_before  # the new variable writes the traced storage
    out = step(tf.ones((2, 4)))
    assert out.shape == (2, 2) and step.experimental_get_tracing_count() == 1
    np.testing.assert_allclose(out.numpy(), np.ones((2, 4)) @ kernel + new.bias.numpy(), rtol=1e-6)
    np.testing.assert_allclose(new.kernel.numpy(), 2.0 * kernel, rtol=1e-6)  # the update landed in `new`


def test_rebind_refuses_what_does_not_match():
    old = _dense(3)
    with pytest.raises(ValueError, match="not relaxed"):
        storage.rebind(old.variables, _dense(2).variables)
    storage.relax(old.variables)
    with pytest.raises(ValueError, match="old model has 2 variables, the new one 1"):
        new = keras.layers.Dense(2, use_bias=False)
        new.build((None, 4))
        storage.rebind(old.variables, new.variables)
    other = keras.layers.Embedding(4, 3)  # a rank-2 then nothing: rank of the bias differs
    other.build((None,))
    with pytest.raises(ValueError, match="rank"):
        storage.rebind(old.variables[1:], other.variables, "layer")


def test_reindex_lets_keras_own_optimizer_find_its_slots():
    layer = _dense()
    opt = keras.optimizers.SGD(0.1, momentum=0.9)
    opt.build(layer.trainable_variables)
    storage.relax(layer.variables)
    grads = [tf.ones_like(v) for v in layer.trainable_variables]
    with pytest.raises(ValueError, match="Unknown variable"):
        opt.apply(grads, layer.trainable_variables)  # keyed on the replaced tf.Variable
    storage.reindex(opt)
    before = layer.kernel.numpy().copy()
    opt.apply(grads, layer.trainable_variables)
    np.testing.assert_allclose(layer.kernel.numpy(), before - 0.1, rtol=1e-6)


# --------------------------------------------------------------------------- fit, both ways
def _same_runs(a, b):
    assert {k: v for k, v in a.history.items() if k not in RUNTIME_KEYS} == {
        k: v for k, v in b.history.items() if k not in RUNTIME_KEYS
    }
    assert len(a.gated_model.weights) == len(b.gated_model.weights)
    for va, vb in zip(a.gated_model.weights, b.gated_model.weights):
        assert va.shape == vb.shape, va.path
        np.testing.assert_array_equal(va.numpy(), vb.numpy(), err_msg=va.path)


def _mlp():
    keras.utils.set_random_seed(0)  # the same initial weights for both runs
    return make_mlp(hidden=(60, 30))


FAST = dict(method="dynhp", alpha_bs=0.97, budget_kb=400.0, epochs=5, seed=3, l0_lambda=3.0, gamma=0.7,
            input_droprate_init=0.5, verbose=0)


@pytest.mark.parametrize(
    "gate_kernel,optimizer",
    [("fused", "adam"), ("tf", "adam"), ("fused", "sgd_momentum")],  # fused Adam; Keras' own apply with slots
)
def test_one_trace_gives_the_run_of_a_trace_per_rebuild(mnist_small, gate_kernel, optimizer):
    (x, y), (xt, yt) = mnist_small
    runs = {}
    for once in (True, False):
        opt = keras.optimizers.SGD(0.05, momentum=0.9) if optimizer == "sgd_momentum" else optimizer
        runs[once] = tf_dynhp.fit(
            _mlp(), x, y, validation_data=(xt, yt), gate_kernel=gate_kernel, optimizer=opt, trace_once=once, **FAST,
        )
    h = runs[True].history
    rebuilt = [e for e, p in enumerate(h["pruned_units"]) if sum(p)]
    # Not vacuous: inputs and hidden units were pruned, in more than one epoch.
    assert len(rebuilt) >= 2 and h["active_units"][-1][0] < 784 and h["active_units"][-1][1] < 60
    _same_runs(runs[True], runs[False])
    # One trace for the whole run; a new one after every rebuild otherwise.
    assert set(h["retraces"]) == {h["retraces"][0]}
    assert runs[False].history["retraces"][-1] == h["retraces"][0] + 2 * len(rebuilt)
    assert all(t == 0.0 for t in h["trace_seconds"][1:])


def test_one_trace_on_a_pruned_cnn(mnist):
    from test_training import CNN_FAST, CloseConvChannel, _cnn

    (x, y), _ = mnist
    x, y = x[:1000, ..., None], y[:1000]
    budget = tf_dynhp.memory.mo_kb(_cnn(), batch_size=64)
    a = tf_dynhp.fit(_cnn(), x, y, epochs=3, budget_kb=budget, callbacks=[CloseConvChannel()], trace_once=True, **CNN_FAST)
    b = tf_dynhp.fit(_cnn(), x, y, epochs=3, budget_kb=budget, callbacks=[CloseConvChannel()], trace_once=False, **CNN_FAST)
    assert a.history["active_units"][-1][1] == 3  # a conv channel was removed
    _same_runs(a, b)
    assert set(a.history["retraces"]) == {a.history["retraces"][0]}


def test_one_trace_on_a_cnn_whose_conv_reads_pruned_channels(mnist):
    """A conv fed by a pruned conv sees an unknown channel count in the shared trace; it
    must still run the plain conv op (Keras' `ops.conv` would switch to XLA there)."""
    from test_training import CNN_FAST, CloseConvChannel, _cnn

    (x, y), _ = mnist
    x, y = x[:800, ..., None], y[:800]
    convs = ((4, 5), (6, 3))
    budget = tf_dynhp.memory.mo_kb(_cnn(convs=convs), batch_size=64)
    runs = [
        tf_dynhp.fit(_cnn(convs=convs), x, y, epochs=3, budget_kb=budget, callbacks=[CloseConvChannel((2, 4))], trace_once=once, **CNN_FAST)
        for once in (True, False)
    ]
    assert runs[0].history["active_units"][-1][1:3] == [3, 5]  # one channel gone in each conv
    _same_runs(*runs)
    assert set(runs[0].history["retraces"]) == {runs[0].history["retraces"][0]}


def test_trace_once_must_be_a_bool(mnist_small):
    (x, y), _ = mnist_small
    with pytest.raises(ValueError, match="trace_once"):
        tf_dynhp.fit(make_mlp(), x[:100], y[:100], epochs=1, trace_once="yes", verbose=0)


def test_a_variable_outside_the_model_falls_back_to_a_trace_per_rebuild(mnist_small, monkeypatch):
    """A step reading a variable the rebuilt model would not take over must not train a
    stale copy: fit warns and traces again after each rebuild (same run as trace_once=False)."""
    from tf_dynhp.model import GatedModel

    extra = tf.Variable(0.0)
    penalty = GatedModel.penalty

    def penalty_plus_extra(self):
        return penalty(self) + extra

    monkeypatch.setattr(GatedModel, "penalty", penalty_plus_extra)
    (x, y), _ = mnist_small
    with pytest.warns(RuntimeWarning, match="traced again after every rebuild"):
        a = tf_dynhp.fit(_mlp(), x, y, trace_once=True, **FAST)
    b = tf_dynhp.fit(_mlp(), x, y, trace_once=False, **FAST)
    _same_runs(a, b)
    assert a.history["retraces"] == b.history["retraces"]


def test_the_kept_features_are_selected_when_they_change_and_exactly():
    """The step reads `FeatureSelection.x`, the training inputs with the kept features only, made at
    rebuilds from the previous selection (the full inputs are not kept beside it)."""
    from tf_dynhp.data import FeatureSelection

    run = FeatureSelection()
    x = np.arange(5 * 8, dtype=np.float32).reshape(5, 8)
    run.set_data(tf.constant(x), tf.constant(np.zeros(5, np.int32)), None)
    np.testing.assert_array_equal(run.x.numpy(), x)
    for kept in ([0, 2, 3, 5, 7], [2, 5, 7], [7]):
        run.select(np.array(kept))
        np.testing.assert_array_equal(run.x.numpy(), x[:, kept])
        before = run.x
        run.select(np.array(kept))  # the same features: nothing is copied again
        assert run.x is before
    for grown in ([1, 7], None):  # kept features only shrink: a bug, said clearly
        with pytest.raises(RuntimeError, match="only shrink"):
            run.select(None if grown is None else np.array(grown))
