"""Issue 16: `fit(target_kb=...)`: the multiplier, the plan to a target, the guarantee,
the refusals, one trace, and exact resume."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import assert_same_run, stop_after

import tf_dynhp
from tf_dynhp import memory, target
from tf_dynhp.training import RUNTIME_KEYS


# --------------------------------------------------------------------------- the multiplier
def test_multiplier_rises_above_target_decays_below_and_is_never_negative():
    lam = 0.01
    assert target.update_lambda(lam, 500.0, 100.0, 0.05) == pytest.approx(0.01 + 0.05 * 4.0)  # 5x the target
    assert target.update_lambda(lam, 100.0, 100.0, 0.05) == pytest.approx(0.005)  # at the target: halves
    assert target.update_lambda(0.3, 99.0, 100.0, 0.05) == pytest.approx(0.15)  # below: halves
    assert target.update_lambda(0.0, 1.0, 100.0, 0.05) == 0.0  # never negative
    lams = [0.01]
    for size in [1000, 800, 400, 200, 120, 90, 90, 90, 90, 90, 90, 90, 90, 90]:
        lams.append(target.update_lambda(lams[-1], size, 100.0, 0.05))
    assert max(lams) == lams[5] and lams[-1] < 0.01 * lams[5] and min(lams) >= 0


def test_multiplier_never_falls_below_its_floor():
    assert target.update_lambda(0.3, 99.0, 100.0, 0.05, floor=0.2) == pytest.approx(0.2)  # would halve to 0.15
    assert target.update_lambda(0.01, 500.0, 100.0, 0.05, floor=0.02) == pytest.approx(0.21)  # above: the plain step
    assert target.update_lambda(0.0, 50.0, 100.0, 0.05, floor=0.02) == pytest.approx(0.02)
    lams = [0.01]
    for size in [1000, 400, 120, 90, 90, 90, 90, 90, 90, 90, 90, 90]:
        lams.append(target.update_lambda(lams[-1], size, 100.0, 0.05, floor=0.01))
    assert min(lams) == pytest.approx(0.01) and lams[-1] == pytest.approx(0.01) and max(lams) > 0.05


def test_deadline_epoch_rounds_the_fraction_up_and_is_at_least_one():
    assert [target.deadline_epoch(d, 200) for d in (0.25, 0.5, 1.0, 0.001)] == [50, 100, 200, 1]
    assert target.deadline_epoch(0.3, 4) == 2 and target.deadline_epoch(0.01, 20) == 1
    assert target.deadline_epoch(0.55, 100) == 55 and target.deadline_epoch(0.07, 100) == 7  # not 56, 8
    assert target.deadline_epoch(np.float32(0.55), 100) == 55 and target.deadline_epoch(np.float32(0.07), 100) == 7


def test_cubic_schedule_falls_from_the_start_to_the_target_by_the_deadline():
    aims = [target.scheduled_kb(100.0, 500.0, e, 4, "cubic") for e in range(6)]
    assert aims == pytest.approx([100 + 400 * 0.75**3, 100 + 400 * 0.5**3, 100 + 400 * 0.25**3, 100.0, 100.0, 100.0])
    assert all(a > b for a, b in zip(aims[:3], aims[1:4]))
    assert target.scheduled_kb(100.0, 500.0, 0, 4, "constant") == 100.0
    assert target.scheduled_kb(100.0, 80.0, 0, 4, "cubic") == 100.0  # a model already under its target
    with pytest.raises(ValueError, match="'constant', 'cubic'.*'linear'"):
        target.scheduled_kb(100.0, 500.0, 0, 4, "linear")


# --------------------------------------------------------------------------- sizes and plans
def _gated(model, seed=0):
    from tf_dynhp.pruning import core_from

    core, _, _ = core_from(tf_dynhp.to_l0(model, 0.0, dataset_size=100, seed=seed))
    return core


def _mlp(hidden=(30, 20), seed=0, input_shape=(8, 8)):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input(input_shape), keras.layers.Flatten()] + [keras.layers.Dense(h, activation="relu") for h in hidden]
    return keras.Sequential(layers + [keras.layers.Dense(10, activation="softmax")])


def _cnn(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((12, 12, 1)), keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.MaxPooling2D(2),
                             keras.layers.Flatten(), keras.layers.Dense(12, activation="relu"), keras.layers.Dense(10, activation="softmax")])


def test_weights_of_sizes_counts_like_the_model():
    for model in (_mlp(), _cnn()):
        core = _gated(model)
        from tf_dynhp.units import unit_axes

        axes, layer_axes = unit_axes(core.body)
        assert target.weights_of_sizes(core.body, layer_axes, [a.size for a in axes]) == memory.weight_count(core.weighted_layers)


def test_expected_weights_against_numpy_both_forms():
    """MLP 64-30-20-10 with random gate logits: the coupled count (a weight goes when either
    end closes) and the outgoing count (Eq. 5's: a gate weighs what it feeds)."""
    core = _gated(_mlp())
    rng = np.random.default_rng(0)
    p = []
    for layer in core.gated_layers:
        layer.log_alpha.assign(rng.normal(0.0, 2.0, layer.log_alpha.shape).astype("float32"))
        p.append(np.asarray(tf_dynhp.gates.prob_open(layer.log_alpha.numpy())))
    s_in, s_h1, s_h2 = (float(np.sum(q)) for q in p)
    coupled = (s_in * s_h1 + s_h1) + (s_h1 * s_h2 + s_h2) + (s_h2 * 10 + 10)
    outgoing = s_in * 30 + s_h1 * 20 + s_h2 * 10
    assert float(target.expected_weights(core.body)) == pytest.approx(coupled, rel=1e-5)
    assert float(target.expected_weights(core.body, "outgoing")) == pytest.approx(outgoing, rel=1e-5)
    with pytest.raises(ValueError, match="'coupled', 'outgoing'.*'l1'"):
        target.expected_weights(core.body, "l1")


@pytest.mark.parametrize("kind,form", [("mlp", "coupled"), ("mlp", "outgoing"), ("cnn", "coupled"), ("cnn", "outgoing")])
def test_expected_weights_presses_each_layers_gates_by_its_share(kind, form):
    """`layer_weights`: the count is the same; the gradient on layer k's own gates is its
    share times the unweighted one, wherever they enter (a conv layer's channels too)."""
    import tensorflow as tf

    core = _gated(_mlp() if kind == "mlp" else _cnn())
    rng = np.random.default_rng(1)
    for layer in core.gated_layers:
        layer.log_alpha.assign(rng.normal(0.0, 2.0, layer.log_alpha.shape).astype("float32"))
    logits = [layer.log_alpha for layer in core.gated_layers]
    shares = (1.0, 0.25, 0.0)

    def count_and_grads(weights):
        with tf.GradientTape() as tape:
            count = target.expected_weights(core.body, form, weights)
        return float(count), [g.numpy() if g is not None else np.zeros(v.shape) for g, v in zip(tape.gradient(count, logits), logits, strict=True)]

    plain, plain_grads = count_and_grads(None)
    shared, shared_grads = count_and_grads(shares)
    assert shared == pytest.approx(plain, rel=1e-6)
    assert any(np.abs(g).sum() > 0 for g in plain_grads)
    for share, g, g0 in zip(shares, shared_grads, plain_grads, strict=True):
        np.testing.assert_allclose(g, share * g0, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match=r"one number per dense / conv layer \(3\); received 2"):
        target.expected_weights(core.body, form, (1.0, 0.5))


def test_relative_lambdas_start_at_the_largest_and_keep_the_ratios():
    assert target.relative_lambdas([0.02, 0.01, 0.005]) == (0.02, (1.0, 0.5, 0.25))
    assert target.relative_lambdas([0.0, 0.04]) == (0.04, (0.0, 1.0))
    assert target.relative_lambdas([0.03, 0.03]) == (0.03, None)  # equal: one multiplier, as a number gives
    with pytest.raises(ValueError, match="all are 0"):
        target.relative_lambdas([0.0, 0.0])


def test_per_layer_shares_under_a_target_press_their_layer_and_resume_exactly(mnist, tmp_path):
    """`l0_lambda` per layer under a target: equal values are the number's run to the bit; a
    layer given no share keeps its units until the forced cut; a resume is the same run
    and another list is another run."""
    (x, y), _ = mnist
    goal = 0.3 * memory.floats_to_kb(memory.weight_count(_mlp(hidden=(40, 20), input_shape=(28, 28))))
    kw = dict(target_kb=goal, learning_rate=0.03,
              **{**FAST, "target_deadline": 0.8, "epochs": 5})
    x, y = x[:2000], y[:2000]
    one = tf_dynhp.fit(_mlp(hidden=(40, 20), input_shape=(28, 28)), x, y, l0_lambda=0.5, **kw)
    same = tf_dynhp.fit(_mlp(hidden=(40, 20), input_shape=(28, 28)), x, y, l0_lambda=[0.5] * 3, **kw)
    inputs_only = tf_dynhp.fit(_mlp(hidden=(40, 20), input_shape=(28, 28)), x, y, l0_lambda=[0.5, 0, 0], **kw)
    hidden_only = tf_dynhp.fit(_mlp(hidden=(40, 20), input_shape=(28, 28)), x, y, l0_lambda=[0, 0.5, 0.5], **kw)
    for key in one.history:
        if key not in RUNTIME_KEYS:
            assert one.history[key] == same.history[key], key
    assert inputs_only.history["l0_lambda"][0] == hidden_only.history["l0_lambda"][0] == 0.5  # the largest starts λ
    before_cut = 2  # the 4th epoch's boundary forces the size; the 3rd shows what λ pruned
    in_units, hid_units = inputs_only.history["active_units"][before_cut], hidden_only.history["active_units"][before_cut]
    assert in_units[1:] == [40, 20] and in_units[0] < 784  # only the pressed layer lost units
    assert hid_units[0] == 784 and hid_units[1] < 40
    for r in (inputs_only, hidden_only):
        assert memory.floats_to_kb(memory.weight_count(r.model)) <= goal
    folder = tmp_path / "ck"
    with pytest.warns(RuntimeWarning, match="before the size target's deadline"):  # paused before the cut
        tf_dynhp.fit(_mlp(hidden=(40, 20), input_shape=(28, 28)), x, y, l0_lambda=[0.5, 0, 0], checkpoint_dir=folder,
                     callbacks=[stop_after(2)], **kw)
    again = _mlp(hidden=(40, 20), input_shape=(28, 28))  # the same values as a dict (unnamed layers 0.01): the same run
    names = [layer.name for layer in again.layers if isinstance(layer, keras.layers.Dense)]
    resumed = tf_dynhp.fit(again, x, y, l0_lambda={names[0]: 0.5, names[1]: 0.0, names[2]: 0.0},
                           checkpoint_dir=folder, resume=True, **kw)
    assert_same_run(resumed, inputs_only, inputs_only.model, resumed.model)
    with pytest.raises(ValueError, match="l0_lambda"):
        tf_dynhp.fit(_mlp(hidden=(40, 20), input_shape=(28, 28)), x, y, l0_lambda=[0.5, 0.5, 0],
                     checkpoint_dir=folder, resume=True, **kw)


def test_a_target_above_the_size_trains_with_the_lambdas_given(mnist):
    """A target at or above the model's size is dropped with a warning: the run is plain
    training with Eq. 5's λ as given (number or per layer; zeros too), not λ = 0."""
    (x, y), _ = mnist
    for lam, want in ((0.3, [0.3] * 3), ([0.5, 0.2, 0.1], [0.5, 0.2, 0.1]), ([0.0] * 3, [0.0] * 3)):
        with pytest.warns(RuntimeWarning, match="not below the model's size"):
            result = tf_dynhp.fit(_mlp(hidden=(40, 20), input_shape=(28, 28)), x[:300], y[:300], target_kb=1e4,
                                  l0_lambda=lam, **{**FAST, "epochs": 1})
        assert [layer.l0_lambda for layer in result.gated_model.layers if isinstance(layer, tf_dynhp.L0Dense)] == want
        assert "l0_lambda" not in result.history


def test_expected_weights_of_an_open_cnn_is_its_size():
    core = _gated(_cnn())
    for layer in core.gated_layers:
        layer.log_alpha.assign(np.full(layer.log_alpha.shape, 30.0, "float32"))  # every gate open
    assert float(target.expected_weights(core.body)) == pytest.approx(memory.weight_count(core.weighted_layers), rel=1e-5)


def test_smallest_model_is_one_unit_per_axis():
    core = _gated(_mlp(hidden=(30, 20)))
    # 1 input -> 1 -> 1 -> 10: (1*1 + 1) + (1*1 + 1) + (1*10 + 10)
    assert target.smallest_weights(core.body) == 2 + 2 + 20
    cnn = _gated(_cnn())
    # conv 3x3x1x1 + 1, one channel's 25 flattened rows lose all but one (gated): 1 row -> 1 -> 10
    assert target.smallest_weights(cnn.body) == (9 + 1) + (1 * 1 + 1) + (1 * 10 + 10)


@pytest.mark.parametrize("force", [False, True])
def test_plan_removes_lowest_rates_first_and_stops_at_the_target(force):
    core = _gated(_mlp(hidden=(30, 20)))
    rng = np.random.default_rng(0)
    count = 100.0
    gate_open = [rng.integers(0, 100, size=layer.num_gates).astype(float) for layer in core.gated_layers]
    full = memory.weight_count(core.weighted_layers)
    for goal in (int(full * 0.8), int(full * 0.5), int(full * 0.2)):
        keep, pruned, _ = target.plan_to_target(core.body, core.gated_layers, gate_open, count, 0.5, goal, force=force)
        from tf_dynhp.units import unit_axes

        axes, layer_axes = unit_axes(core.body)
        sizes = [a.size if k is None else len(k) for a, k in zip(axes, keep + [None])]
        weights = target.weights_of_sizes(core.body, layer_axes, sizes)
        rates = [g / count for g in gate_open]
        below = sum(int(np.sum(r < 0.5)) for r in rates)
        if force or weights <= goal:
            assert weights <= goal
        else:  # not forced: only units below gamma go, all of them when that is not enough
            assert sum(pruned) == below
        # Lowest rate first: every removed unit's rate <= every kept unit's rate among candidates.
        removed_rates = [r[j] for r, k in zip(rates, keep) if k is not None for j in np.setdiff1d(np.arange(len(r)), k)]
        kept_rates = [r[j] for r, k in zip(rates, keep) for j in (range(len(r)) if k is None else k) if force or r[j] < 0.5]
        if removed_rates and kept_rates:
            assert max(removed_rates) <= min(kept_rates)


# --------------------------------------------------------------------------- fit
FAST = dict(method="dynhp", alpha_bs=0.95, budget_kb=1e5, epochs=4, batch_size=32, seed=2, verbose=0)


@pytest.mark.parametrize("kind,fraction", [("mlp", 0.3), ("mlp", 0.05), ("cnn", 0.4)])
def test_the_model_never_exceeds_the_target(mnist, kind, fraction):
    (x, y), _ = mnist
    if kind == "mlp":
        model, xs = _mlp(hidden=(40, 20), input_shape=(28, 28)), x[:800]
    else:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(4, 5, activation="relu"), keras.layers.MaxPooling2D(2),
                                  keras.layers.Flatten(), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(10, activation="softmax")])
        xs = x[:800, ..., None]
    dense_kb = memory.floats_to_kb(memory.weight_count(model))
    goal = fraction * dense_kb
    result = tf_dynhp.fit(model, xs, y[:800], target_kb=goal, **FAST)
    final_kb = memory.floats_to_kb(memory.weight_count(result.model))
    assert final_kb <= goal
    assert result.history["model_kb"][-1] == pytest.approx(final_kb)
    assert all(v <= goal for v in result.history["model_kb"][FAST["epochs"] // 4 :])  # from the deadline on
    assert result.history["target_kb"] == [goal] * FAST["epochs"]
    assert min(result.history["l0_lambda"]) >= 0


def test_target_refusals(mnist):
    (x, y), _ = mnist
    model = _mlp(hidden=(40, 20), input_shape=(28, 28))
    with pytest.raises(ValueError, match=r"smallest model .* 0\.\d+ KB"):
        tf_dynhp.fit(model, x[:64], y[:64], target_kb=0.01, **FAST)
    with pytest.raises(ValueError, match="needs a method that removes units"):
        tf_dynhp.fit(model, x[:64], y[:64], target_kb=10.0, method="sp", epochs=1, verbose=0)
    with pytest.raises(ValueError, match="Invalid value received for argument `target_kb`"):
        tf_dynhp.fit(model, x[:64], y[:64], target_kb=-3, **FAST)
    with pytest.raises(ValueError, match="Invalid value received for argument `lambda_floor`"):
        tf_dynhp.fit(model, x[:64], y[:64], target_kb=10.0, lambda_floor=-0.1, **FAST)
    with pytest.raises(ValueError, match="Invalid value received for argument `size_penalty`"):
        tf_dynhp.fit(model, x[:64], y[:64], target_kb=10.0, size_penalty="l1", **FAST)
    for bad in (0, 2, -1, float("nan"), float("inf"), None, "0.5"):  # with or without a target
        for kw in ({"target_kb": 10.0}, {}):
            with pytest.raises(ValueError, match=r"`target_deadline`.*\(0, 1\]"):
                tf_dynhp.fit(model, x[:64], y[:64], target_deadline=bad, **kw, **FAST)
    with pytest.warns(RuntimeWarning, match="not below the model's size"):
        result = tf_dynhp.fit(model, x[:64], y[:64], target_kb=1e6, **{**FAST, "epochs": 1})
    assert "target_kb" not in result.history


def test_early_stopping_restores_only_a_model_within_the_target(mnist, capsys):
    """By `loss` (penalty included: it rises with λ while the model is above the target),
    the first, unpruned epoch is EarlyStopping's best; the restored model must still fit
    the target: the best epoch among those whose model does."""
    (x, y), _ = mnist
    model = _mlp(hidden=(40, 20), input_shape=(28, 28))
    goal = 0.2 * memory.floats_to_kb(memory.weight_count(model))
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=10, restore_best_weights=True)
    with pytest.warns(RuntimeWarning, match="forces the size only at the end of the last epoch"):
        result = tf_dynhp.fit(model, x[:600], y[:600], target_kb=goal, target_schedule="cubic", target_deadline=1.0,
                              callbacks=[stop], **{**FAST, "epochs": 5, "verbose": 2})
    sizes, loss, pruned = result.history["model_kb"], result.history["loss"], result.history["pruned_units"]
    assert stop.best_epoch == 0 and sizes[0] > goal  # Keras' best is the large first model
    assert memory.floats_to_kb(memory.weight_count(result.model)) <= goal
    # candidates: models within the target that the epoch's logs scored (not pruned at its end)
    fitting = [e for e, kb in enumerate(sizes) if kb <= goal and not any(pruned[e])]
    chosen = min(fitting, key=lambda e: loss[e]) if fitting else len(loss) - 1
    assert result.state.epoch == chosen + 1
    if chosen + 1 != len(loss):
        assert "among the models within target_kb" in capsys.readouterr().out


def test_one_trace_and_exact_resume_under_a_target(mnist, tmp_path):
    (x, y), _ = mnist
    goal = 0.2 * memory.floats_to_kb(memory.weight_count(_mlp(hidden=(40, 20), input_shape=(28, 28))))
    kw = dict(target_kb=goal, **FAST)
    a = tf_dynhp.fit(_mlp(hidden=(40, 20), input_shape=(28, 28)), x[:600], y[:600], trace_once=True, **kw)
    b = tf_dynhp.fit(_mlp(hidden=(40, 20), input_shape=(28, 28)), x[:600], y[:600], trace_once=False, **kw)
    assert a.history["retraces"][-1] <= 2  # the multiplier is read from a variable: no retrace
    for key in a.history:
        if key not in RUNTIME_KEYS:
            assert a.history[key] == b.history[key], key
    # Resume after 2 epochs: same run, multiplier included (state and checkpoint settings).
    folder = tmp_path / "ck"
    tf_dynhp.fit(_mlp(hidden=(40, 20), input_shape=(28, 28)), x[:600], y[:600], checkpoint_dir=folder, **{**kw, "epochs": 4},
                 callbacks=[stop_after(2)])
    c = tf_dynhp.fit(_mlp(hidden=(40, 20), input_shape=(28, 28)), x[:600], y[:600], checkpoint_dir=folder, resume=True, **kw)
    assert_same_run(c, a, a.model, c.model)
    with pytest.raises(ValueError, match="target_kb"):
        tf_dynhp.fit(_mlp(hidden=(40, 20), input_shape=(28, 28)), x[:600], y[:600], checkpoint_dir=folder, resume=True,
                     **{**kw, "target_kb": goal * 0.9})


def test_adamw_exclusions_and_exact_resume_through_prunes(mnist, tmp_path):
    """AdamW through prunes under a target: its exclusions (here the gates, by name) hold in
    every epoch's rebuilt optimizer, a run stopped after 2 epochs and resumed equals the
    uninterrupted one to the bit, and the decay acts (the weights differ from Adam's)."""
    from tf_dynhp import runs

    (x, y), _ = mnist
    goal = 0.2 * memory.floats_to_kb(memory.weight_count(_mlp(hidden=(40, 20), input_shape=(28, 28))))
    kw = dict(target_kb=goal, size_penalty="outgoing", target_schedule="cubic", **{**FAST, "epochs": 4})

    def adamw():
        opt = runs.optimizer(runs.RunConfig(decoupled_weight_decay=0.05, learning_rate=FAST.get("learning_rate", 1e-3)))
        opt.exclude_from_weight_decay(var_names=["log_alpha"])
        return opt

    class Spared(keras.callbacks.Callback):  # the optimizer of every epoch (rebuilt after each prune)
        seen: list = []

        def on_epoch_end(self, epoch, logs=None):
            opt = self.model.optimizer
            self.seen.append([(opt._use_weight_decay(v), "log_alpha" in v.path) for v in opt._trainable_variables])

    a = tf_dynhp.fit(_mlp(hidden=(40, 20), input_shape=(28, 28)), x[:600], y[:600], optimizer=adamw(), callbacks=[Spared()], **kw)
    assert sum(sum(p) for p in a.history["pruned_units"][:2]) > 0  # the stop comes after a prune
    assert len(Spared.seen) == 4 and all(decayed != gate for epoch in Spared.seen for decayed, gate in epoch)
    folder = tmp_path / "ck"
    tf_dynhp.fit(_mlp(hidden=(40, 20), input_shape=(28, 28)), x[:600], y[:600], optimizer=adamw(), checkpoint_dir=folder,
                 callbacks=[stop_after(2)], **kw)
    c = tf_dynhp.fit(_mlp(hidden=(40, 20), input_shape=(28, 28)), x[:600], y[:600], optimizer=adamw(), checkpoint_dir=folder,
                     resume=True, **kw)
    assert_same_run(c, a, a.gated_model, c.gated_model)
    plain = tf_dynhp.fit(_mlp(hidden=(40, 20), input_shape=(28, 28)), x[:600], y[:600], **kw)
    assert any(not np.array_equal(u.numpy(), v.numpy()) for u, v in zip(a.model.weights, plain.model.weights)
               if u.shape == v.shape) or a.history["active_units"] != plain.history["active_units"]


@pytest.mark.parametrize("method", ["sp", "hp"])
def test_weight_decay_exclusions_survive_a_resume_that_traces_again(mnist, tmp_path, method):
    """A checkpoint kept the optimizer's config, which leaves out AdamW's
    `exclude_from_weight_decay(var_names=...)`: a resumed run (any retrace; sp traces its
    restored model) decayed the excluded biases and differed from the unstopped run."""
    (x, y), _ = mnist
    kw = dict(method=method, epochs=4, batch_size=50, seed=3, verbose=0, trace_once=method == "hp")

    def adamw():
        opt = keras.optimizers.AdamW(1e-3, weight_decay=0.9)
        opt.exclude_from_weight_decay(var_names=["bias"])
        return opt

    a = tf_dynhp.fit(_mlp(hidden=(12,), input_shape=(28, 28)), x[:300], y[:300], optimizer=adamw(), **kw)
    folder = tmp_path / "ck"
    tf_dynhp.fit(_mlp(hidden=(12,), input_shape=(28, 28)), x[:300], y[:300], optimizer=adamw(), checkpoint_dir=folder,
                 callbacks=[stop_after(2)], **kw)
    c = tf_dynhp.fit(_mlp(hidden=(12,), input_shape=(28, 28)), x[:300], y[:300], optimizer=adamw(), checkpoint_dir=folder,
                     resume=True, **kw)
    assert_same_run(c, a, a.gated_model, c.gated_model)
    other = keras.optimizers.AdamW(1e-3, weight_decay=0.9)  # the exclusions are a setting a resume must keep
    other.exclude_from_weight_decay(var_names=["kernel"])
    with pytest.raises(ValueError, match="weight_decay_exclusions"):
        tf_dynhp.fit(_mlp(hidden=(12,), input_shape=(28, 28)), x[:300], y[:300], optimizer=other, checkpoint_dir=folder,
                     resume=True, **{**kw, "epochs": 5})


def test_weight_decay_exclusions_by_identity_are_refused(mnist):
    """`exclude_from_weight_decay(var_list=...)` names variables fit replaces: refused, naming
    the way that works (var_names)."""
    (x, y), _ = mnist
    model = _mlp(hidden=(8,), input_shape=(28, 28))
    opt = keras.optimizers.AdamW(1e-3, weight_decay=0.01)
    opt.exclude_from_weight_decay(var_list=[model.layers[-1].bias])
    with pytest.raises(ValueError, match=r"exclude_from_weight_decay\(var_names="):
        tf_dynhp.fit(model, x[:64], y[:64], optimizer=opt, **FAST)


def test_floor_and_penalty_form_hold_in_the_run_and_in_the_checkpoint(mnist, tmp_path):
    (x, y), _ = mnist
    goal = 0.2 * memory.floats_to_kb(memory.weight_count(_mlp(hidden=(40, 20), input_shape=(28, 28))))
    kw = dict(target_kb=goal, **FAST)
    folder = tmp_path / "ck"
    result = tf_dynhp.fit(_mlp(hidden=(40, 20), input_shape=(28, 28)), x[:600], y[:600], lambda_floor=0.05,
                          size_penalty="outgoing", checkpoint_dir=folder, **kw)
    assert result.history["l0_lambda"][0] == pytest.approx(0.05)  # starts at max(l0_lambda, floor)
    assert min(result.history["l0_lambda"]) >= 0.05 and result.state.l0_lambda >= 0.05
    assert memory.floats_to_kb(memory.weight_count(result.model)) <= goal
    more = {**kw, "epochs": FAST["epochs"] + 1}
    with pytest.raises(ValueError, match="lambda_floor"):  # another floor is another run
        tf_dynhp.fit(_mlp(hidden=(40, 20), input_shape=(28, 28)), x[:600], y[:600], checkpoint_dir=folder, resume=True,
                     lambda_floor=0.0, size_penalty="outgoing", **more)
    with pytest.raises(ValueError, match="size_penalty"):  # another penalty too
        tf_dynhp.fit(_mlp(hidden=(40, 20), input_shape=(28, 28)), x[:600], y[:600], checkpoint_dir=folder, resume=True,
                     lambda_floor=0.05, **more)


def test_a_cubic_schedule_prunes_no_faster_than_it_says(mnist):
    (x, y), _ = mnist
    model = _mlp(hidden=(40, 20), input_shape=(28, 28))
    dense_kb = memory.floats_to_kb(memory.weight_count(model))
    goal = 0.1 * dense_kb
    kw = {**FAST, "epochs": 8, "l0_lambda": 3.0, "learning_rate": 0.03}  # gates close within 2 epochs (a constant target: 10.3 KB at epoch 3)
    result = tf_dynhp.fit(model, x[:1000], y[:1000], target_kb=goal, target_schedule="cubic", target_deadline=0.5, **kw)
    one_unit_kb = memory.floats_to_kb(784 + 20 + 1)  # the most one unit of this model carries (a first hidden unit)
    for e, size in enumerate(result.history["model_kb"]):
        assert size >= target.scheduled_kb(goal, dense_kb, e, 4, "cubic") - one_unit_kb, e
    assert memory.floats_to_kb(memory.weight_count(result.model)) <= goal
    with pytest.raises(ValueError, match="Invalid value received for argument `target_schedule`"):
        tf_dynhp.fit(model, x[:64], y[:64], target_kb=goal, target_schedule="linear", **FAST)


def test_dropout_between_gated_layers_is_deterministic_and_resumes_exactly(mnist, tmp_path):
    """`Dropout` layers of the user's model (`runs.build_mlp(dropout=...)`) pass through every
    prune: they act in training (the losses differ from the same model without them), a
    second run with the seed is identical, and a run stopped after 2 epochs (after a prune)
    and resumed equals the uninterrupted one to the bit (the dropout masks' seed state is
    part of the checkpoint)."""
    from tf_dynhp import runs

    (x, y), _ = mnist
    goal = 0.2 * memory.floats_to_kb(memory.weight_count(runs.build_mlp((40, 20))))
    kw = dict(target_kb=goal, **FAST)

    def model(rate):
        keras.utils.set_random_seed(0)
        return runs.build_mlp((40, 20), dropout=rate)

    a = tf_dynhp.fit(model(0.3), x[:600], y[:600], **kw)
    assert [type(layer).__name__ for layer in a.model.layers].count("Dropout") == 2
    assert sum(sum(p) for p in a.history["pruned_units"][:2]) > 0
    b = tf_dynhp.fit(model(0.3), x[:600], y[:600], **kw)
    plain = tf_dynhp.fit(model(0.0), x[:600], y[:600], **kw)
    assert a.history["loss"] == b.history["loss"] and a.history["loss"] != plain.history["loss"]
    folder = tmp_path / "ck"
    tf_dynhp.fit(model(0.3), x[:600], y[:600], checkpoint_dir=folder, callbacks=[stop_after(2)], **kw)
    c = tf_dynhp.fit(model(0.3), x[:600], y[:600], checkpoint_dir=folder, resume=True, **kw)
    assert_same_run(c, a, a.gated_model, c.gated_model)
    with pytest.raises(ValueError, match="dropout"):
        runs.build_mlp((4,), dropout=1.0)
    built = runs.build_model(runs.RunConfig(hidden=(6, 5), dropout=0.2))  # what tools/train.py --dropout builds
    assert [layer.rate for layer in built.layers if isinstance(layer, keras.layers.Dropout)] == [0.2, 0.2]
    with pytest.raises(ValueError, match="dropout"):
        runs.build_model(runs.RunConfig(arch="lenet5", dropout=0.2))


def test_a_deadline_at_the_last_epoch_warns_that_the_model_is_never_trained_at_its_size(mnist):
    # The cut then lands after the last evaluation: the logs score the larger model,
    # and the one returned was never trained at its size.
    (x, y), _ = mnist
    model = _mlp(hidden=(40, 20), input_shape=(28, 28))
    goal = 0.2 * memory.floats_to_kb(memory.weight_count(model))
    with pytest.warns(RuntimeWarning, match=r"`target_deadline`=0.9 of 3 epochs forces the size only at the end of the last epoch"):
        tf_dynhp.fit(model, x[:300], y[:300], target_kb=goal, target_deadline=0.9, **{**FAST, "epochs": 3})


def test_a_run_stopped_before_the_deadline_is_cut_to_the_target(mnist, tmp_path):
    """A callback's stop before the deadline epoch returned the unpruned model, over the
    target, without a word. It is cut to the target (with a warning); a paused run resumed
    goes on from the model before the cut, as if never stopped; a run EarlyStopping ended
    is finished, and resumed gives the same cut model."""
    (x, y), _ = mnist

    def model():
        return _mlp(hidden=(40, 20), input_shape=(28, 28))

    goal = 0.2 * memory.floats_to_kb(memory.weight_count(model()))
    kw = dict(FAST, epochs=8, target_kb=goal, target_deadline=0.5)
    data = (x[:600], y[:600])
    said = r"Training ended after epoch 2, before the size target's deadline \(the end of epoch 4\).*cut to target_kb"
    with pytest.warns(RuntimeWarning, match=said + r".*before the cut\. Resume the run from checkpoint_dir"):
        paused = tf_dynhp.fit(model(), *data, checkpoint_dir=tmp_path / "p", callbacks=[stop_after(2)], **kw)
    assert len(paused.history["loss"]) == 2 and memory.floats_to_kb(memory.weight_count(paused.model)) <= goal
    resumed = tf_dynhp.fit(model(), *data, checkpoint_dir=tmp_path / "p", resume=True, **kw)
    whole = tf_dynhp.fit(model(), *data, **kw)
    assert_same_run(resumed, whole, whole.model, resumed.model)

    def stop():
        return keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=10)

    with pytest.warns(RuntimeWarning, match=said + r".*is of the model before the cut\.$"):
        ended = tf_dynhp.fit(model(), *data, checkpoint_dir=tmp_path / "e", callbacks=[stop()], **kw)
    assert memory.floats_to_kb(memory.weight_count(ended.model)) <= goal
    again = tf_dynhp.fit(model(), *data, checkpoint_dir=tmp_path / "e", resume=True, callbacks=[stop()], **kw)
    assert len(again.history["loss"]) == 2
    for u, v in zip(ended.model.weights, again.model.weights, strict=True):
        np.testing.assert_array_equal(u.numpy(), v.numpy())
