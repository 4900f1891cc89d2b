"""Training that survives a power cut: atomic checksummed checkpoints, exact resume
(in process and after a real SIGKILL), refused foreign checkpoints, non-finite guards."""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

import tf_dynhp
from conftest import DATA_ROOT, make_mlp
from tf_dynhp import checkpoint as ckpt
from tf_dynhp.training import RUNTIME_KEYS

ROOT = Path(__file__).resolve().parents[1]


def _model():
    keras.utils.set_random_seed(0)
    return make_mlp(hidden=(48, 24))


FAST = dict(method="dynhp", alpha_bs=0.9, l0_lambda=0.5, gamma=0.9, droprate_init=0.2, batch_size=20, learning_rate=5e-3,
            batch_growth="step", seed=7, verbose=0)


def _budget():
    return tf_dynhp.memory.mo_kb(_model(), batch_size=60)


def test_write_read_roundtrip_and_keep_two(tmp_path):
    for epoch in range(1, 5):
        ckpt.write_checkpoint(tmp_path, epoch, {"a": np.arange(epoch)}, {"epoch": epoch})
    files = ckpt.list_checkpoints(tmp_path)
    assert [f.name for f in files] == ["epoch-00003.dynhp", "epoch-00004.dynhp"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    arrays, meta = ckpt.read_checkpoint(files[-1])
    np.testing.assert_array_equal(arrays["a"], np.arange(4))
    assert meta == {"epoch": 4}


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupted_checkpoint_is_skipped_with_a_warning(tmp_path, damage):
    ckpt.write_checkpoint(tmp_path, 1, {"a": np.zeros(10)}, {"epoch": 1})
    newest = ckpt.write_checkpoint(tmp_path, 2, {"a": np.ones(10)}, {"epoch": 2})
    data = newest.read_bytes()
    if damage == "truncate":
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        newest.write_bytes(data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:])
    else:
        newest.write_bytes(b"not a checkpoint")
    with pytest.warns(RuntimeWarning, match="epoch-00002.dynhp"):
        path, arrays, meta = ckpt.latest_checkpoint(tmp_path)
    assert path.name == "epoch-00001.dynhp" and meta["epoch"] == 1
    with pytest.raises(ckpt.CheckpointError, match="epoch-00002"):
        ckpt.read_checkpoint(newest)


def _damage(path, how="truncate"):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncate" else b"not a checkpoint")


def test_all_checkpoints_damaged_is_an_error_naming_them(tmp_path):
    """Not None (which made fit(resume=True) restart from epoch 0 without a word)."""
    for epoch in (1, 2):
        ckpt.write_checkpoint(tmp_path, epoch, {"a": np.zeros(10)}, {"epoch": epoch})
    _damage(tmp_path / "epoch-00001.dynhp", "garbage")
    _damage(tmp_path / "epoch-00002.dynhp")
    with pytest.raises(ckpt.CheckpointError, match=r"No valid checkpoint in .*all 2 checkpoint file\(s\) are damaged") as err:
        ckpt.latest_checkpoint(tmp_path)
    assert "epoch-00002.dynhp: checksum mismatch" in str(err.value) and "epoch-00001.dynhp: not a tf_dynhp checkpoint" in str(err.value)
    assert ckpt.latest_checkpoint(tmp_path / "empty") is None  # no checkpoints at all: a fresh start


def test_fit_resume_with_only_damaged_checkpoints_refuses(tmp_path, mnist_small):
    (x, y), _ = mnist_small
    ckpt.write_checkpoint(tmp_path, 3, {"a": np.zeros(10)}, {"epoch": 3})
    _damage(tmp_path / "epoch-00003.dynhp")
    with pytest.raises(ckpt.CheckpointError, match="epoch-00003.dynhp: checksum mismatch"):
        tf_dynhp.fit(_model(), x[:200], y[:200], epochs=4, checkpoint_dir=tmp_path, resume=True, budget_kb=_budget(), **FAST)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("epoch")] == ["epoch-00003.dynhp"]  # left as it was


