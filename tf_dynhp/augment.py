"""Data augmentation for `tf_dynhp.fit(augment=...)`: every epoch trains on a new
random transform of the training images.

`fit` reads its training set into arrays once (a `tf.data` map would be frozen at that
read), so augmentation is a function `augment(images, rng) -> images` that `fit` calls
at the start of every augmented epoch (all, or the first ones with
`fit(augment_until=...)`) on the whole training set, with `epoch_rng(seed, epoch)`:
the images of an epoch are a function of (seed, epoch) only, like the epoch's order
(`tf_dynhp.data.epoch_order`), so two runs with one seed are identical and a resumed
run sees the images the uninterrupted one saw. Hard pruning of input features keeps
working: the transform runs on the full images, then only the kept features are taken.

Not in the paper, nor in Louizos et al. (2018): both train on the images as they are.
`RandomShift` is the classic augmentation of MNIST classifiers (Simard et al. 2003,
"Best practices for convolutional neural networks applied to visual document
analysis": affine distortions take a 2-layer MLP from 1.6% to 1.1% test error), with
a left-right mirror for Fashion-MNIST, whose classes (garments, shoes, bags) keep
their label in a mirror. `RandomErasing` blanks a random rectangle (Zhong et al. 2020,
"Random Erasing Data Augmentation", AAAI; DeVries & Taylor 2017's cutout with a random
size), and `Augmentations` applies several in turn.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import numbers
import os
import random
import types
from typing import Any, Callable

import numpy as np

__all__ = ["RandomShift", "RandomErasing", "Augmentations", "from_config", "shift_images", "epoch_rng", "augmented_epochs", "epoch_images", "describe", "describe_partial",
           "describe_callable", "check_output"]


def _whole_number(name: str, value: Any, least: int = 0) -> int:
    """`_checks.whole_number`, here again: this module stays NumPy only (the benchmark's
    tfmot helper loads it from its file, in a venv without tf_dynhp and Keras 3), and
    importing `tf_dynhp._checks` imports the package."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < least:
        raise ValueError(f"Invalid value received for argument `{name}`. Expected an integer >= {least}. "
                         f"Received: {name}={value!r}")
    return int(value)


# Mixed into the generator's seed so the augmentation draws are independent of the
# epoch order (`tf_dynhp.data.epoch_order` draws from default_rng([seed, epoch])).
_STREAM = 0xA06


def _real(value: Any) -> bool:
    """Whether `value` is a real number (NumPy's included), not a bool: the arguments'
    check of the augmentations (this module stays NumPy-only, so not `_checks.real_number`)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator `fit` hands `augment` at epoch `epoch` (0-based) of a run seeded `seed`
    (both whole numbers >= 0; 1.5 was read as 1)."""
    return np.random.default_rng([_whole_number("seed", seed), _whole_number("epoch", epoch), _STREAM])


