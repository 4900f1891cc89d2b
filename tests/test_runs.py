"""tf_dynhp.runs: the run-folder routine with --arch=lenet5 (images get their channel axis); one run per folder."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

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


def test_cosine_lr_decay_reaches_the_optimizer(mnist):
    """RunConfig.lr_decay="cosine": epoch e trains at lr (1 + cos(pi e / epochs)) / 2; a bad name is refused first."""
    (cb,) = runs.lr_callbacks("cosine", 1e-3, 4)
    assert [cb.schedule(e, None) for e in range(4)] == pytest.approx([1e-3, 1e-3 * (1 + np.cos(np.pi / 4)) / 2, 5e-4,
                                                                      1e-3 * (1 + np.cos(3 * np.pi / 4)) / 2])
    assert runs.lr_callbacks("none", 1e-3, 4) == []
    (restart,) = runs.lr_callbacks("cosine_restart", 1e-3, 6, restart_epoch=2)
    assert [restart.schedule(e, None) for e in range(6)] == pytest.approx(
        [1e-3, 1e-3 * (1 + np.cos(np.pi / 6)) / 2, 1e-3] + [1e-3 * (1 + np.cos(np.pi * k / 4)) / 2 for k in (1, 2, 3)])
    for bad in (None, 0, -1, 2.0, True):
        with pytest.raises(ValueError, match="restart_epoch"):
            runs.lr_callbacks("cosine_restart", 1e-3, 6, restart_epoch=bad)
    # a restart at or past the last epoch (a run too short for epochs after its deadline) is plain cosine
    (late,) = runs.lr_callbacks("cosine_restart", 1e-3, 4, restart_epoch=4)
    assert [late.schedule(e, None) for e in range(4)] == pytest.approx([cb.schedule(e, None) for e in range(4)])
    for deadline in (float("nan"), float("inf"), 0.0, "half", None):
        with pytest.raises(ValueError, match="target_deadline"):
            runs.restart_epoch("cosine_restart", deadline, 10)
    with pytest.raises(ValueError, match="lr_decay"):
        runs.restart_epoch("step", 0.5, 10)
    for other in ("none", "cosine"):
        with pytest.raises(ValueError, match="restart_epoch"):
            runs.lr_callbacks(other, 1e-3, 6, restart_epoch=2)
    # a run restarts at its target deadline's epoch (fit's rule for a fraction of the epochs)
    assert runs.restart_epoch("cosine_restart", 0.5, 200) == 100 and runs.restart_epoch("cosine_restart", 0.55, 100) == 55
    assert runs.restart_epoch("cosine", 0.5, 200) is None

    seen = []

    class Watch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    (x, y), _ = mnist
    tf_dynhp.fit(tf_dynhp.runs.build_mlp((8,)), x[:200], y[:200], method="hp", epochs=3, batch_size=50, verbose=0,
                 callbacks=runs.lr_callbacks("cosine", 1e-3, 3) + [Watch()])
    assert seen == pytest.approx([1e-3, 7.5e-4, 2.5e-4], rel=1e-5)
    opt = runs.optimizer(runs.RunConfig(ema_momentum=0.99, learning_rate=2e-3))
    assert opt.use_ema and opt.ema_momentum == 0.99 and float(opt.learning_rate) == pytest.approx(2e-3)
    assert runs.optimizer(runs.RunConfig()) == "adam"


def test_decoupled_weight_decay_shrinks_every_variable():
    """RunConfig.decoupled_weight_decay: AdamW, whose decay (lr * weight_decay * w per step)
    reaches the kernel, the bias and the gates' log_alpha (toward 0: toward open); with the
    moving average too."""
    layer = tf_dynhp.L0Dense(3, dataset_size=10)
    layer.build((None, 4))
    opt = runs.optimizer(runs.RunConfig(decoupled_weight_decay=0.1, learning_rate=0.5, ema_momentum=0.9))
    assert isinstance(opt, keras.optimizers.AdamW) and opt.use_ema
    variables = [layer.kernel, layer.bias, layer.log_alpha]
    layer.bias.assign(np.ones(3, "float32"))
    before = [np.array(v) for v in variables]
    opt.apply([keras.ops.zeros_like(v) for v in variables], variables)  # zero gradients: only the decay moves weights
    kernel, bias, log_alpha = (np.array(v) for v in variables)
    np.testing.assert_allclose(kernel, before[0] * (1 - 0.5 * 0.1), rtol=1e-6)
    np.testing.assert_allclose(bias, before[1] * (1 - 0.5 * 0.1), rtol=1e-6)
    np.testing.assert_allclose(log_alpha, before[2] * (1 - 0.5 * 0.1), rtol=1e-6)
    with pytest.raises(ValueError, match="lr_decay.*'none', 'cosine'.*'step'"):
        runs.run(runs.RunConfig(lr_decay="step"), None, data=((None, None), (None, None)), verbose=0)
    with pytest.raises(ValueError, match="target_deadline.*nan"):
        runs.run(runs.RunConfig(lr_decay="cosine_restart", epochs=10, target_deadline=float("nan")), None,
                 data=((None, None), (None, None)), verbose=0)


def test_weight_decay_per_weight_reaches_fit_times_the_examples_fit_trains_on(mnist, monkeypatch):
    """RunConfig.weight_decay_per_weight is per weight in the mean loss; L0Dense divides its
    penalty by the training examples, so fit gets it times those left after validation_split."""
    seen = {}

    def fake_fit(model, x, y, **kwargs):
        seen.update(kwargs, n=len(x))
        raise KeyboardInterrupt  # stop before any training

    monkeypatch.setattr(tf_dynhp, "fit", fake_fit)
    data = mnist[0][0][:300], mnist[0][1][:300]
    for split, n_fit in ((0.0, 300), (0.2, 240)):
        with pytest.raises(KeyboardInterrupt):
            runs.run(runs.RunConfig(method="hp", hidden=(8,), weight_decay_per_weight=5e-4, validation_split=split),
                     None, data=(data, mnist[1]), verbose=0)
        assert seen["n"] == 300 and seen["weight_decay"] == pytest.approx(5e-4 * n_fit)


def test_target_deadline_dropout_augment_and_smoothing_reach_fit_and_the_model(mnist, monkeypatch):
    """RunConfig.target_deadline is fit's; RunConfig.dropout puts Dropout layers in the model fit gets;
    augment_shift / augment_flip become fit's `augment`; label_smoothing its `loss`."""
    seen = {}

    def fake_fit(model, x, y, **kwargs):
        seen.update(kwargs, layers=[type(layer).__name__ for layer in model.layers])
        raise KeyboardInterrupt  # stop before any training

    monkeypatch.setattr(tf_dynhp, "fit", fake_fit)
    data = mnist[0][0][:300], mnist[0][1][:300]
    with pytest.raises(KeyboardInterrupt):
        runs.run(runs.RunConfig(method="dynhp", hidden=(8, 6), target_kb=5.0, target_deadline=0.5, dropout=0.2,
                                augment_shift=2, augment_flip=True, label_smoothing=0.1, lambda_step=0.2), None,
                 data=(data, mnist[1]), verbose=0)
    assert seen["target_deadline"] == 0.5 and seen["layers"].count("Dropout") == 2 and seen["lambda_step"] == 0.2
    assert seen["augment"] == tf_dynhp.augment.RandomShift(2, flip=True)
    assert isinstance(seen["loss"], tf_dynhp.losses.SparseCategoricalCrossentropy) and seen["loss"].label_smoothing == 0.1
    with pytest.raises(KeyboardInterrupt):
        runs.run(runs.RunConfig(method="dynhp", hidden=(8,)), None, data=(data, mnist[1]), verbose=0)
    assert seen["target_deadline"] == 0.25 and "Dropout" not in seen["layers"] and seen["lambda_step"] == 0.05  # fit's defaults
    assert seen["augment"] is None and seen["loss"] is None
    with pytest.raises(ValueError, match="augment_shift"):
        runs.augmentation(runs.RunConfig(augment_shift=-1))
    for bad in (1.5, float("nan"), "half"):
        with pytest.raises(ValueError, match="augment_fraction"):
            runs.augmentation(runs.RunConfig(augment_shift=1, augment_fraction=bad))
    with pytest.raises(ValueError, match="augment_fraction.*without augment_shift or augment_flip"):
        runs.augmentation(runs.RunConfig(augment_fraction=0.5))
    # augment_erase: erasing alone, or after the shift; anything but a probability refused by name
    assert runs.augmentation(runs.RunConfig(augment_erase=0.25)) == tf_dynhp.augment.RandomErasing(0.25)
    assert runs.augmentation(runs.RunConfig(augment_shift=1, augment_fraction=0.5, augment_erase=0.5)) == tf_dynhp.augment.Augmentations(
        (tf_dynhp.augment.RandomShift(1, fraction=0.5), tf_dynhp.augment.RandomErasing(0.5)))
    for bad in (1.5, -0.1, float("nan"), True, "half"):
        with pytest.raises(ValueError, match="augment_erase"):
            runs.augmentation(runs.RunConfig(augment_shift=1, augment_erase=bad))
    # lr_decay="cosine_restart" restarts at the target deadline's epoch; augment_fraction reaches RandomShift
    with pytest.raises(KeyboardInterrupt):
        runs.run(runs.RunConfig(method="dynhp", hidden=(8,), epochs=10, target_kb=5.0, target_deadline=0.4,
                                lr_decay="cosine_restart", augment_shift=1, augment_fraction=0.5), None,
                 data=(data, mnist[1]), verbose=0)
    (schedule,) = [cb for cb in seen["callbacks"] if isinstance(cb, keras.callbacks.LearningRateScheduler)]
    assert [schedule.schedule(e, None) for e in (3, 4)] == pytest.approx([1e-3 * (1 + np.cos(0.3 * np.pi)) / 2, 1e-3])
    assert seen["augment"] == tf_dynhp.augment.RandomShift(1, fraction=0.5)