def test_keep_counts_only_valid_checkpoints(tmp_path):
    """Damaged checkpoints of epochs 7 and 8 must not make the cleanup delete each new one."""
    for epoch in (7, 8):
        ckpt.write_checkpoint(tmp_path, epoch, {"a": np.zeros(3)}, {"epoch": epoch})
    for epoch in (7, 8):
        _damage(tmp_path / f"epoch-{epoch:05d}.dynhp")
    with pytest.warns(RuntimeWarning) as record:
        ckpt.write_checkpoint(tmp_path, 1, {"a": np.ones(3)}, {"epoch": 1})
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 2 and "epoch-00007.dynhp is damaged (checksum mismatch" in messages[0], messages
    assert "moved aside to epoch-00008.dynhp.damaged, not counted, not deleted" in messages[1], messages
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["epoch-00001.dynhp"]  # kept
    for epoch in (2, 3):
        ckpt.write_checkpoint(tmp_path, epoch, {"a": np.ones(3)}, {"epoch": epoch})
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["epoch-00002.dynhp", "epoch-00003.dynhp"]
    assert sorted(p.name for p in tmp_path.glob("*.damaged*")) == ["epoch-00007.dynhp.damaged", "epoch-00008.dynhp.damaged"]
    assert ckpt.latest_checkpoint(tmp_path)[2] == {"epoch": 3}
    # A second damaged file of the same epoch does not overwrite the first one moved aside.
    ckpt.write_checkpoint(tmp_path, 7, {"a": np.ones(3)}, {"epoch": 7})
    _damage(tmp_path / "epoch-00007.dynhp")
    with pytest.warns(RuntimeWarning, match="moved aside to epoch-00007.dynhp.damaged.1"):
        ckpt.write_checkpoint(tmp_path, 4, {"a": np.ones(3)}, {"epoch": 4})
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["epoch-00003.dynhp", "epoch-00004.dynhp"]


def test_a_damaged_file_under_the_name_being_written_is_moved_aside_not_replaced(tmp_path):
    # A resume skips a damaged newest checkpoint, then writes that epoch again: the
    # damaged file was replaced in silence, although damaged files are never deleted.
    for epoch in (3, 4):
        ckpt.write_checkpoint(tmp_path, epoch, {"a": np.zeros(3)}, {"epoch": epoch})
    _damage(tmp_path / "epoch-00004.dynhp")
    with pytest.warns(RuntimeWarning, match=r"epoch-00004.dynhp is damaged .*moved aside to epoch-00004.dynhp.damaged"):
        ckpt.write_checkpoint(tmp_path, 4, {"a": np.ones(3)}, {"epoch": 4})
    assert (tmp_path / "epoch-00004.dynhp.damaged").exists()
    assert ckpt.latest_checkpoint(tmp_path)[2] == {"epoch": 4}


def test_temporary_files_of_an_interrupted_write_are_removed_by_the_next_write(tmp_path):
    stale = tmp_path / ".epoch-00002.dynhp.k3j9x1.tmp"  # what a kill during write_atomic leaves
    stale.write_bytes(b"half a checkpoint")
    ckpt.write_checkpoint(tmp_path, 2, {"a": np.zeros(3)}, {"epoch": 2})
    assert not stale.exists() and [p.name for p in tmp_path.iterdir()] == ["epoch-00002.dynhp"]


def test_a_second_fit_on_a_checkpoint_dir_in_use_is_refused_and_removes_nothing(tmp_path, mnist_small):
    # Two fits on one folder removed each other's checkpoints (a new run clears the
    # folder) and interleaved their files; the second now stops at once.
    (x, y), _ = mnist_small
    kw = dict(FAST, budget_kb=_budget())
    tf_dynhp.fit(_model(), x[:200], y[:200], epochs=1, checkpoint_dir=tmp_path, **kw)
    with ckpt.folder_lock(tmp_path, "held by the test"):  # as another process's fit holds it
        with pytest.raises(ckpt.FolderInUseError, match=f"checkpoint_dir {tmp_path} is in use: another fit"):
            tf_dynhp.fit(_model(), x[:200], y[:200], epochs=1, checkpoint_dir=tmp_path, **kw)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["epoch-00001.dynhp"]
    tf_dynhp.fit(_model(), x[:200], y[:200], epochs=2, checkpoint_dir=tmp_path, resume=True, **kw)  # released