def shift_images(images: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Each image moved down `dy[i]` and right `dx[i]` pixels (negative: up / left), the
    pixels that enter filled with 0.

    Args:
        images: (N, H, W) or (N, H, W, C).
        dy, dx: integer arrays of length N.

    Raises:
        ValueError: `images` is not of rank 3 or 4, or `dy` / `dx` are not N whole
            numbers (a shorter array blanked the images past it, 0.9 was cut to 0).
    """
    images = np.asarray(images)
    if images.ndim not in (3, 4):
        raise ValueError(f"`images` must be (N, H, W) or (N, H, W, C); received shape {images.shape}.")
    n, h, w = images.shape[:3]
    shifts = []
    for name, value in (("dy", dy), ("dx", dx)):
        value = np.asarray(value)
        if value.shape != (n,) or not (np.issubdtype(value.dtype, np.integer) or
                                       (np.issubdtype(value.dtype, np.floating) and np.all(value == np.round(value)))):
            raise ValueError(f"`{name}` must hold one whole number of pixels per image, shape ({n},); received "
                             f"{value.dtype} of shape {value.shape}.")
        shifts.append(value.astype(np.int64))
    dy, dx = shifts
    out = np.zeros_like(images)
    # One slice copy per distinct (dy, dx): (2s + 1)^2 vectorized copies, not N.
    pairs, which = np.unique(np.stack([dy, dx], axis=1), axis=0, return_inverse=True)
    for k, (a, b) in enumerate(pairs):
        if abs(a) >= h or abs(b) >= w:
            continue
        rows = np.flatnonzero(which.reshape(-1) == k)
        src = images[rows, max(-a, 0) : h - max(a, 0), max(-b, 0) : w - max(b, 0)]
        out[rows, max(a, 0) : h - max(-a, 0), max(b, 0) : w - max(-b, 0)] = src
    return out


@dataclasses.dataclass(frozen=True)
class RandomShift:
    """Moves every image by a random whole number of pixels in [-`max_shift`,
    `max_shift`] along each spatial axis (zero fill) and, with `flip`, mirrors a random
    half of them left-right.

    `fraction` < 1 transforms (moves, and with `flip` may mirror) only that share of the
    images, drawn anew every epoch; the others stay as they are, so part of every epoch is
    the test images' distribution. The draws of `fraction=1` are those of the class before
    `fraction` existed.

    `fit(augment=RandomShift(2, flip=True))`; `get_config()` is what a checkpoint
    records, so a resume with another augmentation is refused.
    """

    max_shift: int = 2
    flip: bool = False
    fraction: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.max_shift, bool) or not isinstance(self.max_shift, (int, np.integer)) or self.max_shift < 0:
            raise ValueError(f"`max_shift` must be an int >= 0; received {self.max_shift!r}.")
        if not isinstance(self.flip, (bool, np.bool_)):
            raise ValueError(f"`flip` must be a bool; received {self.flip!r}.")
        if not _real(self.fraction) or not 0.0 <= float(self.fraction) <= 1.0:
            raise ValueError(f"`fraction` must be a number in [0, 1]; received {self.fraction!r}.")
        # A Python float, so that equal augmentations record equal configs (np.float32(0.3) is not 0.3).
        object.__setattr__(self, "fraction", float(self.fraction))

    def __call__(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim not in (3, 4):
            raise ValueError(f"RandomShift expects images shaped (N, H, W) or (N, H, W, C); received shape {images.shape}.")
        n = images.shape[0]
        s = int(self.max_shift)
        dy = rng.integers(-s, s + 1, n)
        dx = rng.integers(-s, s + 1, n)
        kept = None
        if self.fraction < 1.0:
            kept = rng.random(n) >= self.fraction
            dy[kept] = 0
            dx[kept] = 0
        if self.flip:
            mirrored = rng.random(n) < 0.5
            if kept is not None:
                mirrored &= ~kept
            images = np.where(mirrored.reshape((n,) + (1,) * (images.ndim - 1)), images[:, :, ::-1], images)
        return shift_images(images, dy, dx) if s else np.array(images)

    def get_config(self) -> dict[str, Any]:
        config = {"class": "RandomShift", "max_shift": int(self.max_shift), "flip": bool(self.flip)}
        if self.fraction < 1.0:  # absent at 1, so checkpoints from before `fraction` still resume
            config["fraction"] = float(self.fraction)
        return config


@dataclasses.dataclass(frozen=True)
class RandomErasing:
    """Random erasing (Zhong et al. 2020): each image, with probability `probability`,
    gets one rectangle set to 0 (the background of MNIST-like images; the paper fills
    with noise, cutout with 0). Its area is a share s ~ U(`area`) of the image, its
    aspect ratio h / w ~ U(`ratio`, 1 / `ratio`), its place uniform among those that fit
    (a side longer than the image is cut to it). The paper's defaults: 0.5, (0.02, 0.4),
    0.3.

    `fit(augment=Augmentations((RandomShift(1), RandomErasing(0.5))))`.
    """

    probability: float = 0.5
    area: tuple[float, float] = (0.02, 0.4)
    ratio: float = 0.3

    def __post_init__(self) -> None:
        p = self.probability
        if not _real(p) or not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"`probability` must be a number in [0, 1]; received {p!r}.")
        area = tuple(self.area) if isinstance(self.area, (tuple, list)) else None
        if area is None or len(area) != 2 or not all(map(_real, area)) or not 0.0 < float(area[0]) <= float(area[1]) <= 1.0:
            raise ValueError(f"`area` must be two numbers 0 < low <= high <= 1; received {self.area!r}.")
        r = self.ratio
        if not _real(r) or not 0.0 < float(r) <= 1.0:
            raise ValueError(f"`ratio` must be a number in (0, 1]; received {r!r}.")
        # Python floats, so that equal augmentations record equal configs.
        object.__setattr__(self, "probability", float(p))
        object.__setattr__(self, "area", (float(area[0]), float(area[1])))
        object.__setattr__(self, "ratio", float(r))

    def __call__(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim not in (3, 4):
            raise ValueError(f"RandomErasing expects images shaped (N, H, W) or (N, H, W, C); received shape {images.shape}.")
        n, h, w = images.shape[:3]
        erased = rng.random(n) < self.probability
        share = rng.uniform(self.area[0], self.area[1], n)
        aspect = rng.uniform(self.ratio, 1.0 / self.ratio, n)
        eh = np.clip(np.rint(np.sqrt(share * h * w * aspect)), 1, h).astype(np.int64)
        ew = np.clip(np.rint(np.sqrt(share * h * w / aspect)), 1, w).astype(np.int64)
        y0 = np.floor(rng.random(n) * (h - eh + 1)).astype(np.int64)
        x0 = np.floor(rng.random(n) * (w - ew + 1)).astype(np.int64)
        rows = np.arange(h)[None, :]
        cols = np.arange(w)[None, :]
        in_rows = (rows >= y0[:, None]) & (rows < (y0 + eh)[:, None]) & erased[:, None]
        in_cols = (cols >= x0[:, None]) & (cols < (x0 + ew)[:, None])
        mask = in_rows[:, :, None] & in_cols[:, None, :]
        if images.ndim == 4:
            mask = mask[..., None]
        return np.where(mask, np.zeros((), images.dtype), images)

    def get_config(self) -> dict[str, Any]:
        return {"class": "RandomErasing", "probability": self.probability, "area": list(self.area), "ratio": self.ratio}


@dataclasses.dataclass(frozen=True)
class Augmentations:
    """Several augmentations applied in turn, each drawing from the one generator `fit`
    passes (so the images stay a function of seed and epoch)."""

    steps: tuple[Any, ...]

    def __post_init__(self) -> None:
        steps = tuple(self.steps) if isinstance(self.steps, (tuple, list)) else None
        if not steps or not all(callable(s) for s in steps):
            raise ValueError(f"`steps` must be a non-empty sequence of augmentations; received {self.steps!r}.")
        object.__setattr__(self, "steps", steps)

    def __call__(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for step in self.steps:
            images = check_output(step(images, rng), np.asarray(images))
        return images

    def get_config(self) -> dict[str, Any]:
        return {"class": "Augmentations", "steps": [describe(s) for s in self.steps]}


def from_config(config: dict[str, Any]) -> Any:
    """The augmentation whose `get_config()` is `config` (`RandomShift`, `RandomErasing`
    or `Augmentations` of them): how the benchmark's tfmot process, which cannot import
    the package, rebuilds the DynHP run's augmentation."""
    if not isinstance(config, dict) or "class" not in config:
        raise ValueError(f"an augmentation config must be a dict with a 'class'; received {config!r}.")
    fields = {k: v for k, v in config.items() if k != "class"}
    kind = config["class"]
    classes = {"RandomShift": RandomShift, "RandomErasing": RandomErasing, "Augmentations": Augmentations}
    if kind not in classes:
        raise ValueError(f"unknown augmentation class {kind!r}; expected RandomShift, RandomErasing or Augmentations.")
    unknown = set(fields) - {f.name for f in dataclasses.fields(classes[kind])}
    if unknown:
        raise ValueError(f"{kind} has no field(s) {sorted(unknown)}; received the config {config!r}.")
    if kind == "Augmentations":
        steps = fields.get("steps", ())
        if not isinstance(steps, (list, tuple)):
            raise ValueError(f"Augmentations' `steps` must be a list of configs; received {steps!r}.")
        return Augmentations(tuple(from_config(step) for step in steps))
    if kind == "RandomErasing" and isinstance(fields.get("area"), list):
        fields["area"] = tuple(fields["area"])  # JSON has no tuples
    return classes[kind](**fields)


def augmented_epochs(augment_until: float, epochs: int) -> int:
    """How many epochs, from the first, train on `augment`'s images with
    `fit(augment_until=...)`: `ceil(augment_until * epochs)`, at least 1; the rest train
    on the images as they are. A product within a millionth (relative) of a whole number
    is that number, so a fraction that floating point cannot hold exactly gives the
    epoch it names: 0.55 * 100 = 55.000000000000007 gives 55, not 56, and so does a
    float32 0.55 (0.550000011920929, also once `fit` has made it a Python float)."""
    product = float(augment_until) * epochs
    nearest = round(product)
    if abs(product - nearest) <= 1e-6 * max(1.0, abs(product)):
        product = nearest
    return max(1, math.ceil(product))


def epoch_images(augment: Callable, images: np.ndarray, seed: int, epoch: int,
                 augment_epochs: int | None = None) -> np.ndarray:
    """The training images of epoch `epoch` (0-based) of a run seeded `seed`:
    `augment(images, epoch_rng(seed, epoch))` (checked by `check_output`), or `images`
    as they are from epoch `augment_epochs` on (`augmented_epochs`; None: every epoch is
    augmented). `fit`, the benchmark's Keras baselines and its tfmot helper all draw
    their epochs here, so the three see the same images."""
    if augment_epochs is not None and epoch >= augment_epochs:
        return images
    return check_output(augment(images, epoch_rng(seed, epoch)), images)


#: How deep `_argument` looks into objects, closures and functions it describes.
_DEPTH = 3
_GENERATORS = (np.random.Generator, np.random.RandomState, np.random.BitGenerator, random.Random)


def _code_digest(code: types.CodeType) -> str:
    """A short sha256 of a function's code: bytecode, the names it uses, its constants
    (nested functions by their own digest). Line numbers are left out, so the same
    function moved in its file is the same; a changed body is another."""
    h = hashlib.sha256(code.co_code)
    h.update(repr(code.co_names).encode())
    for const in code.co_consts:
        h.update((_code_digest(const) if isinstance(const, types.CodeType) else repr(const)).encode())
    return h.hexdigest()[:16]


def _argument(value: Any, depth: int = 0) -> Any:
    """A partial's argument, a closure's cell or an object's attribute as the checkpoint
    settings record it: two values that would give other images must differ, and one
    value must read the same in another process (a resume). So an array is recorded by
    shape, dtype and a hash of its bytes (its `repr` elides all but a few values); a
    function or module by name (and a lambda's or closure's content, `describe_callable`);
    an object whose `repr` is its memory address by its class and attributes; a random
    generator by a random token, with the reason: its state is not in the checkpoint, so
    a resume is always refused, saying why. Anything else as it is (its `repr`)."""
    if isinstance(value, np.ndarray):
        return ("ndarray", value.shape, str(value.dtype), hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest())
    if isinstance(value, _GENERATORS):
        return (type(value).__qualname__, "a random generator held by the function: its state is not in the checkpoint "
                "(draw from the rng fit passes instead)", os.urandom(8).hex())
    if isinstance(value, types.ModuleType):
        return ("module", value.__name__)
    if depth >= _DEPTH:
        return value
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, types.MethodType, type, functools.partial)):
        if isinstance(value, functools.partial):
            return describe_partial(value, lambda f: _argument(f, depth + 1))
        name = f"{getattr(value, '__module__', None) or ''}.{getattr(value, '__qualname__', type(value).__qualname__)}"
        return describe_callable(value, name, depth + 1)
    if type(value).__repr__ is object.__repr__ and hasattr(value, "__dict__"):
        return (type(value).__qualname__, tuple(sorted((k, _argument(v, depth + 1)) for k, v in vars(value).items())))
    return value


