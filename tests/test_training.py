"""tf_dynhp.fit end to end on a small MNIST subset: methods, determinism, tf.data,
budget property, callbacks, and bad input rejected before training."""

import csv

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_dynhp
from conftest import make_mlp
from tf_dynhp import L0Dense, memory
from tf_dynhp.training import TIMING_KEYS

HISTORY_KEYS = {
    "loss", "accuracy", "val_loss", "val_error", "batch_size", "candidate_batch_size", "active_units",
    "pruned_units", "at_floor", "model_kb", "memory_kb", "memory_full_kb", "budget_kb",
    "variance_ratio", "retraces", "rebuild_seconds", "epoch_seconds",
}


PRUNE_FAST = {"l0_lambda": 0.5, "gamma": 0.9, "droprate_init": 0.2, "batch_size": 20}


def _model(seed=0, hidden=(64, 32)):
    keras.utils.set_random_seed(seed)
    return make_mlp(hidden=hidden)


def _fit(data, method="sp", epochs=2, **kw):
    (x, y), (xt, yt) = data
    kw.setdefault("seed", 3)
    kw.setdefault("verbose", 0)
    kw.setdefault("learning_rate", 3e-3)
    if method == "dynhp":
        kw.setdefault("alpha_bs", 0.9)
        kw.setdefault("budget_kb", memory.mo_kb(_model(), batch_size=64))
    return tf_dynhp.fit(_model(), x, y, method=method, epochs=epochs, validation_data=(xt, yt), **kw)


GOLDEN_VAL_ERROR = {"dense": 12.3, "sp": 16.4, "hp": 11.0, "dynhp": 10.7}  # % of 1000 images, epoch 3
GOLDEN_ERR_200 = {"dense": 7.0, "sp": 11.0, "hp": 7.5, "dynhp": 6.0}  # stripped model, first 200 images


@pytest.mark.parametrize("method", ["dense", "sp", "hp", "dynhp"])
def test_each_method_trains_and_returns_a_plain_model(mnist_small, method):
    kw = PRUNE_FAST if method in ("hp", "dynhp") else {}
    result = _fit(mnist_small, method, epochs=3, **kw)
    h = result.history
    assert HISTORY_KEYS <= set(h)
    assert all(len(v) == 3 for v in h.values())
    assert h["loss"][-1] < h["loss"][0]
    # Golden values: the run is seeded and the model built after set_random_seed (on this
    # machine bit for bit the same run each time); the tolerance (10 of the 1000 validation
    # images, 3 of 200) leaves room for other CPUs' float rounding only.
    assert h["val_error"][-1] == pytest.approx(GOLDEN_VAL_ERROR[method], abs=1.0)
    assert not any(isinstance(l, L0Dense) for l in result.model.layers)
    (_, _), (xt, yt) = mnist_small
    a = result.model.predict(xt[:200], verbose=0)
    b = result.gated_model.predict(xt[:200], verbose=0)
    np.testing.assert_allclose(a, b, atol=1e-5)
    err = 100 * np.mean(np.argmax(a, -1) != yt[:200])
    assert err == pytest.approx(GOLDEN_ERR_200[method], abs=1.5)
    if method in ("hp", "dynhp"):
        # PRUNE_FAST prunes within 3 epochs: the kernels really shrink.
        kernels = [l.kernel.shape for l in result.model.layers if isinstance(l, keras.layers.Dense)]
        assert kernels[0][0] < 784
        active = np.array(h["active_units"])
        assert np.all(np.diff(active, axis=0) <= 0), "active_units must never increase under hard pruning"
        assert h["model_kb"][-1] < memory.floats_to_kb(memory.weight_count(_model()))
    if method == "sp":
        assert all(isinstance(a, float) for a in h["active_units"][0])


def _strip_timing(history):
    return {k: v for k, v in history.items() if k not in TIMING_KEYS}


