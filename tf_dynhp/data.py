"""Data intake of `tf_dynhp.fit`: any input to checked arrays, the epoch order, and
the kept input features.

* `as_arrays` turns one split (NumPy arrays or a `tf.data.Dataset` of `(x, y)` or
  `(x, y, sample_weight)` examples) into float32 `(N, features)` inputs and int32
  labels (and the dataset's weights), checked against the model (shape, finiteness,
  label range), naming the argument at fault.
* `epoch_order` is the seeded shuffle of one epoch, a function of (seed, epoch) only,
  so a resumed run sees the same batches.
* `FeatureSelection` holds the training inputs with only the features the pruned
  model still reads (hard pruning of input features shrinks every later batch), or,
  with `fit(augment=...)`, the full images and each epoch's transform of them.
* `example_weights` turns `fit`'s `sample_weight` or `class_weight` into one weight
  per training example, as `keras.Model.fit` reads them.
* `fingerprint` identifies a training set in a checkpoint's settings.
"""

from __future__ import annotations

import hashlib
import os
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from tf_dynhp import augment as aug

__all__ = ["as_arrays", "unwrap_structure", "unwrap_listed", "example_weights", "require_some_weight", "reshape_to_input", "epoch_order", "fingerprint", "FeatureSelection"]


def _memory_bytes() -> int:
    """Memory this process may use, in bytes: the machine's, or a smaller cgroup limit (a
    container's `--memory`); 8 GiB where the OS does not say."""
    try:
        total = int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):  # pragma: no cover - platforms without sysconf
        total = 8 * 2**30
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):  # cgroup v2, v1
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def _path_in(value: Any, form: Any, is_data: Callable[[Any], bool] = lambda first: False) -> list[Any] | None:
    """The keys / indices that lead to the one tensor of `value` (an array structure, or an
    element_spec part) when it nests it as `form` does (`tf_dynhp.surgery.io_structure`: a
    dict / list around its one tensor, 0 at the tensor); None otherwise. A list of one
    whose entry `is_data` is data, not a structure."""
    if form is None or form == 0:
        return []
    if isinstance(form, dict):
        if not (isinstance(value, dict) and len(form) == 1 and set(value) == set(form)):
            return None
        (key,) = form
        rest = _path_in(value[key], form[key], is_data)
        return None if rest is None else [key, *rest]
    if not (isinstance(value, (list, tuple)) and len(value) == len(form) == 1) or is_data(value[0]):
        return None
    rest = _path_in(value[0], form[0], is_data)
    return None if rest is None else [0, *rest]


def _pick(value: Any, path: list[Any] | None) -> Any:
    """The part of `value` that `path` (from `_path_in`) leads to."""
    for key in path or []:
        value = value[key]
    return value


def _unwrap_elements(dataset: tf.data.Dataset, forms: tuple[Any, Any]) -> tf.data.Dataset:
    """Elements whose features / labels (and weights) nest their tensor as the model's
    input / output does (`([x], [y])`, `(x, {"logits": y}, {"logits": w})`, as Keras takes
    them) become bare tensors."""
    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) in (2, 3)):
        return dataset
    paths = [_path_in(part, form) for part, form in zip(spec, (*forms, forms[1]), strict=False)]  # weights as outputs
    if not any(paths):
        return dataset
    return dataset.map(lambda *parts: tuple(_pick(part, path) for part, path in zip(parts, paths, strict=True)))


def _features_by_input_name(dataset: tf.data.Dataset, what: str, input_name: str | None) -> tf.data.Dataset:
    """`({input_name: images}, label)` elements, as Keras takes them for a model with a
    named input, become `(images, label)`; a dict with other keys is refused by name."""
    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) in (2, 3) and isinstance(spec[0], dict)):
        return dataset
    keys = list(spec[0])
    if keys != [input_name] or not isinstance(spec[0][input_name], tf.TensorSpec):
        raise ValueError(
            f"`{what}` is a tf.data.Dataset whose features are a dict with keys {sorted(map(str, keys))}; the model "
            f"has one input, named {input_name!r}: give ({{{input_name!r}: images}}, label) elements, or "
            "`.map(lambda d, *rest: (d[<key>], *rest))`."
        )
    return dataset.map(lambda features, *rest: (features[input_name], *rest))