def describe_callable(func: Callable, name: str, depth: int = 0) -> Any:
    """A function or callable object as checkpoint settings record it: `name` alone when
    that tells it apart (a named function of a module, a class, a builtin), else `name`
    with what does: a lambda's code (every lambda is named `<lambda>`), a closure's
    captured values (`make_shift(1)` and `make_shift(2)` share a name), a bound method's
    object, or a callable object's attributes (`Noise(0.1)` and `Noise(5.0)` share a
    class). Values through `_argument`. Global variables a function reads are not
    recorded. `describe` and `tf_dynhp.losses.describe` use it."""
    details: dict[str, Any] = {}
    if isinstance(func, types.MethodType):
        details["self"] = repr(_argument(func.__self__, depth))
    elif isinstance(func, types.FunctionType):
        if func.__name__ == "<lambda>":
            details["code"] = _code_digest(func.__code__)
        if func.__closure__:
            cells = []
            for cell in func.__closure__:
                try:
                    cells.append(_argument(cell.cell_contents, depth))
                except ValueError:  # a cell not yet filled
                    cells.append("<empty>")
            details["closure"] = repr(tuple(cells))
    elif not isinstance(func, (type, types.BuiltinFunctionType)) and hasattr(func, "__dict__"):
        details["state"] = repr(sorted((k, _argument(v, depth)) for k, v in vars(func).items()))
    return {"callable": name, **details} if details else name