# ------------------------------------------------------------------ one run per folder
ROOT = Path(__file__).resolve().parents[1]


def _tiny(**kw):
    return runs.RunConfig(**{**dict(method="sp", epochs=1, batch_size=50, train_limit=200, test_limit=100, hidden=(8,),
                                    seed=1, gate_kernel="tf"), **kw})


def _files(folder):
    return {name: (folder / name).read_bytes() for name in runs.RUN_FILES if (folder / name).exists()}


def test_folder_in_use_is_refused_at_once(mnist, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    with runs._locked(str(folder)):  # another run holds it
        t0 = time.perf_counter()
        with pytest.raises(runs.RunFolderError, match=f"Run folder {folder} is in use"):
            runs.run(_tiny(), folder, data=mnist, verbose=0)
        assert time.perf_counter() - t0 < 1.0
    assert list(folder.iterdir()) == []  # nothing written by the refused run
    runs.run(_tiny(), folder, data=mnist, verbose=0)  # the lock went with its holder
    assert runs.is_finished(folder)


def test_train_py_into_a_folder_in_use_fails_with_one_line(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    cmd = [sys.executable, str(ROOT / "tools" / "train.py"), "--method=sp", "--epochs=1", "--train_limit=100",
           "--hidden=8", "--gate_kernel=tf", f"--out_dir={folder}"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with runs._locked(str(folder)):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    assert f"Run folder {folder} is in use" in done.stderr.strip().splitlines()[-1], done.stderr
    assert not (folder / "config.json").exists()


def test_finished_folder_is_not_mixed_with_a_new_run(mnist, tmp_path):
    """Re-running into a finished folder left the new config.json beside the old metrics.json."""
    folder = tmp_path / "run"
    first = runs.run(_tiny(), folder, data=mnist, verbose=0)
    before = _files(folder)
    assert set(before) == set(runs.RUN_FILES)
    with pytest.raises(runs.RunFolderError, match=r"already holds a run \(config.json, history.jsonl, metrics.json, model.keras, gated_model.keras, checkpoints/epoch-00001.dynhp\).*--resume.*--overwrite"):
        runs.run(_tiny(seed=2), folder, data=mnist, verbose=0)
    assert _files(folder) == before  # untouched
    with pytest.raises(runs.RunFolderError, match=r"another configuration \(l0_lambda=0.01 there, 0.5 now, seed=1 there, 2 now\)"):
        runs.run(_tiny(seed=2, l0_lambda=0.5), folder, data=mnist, verbose=0, resume=True)
    assert _files(folder) == before
    with pytest.raises(ValueError, match="pass one of them"):
        runs.run(_tiny(), folder, data=mnist, verbose=0, resume=True, overwrite=True)
    # An overwrite that fit refuses, or whose data cannot be read, costs the earlier run nothing
    # (its files were deleted first, and a stray config.json made the folder look unfinished).
    with pytest.raises(ValueError, match="target_kb"):
        runs.run(_tiny(seed=2, method="sp", target_kb=1.0), folder, data=mnist, verbose=0, overwrite=True)
    assert _files(folder) == before
    with pytest.raises(FileNotFoundError):
        runs.run(_tiny(seed=2), folder, data_dir=str(tmp_path / "no_data"), verbose=0, overwrite=True)
    assert _files(folder) == before
    # Explicitly cleared: the folder holds only the new run.
    runs.run(_tiny(seed=2), folder, data=mnist, verbose=0, overwrite=True)
    assert json.loads((folder / "config.json").read_text())["seed"] == 2
    assert [p.name for p in tf_dynhp.checkpoint.list_checkpoints(folder / "checkpoints")] == ["epoch-00001.dynhp"]
    assert runs.is_finished(folder) and first is not None


def test_resume_same_config_and_extension(mnist, tmp_path):
    folder = tmp_path / "run"
    runs.run(_tiny(), folder, data=mnist, verbose=0)
    before = _files(folder)
    with pytest.raises(runs.RunFolderError, match=r"with epochs=0: its run has trained 1 epochs"):  # a resume cannot shorten a run
        runs.run(_tiny(epochs=0), folder, data=mnist, verbose=0, resume=True)
    assert _files(folder) == before
    again = runs.run(_tiny(), folder, data=mnist, verbose=0, resume=True)  # the same run: nothing to train
    assert again["epochs_run"] == 1
    seen = {}

    real_fit = tf_dynhp.fit

    class Look(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen["finished"] = runs.is_finished(folder)
            seen["config_epochs"] = json.loads((folder / "config.json").read_text())["epochs"]

    def fit(*args, **kwargs):  # while the extension trains, the folder is unfinished
        return real_fit(*args, **{**kwargs, "callbacks": [*kwargs["callbacks"], Look()]})

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tf_dynhp, "fit", fit)
        longer = runs.run(_tiny(epochs=2), folder, data=mnist, verbose=0, resume=True)
    assert seen == {"finished": False, "config_epochs": 2}
    assert longer["epochs_run"] == 2 and len(runs.read_history(folder)["loss"]) == 2
    assert json.loads((folder / "metrics.json").read_text())["epochs_run"] == 2


def test_a_resume_fit_refuses_leaves_the_folder_as_it_was(mnist, tmp_path):
    """All checkpoints damaged: fit refuses the extension. The finished run's metrics.json
    and config.json stay (they were removed and rewritten for the run that never trained)."""
    folder = tmp_path / "run"
    runs.run(_tiny(), folder, data=mnist, verbose=0)
    for path in (folder / "checkpoints").glob("*.dynhp"):
        path.write_bytes(path.read_bytes()[:1000])
    before = {name: (folder / name).read_bytes() for name in ("config.json", "metrics.json")}
    with pytest.raises(runs.RunArgumentError, match="damaged"):
        runs.run(_tiny(epochs=2), folder, data=mnist, verbose=0, resume=True)
    assert {name: (folder / name).read_bytes() for name in before} == before


def test_a_resume_of_a_finished_run_keeps_its_recorded_time(mnist, tmp_path):
    """Each resume of a finished run replaced its metrics' train_seconds (the whole run's
    wall time) by the epochs' times plus its own loading time."""
    folder = tmp_path / "run"
    runs.run(_tiny(), folder, data=mnist, verbose=0)
    metrics = json.loads((folder / "metrics.json").read_text())
    (folder / "metrics.json").write_text(json.dumps({**metrics, "train_seconds": 123.5}))
    again = runs.run(_tiny(), folder, data=mnist, verbose=0, resume=True)
    assert again["train_seconds"] == 123.5
    assert json.loads((folder / "metrics.json").read_text())["train_seconds"] == 123.5


def test_a_damaged_metrics_file_is_not_finished_and_a_resume_writes_it_again(mnist, tmp_path):
    """A metrics.json cut short (a full disk) made the folder count as finished: a sweep
    skipped it and the reports could not read it. It is now unfinished (run_status says
    why), and the resume writes the same metrics without training another epoch."""
    from tf_dynhp.cli import run_folders

    folder = tmp_path / "run"
    first = runs.run(_tiny(), folder, data=mnist, verbose=0)
    history = (folder / "history.jsonl").read_text()
    sound = json.loads((folder / "metrics.json").read_text())
    for damage in ('{"test_err', "[1, 2]", "", json.dumps({**sound, "test_error": "12.3"}), json.dumps({**sound, "batch_sizes": 16})):
        (folder / "metrics.json").write_text(damage)
        assert not runs.is_finished(folder)
        assert run_folders.run_status(folder, 1) == "unfinished, epoch 1 of 1; metrics.json damaged"
    again = runs.run(_tiny(), folder, data=mnist, verbose=0, resume=True)
    assert runs.is_finished(folder) and again["test_error"] == first["test_error"] and again["epochs_run"] == 1
    recorded = runs.read_history(folder)  # the resume's time is the epoch it did not train (it said ~0 s), and
    # only that: the call trained nothing, so its own seconds (loading, scoring) are not training time
    assert again["train_seconds"] == pytest.approx(sum(v for key in tf_dynhp.training.TIMING_KEYS for v in recorded[key]))
    assert again["train_seconds"] > 0
    assert json.loads((folder / "metrics.json").read_text())["test_error"] == first["test_error"]
    assert (folder / "history.jsonl").read_text() == history
    assert run_folders.run_status(folder, 1) == "finished"


def test_config_json_records_the_alpha_bs_fit_used(mnist, tmp_path):
    """A dynhp run without alpha_bs trains with fit's default and config.json said null;
    it now says the value. A folder written with null still resumes (null meant that value)."""
    folder = tmp_path / "run"
    runs.run(_tiny(method="dynhp"), folder, data=mnist, verbose=0)
    config = json.loads((folder / "config.json").read_text())
    assert config["alpha_bs"] == tf_dynhp.training.DEFAULT_ALPHA_BS
    config["alpha_bs"] = None
    (folder / "config.json").write_text(json.dumps(config))
    assert runs.run(_tiny(method="dynhp", epochs=2), folder, data=mnist, verbose=0, resume=True)["epochs_run"] == 2
    assert json.loads((folder / "config.json").read_text())["alpha_bs"] == tf_dynhp.training.DEFAULT_ALPHA_BS
    runs.run(_tiny(method="sp"), tmp_path / "sp", data=mnist, verbose=0)
    assert json.loads((tmp_path / "sp" / "config.json").read_text())["alpha_bs"] is None  # sp has no Eq. 8


def test_unfinished_folder_resumes(mnist, tmp_path):
    """A folder with only config.json and checkpoints (a killed run) is resumed, not refused."""
    folder = tmp_path / "run"
    runs.run(_tiny(epochs=1), folder, data=mnist, verbose=0)
    for name in ("metrics.json", "history.jsonl", "model.keras", "gated_model.keras"):
        (folder / name).unlink()
    config = json.loads((folder / "config.json").read_text())
    config["epochs"] = 2
    (folder / "config.json").write_text(json.dumps(config))
    metrics = runs.run(_tiny(epochs=2), folder, data=mnist, verbose=0, resume=True)
    assert metrics["epochs_run"] == 2


def test_layer_sizes_are_the_returned_models(mnist, tmp_path, monkeypatch):
    # metrics.json took the last epoch's `active_units`, which still counts units whose
    # gates closed after pruning stopped at a target and that `strip` drops: the report's
    # units column disagreed with model.keras (and with model_kb).
    real_fit = tf_dynhp.fit

    def fit_whose_history_counts_more(*args, **kwargs):
        result = real_fit(*args, **kwargs)
        result.history["active_units"][-1] = [u + 3 for u in result.history["active_units"][-1]]
        return result

    monkeypatch.setattr(tf_dynhp, "fit", fit_whose_history_counts_more)
    data = mnist[0][0][:300], mnist[0][1][:300]
    runs.run(runs.RunConfig(method="hp", hidden=(8,), epochs=1), str(tmp_path / "run"), data=(data, (mnist[1][0][:100], mnist[1][1][:100])),
             verbose=0)
    sizes = json.loads((tmp_path / "run" / "metrics.json").read_text())["layer_sizes"]
    model = keras.models.load_model(tmp_path / "run" / "model.keras")
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert sizes == [dense[0].kernel.shape[0]] + [layer.units for layer in dense[:-1]]