def _materialize(dataset: tf.data.Dataset, what: str, input_shape: tuple[int, ...], max_bytes: int | None = None,
                 input_name: str | None = None, forms: tuple[Any, Any] = (None, None)) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Reads a finite dataset of (x, y) or (x, y, sample_weight) examples or batches
    (`ds.batch(n)`, short last batch included) into arrays: x, y and the weights (None
    for pairs), read together, so a `.shuffle()`d dataset keeps each weight with its
    example. Batched or not is read from `element_spec`: x of rank len(input_shape)
    is one example, of rank len(input_shape) + 1 a batch. The features may be
    `{input_name: x}`, and features and labels may nest their tensor as the model's
    input and output do (`forms`, `tf_dynhp.surgery.io_structure`), as Keras takes them.

    A dataset of unknown cardinality (e.g. `.repeat().filter(...)`, which tf.data
    cannot tell from a finite filtered one) is read up to `max_bytes` (default: half of
    the machine's memory); past that it is refused as probably infinite, rather than
    read until the machine runs out of memory."""
    dataset = _features_by_input_name(_unwrap_elements(dataset, forms), what, input_name)
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) not in (2, 3) or not all(isinstance(part, tf.TensorSpec) for part in spec):
        raise ValueError(
            f"`{what}` is a tf.data.Dataset whose elements are {spec}; expected (features, label) "
            "pairs or (features, label, sample_weight) triples of tensors (features may be {input name: tensor}), "
            "e.g. tensorflow_datasets.load(..., as_supervised=True), or `.map(lambda d: (d['image'], d['label']))`."
        )
    if int(dataset.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
        raise ValueError(
            f"`{what}` is an infinite tf.data.Dataset (it repeats); fit reads the data set once per run: "
            "pass it without `.repeat()`."
        )
    unknown = int(dataset.cardinality()) == int(tf.data.UNKNOWN_CARDINALITY)  # before unbatch(), which never knows
    x_shape = spec[0].shape
    shown = tuple(x_shape) if x_shape.rank is not None else "of unknown rank"
    rank = len(input_shape)
    if x_shape.rank == rank + 1 and x_shape[1:].is_compatible_with(input_shape):
        dataset = dataset.unbatch()
        batched = True
    elif x_shape.rank != rank or not x_shape.is_compatible_with(input_shape):
        raise ValueError(
            f"`{what}` is a tf.data.Dataset of features shaped {shown}; the model expects examples "
            f"of shape {tuple(input_shape)} (or batches of them, shape {(None,) + tuple(input_shape)})."
        )
    else:
        batched = False
    if len(spec) == 3:  # one weight per example: shape () / (1,) per example, (b,) / (b, 1) per batch
        w_shape = spec[2].shape
        per_example = w_shape[1:] if batched and w_shape.rank is not None and w_shape.rank >= 1 else w_shape
        if per_example.rank is None or per_example.rank > 1 or (per_example.rank == 1 and per_example[0] not in (1, None)) \
                or (batched and w_shape.rank == 0):
            raise ValueError(
                f"`{what}` is a tf.data.Dataset of (features, label, sample_weight) whose weights are shaped "
                f"{tuple(w_shape) if w_shape.rank is not None else 'of unknown rank'}; expected one weight per example "
                f"(shape {'(batch,)' if batched else '()'})."
            )
    limit = (max_bytes if max_bytes is not None else _memory_bytes() // 2) if unknown else None
    xs, ys, ws, read = [], [], [], 0
    for parts in dataset.batch(4096).as_numpy_iterator():
        xb, yb = parts[0], parts[1]
        xs.append(xb)
        ys.append(yb)
        if len(parts) == 3:
            ws.append(np.reshape(parts[2], (len(xb), -1)))
        read += sum(part.nbytes for part in parts)
        if limit is not None and read > limit:
            raise ValueError(
                f"`{what}` is a tf.data.Dataset of unknown cardinality that has given {sum(len(b) for b in ys)} "
                f"examples ({read / 2**20:.0f} MiB) without ending: it is probably infinite (a `.repeat()` "
                "before `.filter()`?). fit reads the data set into memory once per run: pass it without "
                "`.repeat()`."
            )
    if not xs:
        raise ValueError(f"`{what}` is an empty tf.data.Dataset; expected at least one example.")
    weights = None
    if ws:
        weights = np.concatenate(ws)
        if weights.shape[1] != 1:
            raise ValueError(f"`{what}` is a tf.data.Dataset of (features, label, sample_weight) with "
                             f"{weights.shape[1]} weights per example; expected one.")
        weights = weights[:, 0]
    return np.concatenate(xs), np.concatenate(ys), weights


def as_arrays(x: Any, y: Any, input_shape: tuple[int, ...], num_classes: int, what: str,
              input_name: str | None = None, forms: tuple[Any, Any] = (None, None)) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validates one split and returns (x flattened to float32 (N, features), y int32,
    the dataset's sample weights or None). The weights are returned as given, one per
    example; `example_weights` checks them as it checks `fit`'s `sample_weight`.

    Args:
        x: inputs shaped like the model input, or a `tf.data.Dataset` of (x, y) or
            (x, y, sample_weight).
        y: integer labels (None with a dataset).
        input_shape: the model's per-example input shape.
        num_classes: units of the last layer (labels must be in [0, num_classes)).
        what: "x" or the argument name of the split (e.g. "validation_data").
        input_name: the model's input name: `x` may be `{input_name: array}`, as in Keras.
        forms: how the model nests its input and output (`tf_dynhp.surgery.io_structure`):
            a Dataset's elements may nest theirs so (arrays: `unwrap_structure`).

    Raises:
        ValueError / TypeError: naming the argument, what was expected and received.
    """
    x_name, y_name = ("x", "y") if what == "x" else (f"{what}[0]", f"{what}[1]")
    weights = None
    if isinstance(x, tf.data.Dataset):
        if y is not None:
            raise ValueError(f"`{x_name}` is a tf.data.Dataset of (features, label) pairs; `y` must be None, received {type(y).__name__}.")
        x, y, weights = _materialize(x, what, tuple(input_shape), input_name=input_name, forms=forms)
    if isinstance(x, dict):
        if list(x) != [input_name]:
            raise ValueError(f"`{x_name}` is a dict with keys {sorted(map(str, x))}; the model has one input, named "
                             f"{input_name!r}: pass {{{input_name!r}: images}} or the images themselves.")
        x = x[input_name]
    if isinstance(x, types.GeneratorType) or (hasattr(x, "__next__") and not hasattr(x, "__array__")):
        raise TypeError(f"`{x_name}` is a Python generator or iterator; pass arrays, or wrap it in "
                        "tf.data.Dataset.from_generator(...) yielding (features, label) pairs.")
    if y is None:
        raise ValueError(f"`{y_name}` (the labels) is missing.")
    x = np.asarray(x)
    y = np.asarray(y)
    for name, value in ((x_name, x), (y_name, y)):
        if value.ndim == 0:
            raise ValueError(f"`{name}` must hold one entry per example (an array whose first axis is the examples); "
                             f"received a single value {value!r}.")
    if x.shape[0] == 0:
        raise ValueError(f"`{x_name}` is empty; expected at least one example.")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"`{x_name}` has {x.shape[0]} examples but `{y_name}` has {y.shape[0]} labels; they must match.")
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise ValueError(f"`{x_name}` has examples of shape {tuple(x.shape[1:])}; the model expects {tuple(input_shape)}.")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise TypeError(f"`{x_name}` must be real numbers, received dtype {x.dtype}.")
    given = x.reshape(x.shape[0], -1)
    with np.errstate(over="ignore"):
        x = given.astype(np.float32, copy=False)
    if not np.all(np.isfinite(x)):  # one scan; the example at fault tells NaN/inf from an overflow of the cast
        bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        if np.issubdtype(given.dtype, np.floating) and not np.all(np.isfinite(given[bad])):
            raise ValueError(f"`{x_name}` contains NaN or infinite values (first in example {bad}).")
        raise ValueError(f"`{x_name}` has values beyond float32's range (±{np.finfo(np.float32).max:.3g}; first in "
                         f"example {bad}): fit reads the inputs as float32; scale them.")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"`{y_name}` must be integer class ids of shape (n,), received shape {y.shape}.")
    if y.dtype == np.bool_:  # two classes as False/True: ids 0 and 1, as Keras reads them
        y = y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            if y.min() < 0 or y.max() >= num_classes:  # before the cast: 1e20 would wrap to another value
                raise ValueError(
                    f"`{y_name}` has labels in [{y.min():g}, {y.max():g}]; the last layer has "
                    f"{num_classes} units, so labels must be in [0, {num_classes})."
                )
            y = y.astype(np.int64)
        else:
            values = " with non-integer values" if np.issubdtype(y.dtype, np.floating) else ""
            raise TypeError(f"`{y_name}` must hold integer class ids, received dtype {y.dtype}{values}.")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(
            f"`{y_name}` has labels in [{int(y.min())}, {int(y.max())}]; the last layer has "
            f"{num_classes} units, so labels must be in [0, {num_classes})."
        )
    return x, y.astype(np.int32), weights


