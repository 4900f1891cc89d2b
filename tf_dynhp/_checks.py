"""The two helpers every module shares: argument checks with Keras' error shape, and
one atomic file write.

Errors follow Keras' own wording (``keras/src/layers/core/dense.py``)::

    Invalid value received for argument `gamma`. Expected a float in (0, 1). Received: gamma=1.5

`write_atomic` is the one way the package writes a file that must never be seen
half-written (checkpoints, run folders, reports, exported models, kernel builds):
a temporary file in the same folder, flushed and `fsync`-ed, `os.replace`-d over
the final name, then the folder `fsync`-ed. A kill at any instant leaves the old
file or the new one under the final name, never a broken one, and no temporary
file behind when the write itself fails.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["invalid", "positive_int", "real_number", "write_atomic", "fsync_dir", "file_in_the_way"]


def invalid(name: str, expected: str, value: Any) -> ValueError:
    """The ValueError for argument `name`: what was expected, what was received."""
    return ValueError(f"Invalid value received for argument `{name}`. Expected {expected}. Received: {name}={value!r}")


def positive_int(name: str, value: Any, maximum: int | None = None) -> int:
    """`value` as an int >= 1 (NumPy integers accepted, bools refused), at most `maximum`
    when given (a counter of the traced loop holds it)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise invalid(name, "a positive integer", value)
    if maximum is not None and value > maximum:
        raise invalid(name, f"a positive integer up to {maximum}", value)
    return int(value)


def whole_number(name: str, value: Any, least: int = 0) -> int:
    """`value` as an int >= `least` (NumPy integers accepted; bools, floats and strings
    refused: a count of 3.7 or "8" is no count), else `invalid(name, ...)`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < least:
        raise invalid(name, f"an integer >= {least}", value)
    return int(value)


def real_number(name: str, value: Any, expected: str, ok: Callable[[float], bool] = lambda v: True) -> float:
    """`value` as a finite float for which `ok` holds (any real number type, NumPy's
    included; bools refused), else `invalid(name, expected, value)`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise invalid(name, expected, value)
    v = float(value)
    if not math.isfinite(v) or not ok(v):
        raise invalid(name, expected, value)
    return v


def fsync_dir(path: str | os.PathLike) -> None:
    """Makes a rename in folder `path` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _default_mode() -> int:
    """0o666 less the umask (read without changing it where /proc tells it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def file_in_the_way(folder: str | os.PathLike) -> Path | None:
    """The nearest of `folder` and its parents that exists and is not a folder (a file
    where a folder of the path must be), or None. Never raises (`os.path` asks the system
    and answers False on any error), so it can name the cause inside an `except OSError`."""
    for part in (Path(folder), *Path(folder).parents):
        if os.path.exists(part):
            return None if os.path.isdir(part) else part
    return None


def write_atomic(path: str | os.PathLike, data: bytes | str | Callable[[Any], None], *, mode: int | None = None) -> Path:
    """Writes `data` to `path` atomically and durably.

    Args:
        path: the final file name; its folder must exist.
        data: bytes, text (written as UTF-8), or a function that writes into the
            open binary file it is given (e.g. `np.savez`).
        mode: permission bits of the new file (default: what `open()` would give,
            0o666 less the process' umask, as Keras' own saves; `tempfile` alone
            would leave 0o600, unreadable to the rest of a team's group).

    Returns:
        `path` as a `Path`.

    Raises:
        OSError: naming `path`, e.g. on a full disk; the temporary file is removed.
    """
    path = Path(path)
    folder = path.parent
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise OSError(err.errno, f"cannot write {path}: {err.strerror or err}") from err
    producing = False
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                producing = True
                data(f)  # its own errors (a failed download, a bad digest) pass as they are
                producing = False
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(err, OSError) and not isinstance(err, FileNotFoundError) and not producing:
            raise OSError(err.errno, f"cannot write {path}: {err.strerror or err}") from err
        raise
    fsync_dir(folder)
    return path