@pytest.mark.parametrize("method", ["sp", "dynhp"])
def test_same_seed_same_run(mnist_small, method):
    kw = {**PRUNE_FAST, "batch_growth": "step"} if method == "dynhp" else {}
    a = _fit(mnist_small, method, **kw)
    b = _fit(mnist_small, method, **kw)
    assert _strip_timing(a.history) == _strip_timing(b.history)
    for va, vb in zip(a.gated_model.weights, b.gated_model.weights):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())
    c = _fit(mnist_small, method, seed=4, **kw)
    assert c.history["loss"] != a.history["loss"]


def test_tf_data_input_equals_numpy_input(mnist_small):
    (x, y), (xt, yt) = mnist_small
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    a = tf_dynhp.fit(_model(), ds, method="sp", epochs=1, seed=5, verbose=0, validation_data=tf.data.Dataset.from_tensor_slices((xt, yt)))
    b = tf_dynhp.fit(_model(), x, y, method="sp", epochs=1, seed=5, verbose=0, validation_data=(xt, yt))
    assert _strip_timing(a.history) == _strip_timing(b.history)


def test_verbose_prints_one_line_per_epoch(mnist_small, capsys):
    _fit(mnist_small, "sp", epochs=2, verbose=2)
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("Epoch ")]
    assert len(lines) == 2 and "val_error" in lines[0] and "MO " in lines[0] and "active" in lines[0]


@pytest.mark.parametrize(
    "budget_batch,hidden,growth,budget_on",
    [
        (40, (32, 16), "step", "paper"),
        (64, (48,), "step", "paper"),
        (40, (32, 16), "step_mean", "paper"),
        (30, (16, 16, 8), "step_mean", "paper"),
        (40, (32, 16), "epoch", "paper"),
        (40, (32, 16), "step", "full"),
    ],
)
def test_dynhp_never_exceeds_budget_and_batch_never_shrinks(mnist, budget_batch, hidden, growth, budget_on):
    """Property over budgets/architectures/readings of Eq. 8: the memory measured each
    epoch (from the variables that exist and the batches actually fed) stays within
    budget_kb, and the batch does reach the cap (small budget, alpha_bs = 0.05: every
    reading's candidate outgrows it), so the cap is what holds it."""
    (x, y), _ = mnist
    model = _model(hidden=hidden)
    if budget_on == "paper":
        budget = memory.mo_kb(model, batch_size=budget_batch)
    else:
        budget = memory.memory_full_kb(tf_dynhp.to_l0(model, dataset_size=1), budget_batch)
    result = tf_dynhp.fit(
        model, x[:1500], y[:1500], method="dynhp", epochs=4, alpha_bs=0.05, budget_kb=budget,
        budget_on=budget_on, batch_growth=growth, seed=1, verbose=0, **{**PRUNE_FAST, "batch_size": 16},
    )
    h = result.history
    measured = h["memory_kb"] if budget_on == "paper" else h["memory_full_kb"]
    assert max(measured) <= budget
    following = h["batch_size"][1:] + [result.state.batch_size]  # the batch each epoch chose
    assert all(b1 <= b2 for b1, b2 in zip(h["batch_size"], following))
    assert following[-1] >= budget_batch  # it grew to the cap (pruning frees more)
    if budget_on == "paper":
        # Eq. 9-10 in literal arithmetic: after epoch i, the cap is the largest batch whose
        # 4 * (weights + batch * inputs) bytes fit in the budget (weights and inputs as pruned).
        caps = [
            int(np.floor((budget * 256.0 - kb * 256.0) / units[0] + 1e-9))
            for kb, units in zip(h["model_kb"], h["active_units"])
        ]
        assert all(b <= c for b, c in zip(following, caps))
        assert any(b == c for b, c in zip(following, caps)), (following, caps, h["candidate_batch_size"])
        assert any(cand > c for cand, c in zip(h["candidate_batch_size"], caps))  # the cap bit
        # The epoch fed at the cap filled the budget to within one example's inputs.
        fed_at_cap = [i + 1 for i, (b, c) in enumerate(zip(following, caps)) if b == c and i + 1 < len(h["memory_kb"])]
        for i in fed_at_cap:
            assert budget - h["memory_kb"][i] < h["active_units"][i - 1][0] / 256.0