def unwrap_structure(value: Any, form: Any, example_rank: int | None = None) -> Any:
    """`value` given in the structure a model takes or gives (`form`, from
    `tf_dynhp.surgery.io_structure`: a dict / list nesting its one tensor, with 0 at the
    tensor) is the one array inside, as `keras.Model.fit` reads `[x]` or
    `{"logits": y}` for `keras.Model([inp], {"logits": out})`; anything else is returned
    as it is (a list whose one entry is a single value is data, not a structure). For a
    bare tensor (`form` None), `[x]` too when `example_rank` is given (`unwrap_listed`)."""
    if form is None and example_rank is not None:
        return unwrap_listed(value, example_rank)
    path = _path_in(value, form, is_data=lambda first: not isinstance(first, dict) and np.ndim(first) < 1)
    return value if path is None else _pick(value, path)


def unwrap_listed(value: Any, example_rank: int) -> Any:
    """`[x]` for a model that takes a bare tensor is `x`, as `keras.Model.fit` reads it: a
    list (or tuple) of one array whose rank is one more than one example's (`example_rank`:
    2 for (28, 28) images; 0 for labels, any rank >= 1 then). A list of one example (`[img]`,
    `[3]`) is data, returned as it is."""
    if isinstance(value, (list, tuple)) and len(value) == 1 and not isinstance(value[0], (dict, list, tuple)):
        rank = np.ndim(value[0]) if hasattr(value[0], "shape") else -1
        if rank == example_rank + 1 or (example_rank == 0 and rank >= 1):
            return value[0]
    return value


