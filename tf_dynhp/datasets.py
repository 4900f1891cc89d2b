"""Loaders for MNIST and Fashion-MNIST without TensorFlow.

`load` returns the same `((x_train, y_train), (x_test, y_test))` layout as
`keras.datasets.mnist.load_data()` but with pixels already scaled to
`[0, 1]` float32. The data are read from the standard IDX files
(gzip-compressed or raw) that the original distributions, the Debian package
`dataset-fashion-mnist` and the Keras cache use, or from the `mnist.npz`
file that `keras.datasets.mnist` caches.

Where the data are looked for, in order:

1. the `data_dir` argument: the folder holding the four IDX files, or a
   parent folder containing `<folder>/` (`mnist/`, `fashion-mnist/` or
   `fashion_mnist/`); for MNIST also `mnist.npz` in it, or an `.npz` path.
   A `data_dir` given explicitly is the only place looked at: when the data
   are not there, `FileNotFoundError` names it and what is missing (no other
   folder, no download);
2. the environment variable `TF_DYNHP_DATA`, the same layouts: a folder there
   without the data is passed over for the places below (the error, when the
   data are found nowhere, lists it with the reason);
3. the system folder `/usr/share/datasets/<folder>` (Debian's
   `apt-get install dataset-fashion-mnist` installs Fashion-MNIST there);
4. the Keras cache (`$KERAS_HOME/datasets` or `~/.keras/datasets`):
   `fashion-mnist/` as written by `keras.datasets.fashion_mnist`, and for
   MNIST also `mnist.npz` as written by `keras.datasets.mnist`;
5. a download into the Keras cache (only with `download=True`).

Where a `SHA256SUMS` file (the `sha256sum` format, or BSD's `SHA256 (name) = ...`)
lies in the folder holding the files or in its parent, the files it lists that
are read are checked against it (a mismatch is a `ValueError` naming the file; so
is a line in neither format that names a file read; other lines are ignored).

Only `gzip`, `hashlib` and `numpy` are imported at module import time; `urllib` is
imported lazily when a download is actually needed.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import sys
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["load", "read_idx", "find_dataset_dir"]

#: Environment variable naming a data folder (or a parent of data folders).
ENV_VAR = "TF_DYNHP_DATA"
#: Where Debian-style `dataset-*` packages install data sets.
SYSTEM_DATA_DIR = "/usr/share/datasets"
#: Default Keras dataset cache, used when `KERAS_HOME` is not set.
KERAS_CACHE_DIR = "~/.keras/datasets"
#: Base URL Keras downloads MNIST and Fashion-MNIST from.
DOWNLOAD_BASE_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"

# The four IDX files of a data set, without the optional ".gz" suffix.
TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
IDX_FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

IMAGE_SHAPE = (28, 28)
#: Both data sets have ten classes, labels 0-9.
NUM_CLASSES = 10

# IDX type code -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20  # bytes read per call while decompressing (a stream breaking off is told to within one)
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_MNIST_NPZ = "mnist.npz"
# SHA-256 Keras pins for mnist.npz (keras/src/datasets/mnist.py).
_MNIST_NPZ_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"


class _Spec(NamedTuple):
    folder: str  # canonical folder name (Debian, Keras cache)
    aliases: tuple[str, ...]  # folder names accepted under data_dir / env var
    npz: str | None  # file name in the Keras cache, if Keras caches an npz
    apt_package: str | None  # Debian package providing the data


_DATASETS = {
    "mnist": _Spec("mnist", ("mnist",), _MNIST_NPZ, None),
    "fashion_mnist": _Spec(
        "fashion-mnist", ("fashion-mnist", "fashion_mnist"), None, "dataset-fashion-mnist"
    ),
}
_NAME_ALIASES = {"fashion-mnist": "fashion_mnist"}

PathLike = str | os.PathLike


# --------------------------------------------------------------------------
# IDX reading
# --------------------------------------------------------------------------


def _read_exactly(stream, n: int) -> bytes:
    """Read up to `n` bytes, looping over short reads; fewer only at EOF."""
    parts = []
    remaining = n
    while remaining > 0:
        part = stream.read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def _open_maybe_gzip(path: Path):
    """Open `path` for binary reading, decompressing if it is gzip data."""
    raw = open(path, "rb")  # noqa: SIM115 - returned to the caller
    try:
        head = raw.read(2)
        raw.seek(0)
    except BaseException:
        raw.close()
        raise
    if head == _GZIP_MAGIC:
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw, True
    return raw, raw, False


def read_idx(path: PathLike) -> np.ndarray:
    """Read one IDX file (the MNIST file format) into a NumPy array.

    The file may be gzip-compressed or raw; this is detected from its first
    bytes, not from its name. The header is a big-endian magic number
    `0x0000TTNN` (`TT` the element type code, `NN` the number of
    dimensions) followed by `NN` big-endian int32 dimension sizes and then the
    elements in C order. Supported type codes: 0x08 uint8, 0x09 int8,
    0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64 (multi-byte types are
    big-endian in the file and are returned in native byte order).

    Args:
        path: Path of the IDX file, e.g. `.../train-images-idx3-ubyte.gz`.

    Returns:
        A writable array with the shape given by the header and the dtype
        given by the type code (native byte order).

    Raises:
        FileNotFoundError: If `path` does not exist.
        ValueError: If the file is truncated (header or data), has a wrong
            magic number, holds more data than the header announces, or is
            a broken gzip stream. The message names `path` and says what was
            expected and what was received.
    """
    path = Path(path)
    stream, raw, compressed = _open_maybe_gzip(path)
    received = 0  # decompressed bytes read so far, for error messages
    try:
        try:
            magic = _read_exactly(stream, 4)
            received = len(magic)
            if len(magic) < 4:
                raise ValueError(
                    f"{path}: truncated IDX file: expected a 4-byte magic number, "
                    f"received {len(magic)} bytes"
                )
            code, ndim = magic[2], magic[3]
            if magic[:2] != b"\0\0" or code not in _IDX_DTYPES:
                codes = ", ".join(
                    f"0x{c:02X} {d.name}" for c, d in _IDX_DTYPES.items()
                )
                raise ValueError(
                    f"{path}: wrong magic number: expected 0x0000TTNN with TT an "
                    f"IDX type code ({codes}) and NN the number of dimensions "
                    f"(e.g. 0x00000803 for uint8 images, 0x00000801 for uint8 "
                    f"labels), received 0x{magic.hex().upper()}"
                )
            dims_raw = _read_exactly(stream, 4 * ndim)
            received += len(dims_raw)
            if len(dims_raw) < 4 * ndim:
                raise ValueError(
                    f"{path}: truncated IDX header: expected {4 * ndim} bytes of "
                    f"dimension sizes for {ndim} dimensions after the magic "
                    f"number, received {len(dims_raw)}"
                )
            shape = tuple(int(d) for d in np.frombuffer(dims_raw, dtype=">u4"))
            dtype = _IDX_DTYPES[code]
            count = 1
            for d in shape:
                count *= d
            expected = count * dtype.itemsize

            # Read the payload in chunks into a growing bytearray (never
            # preallocate from header values, which may be garbage), reading
            # one byte past the announced size to detect trailing data.
            buf = bytearray()
            while len(buf) <= expected:
                part = stream.read(min(_CHUNK, expected + 1 - len(buf)))
                if not part:
                    break
                buf += part
                received += len(part)  # here, not after the loop: a stream breaking off in it says how far it got
            got = len(buf)
            if got > expected:
                while part := stream.read(_CHUNK):
                    got += len(part)
                    received += len(part)
        except (EOFError, zlib.error, gzip.BadGzipFile) as err:
            raise ValueError(
                f"{path}: truncated or corrupt gzip data: expected a complete gzip "
                f"stream, received one that broke off after at least {received} "
                f"decompressed bytes ({err})"
            ) from err
    finally:
        stream.close()
        if raw is not stream:
            raw.close()

    if got != expected:
        kind = {3: "pixel data", 1: "label data"}.get(ndim, "data")
        dims_text = " x ".join(str(d) for d in shape) or "scalar"
        problem = "truncated IDX file" if got < expected else "wrong element count"
        raise ValueError(
            f"{path}: {problem}: expected {expected} bytes of {kind} after the "
            f"header ({dims_text}, {dtype.name}, {dtype.itemsize} byte(s) each), "
            f"received {got}"
        )
    array = np.frombuffer(buf, dtype=dtype, count=count).reshape(shape)
    if not dtype.isnative and dtype.itemsize > 1:
        array = array.byteswap(inplace=True).view(dtype.newbyteorder("="))
    return array


# --------------------------------------------------------------------------
# Locating the data
# --------------------------------------------------------------------------


def _canonical_name(name: str) -> str:
    key = _NAME_ALIASES.get(name, name) if isinstance(name, str) else None
    if key not in _DATASETS:
        raise ValueError(
            "Invalid value received for argument `name`. Expected one of "
            f"{list(_DATASETS)}. Received: name={name!r}"
        )
    return key


def _default_cache_dir() -> Path:
    keras_home = os.environ.get("KERAS_HOME")
    if keras_home:
        return Path(keras_home).expanduser() / "datasets"
    return Path(KERAS_CACHE_DIR).expanduser()


def _idx_file(folder: Path, base: str) -> Path | None:
    """Return `folder/base.gz` or `folder/base`, whichever exists first."""
    for candidate in (folder / f"{base}.gz", folder / base):
        if candidate.is_file():
            return candidate
    return None


def _check_folder(folder: Path) -> str | None:
    """Return None if `folder` holds all four IDX files, else why not."""
    if not folder.exists():
        return "does not exist"
    if not folder.is_dir():
        return "not a directory"
    missing = [f"{base}[.gz]" for base in IDX_FILES if _idx_file(folder, base) is None]
    if len(missing) == len(IDX_FILES):
        return "no IDX files"
    if missing:
        return "incomplete, missing " + ", ".join(missing)
    return None


def _check_npz(path: Path) -> str | None:
    if not path.exists():
        return "does not exist"
    if not path.is_file():
        return "not a file"
    return None


def _candidates(base: Path, spec: _Spec) -> list[tuple[Path, bool]]:
    """Candidates (path, is_npz) under a user-given folder (data_dir/env)."""
    if base.suffix == ".npz" and base.is_file():
        return [(base, True)]
    out = [(base, False)] + [(base / alias, False) for alias in spec.aliases]
    if spec.npz:
        out.append((base / spec.npz, True))
    return out


def _download(spec: _Spec, cache: Path) -> Path:
    """Download a data set into the Keras cache; return the folder/npz path.

    Raises:
        OSError: (or `http.client.HTTPException`, `ValueError`) on failure.
    """
    import urllib.request

    from tf_dynhp._checks import write_atomic  # noqa: PLC0415 - keeps this module's import light

    def fetch(url: str, target: Path, sha256: str | None) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        print(f"Downloading data from {url}", file=sys.stderr)

        def copy(out) -> None:  # into write_atomic's temporary file; a bad digest leaves nothing
            digest = hashlib.sha256()
            with urllib.request.urlopen(url, timeout=60) as r:
                for chunk in iter(lambda: r.read(_CHUNK), b""):
                    digest.update(chunk)
                    out.write(chunk)
            if sha256 is not None and digest.hexdigest() != sha256:
                raise ValueError(f"{url}: expected SHA-256 {sha256}, received a file with SHA-256 {digest.hexdigest()}")

        write_atomic(target, copy)

    if spec.npz:
        target = cache / spec.npz
        fetch(DOWNLOAD_BASE_URL + spec.npz, target, _MNIST_NPZ_SHA256)
        return target
    folder = cache / spec.folder
    for base in IDX_FILES:
        if _idx_file(folder, base) is None:
            fetch(DOWNLOAD_BASE_URL + base + ".gz", folder / f"{base}.gz", None)
    return folder


def _download_description(spec: _Spec, cache: Path) -> str:
    if spec.npz:
        return f"{DOWNLOAD_BASE_URL}{spec.npz} -> {cache / spec.npz}"
    return f"{DOWNLOAD_BASE_URL}{{{','.join(IDX_FILES)}}}.gz -> {cache / spec.folder}"


def find_dataset_dir(
    name: str,
    data_dir: PathLike | None = None,
    *,
    download: bool = False,
    cache_dir: PathLike | None = None,
    system_dir: PathLike = SYSTEM_DATA_DIR,
) -> Path:
    """Find where a data set is stored, without reading it.

    Looks, in order, in `data_dir` (the folder itself, then its `<folder>/`
    subfolders, then for MNIST `mnist.npz` in it; `data_dir` may also be an
    `.npz` file), the folder named by `$TF_DYNHP_DATA` (same layouts; passed
    over when the data are not there; it and the places after it also when they
    hold the other data set, told by its training labels),
    `system_dir/<folder>`, the Keras cache (`cache_dir/<folder>`, and for
    MNIST `cache_dir/mnist.npz`), and finally downloads into the Keras cache
    if `download` is true. `<folder>` is `mnist` or `fashion-mnist` (also
    `fashion_mnist` under `data_dir` and `$TF_DYNHP_DATA`).

    Args:
        name: `"mnist"` or `"fashion_mnist"` (`"fashion-mnist"` also works).
        data_dir: Optional folder holding the four IDX files, or a parent
            folder containing `mnist/` / `fashion-mnist/`.
        download: Whether to download the data into the Keras cache when
            they are found nowhere. Defaults to `False` here (`load` defaults
            to `True`).
        cache_dir: Keras dataset cache folder. Defaults to
            `$KERAS_HOME/datasets` if `KERAS_HOME` is set, else
            `~/.keras/datasets`.
        system_dir: System data set folder; defaults to `/usr/share/datasets`.

    Returns:
        The folder holding the four IDX files (`.gz` or raw), or the path of
        an `.npz` file with keys `x_train`, `y_train`, `x_test`, `y_test`.

    Raises:
        ValueError: If `name` is not a supported data set.
        FileNotFoundError: If `data_dir` is given and does not hold the data
            (nothing else is searched then; the message names it and what is
            missing), or the data are found nowhere (and downloading is
            disabled or failed). The message lists every place looked at, in
            order, and how to get the data.
    """
    key = _canonical_name(name)
    spec = _DATASETS[key]
    cache = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
    system = Path(system_dir).expanduser()
    looked: list[str] = []

    def try_all(label: str, candidates: list[tuple[Path, bool]]) -> Path | None:
        for path, is_npz in candidates:
            problem = _check_npz(path) if is_npz else _check_folder(path)
            if problem is None and label != "data_dir argument":  # an explicit folder of the other: load names it
                problem = _holds_the_other(key, path, is_npz)
            if problem is None:
                return path
            looked.append(f"{label}: {path} ({problem})")
        return None

    # (label, candidates or None, text when the source is absent)
    sources: list[tuple[str, list[tuple[Path, bool]] | None, str]] = []
    data_candidates = (
        _candidates(Path(data_dir).expanduser(), spec) if data_dir is not None else None
    )
    sources.append(("data_dir argument", data_candidates, "(not given)"))
    env_value = os.environ.get(ENV_VAR, "")
    env_candidates = _candidates(Path(env_value).expanduser(), spec) if env_value else None
    sources.append((f"${ENV_VAR}", env_candidates, "(not set)"))
    sources.append(("system data folder", [(system / spec.folder, False)], ""))
    keras_candidates = [(cache / spec.folder, False)]
    if spec.npz:
        keras_candidates.append((cache / spec.npz, True))
    sources.append(("Keras cache", keras_candidates, ""))

    for label, candidates, absent in sources:
        if candidates is None:
            looked.append(f"{label}: {absent}")
            continue
        found = try_all(label, candidates)
        if found is not None:
            return found
        if label == "data_dir argument":  # an explicit folder: never data from elsewhere
            _raise_not_in_data_dir(key, spec, Path(data_dir), looked)

    what = _download_description(spec, cache)
    cause: BaseException | None = None
    if download:
        try:
            found = _download(spec, cache)
        except Exception as err:  # network, HTTP, disk or checksum problems
            cause = err
            looked.append(f"download {what} (failed: {type(err).__name__}: {err})")
        else:
            if (_check_npz(found) if found.suffix == ".npz" else _check_folder(found)) is None:
                return found
            looked.append(f"download {what} (failed: files still missing after download)")
    else:
        looked.append(f"download {what} (skipped: download=False)")

    places = "\n".join(f"  {i}. {place}" for i, place in enumerate(looked, 1))
    hints = []
    if spec.apt_package:
        hints.append(
            f"apt-get install {spec.apt_package}  (installs {system / spec.folder})"
        )
    files = ", ".join(f"{base}.gz" for base in IDX_FILES)
    hints += [
        f"set {ENV_VAR} to a folder holding the IDX files ({files}) or to its "
        f"parent folder containing '{spec.folder}/'",
        "pass data_dir=... (same rule)",
        f"call tf_dynhp.datasets.load({key!r}, download=True) to download "
        f"into {cache / (spec.npz or spec.folder)}",
    ]
    hint_text = "\n".join(f"  - {h}" for h in hints)
    raise FileNotFoundError(
        f"Dataset {key!r} not found. Looked in, in order:\n{places}\n"
        f"To get the data, either:\n{hint_text}"
    ) from cause


def _raise_not_in_data_dir(key: str, spec: _Spec, data_dir: Path, looked: list[str]) -> None:
    places = "\n".join(f"  - {place.split(': ', 1)[1]}" for place in looked)
    files = ", ".join(f"{base}[.gz]" for base in IDX_FILES)
    also = f", or {spec.npz} in it" if spec.npz else ""
    raise FileNotFoundError(
        f"Dataset {key!r} not found in data_dir={str(data_dir)!r} (given explicitly, so no other place "
        f"is looked at):\n{places}\nExpected the four IDX files ({files}) in it or in its "
        f"{' / '.join(repr(a + '/') for a in spec.aliases)} subfolder{also}. Pass data_dir=None to "
        f"search ${ENV_VAR}, the system folder and the Keras cache."
    )


# --------------------------------------------------------------------------
# Checksums
# --------------------------------------------------------------------------

SUMS_FILE = "SHA256SUMS"
_GNU_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")
_BSD_LINE = re.compile(r"^SHA256 \((.+)\) = ([0-9a-fA-F]{64})$")


def _read_sums(path: Path) -> tuple[dict[str, str], list[tuple[int, str]]]:
    """`SHA256SUMS` as ({normalised absolute path: hex digest}, [(line number, line)] of the
    lines in neither the GNU nor the BSD format).

    The odd lines are returned, not raised: a list kept beside the data may hold other
    things (a PGP-signed list's armour, another tool's lines); `_check_sums` refuses
    only those that name a file it checks.
    """
    out, odd = {}, []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if m := _GNU_LINE.match(line):
            digest, name = m.group(1), m.group(2)
        elif m := _BSD_LINE.match(line):
            name, digest = m.group(1), m.group(2)
        else:
            odd.append((number, line))
            continue
        out[os.path.normpath(path.parent.resolve() / name)] = digest.lower()
    return out, odd


def _check_sums(files: list[Path]) -> None:
    """Checks `files` against every `SHA256SUMS` in their folder and its parent that lists them.

    Raises:
        ValueError: a file's SHA-256 differs from the listed one (names both files), or a
            line of the list that names a file read is in neither format (names the list
            and the line; lines naming no file read are ignored).
    """
    for path in files:
        # A file behind a symbolic link is checked against the lists beside the link and
        # beside its target (a folder of links to the data, with its own SHA256SUMS).
        resolved = path.resolve()
        linked = Path(path).absolute().parent.resolve() / Path(path).name
        places = dict.fromkeys([(f, p) for p in (linked, resolved) for f in (p.parent, p.parent.parent)])
        for folder, seen_as in places:
            sums = folder / SUMS_FILE
            if not sums.is_file():
                continue
            listed, odd = _read_sums(sums)
            expected = listed.get(os.path.normpath(seen_as))
            if expected is None:
                # the file's path from the list's folder, as a whole word of the line ("mnist/x.gz" is
                # not in "fashion-mnist/x.gz", nor "x" in "x.gz")
                named = re.compile(r"(?:^|[\s(*/])" + re.escape(os.path.relpath(seen_as, folder)) + r"(?:$|[\s)])")
                for number, line in odd:
                    if named.search(line):
                        raise ValueError(
                            f"{sums}, line {number}: expected '<64 hex digits>  <file name>' (sha256sum) or "
                            f"'SHA256 (<file name>) = <64 hex digits>', received {line[:100]!r}"
                        )
                continue
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
            if h.hexdigest() != expected:
                raise ValueError(
                    f"{path}: SHA-256 mismatch: expected {expected} (listed in {sums}), received "
                    f"{h.hexdigest()}. The file is damaged or not the one listed; fetch it again."
                )


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


def _validate_split(
    images: np.ndarray, labels: np.ndarray, images_src: str, labels_src: str
) -> tuple[np.ndarray, np.ndarray]:
    """Check one split and return `(images scaled to [0, 1], labels)`."""
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(
            f"{images_src}: expected images of shape (n, {IMAGE_SHAPE[0]}, "
            f"{IMAGE_SHAPE[1]}), received shape {images.shape}"
        )
    if images.dtype != np.uint8:
        raise ValueError(
            f"{images_src}: expected uint8 pixels (IDX type code 0x08), "
            f"received {images.dtype}"
        )
    if images.shape[0] == 0:  # fit would refuse it later as "`x` is empty", naming no file
        raise ValueError(f"{images_src}: holds no images (0 in the file); expected at least one")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(
            f"{labels_src}: expected a 1-D integer array of labels, received "
            f"{labels.dtype} array of shape {labels.shape}"
        )
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{labels_src}: images/labels count mismatch: expected "
            f"{images.shape[0]} labels (one per image in {images_src}), "
            f"received {labels.shape[0]}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(
            f"{labels_src}: expected labels in [0, {NUM_CLASSES}) (the {NUM_CLASSES} classes of MNIST and "
            f"Fashion-MNIST), received labels in [{int(labels.min())}, {int(labels.max())}]"
        )
    x = np.divide(images, np.float32(255.0), dtype=np.float32)
    return x, labels


def _load_npz(path: Path):
    _check_sums([path])
    try:
        loaded = np.load(path, allow_pickle=False)
        if not hasattr(loaded, "files"):  # a single .npy array saved under an .npz name
            raise ValueError(f"{path}: expected an .npz archive of arrays {list(_NPZ_KEYS)}, received one array")
        with loaded as f:
            missing = [k for k in _NPZ_KEYS if k not in f.files]
            if missing:
                raise ValueError(
                    f"{path}: expected arrays {list(_NPZ_KEYS)}, received "
                    f"{sorted(f.files)} (missing {missing})"
                )
            arrays = {k: f[k] for k in _NPZ_KEYS}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:  # truncated, not a zip, damaged data: named, as a damaged IDX file is
        raise ValueError(f"{path}: not a readable .npz archive ({type(err).__name__}: {err})") from None
    except ValueError as err:
        if str(err).startswith(str(path)):
            raise
        raise ValueError(f"{path}: not an .npz archive of numeric arrays (NumPy: {err})") from None
    train = _validate_split(
        arrays["x_train"], arrays["y_train"], f"{path}[x_train]", f"{path}[y_train]"
    )
    test = _validate_split(
        arrays["x_test"], arrays["y_test"], f"{path}[x_test]", f"{path}[y_test]"
    )
    return train, test


def _load_idx_folder(folder: Path):
    files = {}
    for base in IDX_FILES:
        found = _idx_file(folder, base)
        if found is None:  # vanished since find_dataset_dir looked
            raise FileNotFoundError(f"{folder}: missing {base}.gz (or {base})")
        files[base] = found
    _check_sums(list(files.values()))
    splits = []
    for images_base, labels_base in ((TRAIN_IMAGES, TRAIN_LABELS), (TEST_IMAGES, TEST_LABELS)):
        images = read_idx(files[images_base])
        labels = read_idx(files[labels_base])
        splits.append(
            _validate_split(images, labels, str(files[images_base]), str(files[labels_base]))
        )
    return splits[0], splits[1]


def load(
    name: str,
    data_dir: PathLike | None = None,
    *,
    download: bool = True,
    cache_dir: PathLike | None = None,
    system_dir: PathLike = SYSTEM_DATA_DIR,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Load MNIST or Fashion-MNIST like `keras.datasets`, scaled to [0, 1].

    The data are located with `find_dataset_dir` (see there for the search
    order) and read from the four IDX files or from a Keras `mnist.npz`.

    Args:
        name: `"mnist"` or `"fashion_mnist"` (`"fashion-mnist"` also works).
        data_dir: Optional folder holding the four IDX files
            (`train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`,
            `t10k-images-idx3-ubyte[.gz]`, `t10k-labels-idx1-ubyte[.gz]`),
            or a parent folder containing `mnist/` / `fashion-mnist/`.
        download: Whether to download the data into the Keras cache if they
            are found nowhere else. Defaults to `True`.
        cache_dir: Keras dataset cache folder. Defaults to
            `$KERAS_HOME/datasets` if `KERAS_HOME` is set, else
            `~/.keras/datasets`.
        system_dir: System data set folder; defaults to `/usr/share/datasets`.

    Returns:
        `((x_train, y_train), (x_test, y_test))`: `x_*` float32 arrays of
        shape `(n, 28, 28)` with values in `[0, 1]` (pixel / 255), `y_*`
        integer (uint8 for IDX files) arrays of shape `(n,)` with class ids
        0..9. For both data sets n is 60000 for train and 10000 for test.

    Raises:
        ValueError: If `name` is not supported, or a file is truncated, has
            a wrong magic number, a wrong element count or image shape, does
            not match its `SHA256SUMS` entry, or images and labels counts
            differ (the message names the file).
        FileNotFoundError: If an explicit `data_dir` lacks the data (the
            message names it and what is missing), or the data are found
            nowhere and downloading is disabled or failed; the message lists
            every place looked at.
    """
    found = find_dataset_dir(
        name, data_dir, download=download, cache_dir=cache_dir, system_dir=system_dir
    )
    data = _load_npz(found) if found.suffix == ".npz" and found.is_file() else _load_idx_folder(found)
    _check_not_the_other(_NAME_ALIASES.get(name, name), found, data[0][1])  # "fashion-mnist" is fashion_mnist
    return data


