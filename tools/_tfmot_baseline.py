"""Helper of tools/benchmark.py, run *inside the tfmot virtualenv* (tf-keras +
tensorflow-model-optimization, never a dependency of tf_dynhp):

    <venv>/bin/python tools/_tfmot_baseline.py request.json result.json

Trains the dense MLP with `tfmot.sparsity.keras.prune_low_magnitude` and a
`PolynomialDecay` schedule from 0 to the requested final sparsity (every Dense
kernel), strips the wrappers, and exports it fairly: TFLite with
`tf.lite.Optimize.EXPERIMENTAL_SPARSITY` (float32) and with full-integer int8
plus sparsity, each with its gzip size. It imports nothing from the tf_dynhp package
(the data come as an .npz file; the augmentation is `tf_dynhp/augment.py`, NumPy only,
loaded from its file) and writes its measurements as JSON.

Request keys: data (.npz with x_train, y_train, x_test, y_test, calibration),
hidden, epochs, batch_size, learning_rate, final_sparsity, end_fraction
(share of the training steps over which sparsity ramps up), seed, out_dir, and optionally
lr_decay ("none", "cosine" or "cosine_restart": the DynHP run's learning-rate schedule, with
restart_epoch for the last) and
weight_decay_per_weight (the DynHP run's L2 term, 0.5 * it * ||w||^2 on every kernel and bias)
and decoupled_weight_decay (the DynHP run's AdamW weight_decay; 0: Adam) and dropout (the DynHP
run's Dropout rate after every hidden layer; 0: none) and augment (the DynHP run's
`get_config()`, rebuilt by `tf_dynhp.augment.from_config`, or null) with augment_module (the path of tf_dynhp/augment.py):
each epoch then trains on the images DynHP's epoch saw, one `fit` call per epoch, and
augment_epochs (the DynHP run's `augment_until` in epochs; null: every epoch): from that
epoch on, the images as they are.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import sys
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf.keras is tf_keras, which tfmot needs
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _sizes(content: bytes) -> tuple[int, int]:
    return len(content), len(gzip.compress(content, compresslevel=9))


def _augmentation(req):
    """(the request's augmentation, that module's `epoch_images`), built by tf_dynhp/augment.py
    loaded from its file (the package itself needs Keras 3); (None, None) without one."""
    if not req.get("augment"):
        return None, None
    import importlib.util

    spec = importlib.util.spec_from_file_location("tf_dynhp_augment", req["augment_module"])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.from_config(dict(req["augment"])), module.epoch_images


def main(request_path: str, result_path: str) -> int:
    with open(request_path) as f:
        req = json.load(f)
    import numpy as np
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    data = np.load(req["data"])
    x, y, xt, yt, calibration = (data[k] for k in ("x_train", "y_train", "x_test", "y_test", "calibration"))
    keras.utils.set_random_seed(int(req["seed"]))
    layers = [keras.Input(x.shape[1:]), keras.layers.Flatten()]
    wd = float(req.get("weight_decay_per_weight") or 0.0)
    l2 = dict(kernel_regularizer=keras.regularizers.l2(0.5 * wd), bias_regularizer=keras.regularizers.l2(0.5 * wd)) if wd else {}
    dropout = float(req.get("dropout") or 0.0)
    for h in req["hidden"]:
        layers.append(keras.layers.Dense(int(h), activation="relu", **l2))
        if dropout:
            layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(10, activation="softmax", **l2))
    model = keras.Sequential(layers)

    batch, epochs = int(req["batch_size"]), int(req["epochs"])
    total_steps = math.ceil(len(x) / batch) * epochs
    ramp = max(1, int(total_steps * float(req["end_fraction"])))
    frequency = max(1, ramp // 10)
    end_step = frequency * max(1, ramp // frequency)  # the final sparsity is applied on a pruning step
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=float(req["final_sparsity"]), begin_step=0, end_step=end_step, frequency=frequency
    )
    pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
    # UpdatePruningStep counts steps in a batch callback: one step per execution.
    decay = float(req.get("decoupled_weight_decay") or 0.0)
    adam = (keras.optimizers.AdamW(float(req["learning_rate"]), weight_decay=decay) if decay
            else keras.optimizers.Adam(float(req["learning_rate"])))
    smoothing = float(req.get("label_smoothing") or 0.0)

    def smoothed(y_true, y_pred):  # the DynHP run's tf_dynhp.losses.SparseCategoricalCrossentropy
        target = tf.one_hot(tf.cast(tf.reshape(y_true, [-1]), tf.int32), tf.shape(y_pred)[-1])
        return keras.losses.categorical_crossentropy(target, y_pred, label_smoothing=smoothing)

    pruned.compile(optimizer=adam, loss=smoothed if smoothing else "sparse_categorical_crossentropy")

    records = []

    class Clock(keras.callbacks.Callback):
        t0 = None

        def on_train_begin(self, logs=None):
            if self.t0 is None:  # the first of the per-epoch fit calls
                self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            probs = self.model.predict(xt, batch_size=2000, verbose=0)
            error = 100.0 * float(np.mean(np.argmax(probs, -1) != yt))
            records.append({"epoch": epoch + 1, "elapsed": time.perf_counter() - self.t0, "error": error})

    t0 = time.perf_counter()
    schedule = []
    lr_decay, lr0, start = req.get("lr_decay", "none"), float(req["learning_rate"]), req.get("restart_epoch")
    if lr_decay == "cosine":  # the DynHP run's schedule (tf_dynhp.runs.lr_callbacks)
        schedule.append(keras.callbacks.LearningRateScheduler(lambda e, lr: lr0 * 0.5 * (1.0 + math.cos(math.pi * e / epochs))))
    elif lr_decay == "cosine_restart":  # "cosine", restarted at epoch `restart_epoch`

        def rate(e, lr):
            if e < start:
                return lr0 * 0.5 * (1.0 + math.cos(math.pi * e / epochs))
            return lr0 * 0.5 * (1.0 + math.cos(math.pi * (e - start) / (epochs - start)))

        schedule.append(keras.callbacks.LearningRateScheduler(rate))
    elif lr_decay != "none":
        raise ValueError(f"unknown lr_decay {lr_decay!r}; expected none, cosine or cosine_restart")
    callbacks = [tfmot.sparsity.keras.UpdatePruningStep(), *schedule, Clock()]
    augment, epoch_images = _augmentation(req)
    if augment is None:
        pruned.fit(x, y, batch_size=batch, epochs=epochs, shuffle=True, verbose=0, callbacks=callbacks)
    else:
        for epoch in range(epochs):
            images = epoch_images(augment, x, int(req["seed"]), epoch, req.get("augment_epochs"))
            pruned.fit(images, y, batch_size=batch, initial_epoch=epoch, epochs=epoch + 1,
                       shuffle=True, verbose=0, callbacks=callbacks)
    train_seconds = time.perf_counter() - t0
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    probs = stripped.predict(xt, batch_size=2000, verbose=0)
    test_error = 100.0 * float(np.mean(np.argmax(probs, -1) != yt))
    kernels = [layer.kernel.numpy() for layer in stripped.layers if isinstance(layer, keras.layers.Dense)]
    biases = [layer.bias.numpy() for layer in stripped.layers if isinstance(layer, keras.layers.Dense)]

    converter = tf.lite.TFLiteConverter.from_keras_model(stripped)
    converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    fp32 = converter.convert()
    converter = tf.lite.TFLiteConverter.from_keras_model(stripped)
    converter.optimizations = [tf.lite.Optimize.DEFAULT, tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.float32
    converter.inference_output_type = tf.float32
    converter.representative_dataset = lambda: ([calibration[i : i + 1]] for i in range(len(calibration)))
    int8 = converter.convert()
    os.makedirs(req["out_dir"], exist_ok=True)
    for name, content in (("tfmot_fp32.tflite", fp32), ("tfmot_int8.tflite", int8)):
        with open(os.path.join(req["out_dir"], name), "wb") as f:
            f.write(content)

    import tensorflow_model_optimization as tfmot_version

    result = {
        "test_error": test_error,
        "epochs": records,
        "train_seconds": train_seconds,
        "examples": int(len(x)) * epochs,
        "tflite_fp32": _sizes(fp32),
        "tflite_int8": _sizes(int8),
        "kernel_sparsity": [float(np.mean(k == 0)) for k in kernels],
        "nonzero_weights": int(sum(int(np.count_nonzero(k)) for k in kernels) + sum(b.size for b in biases)),
        "mask_floats": int(sum(k.size for k in kernels)),
        "schedule": {"final_sparsity": float(req["final_sparsity"]), "end_step": end_step, "frequency": frequency, "total_steps": total_steps},
        "versions": {"tensorflow": tf.__version__, "tf_keras": keras.__version__, "tfmot": tfmot_version.__version__},
    }
    with open(result_path, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} request.json result.json")
    sys.exit(main(sys.argv[1], sys.argv[2]))
