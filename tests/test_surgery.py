"""Hard-pruning surgery (paper Sec. 4.1): rebuilt model == masked model, optimizer state
carried, activation rates counted exactly."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import make_mlp
from tf_dynhp import fused, gates, optim, to_l0
from tf_dynhp.surgery import transfer_optimizer, rebuild_body
from tf_dynhp.loop import Accumulators as _Accumulators
from tf_dynhp.loop import make_epoch_runner as _make_epoch_runner
from tf_dynhp.pruning import core_from as _core_from
from tf_dynhp.pruning import rebuild_core as _rebuild_core

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
    # The update the step itself makes (fused Adam when equivalent; tests/test_optim.py
    # checks that against Keras' Adam).
    optim.apply_gradients(core.optimizer, grads, old_vars)
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
    from tf_dynhp.pruning import assemble_core as _assemble_core

    new = _assemble_core(7, layers, dtype="float64")
    load()
    # Forge an optimizer whose slot does not have its variable's shape.
    opt = core.optimizer
    opt._momentums[0] = keras.Variable(np.zeros((2, 2)), name="bad_kernel_momentum")
    opt._variables[2] = opt._momentums[0]
    with pytest.raises(ValueError, match="slot"):
        transfer_optimizer(opt, var_map, new.trainable_variables)


@pytest.mark.parametrize("gate_kernel", ["tf", "fused"])
def test_activation_rate_counted_in_step_equals_numpy_recount(gate_kernel, rng):
    """(c): Eq. 6 counts in the compiled loop == NumPy recount of the same gate samples
    (TF-op noise replayed from the seed generators, or the fused kernel's noise rebuilt in
    NumPy by `fused.noise_reference`)."""
    core = _core(keras.optimizers.SGD(0.0), dtype="float32")
    core.gate_kernel = gate_kernel
    x, y = _data(rng, n=50)
    x = x.astype("float32")
    states = [layer.seed_generator.state.numpy().copy() for layer in core.gated_layers]
    acc = _Accumulators(core)
    runner = _make_epoch_runner(core, acc, steps_per_execution=3, alpha_bs=0.0, growth="step_mean")
    order = tf.range(50, dtype=tf.int64)
    start = 0
    while int(runner(tf.constant(x), tf.constant(y.astype("int32")), order, tf.constant(start, tf.int64), tf.constant(8, tf.int64))) == 3:
        start += 3 * 8
    counted = acc.read()
    assert counted["count"] == 50 and counted["steps"] == 7
    # Recount: replay the same seed-generator sequence eagerly (the weights did not move).
    for layer, st in zip(core.gated_layers, states):
        layer.seed_generator.state.assign(st)
    recount = [np.zeros(layer.input_dim) for layer in core.gated_layers]
    for start in range(0, 50, 8):
        b = min(8, 50 - start)
        for k, layer in enumerate(core.gated_layers):
            if gate_kernel == "fused":
                u = fused.noise_reference(layer.seed_generator.next().numpy(), b, layer.input_dim)
            else:
                u = np.asarray(layer.sample_noise(b))
            s = 1 / (1 + np.exp(-(np.log(u) - np.log(1 - u) + layer.log_alpha.numpy()) / layer.temperature))
            z = np.clip(s * (layer.limit_r - layer.limit_l) + layer.limit_l, 0, 1)
            recount[k] += (z > 0).sum(axis=0)
    for k in range(len(recount)):
        np.testing.assert_array_equal(counted["gate_open"][k], recount[k])


# --------------------------------------------------------------------------- conv chains
def _conv_core(optimizer, seed=0):
    """Input(8,8,2) -> L0Conv2D(5,3) -> MaxPool -> L0Conv2D(4,2,same) -> Flatten (36) -> L0Dense(6) -> L0Dense(3), float64."""
    keras.utils.set_random_seed(seed)
    f64 = "float64"
    model = keras.Sequential([
        keras.Input((8, 8, 2), dtype=f64),
        keras.layers.Conv2D(5, 3, activation="relu", dtype=f64),
        keras.layers.MaxPooling2D(2, dtype=f64),
        keras.layers.Conv2D(4, 2, padding="same", activation="relu", dtype=f64),
        keras.layers.Flatten(dtype=f64),
        keras.layers.Dense(6, activation="relu", dtype=f64),
        keras.layers.Dense(3, dtype=f64),
    ])
    core, features, _ = _core_from(to_l0(model, l0_lambda=0.5, weight_decay=1e-2, dataset_size=N, seed=seed))
    assert features is None and core.inputs[0].shape[1:] == (8, 8, 2)
    core.compile(optimizer=optimizer, jit_compile=False)
    core.optimizer.build(core.trainable_variables)
    return core


def _flat(h, w, c, channels=4, width=3):
    return (h * width + w) * channels + c  # channels_last flatten order


# Unit axes: input channels, conv1 channels, conv2 channels, 36 flattened features, dense units.
# conv1 drops channel 1; conv2 drops channel 2 (its 9 rows go with it) and keeps channel 3's
# gate open, but the dense gates close all 9 rows of channel 3, so the channel is removed too;
# two single rows of channels 0 and 1 close (a SelectFeatures follows the Flatten).
FLAT_KEEP = np.array(sorted(_flat(h, w, c) for h in range(3) for w in range(3) for c in (0, 1) if (h, w, c) not in ((0, 0, 0), (1, 2, 1))))
CONV_KEEP = [None, np.array([0, 2, 3, 4]), np.array([0, 1, 3]), FLAT_KEEP, np.array([0, 2, 3, 5])]
CONV_EFFECTIVE = [None, np.array([0, 2, 3, 4]), np.array([0, 1]), FLAT_KEEP, np.array([0, 2, 3, 5])]


def _close(core, keep):
    """Forces shut the deterministic gates of every unit outside `keep` (per unit axis)."""
    from tf_dynhp.units import unit_axes

    axes, _ = unit_axes(core.body)
    for axis, k in zip(axes, keep):
        for layer in axis.gated_by if k is not None else []:
            la = layer.log_alpha.numpy()
            la[np.setdiff1d(np.arange(la.size), k)] = -50.0
            layer.log_alpha.assign(la)


def test_conv_effective_keep_follows_channels_through_flatten():
    from tf_dynhp.units import effective_keep, unit_axes

    core = _conv_core("adam")
    axes, _ = unit_axes(core.body)
    assert [a.size for a in axes] == [2, 5, 4, 36, 6, 3]
    assert [len(a.gated_by) for a in axes] == [0, 1, 1, 1, 1, 0]
    # The flatten axis copies channel (f mod 4) of the conv2 axis: derived from shapes.
    np.testing.assert_array_equal(axes[3].index_map, np.arange(36) % 4)
    eff = effective_keep(axes, CONV_KEEP)
    for got, want, axis in zip(eff, CONV_EFFECTIVE + [None], axes):
        np.testing.assert_array_equal(got, np.arange(axis.size) if want is None else want)
    # Closing a channel drops its 9 flattened rows even when the dense gates keep them.
    eff = effective_keep(axes, [None, None, np.array([0, 1, 3])])
    np.testing.assert_array_equal(eff[3], [f for f in range(36) if f % 4 != 2])
    # A plan that would empty an axis keeps its best-scored unit.
    scores = [None, None, None, np.linspace(0, 1, 36)]
    eff = effective_keep(axes, [None, None, np.array([0]), np.array([1, 2])], scores)
    np.testing.assert_array_equal(eff[3], [32])
    np.testing.assert_array_equal(eff[2], [0])


def test_conv_rebuilt_inference_equals_masked_model(rng):
    core = _conv_core("adam")
    x = rng.normal(size=(N, 8, 8, 2))
    new = _rebuild_core(core, CONV_KEEP)
    kinds = [type(l).__name__ for l in new.body]
    assert kinds == ["L0Conv2D", "MaxPooling2D", "L0Conv2D", "Flatten", "SelectFeatures", "L0Dense", "L0Dense"]
    assert [tuple(l.kernel.shape) for l in new.weighted_layers] == [(3, 3, 2, 4), (2, 2, 4, 2), (16, 4), (4, 3)]
    assert [tuple(l.log_alpha.shape) for l in new.gated_layers] == [(4,), (2,), (16,), (4,)]
    assert [tuple(l.bias.shape) for l in new.weighted_layers] == [(4,), (2,), (4,), (3,)]
    _close(core, CONV_KEEP)
    old_out, _, _ = core.forward(tf.constant(x), training=False)
    new_out, _, _ = new.forward(tf.constant(x), training=False)
    np.testing.assert_allclose(new_out.numpy(), old_out.numpy(), rtol=0, atol=1e-6)
    assert np.max(np.abs(new_out.numpy() - old_out.numpy())) < 1e-12
    # Pruning again composes with the SelectFeatures already there (one select, same axes).
    keep2 = [None, None, None, np.delete(np.arange(16), [3, 7]), None]
    newer = _rebuild_core(new, keep2)
    assert [type(l).__name__ for l in newer.body] == kinds
    assert newer.weighted_layers[2].kernel.shape == (14, 4)
    _close(new, keep2)
    np.testing.assert_allclose(newer.forward(tf.constant(x), training=False)[0].numpy(), new.forward(tf.constant(x), training=False)[0].numpy(), rtol=0, atol=1e-12)
    # Keeping everything drops a selection that would keep all rows.
    assert "SelectFeatures" not in [type(l).__name__ for l in _rebuild_core(core, [None, None, np.array([0, 1])] + [None] * 2).body]


def _masked_conv_penalty(core, keep):
    """Eq. 5 of the old model counted on the units and weights that survive in the rebuilt one."""
    conv1, conv2, dense1, dense2 = core.gated_layers
    k1, k2, kf, kd = keep[1], keep[2], keep[3], keep[4]
    wd, lam = conv1.weight_decay, conv1.l0_lambda
    total = 0.0
    for layer, k_in, k_out in ((conv1, np.arange(2), k1), (conv2, k1, k2)):
        w = tf.gather(tf.gather(layer.kernel, k_in, axis=2), k_out, axis=3)
        b = tf.gather(layer.bias, k_out)
        live = layer.kernel.shape[0] * layer.kernel.shape[1] * len(k_in)
        p = tf.gather(gates.prob_open(layer.log_alpha), k_out)
        total += tf.reduce_sum(p * (lam * live + 0.5 * wd * (tf.reduce_sum(w * w, axis=(0, 1, 2)) + b * b)))
    for layer, k_in, k_out in ((dense1, kf, kd), (dense2, kd, np.arange(3))):
        w = tf.gather(tf.gather(layer.kernel, k_in, axis=0), k_out, axis=1)
        p = tf.gather(gates.prob_open(layer.log_alpha), k_in)
        b = tf.gather(layer.bias, k_out)
        total += tf.reduce_sum(p * (lam * len(k_out) + 0.5 * wd * tf.reduce_sum(w * w, axis=1))) + 0.5 * wd * tf.reduce_sum(b * b)
    return total / N


@pytest.mark.parametrize("optimizer", [lambda: keras.optimizers.Adam(0.01), lambda: keras.optimizers.SGD(0.05, momentum=0.9)])
def test_conv_one_more_step_equals_masked_step(optimizer, rng):
    """A step on the rebuilt CNN == a step on the old one with the pruned channels and rows
    gated shut (z = 0), the same uniforms for surviving gates, the penalty on live weights."""
    core = _conv_core(optimizer())
    x, y = rng.normal(size=(N, 8, 8, 2)), rng.integers(0, 3, size=N).astype("int32")
    for _ in range(3):
        core.train_stats(tf.constant(x), tf.constant(y))
    new = _rebuild_core(core, CONV_KEEP)
    assert int(new.optimizer.iterations.numpy()) == 3
    keep = CONV_EFFECTIVE
    gate_axes = [1, 2, 3, 4]  # the axis each gated layer's gates sit on
    noise_new = [rng.uniform(gates.EPSILON, 1 - gates.EPSILON, size=(N, len(keep[a]))) for a in gate_axes]
    noise_old = []
    for layer, a, u in zip(core.gated_layers, gate_axes, noise_new):
        full = np.full((N, layer.num_gates), gates.EPSILON)  # pruned gates sample z = 0
        full[:, keep[a]] = u
        noise_old.append(full)
    old_vars = core.trainable_variables
    with tf.GradientTape() as tape:
        _, logits, _ = core.forward(tf.constant(x), training=True, noise=noise_old)
        data = tf.reduce_mean(keras.ops.sparse_categorical_crossentropy(y, logits, from_logits=True))
        loss = data + _masked_conv_penalty(core, keep)
    grads = tape.gradient(loss, old_vars)
    # The update the step itself makes (fused Adam when equivalent; tests/test_optim.py
    # checks that against Keras' Adam).
    optim.apply_gradients(core.optimizer, grads, old_vars)
    stats = new.train_stats(tf.constant(x), tf.constant(y), noise=noise_new)
    assert float(stats["loss"]) == pytest.approx(float(loss), rel=1e-12)
    (c1, c2, d1, d2), (n1, n2, m1, m2) = core.gated_layers, new.gated_layers
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)  # noqa: E731
    close(n1.kernel.numpy(), c1.kernel.numpy()[..., keep[1]])
    close(n2.kernel.numpy(), c2.kernel.numpy()[:, :, keep[1]][..., keep[2]])
    close(m1.kernel.numpy(), d1.kernel.numpy()[keep[3]][:, keep[4]])
    close(m2.kernel.numpy(), d2.kernel.numpy()[keep[4]])
    for old, nl, a in ((c1, n1, 1), (c2, n2, 2)):
        close(nl.bias.numpy(), old.bias.numpy()[keep[a]])
        close(nl.log_alpha.numpy(), old.log_alpha.numpy()[keep[a]])
    close(m1.log_alpha.numpy(), d1.log_alpha.numpy()[keep[3]])
    close(m1.bias.numpy(), d1.bias.numpy()[keep[4]])
    close(m2.log_alpha.numpy(), d2.log_alpha.numpy()[keep[4]])