def describe_partial(partial: functools.partial, describe_func: Callable[[Any], Any]) -> dict[str, Any]:
    """A `functools.partial` as checkpoint settings record it: `describe_func(partial.func)`
    and the `repr` of its arguments (through `_argument`: arrays by content, objects by
    attributes), so two partials of one function with other arguments differ. `describe`
    and `tf_dynhp.losses.describe` both use it; it lives here because this module stays
    NumPy-only."""
    return {"partial": describe_func(partial.func), "args": repr(tuple(_argument(a) for a in partial.args)),
            "keywords": repr(sorted((k, _argument(v)) for k, v in partial.keywords.items()))}


def describe(augment: Callable | None) -> Any:
    """What a checkpoint's settings record of `augment`: its `get_config()` when it has
    one, a `functools.partial`'s function and arguments (two partials of one function
    with other arguments are other augmentations), else its qualified name, with a
    lambda's code, a closure's values or a callable object's attributes
    (`describe_callable`); None without augmentation."""
    if augment is None:
        return None
    if hasattr(augment, "get_config"):
        return augment.get_config()
    if isinstance(augment, functools.partial):
        return describe_partial(augment, describe)
    return describe_callable(augment, getattr(augment, "__qualname__", type(augment).__qualname__))


def check_output(out: Any, images: np.ndarray) -> np.ndarray:
    """`augment`'s result as a float32 array, refused (naming `augment`) unless it has
    the shape of the images it was given and finite values."""
    out = np.asarray(out)
    if out.shape != images.shape:
        raise ValueError(f"`augment` returned images of shape {out.shape}; expected the shape it was given, {images.shape}.")
    if not np.issubdtype(out.dtype, np.number):
        raise ValueError(f"`augment` returned {out.dtype} values; expected numbers.")
    out = out.astype(np.float32, copy=False)
    if not np.isfinite(out).all():
        raise ValueError("`augment` returned non-finite values (NaN or inf).")
    return out