def test_full_disk_names_the_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch):
    import errno

    ckpt.write_checkpoint(tmp_path, 1, {"a": np.zeros(3)}, {"epoch": 1})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=r"cannot write .*epoch-00002.dynhp: No space left on device") as err:
        ckpt.write_checkpoint(tmp_path, 2, {"a": np.ones(3)}, {"epoch": 2})
    assert err.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-00001.dynhp"]  # old one kept, no temp file
    assert ckpt.latest_checkpoint(tmp_path)[2] == {"epoch": 1}


def test_keep_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="Received: keep=0"):
        ckpt.write_checkpoint(tmp_path, 1, {}, {}, keep=0)


def test_unwritable_checkpoint_dir_fails_at_start(tmp_path, mnist_small):
    (x, y), _ = mnist_small
    blocker = tmp_path / "file"
    blocker.write_text("x")
    t0 = time.perf_counter()
    with pytest.raises(OSError, match="not writable"):
        tf_dynhp.fit(_model(), x, y, epochs=50, checkpoint_dir=blocker / "ckpt", budget_kb=_budget(), **FAST)
    assert time.perf_counter() - t0 < 30  # refused before training 50 epochs


def _strip(history):
    return {k: v for k, v in history.items() if k not in RUNTIME_KEYS}


def test_resume_in_process_equals_uninterrupted(tmp_path, mnist_small):
    (x, y), _ = mnist_small
    full = tf_dynhp.fit(_model(), x, y, epochs=4, budget_kb=_budget(), **FAST)
    part = tf_dynhp.fit(_model(), x, y, epochs=2, checkpoint_dir=tmp_path, budget_kb=_budget(), **FAST)
    assert sum(sum(p) for p in part.history["pruned_units"]) > 0  # a prune happened before the stop
    resumed = tf_dynhp.fit(_model(), x, y, epochs=4, checkpoint_dir=tmp_path, resume=True, budget_kb=_budget(), **FAST)
    assert _strip(resumed.history) == _strip(full.history)
    for a, b in zip(full.gated_model.weights, resumed.gated_model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_checkpoint_renamed_to_another_epoch_is_skipped_not_taken_as_newest(tmp_path, mnist_small):
    """A file whose name says another epoch than it holds (copied by hand to a higher
    number) used to be taken as the newest; it is now skipped with a warning, and moved
    aside by the next write, and the resume equals the uninterrupted run."""
    (x, y), _ = mnist_small
    full = tf_dynhp.fit(_model(), x, y, epochs=3, budget_kb=_budget(), **FAST)
    tf_dynhp.fit(_model(), x, y, epochs=2, checkpoint_dir=tmp_path, budget_kb=_budget(), **FAST)
    shutil.copy(tmp_path / "epoch-00001.dynhp", tmp_path / "epoch-00009.dynhp")
    with pytest.raises(ckpt.CheckpointError, match="says epoch 9 but it holds epoch 1"):
        ckpt.read_checkpoint(tmp_path / "epoch-00009.dynhp")
    with pytest.warns(RuntimeWarning, match="epoch-00009.dynhp.*says epoch 9 but it holds epoch 1") as seen:
        resumed = tf_dynhp.fit(_model(), x, y, epochs=3, checkpoint_dir=tmp_path, resume=True, budget_kb=_budget(), **FAST)
    assert any("moved aside" in str(w.message) for w in seen)
    assert _strip(resumed.history) == _strip(full.history)
    assert (tmp_path / "epoch-00009.dynhp.damaged").exists()


@pytest.mark.parametrize("change,match", [({"gamma": 0.8}, "gamma"), ({"l0_lambda": 0.1}, "l0_lambda"), ("model", "model"), ("data", "data")])
def test_foreign_checkpoint_is_refused(tmp_path, mnist_small, change, match):
    (x, y), _ = mnist_small
    tf_dynhp.fit(_model(), x[:500], y[:500], epochs=1, checkpoint_dir=tmp_path, budget_kb=_budget(), **FAST)
    kw = dict(FAST, budget_kb=_budget())
    model, xs, ys = _model(), x[:500], y[:500]
    if isinstance(change, dict):
        kw.update(change)
    elif change == "model":
        keras.utils.set_random_seed(0)
        model = make_mlp(hidden=(48, 20))
        kw["budget_kb"] = _budget()
    else:
        xs, ys = x[500:1000], y[500:1000]
    with pytest.raises(ValueError, match=f"Checkpoint .*epoch-00001.dynhp was made with {match}"):
        tf_dynhp.fit(model, xs, ys, epochs=2, checkpoint_dir=tmp_path, resume=True, **kw)


def test_a_resume_with_other_validation_data_is_refused_and_an_old_checkpoint_without_them_resumes(tmp_path, mnist_small):
    """Other validation data (or none) were accepted: the history mixed two sets' val_error."""
    (x, y), (xt, yt) = mnist_small
    kw = dict(FAST, budget_kb=_budget())
    tf_dynhp.fit(_model(), x[:300], y[:300], epochs=1, checkpoint_dir=tmp_path, validation_data=(xt[:50], yt[:50]), **kw)
    for other in ((xt[50:53], yt[50:53]), None):
        with pytest.raises(ValueError, match=r"made with validation='50 examples, sha256 \w+'; this run has validation="
                                             r"'(3 examples, sha256 \w+|none)'\. The validation data differ"):
            tf_dynhp.fit(_model(), x[:300], y[:300], epochs=2, checkpoint_dir=tmp_path, resume=True, validation_data=other, **kw)
    # A checkpoint written before the key existed resumes as before.
    path = tmp_path / "epoch-00001.dynhp"
    arrays, meta = ckpt.read_checkpoint(path)
    del meta["settings"]["validation"]
    ckpt.write_checkpoint(tmp_path, 1, arrays, meta)
    resumed = tf_dynhp.fit(_model(), x[:300], y[:300], epochs=2, checkpoint_dir=tmp_path, resume=True,
                           validation_data=(xt[50:53], yt[50:53]), **kw)
    assert len(resumed.history["val_error"]) == 2


def test_refusal_names_every_differing_setting_and_the_optimizer_field(tmp_path, mnist_small):
    (x, y), _ = mnist_small
    kw = dict(FAST, budget_kb=_budget())
    tf_dynhp.fit(_model(), x[:200], y[:200], epochs=1, checkpoint_dir=tmp_path, **kw)
    with pytest.raises(ValueError, match=r"made with method='dynhp'; this run has method='hp'\. Also different: .*alpha_bs"):
        tf_dynhp.fit(_model(), x[:200], y[:200], epochs=2, checkpoint_dir=tmp_path, resume=True,
                     **{**kw, "method": "hp", "alpha_bs": None})
    with pytest.raises(ValueError, match=r"made with optimizer\.learning_rate=0\.00499\d*; this run has optimizer\.learning_rate=0\.00100\d*\. Resume"):
        tf_dynhp.fit(_model(), x[:200], y[:200], epochs=2, checkpoint_dir=tmp_path, resume=True, **{**kw, "learning_rate": 1e-3})


def test_an_unseeded_run_resumes_with_the_seed_it_drew(tmp_path, mnist_small):
    (x, y), _ = mnist_small
    kw = dict(FAST, budget_kb=_budget(), seed=None)
    first = tf_dynhp.fit(_model(), x[:200], y[:200], epochs=1, checkpoint_dir=tmp_path, **kw)
    resumed = tf_dynhp.fit(_model(), x[:200], y[:200], epochs=2, checkpoint_dir=tmp_path, resume=True, **kw)
    assert resumed.state.epoch == 2 and resumed.state.seed == first.state.seed
    assert resumed.history["loss"][0] == first.history["loss"][0]  # the first epoch is the checkpoint's
    with pytest.warns(RuntimeWarning, match=r"past epochs=1: nothing to train"):
        again = tf_dynhp.fit(_model(), x[:200], y[:200], epochs=1, checkpoint_dir=tmp_path, resume=True, **kw)
    assert again.state.epoch == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a finished run resumed with its own epochs: nothing to say
        tf_dynhp.fit(_model(), x[:200], y[:200], epochs=2, checkpoint_dir=tmp_path, resume=True, **kw)


def test_a_seeded_run_resumed_without_its_seed_is_seeded_as_with_it(tmp_path, mnist_small):
    # fit(seed=7) seeds Keras (Python, NumPy, TF) and op determinism; a resume that
    # adopts the checkpoint's seed must do the same, or its run differs from one resumed
    # with seed=7: the global NumPy state after the call tells them apart.
    (x, y), _ = mnist_small
    kw = dict(FAST, budget_kb=_budget())
    tf_dynhp.fit(_model(), x[:200], y[:200], epochs=1, checkpoint_dir=tmp_path / "run", **kw)
    draws, losses = [], []
    for seed in (7, None):
        folder = tmp_path / f"resume-{seed}"
        shutil.copytree(tmp_path / "run", folder)
        model = _model()
        np.random.seed(999)
        resumed = tf_dynhp.fit(model, x[:200], y[:200], epochs=2, checkpoint_dir=folder, resume=True, **{**kw, "seed": seed})
        draws.append(np.random.random())
        losses.append(resumed.history["loss"])
    assert losses[0] == losses[1] and draws[0] == draws[1]


def test_a_resume_with_stateful_keras_callbacks_says_they_start_afresh(tmp_path, mnist_small):
    (x, y), _ = mnist_small
    kw = dict(FAST, budget_kb=_budget())
    tf_dynhp.fit(_model(), x[:200], y[:200], epochs=1, checkpoint_dir=tmp_path, **kw)
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="loss", patience=1)
    with pytest.warns(RuntimeWarning, match=r"Resuming after epoch 1 with ReduceLROnPlateau: their own state .* start afresh"):
        tf_dynhp.fit(_model(), x[:200], y[:200], epochs=2, checkpoint_dir=tmp_path, resume=True, callbacks=[plateau], **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a finished run resumed: nothing trains, nothing to say
        tf_dynhp.fit(_model(), x[:200], y[:200], epochs=2, checkpoint_dir=tmp_path, resume=True, callbacks=[plateau], **kw)


def test_a_resume_on_a_shuffling_dataset_is_refused_with_the_cause(tmp_path, mnist_small):
    # A `.shuffle()`d pipeline reads in another order each time: the data's fingerprint
    # differs and the resume is refused; the refusal says why and what to do.
    import tensorflow as tf

    (x, y), _ = mnist_small
    ds = tf.data.Dataset.from_tensor_slices((x[:200], y[:200])).shuffle(200).batch(32)
    kw = dict(FAST, budget_kb=_budget())
    tf_dynhp.fit(_model(), ds, epochs=1, checkpoint_dir=tmp_path, **kw)
    with pytest.raises(ValueError, match=r"made with data=.*`x` is a tf.data.Dataset: one with `.shuffle\(\)` .*drop the `.shuffle\(\)`"):
        tf_dynhp.fit(_model(), ds, epochs=2, checkpoint_dir=tmp_path, resume=True, **kw)


def test_resume_needs_checkpoint_dir(mnist_small):
    (x, y), _ = mnist_small
    with pytest.raises(ValueError, match="checkpoint_dir"):
        tf_dynhp.fit(_model(), x, y, epochs=1, resume=True, budget_kb=_budget(), **FAST)


def test_absurd_lambda_cannot_prune_everything(mnist_small):
    (x, y), _ = mnist_small
    result = tf_dynhp.fit(_model(), x, y, epochs=3, budget_kb=_budget(), **{**FAST, "l0_lambda": 1e4})
    sizes = result.history["active_units"][-1]
    assert all(s >= 1 for s in sizes)
    assert any(result.history["at_floor"][-1])
    dense = [l for l in result.model.layers if isinstance(l, keras.layers.Dense)]
    assert dense[-1].units == 10  # output units are never pruned
    assert result.model.predict(x[:5], verbose=0).shape == (5, 10)


class Corrupt(keras.callbacks.Callback):
    """Writes NaN into the first kernel (a hardware fault) at the end of the given epochs,
    or with `at_start` at their start; once per epoch, so a retry of it runs clean."""

    def __init__(self, epochs, at_start=False):
        super().__init__()
        self.at, self.at_start = set(epochs), at_start

    def _corrupt(self, epoch):
        if epoch in self.at:
            self.at.discard(epoch)
            kernel = self.model.dense_layers[0].kernel
            kernel.assign(np.full(kernel.shape, np.nan, "float32"))

    def on_epoch_begin(self, epoch, logs=None):
        if self.at_start:
            self._corrupt(epoch)

    def on_epoch_end(self, epoch, logs=None):
        if not self.at_start:
            self._corrupt(epoch)


def test_nonfinite_raise_names_epoch_and_step_and_keeps_last_good(tmp_path, mnist_small):
    (x, y), _ = mnist_small
    with pytest.raises(tf_dynhp.NonFiniteError, match=r"epoch 2, step 1\b") as err:
        tf_dynhp.fit(_model(), x, y, epochs=4, checkpoint_dir=tmp_path, callbacks=[Corrupt([0])],
                     budget_kb=_budget(), **FAST)
    good = err.value.last_good
    assert good.state.epoch == 1 and len(good.history["loss"]) == 1
    # A worker process (multiprocessing, Ray) sends it pickled: unpickling it failed.
    copied = pickle.loads(pickle.dumps(err.value))
    assert str(copied) == str(err.value) and copied.last_good.state.epoch == 1
    for w in good.gated_model.weights:
        assert np.all(np.isfinite(w.numpy()))
    path, arrays, meta = ckpt.latest_checkpoint(tmp_path)
    assert path.name == "epoch-00001.dynhp" and all(np.all(np.isfinite(a)) for a in arrays.values() if a.dtype.kind == "f")


def test_an_update_that_overflows_with_finite_losses_and_gradients_is_not_a_good_epoch(tmp_path, mnist):
    # Adam's second moments overflow on huge (finite) inputs: the last step's update made
    # weights NaN while its loss and gradients (computed before it) were finite. fit
    # returned that NaN model, and wrote it as the checkpoint and `last_good`.
    (x, y), _ = mnist
    x = x[:300] * 1e15
    kw = dict(method="hp", batch_size=100, learning_rate=1e6, seed=1, verbose=0)
    with pytest.raises(tf_dynhp.NonFiniteError, match=r"Non-finite weights or optimizer state at the end of epoch 1 \(its 3 steps"):
        tf_dynhp.fit(make_mlp(hidden=(16,)), x, y[:300], epochs=1, checkpoint_dir=tmp_path, **kw)
    assert not list(tmp_path.glob("epoch-*.dynhp")) or ckpt.latest_checkpoint(tmp_path)[0].name == "epoch-00000.dynhp"
    with pytest.raises(tf_dynhp.NonFiniteError) as err:
        tf_dynhp.fit(make_mlp(hidden=(16,)), x, y[:300], epochs=2, **kw)
    assert all(np.all(np.isfinite(w.numpy())) for w in err.value.last_good.model.weights)


def test_nonfinite_rollback_recovers(mnist_small):
    (x, y), _ = mnist_small
    with pytest.warns(RuntimeWarning, match="rolled back to the end of epoch 1, learning rate halved to 0.0025"):
        result = tf_dynhp.fit(_model(), x, y, epochs=3, callbacks=[Corrupt([0])], on_nonfinite="rollback",
                              budget_kb=_budget(), **FAST)
    assert len(result.history["loss"]) == 3
    assert all(np.all(np.isfinite(w.numpy())) for w in result.gated_model.weights)


class StopInEpoch(keras.callbacks.Callback):
    """Sets `stop_training` in a batch hook of epoch `epoch` (0-based) on its `visit`-th run."""

    def __init__(self, epoch, visit):
        super().__init__()
        self.epoch, self.visit, self.seen, self.current = epoch, visit, 0, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch
        if epoch == self.epoch:
            self.seen += 1

    def on_train_batch_begin(self, batch, logs=None):
        if self.current == self.epoch and self.seen == self.visit:
            self.model.stop_training = True


def test_nonfinite_rollback_then_stop_in_the_retried_epoch_ends_the_run(mnist_small):
    # The rollback rebuilds the core: the callbacks must be given the new one, or the
    # stop they set in the retried epoch lands on the old core and the run goes on.
    (x, y), _ = mnist_small
    with pytest.warns(RuntimeWarning, match="rolled back to the end of epoch 1, learning rate halved"):
        result = tf_dynhp.fit(_model(), x, y, epochs=4, callbacks=[Corrupt([0]), StopInEpoch(1, visit=2)],
                              on_nonfinite="rollback", budget_kb=_budget(), **FAST)
    assert len(result.history["loss"]) == 2


def test_nonfinite_rollback_after_a_stop_in_the_failed_epoch_does_not_retry(mnist_small):
    (x, y), _ = mnist_small
    with pytest.warns(RuntimeWarning, match="a callback stopped training during the failed epoch, so it is not retried"):
        result = tf_dynhp.fit(_model(), x, y, epochs=4, callbacks=[Corrupt([0]), StopInEpoch(1, visit=1)],
                              on_nonfinite="rollback", budget_kb=_budget(), **FAST)
    assert len(result.history["loss"]) == 1 and result.state.epoch == 1
    assert all(np.all(np.isfinite(w.numpy())) for w in result.gated_model.weights)


def test_each_rollback_halves_the_rate_it_restores_and_a_resume_after_one_is_exact(tmp_path, mnist_small):
    # The try count ran over the whole run: the second failure (after good epochs)
    # restored 0.0025 and multiplied it by 0.25, and a resume (count back at 0) differed.
    (x, y), _ = mnist_small
    kw = dict(FAST, budget_kb=_budget(), on_nonfinite="rollback")
    with pytest.warns(RuntimeWarning) as record:
        whole = tf_dynhp.fit(_model(), x, y, epochs=6, callbacks=[Corrupt([2, 4], at_start=True)], **kw)
    rolled = [str(w.message) for w in record if "rolled back" in str(w.message)]
    assert len(rolled) == 2 and "halved to 0.0025 (try 1 of 3)" in rolled[0] and "halved to 0.00125 (try 1 of 3)" in rolled[1]
    with pytest.warns(RuntimeWarning, match="rolled back"):
        tf_dynhp.fit(_model(), x, y, epochs=4, callbacks=[Corrupt([2], at_start=True)], checkpoint_dir=tmp_path, **kw)
    with pytest.warns(RuntimeWarning, match="halved to 0.00125"):
        resumed = tf_dynhp.fit(_model(), x, y, epochs=6, callbacks=[Corrupt([4], at_start=True)], checkpoint_dir=tmp_path, resume=True, **kw)
    assert resumed.history["loss"] == whole.history["loss"]


class FirstBatchRates(keras.callbacks.Callback):
    """The learning rate at the first batch of every epoch run (retries included)."""

    def __init__(self):
        super().__init__()
        self.rates, self.fresh = [], False

    def on_epoch_begin(self, epoch, logs=None):
        self.fresh = True

    def on_train_batch_begin(self, batch, logs=None):
        if self.fresh:
            self.rates.append(round(float(self.model.optimizer.learning_rate.numpy()), 8))
            self.fresh = False


def test_a_retry_runs_at_half_the_rate_a_scheduler_sets(mnist_small):
    # The rate was cut before the retried epoch's on_epoch_begin, where a
    # LearningRateScheduler set it back: the retry ran at the full rate.
    (x, y), _ = mnist_small
    rates = FirstBatchRates()
    schedule = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.005)
    with pytest.warns(RuntimeWarning, match=r"rolled back to the end of epoch 1, learning rate halved to 0.0025 \(try 1 of 3\)"):
        tf_dynhp.fit(_model(), x, y, epochs=3, callbacks=[schedule, Corrupt([1], at_start=True), rates], on_nonfinite="rollback",
                     budget_kb=_budget(), **FAST)
    assert rates.rates == [0.005, 0.005, 0.0025, 0.005]  # epoch 1, epoch 2 (fails), its retry, epoch 3