def test_memory_history_is_measured_from_what_was_fed(mnist_small):
    result = _fit(mnist_small, "sp", epochs=1, batch_size=64)
    expected = memory.mo_kb(_model(), batch_size=64)
    assert result.history["memory_kb"][0] == pytest.approx(expected)


def test_callbacks_follow_rebuilds(mnist_small, tmp_path):
    log = tmp_path / "log.csv"
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(self.model.dense_layers[0].kernel.shape[0])

    result = _fit(
        mnist_small, "hp", epochs=4, **PRUNE_FAST,
        callbacks=[keras.callbacks.CSVLogger(str(log)), Spy(),
                   keras.callbacks.EarlyStopping(monitor="val_error", mode="min", patience=0, min_delta=100.0)],
    )
    assert len(result.history["loss"]) == 2  # stopped by EarlyStopping on val_error
    rows = list(csv.DictReader(open(log)))
    assert len(rows) == 2 and "val_error" in rows[0] and "active_units_0" in rows[0]
    # Each epoch the callback saw the current (rebuilt) model.
    assert seen == [a[0] for a in result.history["active_units"]]
    assert seen[-1] < 784


def _bad(**overrides):
    base = dict(method="sp", epochs=1)
    base.update(overrides)
    return base


X = np.zeros((10, 28, 28), "float32")
Y = np.arange(10) % 10


@pytest.mark.parametrize(
    "x,y,kwargs,err,match",
    [
        (X, Y[:9], _bad(), ValueError, "10 examples but `y` has 9"),
        (X, Y + 5, _bad(), ValueError, "labels must be in \\[0, 10\\)"),
        (X, Y - 1, _bad(), ValueError, "labels"),
        (np.full_like(X, np.nan), Y, _bad(), ValueError, "NaN"),
        (X[:0], Y[:0], _bad(), ValueError, "empty"),
        (X, Y + 0.5, _bad(), TypeError, "integer class ids"),
        (X[:, :27], Y, _bad(), ValueError, "shape \\(27, 28\\)"),
        (X, Y, _bad(method="prune"), ValueError, "method"),
        (X, Y, _bad(epochs=0), ValueError, "epochs"),
        (X, Y, _bad(batch_size=0), ValueError, "batch_size"),
        (X, Y, _bad(l0_lambda=-0.1), ValueError, "l0_lambda"),
        (X, Y, _bad(gamma=1.0), ValueError, "gamma"),
        (X, Y, _bad(method="dynhp", alpha_bs="0.9", budget_kb=3000.0), ValueError, "alpha_bs"),
        (X, Y, _bad(method="dynhp", alpha_bs=0.97), ValueError, "budget_kb"),
        (X, Y, _bad(method="dynhp", alpha_bs=1.5, budget_kb=3000.0), ValueError, "alpha_bs"),
        (X, Y, _bad(method="dynhp", alpha_bs=0.97, budget_kb=-1.0), ValueError, "budget_kb"),
        (X, Y, _bad(method="dynhp", alpha_bs=0.97, budget_kb=1000.0), ValueError, "1000.0.*need"),
        (X, Y, _bad(budget_on="device"), ValueError, "budget_on"),
        (X, Y, _bad(batch_growth="fast"), ValueError, "batch_growth"),
        (X, Y, _bad(optimizer="nadamx"), ValueError, "optimizer"),
        (X, Y, _bad(method="hp", callbacks=[keras.callbacks.BackupAndRestore("/nonexistent/backup")]), ValueError, "BackupAndRestore"),
        (X, None, _bad(), ValueError, "labels"),
    ],
)
def test_bad_input_rejected_before_training(x, y, kwargs, err, match):
    with pytest.raises(err, match=match):
        tf_dynhp.fit(make_mlp(hidden=(300, 100)), x, y, verbose=0, **kwargs)