def reshape_to_input(x: np.ndarray, input_shape: tuple[int, ...], what: str = "x") -> np.ndarray:
    """`x` (N examples) in a model's per-example `input_shape`: (n, 28, 28) images as
    (n, 28, 28, 1) for a CNN, as (n, 784) rows for a model on flat inputs, or flat rows
    as the images of an image model. `fit` itself takes only the model's shape (as Keras
    does); the tools load one data set for models of either kind. Nothing else is
    reshaped: (n, 14, 56) images for a 28x28 model hold as many values, not the same
    pixels.

    Raises:
        ValueError: the shapes are none of those (names `what` and both shapes).
    """
    x = np.asarray(x)
    shape = tuple(int(d) for d in input_shape)
    sample = tuple(x.shape[1:])
    if sample == shape:
        return x
    if int(np.prod(sample)) != int(np.prod(shape)) or not (sample + (1,) == shape or len(shape) == 1 or len(sample) == 1):
        layout = ("; as many values, but not a channel axis added or a flattening of the same pixels"
                  if int(np.prod(sample)) == int(np.prod(shape)) else "")
        raise ValueError(f"the model takes inputs of shape {shape} ({int(np.prod(shape))} values); {what} are "
                         f"{sample} ({int(np.prod(sample))} values){layout}")
    return x.reshape((len(x),) + shape)


