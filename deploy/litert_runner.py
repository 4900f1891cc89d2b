"""Device-side helpers: LiteRT interpreter loading, IDX reading, inference and training.

This folder is copied to the device as-is and runs with NumPy and the LiteRT
runtime only (``pip install -r requirements.txt``): it must not import
TensorFlow or tf_dynhp. The IDX reader duplicates a few lines of
`tf_dynhp.datasets.read_idx` for that reason.

Models come from `tf_dynhp.export.to_tflite` (signature ``serving_default``,
input ``x``, output ``output``) and `tf_dynhp.export.to_trainable_tflite`
(signatures ``train``, ``infer``, ``get_weights``, ``set_weights``,
``get_optimizer_state``, ``set_optimizer_state``); other single-input,
single-output classifiers work for inference too.
"""

from __future__ import annotations

import gzip
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

__all__ = [
    "load_interpreter",
    "check_tflite_file",
    "read_idx",
    "load_images_labels",
    "fit_input",
    "check_labels",
    "Classifier",
    "Trainer",
    "peak_rss_mb",
    "percentiles_ms",
    "time_calls",
]

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_TRAINABLE_SIGNATURES = ("train", "infer", "get_weights", "set_weights")


def _interpreter_class():
    """`ai_edge_litert.interpreter.Interpreter`, else `tflite_runtime.interpreter.Interpreter`."""
    try:
        from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter  # noqa: PLC0415
        except ImportError as err:
            raise ImportError(
                "No LiteRT runtime found: expected `ai_edge_litert` (pip install ai-edge-litert) or "
                "`tflite_runtime`. Received: neither could be imported."
            ) from err
    return Interpreter