#: The first 32 hex digits of the SHA-256 of each data set's training labels (uint8):
#: a folder given for one data set that holds the other is refused (the files have one
#: format and one size, so nothing else tells them apart).
_TRAIN_LABELS_SHA256 = {
    "mnist": "1feba77c54802fa5339a11837ea4b286",
    "fashion_mnist": "657fbd221bfc9f4198cc14b5619cc33e",
}


def _holds_the_other(name: str, path: Path, is_npz: bool) -> str | None:
    """Why a place the search found is passed over: it holds the other data set (told by
    its training labels, `_TRAIN_LABELS_SHA256`), e.g. $TF_DYNHP_DATA naming MNIST's folder
    while Fashion-MNIST is looked for. None: it does not, or its labels cannot be read
    here (`load` reads and checks them then)."""
    try:
        if is_npz:
            with np.load(path, allow_pickle=False) as data:
                labels = np.asarray(data["y_train"])
        else:
            labels = read_idx(_idx_file(path, TRAIN_LABELS))
    except (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile, zlib.error):  # a damaged .npz: load names it
        return None
    other = _other_data_set(name, labels)
    return None if other is None else f"holds the {other} data set"


def _other_data_set(name: str, labels: np.ndarray) -> str | None:
    """The other data set whose training labels `labels` are, or None."""
    digest = hashlib.sha256(np.ascontiguousarray(labels, dtype=np.uint8).tobytes()).hexdigest()[:32]
    return next((other for other, known in _TRAIN_LABELS_SHA256.items() if other != name and digest == known), None)


def _check_not_the_other(name: str, found: Path, labels: np.ndarray) -> None:
    other = _other_data_set(name, labels)
    if other is not None:
        raise ValueError(f"{found} holds the {other} data set (its training labels are {other}'s), not {name}: "
                         f"expected a folder of {name}'s files.")