def epoch_order(seed: int, epoch: int, n: int, shuffle: bool = True) -> np.ndarray:
    """Shuffle of epoch `epoch`, derived from (seed, epoch) only (a resumed run sees the
    same); with `shuffle=False` (`fit(shuffle=False)`) the order given, 0 .. n - 1."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def example_weights(sample_weight: Any, class_weight: Any, x: Any, y: np.ndarray, num_classes: int,
                    dataset_weights: np.ndarray | None = None) -> np.ndarray | None:
    """One float32 weight per training example, or None (every example weighs 1).

    As `keras.Model.fit`: `sample_weight` is one weight per example of `x` (NumPy inputs;
    shape (n,) or (n, 1)), or the third part of a `tf.data.Dataset`'s `(x, y, w)`
    elements; `class_weight` maps class ids to weights (classes it leaves out weigh
    1.0); not two of them. The loss of a batch is then the mean of the weighted
    per-example losses (Keras' "sum_over_batch_size"); weights must be finite and >= 0,
    and not all 0.

    Args:
        x: `fit`'s `x` as given (a `tf.data.Dataset` takes no `sample_weight`).
        y: the int32 labels `as_arrays` returned (all of them, before a validation split).
        dataset_weights: the weights `as_arrays` read from `x`'s `(x, y, w)` elements.

    Raises:
        ValueError / TypeError: naming `sample_weight` or `class_weight`.
    """
    if dataset_weights is not None:
        if sample_weight is not None or class_weight is not None:
            given = "sample_weight" if sample_weight is not None else "class_weight"
            raise ValueError(f"`x` is a tf.data.Dataset of (features, label, sample_weight); `{given}` cannot be "
                             "given with it (as in keras.Model.fit): fold the weights into the dataset's.")
        sample_weight = dataset_weights
    if sample_weight is None and class_weight is None:
        return None
    if sample_weight is not None and class_weight is not None:
        raise ValueError("`class_weight` and `sample_weight` cannot be given together (as in keras.Model.fit); "
                         "fold the class weights into `sample_weight`.")
    if class_weight is not None:
        if not isinstance(class_weight, dict):
            raise TypeError(f"`class_weight` must be a dict from class ids to weights, received {type(class_weight).__name__}.")
        table = np.ones(num_classes, np.float64)
        for key, value in class_weight.items():
            if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer)) or not 0 <= key < num_classes:
                raise ValueError(f"`class_weight` has the key {key!r}; expected class ids in [0, {num_classes}) "
                                 f"(the last layer has {num_classes} units).")
            table[int(key)] = _weight_value(value, f"class_weight[{key!r}]")
        weights = table[y]
        what = "`class_weight`"
    else:
        if isinstance(x, tf.data.Dataset) and dataset_weights is None:
            raise ValueError("`sample_weight` needs NumPy inputs (one weight per example of `x`); `x` is a "
                             "tf.data.Dataset: pass `class_weight`, or the data as arrays.")
        what = "`sample_weight`" if dataset_weights is None else "the sample weights of `x` (its elements' third part)"
        weights = np.asarray(sample_weight)
        if weights.ndim == 2 and weights.shape[1] == 1:
            weights = weights[:, 0]
        if weights.ndim != 1 or len(weights) != len(y):
            raise ValueError(f"{what} must hold one weight per example, shape ({len(y)},); "
                             f"received shape {weights.shape}.")
        if weights.dtype == np.bool_ or not np.issubdtype(weights.dtype, np.number) or np.iscomplexobj(weights):
            raise TypeError(f"{what} must be real numbers, received dtype {weights.dtype}.")
        weights = weights.astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(weights) | (weights < 0))
        if bad.size:
            raise ValueError(f"{what} must be finite and >= 0; example {int(bad[0])} has {float(weights[bad[0]])}.")
    require_some_weight(weights, what)
    return weights.astype(np.float32)


def require_some_weight(weights: np.ndarray, what: str, left_by: str = "") -> None:
    """Refuses weights that are all 0 (nothing would be learned), naming `what` they came
    from (as shown: "`sample_weight`") and, with `left_by`, the argument that left those
    examples."""
    if not np.any(weights > 0):
        where = f" left by `{left_by}`" if left_by else ""
        raise ValueError(f"{what} gives every training example{where} the weight 0: nothing would be learned.")


def _weight_value(value: Any, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0, received {value!r}.")
    return float(value)


def fingerprint(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> str:
    """'N examples, sha256 <16 hex>' of a training set (checkpoint settings); the example
    weights, when given, are part of it (without them the hash is what it always was)."""
    h = hashlib.sha256()
    h.update(memoryview(np.ascontiguousarray(x)).cast("B"))
    h.update(memoryview(np.ascontiguousarray(y)).cast("B"))
    if weights is not None:
        h.update(memoryview(np.ascontiguousarray(weights)).cast("B"))
    return f"{len(x)} examples, sha256 {h.hexdigest()[:16]}"


class FeatureSelection:
    """The training inputs with only the kept input features.

    `select(features)` selects when the kept features change (not per step: a column
    gather is an extra copy of every batch), from the previous selection, which holds
    them all (kept features only ever shrink, and a rollback or resume restores
    features of this run). Only the selection is kept in memory, not the full inputs
    beside it. Images (convolutional chains) are never selected (`features` None).

    With an `augment` function (`tf_dynhp.augment`), the full images are kept instead,
    and `epoch_inputs(epoch)` transforms them for each epoch, then takes the kept
    features: the transform needs every pixel, also those the model no longer reads.
    From epoch `augment_epochs` on (0-based; `fit(augment_until=...)`) the images are
    taken as they are.
    """

    def __init__(self) -> None:
        self.x = self.y = None
        self.weights: tf.Tensor | None = None
        self._primed: tuple[int, np.ndarray] | None = None
        self.features: np.ndarray | None = None
        self.augment = None
        self.images: np.ndarray | None = None
        self.seed = 0
        self.flat = True
        self.augment_epochs: int | None = None

    def set_data(self, x_all: tf.Tensor, y_all: tf.Tensor, features: np.ndarray | None,
                 augment: Any = None, image_shape: tuple[int, ...] | None = None, seed: int = 0,
                 augment_epochs: int | None = None, weights: tf.Tensor | None = None) -> None:
        """The training set, all features (flattened) or images; then `select(features)`.
        With `augment`, `image_shape` is one example's shape as the function receives it,
        and `augment_epochs` the number of epochs it transforms (None: all). `weights`:
        one per example (`example_weights`), or None."""
        self.y, self.weights = y_all, weights
        self.augment, self.seed, self.augment_epochs = augment, int(seed), augment_epochs
        if augment is not None:
            self.flat = len(x_all.shape) == 2  # a dense-first chain reads flattened features
            self.images = np.asarray(x_all).reshape((-1,) + tuple(image_shape))
            self.x, self.features = None, None
            self.select(features)
            return
        self.x, self.features = x_all, None
        self.select(features)

    def __len__(self) -> int:
        return 0 if self.y is None else int(self.y.shape[0])

    @property
    def targets(self) -> Any:
        """What the step gathers a batch of besides the inputs: the labels, or
        (labels, weights) when the examples are weighted."""
        return self.y if self.weights is None else (self.y, self.weights)

    def epoch_inputs(self, epoch: int) -> tf.Tensor:
        """The inputs of epoch `epoch` (0-based): the selection, or with `augment` the
        epoch's transform of the images (a function of the seed and the epoch only), the
        images as they are from epoch `augment_epochs` on."""
        if self.augment is None:
            return self.x
        primed, self._primed = self._primed, None
        if primed is not None and primed[0] == epoch:
            images = primed[1]
        else:
            images = aug.epoch_images(self.augment, self.images, self.seed, epoch, self.augment_epochs)
        if not self.flat:
            return tf.constant(images)
        flat = images.reshape(len(images), -1)
        return tf.constant(flat if self.features is None else flat[:, self.features])

    def prime(self, epoch: int, images: np.ndarray) -> None:
        """`images` are epoch `epoch`'s transform, already computed (a check before
        training): the next `epoch_inputs(epoch)` takes them instead of computing them
        again (once; the transform is a function of the seed and the epoch only)."""
        self._primed = (int(epoch), images)

    def select(self, features: np.ndarray | None) -> None:
        if self.augment is not None:  # the full images stay; epoch_inputs takes the features
            self.features = None if features is None else np.asarray(features, dtype=np.int64)
            return
        if self.x is None:
            return
        want = None if features is None else np.asarray(features, dtype=np.int64)
        have = self.features
        if (want is None and have is None) or (want is not None and have is not None and np.array_equal(want, have)):
            return
        if have is None:
            have = np.arange(int(self.x.shape[1]))
        if want is None or not np.isin(want, have).all():
            raise RuntimeError(
                f"Cannot select input features {want if want is None else want.tolist()[:8]} from the "
                f"{len(have)} features the training data still holds: kept features only shrink."
            )
        position = {int(f): i for i, f in enumerate(have)}
        self.x = tf.gather(self.x, tf.constant([position[int(f)] for f in want], tf.int32), axis=1)
        self.features = want