def test_not_a_classifier_head():
    model = make_mlp(activation="relu")
    with pytest.raises(ValueError, match="classifier head"):
        tf_dynhp.fit(model, X, Y, epochs=1, verbose=0)


def test_user_model_is_not_modified(mnist_small):
    model = make_mlp()
    before = [w.copy() for w in model.get_weights()]
    (x, y), _ = mnist_small
    tf_dynhp.fit(model, x[:500], y[:500], method="hp", epochs=1, verbose=0, l0_lambda=0.5)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_batch_growth_does_not_retrace(mnist_small):
    """A new batch size reuses the compiled step; only a rebuilt model retraces."""
    result = _fit(mnist_small, "dynhp", epochs=3, gamma=1e-6, batch_growth="step", alpha_bs=0.5, batch_size=16)
    h = result.history
    assert h["batch_size"][1] > h["batch_size"][0]  # it grew
    assert sum(h["pruned_units"][0]) == 0  # nothing pruned with gamma ~ 0
    assert h["retraces"][0] == h["retraces"][1] == h["retraces"][2]


def test_plot_history(mnist_small, tmp_path):
    result = _fit(mnist_small, "hp", epochs=2, **PRUNE_FAST)
    path = tf_dynhp.plot_history(result.history, tmp_path / "run.png", title="hp")
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    with pytest.raises(ValueError, match="batch_size"):
        tf_dynhp.plot_history({"loss": [1.0]}, tmp_path / "x.png")
    (tmp_path / "afile").write_text("keep me")  # a file where a folder of the path would go: was a bare FileExistsError
    for path in (tmp_path / "afile" / "x.png", tmp_path / "afile" / "sub" / "x.png"):
        with pytest.raises(ValueError, match=r"its folder cannot be made, '.*afile' is a file"):
            tf_dynhp.plot_history(result.history, path)
    assert (tmp_path / "afile").read_text() == "keep me"


def test_plot_history_of_a_cnn_result_names_its_axes_marks_one_epoch_and_returns_the_file(mnist_small, tmp_path, monkeypatch):
    """The CNN's conv channels and flattened features were labelled 'hidden 1, 2, ...'; a
    1-epoch history drew lines of one point (nothing shows); a path without a suffix
    returned that path while matplotlib wrote '<path>.png'."""
    import matplotlib.figure

    (x, y), _ = mnist_small
    result = tf_dynhp.fit(_cnn(), x[:200, ..., None], y[:200], method="hp", epochs=1, batch_size=50, seed=1, verbose=0)
    drawn = {}
    real_savefig = matplotlib.figure.Figure.savefig

    def savefig(fig, *args, **kwargs):
        drawn["labels"] = [line.get_label() for line in fig.axes[0].get_lines()]
        drawn["markers"] = {line.get_marker() for ax in fig.axes for line in ax.get_lines() if line.get_label() != "_child0"}
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    path = tf_dynhp.plot_history(result, tmp_path / "cnn")
    assert path == str(tmp_path / "cnn.png") and open(path, "rb").read(4) == b"\x89PNG"
    names = [layer.name for layer in result.gated_model.layers if isinstance(layer, (tf_dynhp.L0Conv2D, tf_dynhp.L0Dense))]
    assert drawn["labels"] == ["input", f"{names[0]} channels", "flattened", f"{names[1]} units"] == result.state.axis_names
    assert "None" not in drawn["markers"] and None not in drawn["markers"]
    with pytest.raises(ValueError, match="is a folder"):
        tf_dynhp.plot_history(result, tmp_path)
    with pytest.raises(ValueError, match="`unit_names` has 1 names; the history has 4 unit axes"):
        tf_dynhp.plot_history(result.history, tmp_path / "x.png", unit_names=["a"])