def check_tflite_file(path: str | os.PathLike) -> Path:
    """Checks that `path` is a TFLite flatbuffer (identifier ``TFL3`` at bytes 4..8).

    Args:
        path: the file to check.

    Returns:
        `path` as a `Path`.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a TFLite model; the message names the file and
            the bytes found.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file (expected a .tflite file)")
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[4:8] != b"TFL3":
        raise ValueError(
            f"{path}: not a TFLite model: expected the flatbuffer identifier b'TFL3' at bytes 4..8, "
            f"received {head[4:8]!r} ({path.stat().st_size} bytes in the file)"
        )
    return path


def load_interpreter(path: str | os.PathLike, num_threads: int | None = None) -> Any:
    """Loads a `.tflite` file into a LiteRT interpreter (tensors allocated).

    Args:
        path: the model file.
        num_threads: interpreter threads (None: the runtime's default).

    Returns:
        The interpreter.

    Raises:
        FileNotFoundError, ValueError: see `check_tflite_file`.
    """
    path = check_tflite_file(path)
    try:
        interpreter = _interpreter_class()(model_path=str(path), num_threads=num_threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as err:  # e.g. a truncated file whose header survived
        raise ValueError(f"{path}: not a loadable TFLite model ({str(err).strip().splitlines()[0]}); "
                         "expected a complete .tflite file (a truncated copy?)") from err
    return interpreter


# --------------------------------------------------------------------------- data
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (MNIST format), gzip-compressed or raw.

    Args:
        path: the file, e.g. ``t10k-images-idx3-ubyte.gz``.

    Returns:
        The array (native byte order) with the shape from the header.

    Raises:
        FileNotFoundError: no such file.
        ValueError: bad magic number or a size that does not match the header
            (the message names the file).
    """
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise ValueError(f"{path}: corrupt gzip data ({err})") from err
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{path}: not an IDX file: expected a magic number 0x0000TTNN (TT in "
            f"{sorted(hex(c) for c in _IDX_DTYPES)}), received 0x{data[:4].hex().upper()}"
        )
    ndim = data[3]
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header: expected {header} bytes for {ndim} dimensions, received {len(data)}")
    shape = tuple(int(d) for d in np.frombuffer(data[4:header], dtype=">u4"))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(shape) != ndim or len(data) - header != expected:
        raise ValueError(
            f"{path}: expected {expected} data bytes for shape {shape} ({dtype.name}), received {len(data) - header}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def load_images_labels(
    images: str | os.PathLike, labels: str | os.PathLike, limit: int | None = None, raw: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Reads an image/label IDX pair: images as float32 in [0, 1] (uint8 pixels / 255;
    images of any other type as stored, and refused unless in [0, 1]: float models take
    the pixels scaled as the training pipeline scales them), or with `raw` as stored
    (the pixels an integer-input model was trained on), and labels as int32.

    Args:
        images: IDX file of images (n, h, w): uint8, or e.g. float32 already in [0, 1].
        labels: IDX file of class ids (n,).
        limit: keep only the first `limit` examples.
        raw: the images as the file holds them, not scaled.

    Returns:
        (x, y).

    Raises:
        ValueError: counts differ, the files have the wrong rank, the labels are not
            integers, or (without `raw`) images not stored as uint8 hold values outside
            [0, 1], e.g. float 0-255 pixels (names the files).
    """
    x = read_idx(images)
    y = read_idx(labels)
    if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"Expected images (n, h, w) in {images} and labels (n,) in {labels} with the same n; "
            f"received shapes {x.shape} and {y.shape}"
        )
    if limit is not None:
        x, y = x[:limit], y[:limit]
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    if y.dtype.kind not in "iu":  # a cast would make 2.7 class 2
        raise ValueError(f"{labels}: expected integer class ids, received {y.dtype} labels")
    if y.size and (int(y.min()) < np.iinfo(np.int32).min or int(y.max()) > np.iinfo(np.int32).max):
        raise ValueError(f"{labels}: class ids beyond int32 ({int(y.min())}..{int(y.max())})")
    if raw:
        return x, y.astype(np.int32)
    if x.dtype != np.uint8:
        _check_unit_range(x, images)
    return x.astype(np.float32) / scale, y.astype(np.int32)


def _check_unit_range(x: np.ndarray, images: str | os.PathLike) -> None:
    """Refuses images outside [0, 1] (or not finite): a float model would take 0-255 pixels
    unscaled and score them without a word.

    Raises:
        ValueError: names the file, the range expected and the one received.
    """
    outside = ~((x >= 0) & (x <= 1))
    if np.any(outside):
        finite = x[np.isfinite(x)]
        seen = f"[{finite.min():g}, {finite.max():g}]" if finite.size else "no finite values"
        raise ValueError(
            f"{images}: expected pixel values in [0, 1] for a float-input model (uint8 IDX pixels are divided "
            f"by 255, {x.dtype} images are taken as stored); received {int(np.count_nonzero(outside))} of "
            f"{x.size} values outside it, finite ones in {seen}. Store the pixels as uint8 or divide them by 255"
        )


def fit_input(x: np.ndarray, input_shape: tuple[int, ...], what: str) -> np.ndarray:
    """`x` (batch first) in the model's input shape `input_shape` (without the batch axis).

    IDX images are (n, 28, 28): a CNN taking (28, 28, 1) gets a channel axis, a model
    taking flat (784,) inputs gets them flattened, and flat rows go to an image model of
    as many values. Nothing else is reshaped: (n, 14, 56) images for a 28x28 model, or
    channels-first images for a channels-last one, hold as many values but not the same
    pixels, and are refused (as `tf_dynhp.fit` refuses them).

    Raises:
        ValueError: the shapes do not match (names `what`, expected and received shapes).
    """
    x = np.asarray(x)
    sample = tuple(x.shape[1:])
    if sample == tuple(input_shape):
        return x
    if sample + (1,) == tuple(input_shape):  # (n, 28, 28) images for a (28, 28, 1) CNN
        return x.reshape(x.shape + (1,))
    if int(np.prod(sample)) == int(np.prod(input_shape)) and (len(input_shape) == 1 or len(sample) == 1):
        return x.reshape((x.shape[0],) + tuple(input_shape))  # images for a flat model, or flat rows for an image model
    raise ValueError(
        f"{what}: expected inputs of shape (batch, {', '.join(map(str, input_shape))}), received {x.shape} "
        f"(examples of {int(np.prod(sample))} values, the model takes {int(np.prod(input_shape))})"
    )


def _as_model_input(x: np.ndarray, dtype: Any, input_shape: tuple[int, ...], path: Path) -> np.ndarray:
    """`x` in the model's input dtype and shape; non-integral floats for an integer input
    are refused (a cast would make IDX pixels scaled to [0, 1] zeros and ones)."""
    x = np.asarray(x)
    if np.issubdtype(dtype, np.integer) and x.dtype.kind == "f" and not np.all(x == np.round(x)):
        raise ValueError(
            f"{path} takes {np.dtype(dtype).name} inputs (a keras.Input of that dtype); received "
            f"{x.dtype.name} values that are not whole numbers (IDX pixels are scaled to [0, 1] for float models). "
            "Feed the pixels as the model was trained on them."
        )
    return fit_input(np.asarray(x, dtype=dtype), input_shape, str(path))


def _accuracy(outputs: np.ndarray, y: np.ndarray, path: Path) -> float:
    """Fraction of rows of `outputs` whose arg-max is the class id in `y` ((n,) or Keras'
    (n, 1): compared as given, (n, 1) labels broadcast to an (n, n) table)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    if y.shape != (outputs.shape[0],):
        raise ValueError(f"{path}: expected labels of shape ({outputs.shape[0]},), one class id per example; "
                         f"received shape {y.shape}")
    return float(np.mean(np.argmax(outputs, axis=1) == y))


def check_labels(y: np.ndarray, num_classes: int, source: str | os.PathLike) -> np.ndarray:
    """`y` as int32 class ids, refused unless every one is in [0, num_classes).

    Raises:
        ValueError: naming `source`, the first label out of range, its index and how many are.
    """
    y = np.asarray(y)
    if y.dtype.kind not in "iu":
        raise ValueError(f"{source}: expected integer class ids, received {y.dtype} labels")
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{source}: labels must be class ids in [0, {num_classes}) for this model; received {int(y[i])} "
            f"at index {i} ({bad.size} of {y.size} labels out of range)"
        )
    return y.astype(np.int32)


# --------------------------------------------------------------------------- measuring
def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB.

    On Linux this is `VmHWM` of /proc/self/status: `getrusage`'s `ru_maxrss` survives
    `exec`, so a process started by a large parent (a Python with TensorFlow loaded)
    would report the parent's peak. Elsewhere `resource.getrusage`.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0  # bytes on macOS, KiB on Linux


def percentiles_ms(seconds: list[float], qs: tuple[float, ...] = (50.0, 99.0)) -> list[float]:
    """Percentiles of durations given in seconds, in milliseconds."""
    return [float(np.percentile(np.asarray(seconds) * 1e3, q)) for q in qs]


def time_calls(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Durations in seconds of `repeats` calls of `fn`."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


# --------------------------------------------------------------------------- models
def _single_io(runner: Any, what: str) -> tuple[str, str]:
    inputs = list(runner.get_input_details())
    outputs = list(runner.get_output_details())
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(f"{what}: expected one input and one output, received inputs {inputs} and outputs {outputs}")
    return inputs[0], outputs[0]


class Classifier:
    """Runs a classifier `.tflite` file (inference signature) on NumPy batches.

    Uses the ``serving_default`` signature, the ``infer`` signature of a trainable
    model, or the only signature of the file. Images without a channel axis, e.g.
    (n, 28, 28) from IDX files, get one when the model takes (28, 28, 1) (a CNN).

    Args:
        path: the model file.
        num_threads: interpreter threads.
    """

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None) -> None:
        self.path = Path(path)
        self.interpreter = load_interpreter(path, num_threads)
        signatures = self.interpreter.get_signature_list()
        if not signatures:
            raise ValueError(f"{path}: the model has no signatures; export it with tf_dynhp.export.to_tflite")
        for key in ("serving_default", "infer"):
            if key in signatures:
                break
        else:
            if len(signatures) != 1:
                raise ValueError(
                    f"{path}: expected a 'serving_default' or 'infer' signature, received {sorted(signatures)}"
                )
            key = next(iter(signatures))
        self.signature = key
        self.runner = self.interpreter.get_signature_runner(key)
        self.input_name, self.output_name = _single_io(self.runner, f"{path} signature '{key}'")
        details = self.runner.get_input_details()[self.input_name]
        self.input_shape = tuple(int(d) for d in details["shape_signature"][1:])
        self.fixed_batch = int(details["shape_signature"][0]) if int(details["shape_signature"][0]) > 0 else None
        self.input_dtype = details["dtype"]
        classes = int(self.runner.get_output_details()[self.output_name]["shape_signature"][-1])
        self.num_classes = classes if classes > 0 else None  # None: an output of unknown width

    @property
    def takes_integers(self) -> bool:
        """True for a model built on an integer `keras.Input` (e.g. uint8): it takes the
        pixels as stored, not scaled to [0, 1] (`load_images_labels(raw=True)`)."""
        return bool(np.issubdtype(self.input_dtype, np.integer))

    def _check(self, x: np.ndarray) -> np.ndarray:
        return _as_model_input(x, self.input_dtype, self.input_shape, self.path)

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """`x` in the model's input shape and dtype (see `fit_input`); ValueError if it cannot be."""
        return self._check(x)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Model output for one batch (the batch must fit a fixed batch size, if any)."""
        x = self._check(x)
        return self.runner(**{self.input_name: x})[self.output_name]

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Model output for all rows of `x`, in batches of `batch_size` (or the fixed batch)."""
        x = self._check(x)
        step = self.fixed_batch or batch_size
        outs = []
        for start in range(0, x.shape[0], step):
            chunk = x[start : start + step]
            if self.fixed_batch and chunk.shape[0] < step:  # pad the last batch
                pad = np.zeros((step - chunk.shape[0],) + chunk.shape[1:], chunk.dtype)
                outs.append(self(np.concatenate([chunk, pad]))[: chunk.shape[0]])
            else:
                outs.append(self(chunk))
        return np.concatenate(outs)

    def accuracy(self, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
        """Fraction of rows whose arg-max output equals the label (`y`: class ids, (n,) or (n, 1))."""
        return _accuracy(self.predict(x, batch_size), y, self.path)


class Trainer:
    """Drives a trainable `.tflite` file (from `tf_dynhp.export.to_trainable_tflite`).

    Args:
        path: the model file.
        num_threads: interpreter threads.

    Raises:
        ValueError: the file lacks the ``train``/``infer``/``get_weights``/``set_weights``
            signatures (e.g. an inference-only export).
    """

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None) -> None:
        self.path = Path(path)
        self.interpreter = load_interpreter(path, num_threads)
        signatures = self.interpreter.get_signature_list()
        missing = [s for s in _TRAINABLE_SIGNATURES if s not in signatures]
        if missing:
            raise ValueError(
                f"{path}: not a trainable model: expected signatures {list(_TRAINABLE_SIGNATURES)}, "
                f"received {sorted(signatures)} (export it with tf_dynhp.export.to_trainable_tflite)"
            )
        self.signatures = signatures
        self._runners = {key: self.interpreter.get_signature_runner(key) for key in signatures}
        details = self._runners["train"].get_input_details()["x"]
        self.input_shape = tuple(int(d) for d in details["shape_signature"][1:])
        batch = int(details["shape_signature"][0])
        self.fixed_batch = batch if batch > 0 else None
        self.input_dtype = details["dtype"]
        self.num_classes = int(self._runners["infer"].get_output_details()["probabilities"]["shape_signature"][-1])

    @property
    def takes_integers(self) -> bool:
        """True for a model built on an integer `keras.Input` (see `Classifier.takes_integers`)."""
        return bool(np.issubdtype(self.input_dtype, np.integer))

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """`x` in the model's input shape and dtype (see `fit_input`); ValueError if it cannot be."""
        return _as_model_input(x, self.input_dtype, self.input_shape, self.path)

    def train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        """One optimizer step; returns the batch's mean cross-entropy before the update.

        Raises:
            ValueError: inputs of another shape, or labels outside [0, num_classes)
                (the model's loss would silently read them as some other class, or as 0).
        """
        x = self.prepare(x)
        if self.fixed_batch and x.shape[0] != self.fixed_batch:
            raise ValueError(f"{self.path}: expected a training batch of {self.fixed_batch}, received {x.shape[0]} examples")
        if x.shape[0] == 0:
            raise ValueError(f"{self.path}: expected a training batch of at least one example, received 0")
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:  # Keras-style (batch, 1) class ids
            y = y.reshape(-1)
        if y.shape != (x.shape[0],):
            raise ValueError(f"{self.path}: expected labels of shape ({x.shape[0]},), one class id per example of x; "
                             f"received shape {y.shape}")
        y = check_labels(y, self.num_classes, "training labels")
        return float(self._runners["train"](x=x, y=y)["loss"])

    def infer(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Softmax probabilities for all rows of `x`."""
        x = self.prepare(x)
        step = self.fixed_batch or batch_size
        outs = []
        for start in range(0, x.shape[0], step):
            chunk = x[start : start + step]
            n = chunk.shape[0]
            if self.fixed_batch and n < step:
                chunk = np.concatenate([chunk, np.zeros((step - n,) + chunk.shape[1:], chunk.dtype)])
            outs.append(self._runners["infer"](x=chunk)["probabilities"][:n])
        return np.concatenate(outs)

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        """Fraction of rows whose arg-max probability equals the label (`y`: class ids, (n,) or (n, 1))."""
        return _accuracy(self.infer(x), y, self.path)

    def get_weights(self) -> dict[str, np.ndarray]:
        """The current weights, ``{"kernel_0": ..., "bias_0": ..., ...}``."""
        return {k: np.array(v) for k, v in self._runners["get_weights"]().items()}

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Overwrites the weights (all of them, shapes as `get_weights` returns)."""
        self._set("set_weights", weights, "weight")

    def get_optimizer_state(self) -> dict[str, np.ndarray]:
        """Optimizer slots (empty if the file has no ``get_optimizer_state`` signature)."""
        if "get_optimizer_state" not in self._runners:
            return {}
        return {k: np.array(v) for k, v in self._runners["get_optimizer_state"]().items()}

    def set_optimizer_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Overwrites the optimizer slots."""
        if "set_optimizer_state" in self._runners:
            self._set("set_optimizer_state", state, "optimizer state")

    def _set(self, key: str, values: Mapping[str, np.ndarray], what: str) -> None:
        runner = self._runners[key]
        details = runner.get_input_details()
        missing = sorted(set(details) - set(values))
        extra = sorted(set(values) - set(details))
        if missing or extra:
            raise ValueError(
                f"{self.path}: {what} names do not match the model: expected {sorted(details)}, "
                f"missing {missing}, unexpected {extra}"
            )
        feed = {}
        for name, d in details.items():
            value = np.asarray(values[name], dtype=d["dtype"])
            expected = tuple(int(s) for s in d["shape"])
            if value.shape != expected:
                raise ValueError(f"{self.path}: {what} '{name}': expected shape {expected}, received {value.shape}")
            feed[name] = value
        runner(**feed)
