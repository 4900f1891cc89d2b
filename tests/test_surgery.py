"""Hard-pruning surgery (paper Sec. 4.1): rebuilt model == masked model, optimizer state
carried, activation rates counted exactly."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import make_mlp
from tf_dynhp import gates, to_l0
from tf_dynhp.surgery import transfer_optimizer, rebuild_body
from tf_dynhp.training import _Accumulators, _core_from, _make_epoch_runner, _rebuild_core

N = 40


def _core(optimizer, dtype="float64", seed=0):
    keras.utils.set_random_seed(seed)
    model = make_mlp(input_shape=(10,), hidden=(8, 6), classes=3, dtype=dtype)
    core, _, _ = _core_from(to_l0(model, l0_lambda=0.5, weight_decay=1e-2, dataset_size=N, seed=seed))
    core.compile(optimizer=optimizer, jit_compile=False)
    core.optimizer.build(core.trainable_variables)
    return core


KEEP = [np.array([0, 1, 3, 4, 6, 7, 9]), np.array([0, 2, 3, 5, 6, 7]), np.array([1, 2, 4])]


def _data(rng, n=N):
    return rng.normal(size=(n, 10)), rng.integers(0, 3, size=n).astype("int32")


def test_rebuilt_inference_equals_masked_model(rng):
    core = _core("adam")
    x, _ = _data(rng)
    new = _rebuild_core(core, KEEP)
    # The old model with the pruned gates forced shut.
    for layer, keep in zip(core.gated_layers, KEEP):
        la = layer.log_alpha.numpy()
        dead = np.setdiff1d(np.arange(la.size), keep)
        la[dead] = -50.0
        layer.log_alpha.assign(la)
    old_out, _, _ = core.forward(tf.constant(x), training=False)
    new_out, _, _ = new.forward(tf.constant(x[:, KEEP[0]]), training=False)
    np.testing.assert_allclose(new_out.numpy(), old_out.numpy(), rtol=1e-12, atol=1e-14)
    assert [l.kernel.shape for l in new.dense_layers] == [(7, 6), (6, 3), (3, 3)]
    assert [l.log_alpha.shape for l in new.gated_layers] == [(7,), (6,), (3,)]


@pytest.mark.parametrize("optimizer", [lambda: keras.optimizers.Adam(0.01), lambda: keras.optimizers.SGD(0.05, momentum=0.9), lambda: keras.optimizers.RMSprop(0.01)])
def test_one_more_step_equals_masked_step(optimizer, rng):
    """(b): a step on the rebuilt model == a step on the old model with pruned rows masked,
    the same uniforms for surviving gates, and the penalty counted on live weights."""
    core = _core(optimizer())
    x, y = _data(rng)
    for _ in range(3):  # give the optimizer non-trivial state
        core.train_stats(tf.constant(x), tf.constant(y))
    new = _rebuild_core(core, KEEP)
    assert int(new.optimizer.iterations.numpy()) == 3

    noise_new = [rng.uniform(gates.EPSILON, 1 - gates.EPSILON, size=(N, k.size)) for k in KEEP]
    noise_old = []
    for layer, keep, u in zip(core.gated_layers, KEEP, noise_new):
        full = np.full((N, layer.input_dim), gates.EPSILON)  # pruned gates sample z = 0
        full[:, keep] = u
        noise_old.append(full)
    # Masked old step: data loss + penalty on live gates and live weights only.
    old_vars = core.trainable_variables
    with tf.GradientTape() as tape:
        _, logits, _ = core.forward(tf.constant(x), training=True, noise=noise_old)
        data = tf.reduce_mean(keras.ops.sparse_categorical_crossentropy(y, logits, from_logits=True))
        pen = 0.0
        for k, (layer, keep) in enumerate(zip(core.gated_layers, KEEP)):
            out_keep = KEEP[k + 1] if k + 1 < len(KEEP) else np.arange(layer.units)
            w = tf.gather(tf.gather(layer.kernel, keep, axis=0), out_keep, axis=1)
            p = tf.gather(gates.prob_open(layer.log_alpha), keep)
            row = layer.l0_lambda * len(out_keep) + 0.5 * layer.weight_decay * tf.reduce_sum(w * w, axis=1)
            b = tf.gather(layer.bias, out_keep)
            pen += (tf.reduce_sum(p * row) + 0.5 * layer.weight_decay * tf.reduce_sum(b * b)) / N
        loss = data + pen
    grads = tape.gradient(loss, old_vars)
    core.optimizer.apply_gradients(zip(grads, old_vars))
    stats = new.train_stats(tf.constant(x[:, KEEP[0]]), tf.constant(y), noise=noise_new)
    assert float(stats["loss"]) == pytest.approx(float(loss), rel=1e-12)
    for k, (old, nl) in enumerate(zip(core.gated_layers, new.gated_layers)):
        out_keep = KEEP[k + 1] if k + 1 < len(KEEP) else None
        kernel = old.kernel.numpy()[KEEP[k]]
        kernel = kernel if out_keep is None else kernel[:, out_keep]
        np.testing.assert_allclose(nl.kernel.numpy(), kernel, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(nl.log_alpha.numpy(), old.log_alpha.numpy()[KEEP[k]], rtol=1e-10, atol=1e-12)
        bias = old.bias.numpy() if out_keep is None else old.bias.numpy()[out_keep]
        np.testing.assert_allclose(nl.bias.numpy(), bias, rtol=1e-10, atol=1e-12)


def test_seed_state_survives_rebuild():
    core = _core("adam")
    for layer in core.gated_layers:
        layer.sample_noise(3)
    new = _rebuild_core(core, KEEP)
    for a, b in zip(core.gated_layers, new.gated_layers):
        np.testing.assert_array_equal(a.seed_generator.state.numpy(), b.seed_generator.state.numpy())


def test_optimizer_with_unmatched_slots_is_refused():
    core = _core("adam")
    layers, var_map, load = rebuild_body(core.body, KEEP)
    from tf_dynhp.training import _assemble_core

    new = _assemble_core(7, layers, dtype="float64")
    load()
    # Forge an optimizer whose slot does not have its variable's shape.
    opt = core.optimizer
    opt._momentums[0] = keras.Variable(np.zeros((2, 2)), name="bad_kernel_momentum")
    opt._variables[2] = opt._momentums[0]
    with pytest.raises(ValueError, match="slot"):
        transfer_optimizer(opt, var_map, new.trainable_variables)


def test_activation_rate_counted_in_step_equals_numpy_recount(rng):
    """(c): Eq. 6 counts in the compiled loop == NumPy recount of the same gate samples."""
    core = _core(keras.optimizers.SGD(0.0), dtype="float32")
    x, y = _data(rng, n=50)
    x = x.astype("float32")
    states = [layer.seed_generator.state.numpy().copy() for layer in core.gated_layers]
    acc = _Accumulators(core)
    runner = _make_epoch_runner(core, acc, steps_per_execution=3, alpha_bs=0.0, growth="step_mean")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    it = iter(ds)
    while int(runner(it)) == 3:
        pass
    counted = acc.read()
    assert counted["count"] == 50 and counted["steps"] == 7
    # Recount: replay the same seed-generator sequence eagerly (the weights did not move).
    for layer, st in zip(core.gated_layers, states):
        layer.seed_generator.state.assign(st)
    recount = [np.zeros(layer.input_dim) for layer in core.gated_layers]
    for start in range(0, 50, 8):
        b = min(8, 50 - start)
        for k, layer in enumerate(core.gated_layers):
            u = np.asarray(layer.sample_noise(b))
            s = 1 / (1 + np.exp(-(np.log(u) - np.log(1 - u) + layer.log_alpha.numpy()) / layer.temperature))
            z = np.clip(s * (layer.limit_r - layer.limit_l) + layer.limit_l, 0, 1)
            recount[k] += (z > 0).sum(axis=0)
    for k in range(len(recount)):
        np.testing.assert_array_equal(counted["gate_open"][k], recount[k])