def test_plot_history_checks_the_path_before_drawing_and_leaves_no_open_figure(mnist_small, tmp_path):
    """A dotted name ("run-a0.975"), a missing folder or a .txt path failed in savefig after
    the whole figure was drawn, each leaving an open pyplot figure behind."""
    import matplotlib.pyplot as plt

    result = _fit(mnist_small, "hp", epochs=1, **PRUNE_FAST)
    before = len(plt.get_fignums())
    assert tf_dynhp.plot_history(result, tmp_path / "run-a0.975") == str(tmp_path / "run-a0.975.png")
    deep = tmp_path / "new" / "folder" / "run.svg"
    assert tf_dynhp.plot_history(result, deep) == str(deep) and deep.read_text().lstrip().startswith("<?xml")
    with pytest.raises(ValueError, match=r"has the extension \.txt, which matplotlib does not write"):
        tf_dynhp.plot_history(result, tmp_path / "run.txt")
    assert not (tmp_path / "run.txt").exists() and len(plt.get_fignums()) == before


def test_plot_history_marks_a_lone_validation_point_and_refuses_a_home_folder(mnist_small, tmp_path, monkeypatch):
    """validation_freq=[30] over 30 epochs: panel (d) drew a line of one point (nothing
    shows: markers went only with <= 20 epochs). "~/plots", a folder, wrote ~/plots.png
    (the folder check came before "~" was expanded)."""
    import matplotlib.figure

    result = _fit(mnist_small, "hp", epochs=1, **PRUNE_FAST)
    history = {k: (v * 30 if isinstance(v, list) else v) for k, v in result.history.items()}
    history["val_error"] = [None] * 29 + [12.5]
    drawn = {}
    real_savefig = matplotlib.figure.Figure.savefig

    def savefig(fig, *args, **kwargs):
        drawn["d"] = [(line.get_marker(), list(line.get_xdata())) for line in fig.axes[3].get_lines()]
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    tf_dynhp.plot_history(history, tmp_path / "lone.png")
    assert drawn["d"] == [("o", [30])]
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "plots").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        tf_dynhp.plot_history(result, "~/plots")
    assert not (tmp_path / "plots.png").exists()


# --------------------------------------------------------------------------- a small CNN
def _cnn(seed=0, convs=((4, 3),)):
    """Conv2D(filters, kernel) + MaxPooling2D(2) per `convs` entry, then Flatten and two Dense."""
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((28, 28, 1))]
    for filters, kernel in convs:
        layers += [keras.layers.Conv2D(filters, kernel, activation="relu"), keras.layers.MaxPooling2D(2)]
    layers += [keras.layers.Flatten(), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(10, activation="softmax")]
    return keras.Sequential(layers)


class CloseConvChannel(keras.callbacks.Callback):
    """After the first epoch, pushes the gate of channel `channels[i]` of the i-th gated
    conv (default: channel 1 of the first) to its lowest logit: its activation rate in the
    next epoch is ~0.05, so the boundary after it prunes the channel."""

    def __init__(self, channels=(1,)):
        super().__init__()
        self.channels = tuple(channels)

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            for conv, channel in zip(self.model.gated_layers, self.channels):
                la = conv.log_alpha.numpy()
                la[channel] = tf_dynhp.gates.LOG_ALPHA_MIN
                conv.log_alpha.assign(la)


CNN_FAST = dict(method="dynhp", alpha_bs=0.9, l0_lambda=5.0, gamma=0.9, droprate_init=0.2, batch_size=20,
                learning_rate=5e-3, batch_growth="step", seed=1, verbose=0)