def test_nonfinite_rollback_halves_lr_then_gives_up(mnist_small):
    (x, y), _ = mnist_small
    with pytest.warns(RuntimeWarning, match="rolled back") as record:
        with pytest.raises(tf_dynhp.NonFiniteError, match="after 3 rollbacks"):
            tf_dynhp.fit(_model(), x, y, epochs=5, method="sp", learning_rate=1e20, optimizer="sgd",
                         seed=1, verbose=0, on_nonfinite="rollback")
    rates = [str(w.message) for w in record if "rolled back" in str(w.message)]
    assert len(rates) == 3 and "5e+19" in rates[0] and "2.5e+19" in rates[1] and "1.25e+19" in rates[2]


def _train_cmd(out, epochs):
    return [
        sys.executable, str(ROOT / "tools" / "train.py"), "--dataset=mnist", f"--data_dir={DATA_ROOT}",
        "--method=dynhp", "--alpha_bs=0.9", "--l0_lambda=0.5", "--gamma=0.9", "--droprate_init=0.2",
        "--batch_size=10", "--batch_growth=step_mean", "--train_limit=6000", "--hidden=48,24",
        f"--epochs={epochs}", "--seed=11", "--budget_batch=40", f"--out_dir={out}",
    ]


def test_kill_and_resume_equals_uninterrupted(tmp_path):
    """SIGKILL tools/train.py in the middle of an epoch after a prune, resume, compare."""
    if not DATA_ROOT.exists():
        pytest.skip("datasets not found")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    epochs = 5
    clean = subprocess.run(_train_cmd(tmp_path / "clean", epochs), env=env, capture_output=True, text=True, timeout=600)
    assert clean.returncode == 0, clean.stderr[-2000:]
    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(killed_dir, epochs), env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    seen = []
    for line in proc.stdout:
        if line.startswith("Epoch "):
            seen.append(line)
            # After epoch 2 (pruning happens at the first boundaries): kill half-way into epoch 3.
            if len(seen) == 2:
                seconds = float(line.rsplit(" ", 1)[-1].rstrip("s\n"))
                time.sleep(seconds / 2)
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed_dir / "history.jsonl").exists()  # it really died before the end
    states = [json.loads(l) for l in open(tmp_path / "clean" / "history.jsonl")]
    assert sum(sum(r["pruned_units"]) for r in states[:2]) > 0, "no prune before the kill"
    resumed = subprocess.run(_train_cmd(killed_dir, epochs) + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resumed from" in resumed.stdout
    a = [json.loads(l) for l in open(tmp_path / "clean" / "history.jsonl")]
    b = [json.loads(l) for l in open(killed_dir / "history.jsonl")]
    strip = lambda rows: [{k: v for k, v in r.items() if k not in RUNTIME_KEYS} for r in rows]
    assert strip(a) == strip(b)
    ma = keras.models.load_model(tmp_path / "clean" / "gated_model.keras")
    mb = keras.models.load_model(killed_dir / "gated_model.keras")
    for wa, wb in zip(ma.weights, mb.weights):
        np.testing.assert_array_equal(wa.numpy(), wb.numpy())


def test_new_run_clears_checkpoints_of_an_earlier_run(tmp_path, mnist_small):
    (x, y), _ = mnist_small
    tf_dynhp.fit(_model(), x[:500], y[:500], epochs=3, checkpoint_dir=tmp_path, budget_kb=_budget(), **FAST)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["epoch-00002.dynhp", "epoch-00003.dynhp"]
    with pytest.warns(RuntimeWarning, match="removed 2 checkpoint"):
        tf_dynhp.fit(_model(), x[:500], y[:500], epochs=1, checkpoint_dir=tmp_path, budget_kb=_budget(), **FAST)
    # Only the new run's checkpoint: a later resume cannot pick up the old epoch 3.
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["epoch-00001.dynhp"]


def test_run_folder_keeps_the_last_good_model_on_nonfinite(tmp_path, mnist):
    from tf_dynhp import runs

    config = runs.RunConfig(method="sp", epochs=3, train_limit=500, test_limit=200, learning_rate=1e20, hidden=(8,))
    with pytest.raises(tf_dynhp.NonFiniteError):
        runs.run(config, tmp_path / "run", data=mnist, verbose=0)
    assert (tmp_path / "run" / "model.keras").exists() and (tmp_path / "run" / "gated_model.keras").exists()
    assert not (tmp_path / "run" / "metrics.json").exists()  # unfinished
    model = keras.models.load_model(tmp_path / "run" / "gated_model.keras")
    assert all(np.all(np.isfinite(w.numpy())) for w in model.weights)