def test_dynhp_prunes_a_cnn_under_the_budget_and_resumes(mnist, tmp_path):
    (x, y), (xt, yt) = mnist
    x, y, val = x[:1500, ..., None], y[:1500], (xt[:500, ..., None], yt[:500])
    budget = memory.mo_kb(_cnn(), batch_size=64)
    result = tf_dynhp.fit(_cnn(), x, y, epochs=3, budget_kb=budget, validation_data=val, callbacks=[CloseConvChannel()], **CNN_FAST)
    h = result.history
    # Unit axes: input channels, conv channels, 13*13*4 flattened features, dense units.
    assert h["active_units"][0] == [1, 4, 676, 16]
    active = np.array(h["active_units"])
    assert np.all(np.diff(active, axis=0) <= 0)
    assert h["active_units"][-1][1] == 3  # channel 1 is gone ...
    assert h["active_units"][-1][2] < 3 * 169  # ... with its 169 rows, and single rows were pruned too
    assert max(h["memory_kb"]) <= budget
    assert all(b1 <= b2 for b1, b2 in zip(h["batch_size"], h["batch_size"][1:])) and h["batch_size"][-1] > 20
    conv = [l for l in result.model.layers if isinstance(l, keras.layers.Conv2D)]
    dense = [l for l in result.model.layers if isinstance(l, keras.layers.Dense)]
    assert conv[0].kernel.shape == (3, 3, 1, 3) and conv[0].bias.shape == (3,)
    assert dense[0].kernel.shape[0] == h["active_units"][-1][2] and dense[-1].units == 10
    # The state keeps the surviving original units: channel 1 and its rows ((h*13 + w)*4 + 1).
    assert 1 not in result.state.alive[1]
    assert not any(f % 4 == 1 for f in result.state.alive[2])
    a, b = result.model.predict(val[0][:200], verbose=0), result.gated_model.predict(val[0][:200], verbose=0)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert h["val_error"][-1] == pytest.approx(17.6, abs=1.0)  # golden (seeded; 5 of 500 images)
    # Checkpoints of a pruned CNN resume exactly.
    part = tf_dynhp.fit(_cnn(), x, y, epochs=2, budget_kb=budget, validation_data=val, callbacks=[CloseConvChannel()],
                        checkpoint_dir=tmp_path, **CNN_FAST)
    assert part.history["active_units"][-1][1] == 3
    resumed = tf_dynhp.fit(_cnn(), x, y, epochs=3, budget_kb=budget, validation_data=val, checkpoint_dir=tmp_path, resume=True, **CNN_FAST)
    runtime = ("epoch_seconds", "rebuild_seconds", "trace_seconds", "retraces")
    assert {k: v for k, v in resumed.history.items() if k not in runtime} == {k: v for k, v in h.items() if k not in runtime}


def test_cnn_sp_and_dense_methods(mnist):
    (x, y), _ = mnist
    x, y = x[:600, ..., None], y[:600]
    sp = tf_dynhp.fit(_cnn(), x, y, method="sp", epochs=1, seed=2, verbose=0)
    # SP reports the expected open gates per unit axis (the input channel axis has none).
    assert sp.history["active_units"][0][0] == 1.0 and 0 < sp.history["active_units"][0][1] <= 4
    dense = tf_dynhp.fit(_cnn(), x, y, method="dense", epochs=1, seed=2, verbose=0)
    assert [type(l).__name__ for l in dense.model.layers][1:] == ["Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dense"]
    with pytest.raises(ValueError, match="shape \\(28, 28\\); the model expects \\(28, 28, 1\\)"):
        tf_dynhp.fit(_cnn(), x[..., 0], y, epochs=1, verbose=0)


def test_boolean_labels_are_class_ids_0_and_1():
    """y = x[:, 0] > 0.5, two classes as False/True, was refused as 'non-integer values'."""
    rng = np.random.default_rng(0)
    x = rng.random((64, 12), dtype=np.float32)

    def run(labels):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)])
        return tf_dynhp.fit(model, x, labels, method="sp", epochs=1, verbose=0, seed=1).history["loss"]

    assert run(x[:, 0] > 0.5) == run((x[:, 0] > 0.5).astype(np.int64))


def test_plot_history_expands_the_home_folder(mnist_small, tmp_path, monkeypatch):
    """'~/x.png' made a folder named '~' in the working directory."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    result = _fit(mnist_small, "hp", epochs=1, **PRUNE_FAST)
    assert tf_dynhp.plot_history(result, "~/plots/x.png") == str(tmp_path / "home" / "plots" / "x.png")
    assert not (tmp_path / "~").exists()
