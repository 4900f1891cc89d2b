"""Atomic, checksummed checkpoints of a DynHP run (survive a power cut).

A DynHP run has more state than a Keras checkpoint holds: the *shapes* change
every epoch. A checkpoint here is one file ``epoch-00012.dynhp`` holding

* the current (pruned) model's config and every variable (weights, gate logits,
  seed-generator states),
* the optimizer's config and every variable (iterations, slots),
* the `TrainerState` (epoch, batch and candidate, surviving units Z, history),
* the run's settings, so that a checkpoint of another run is refused.

File format: 8-byte magic ``DYNHPCK1``, the 32-byte SHA-256 of the payload, then
the payload (an ``.npz`` archive). It is written to a temporary file in the same
folder, `fsync`-ed, then `os.replace`-d over the final name, and the folder is
`fsync`-ed: a kill at any instant leaves the previous checkpoint or the new one,
never a broken one under a final name (an `OSError`, e.g. a full disk, names the
checkpoint being written). A truncated or corrupted file fails its checksum and is
skipped (with a warning naming it) in favour of the previous one; when checkpoints
exist but none verifies, `latest_checkpoint` raises `CheckpointError` naming them
(a resume must not silently restart from epoch 0). A file whose name says another
epoch than the one it holds (renamed or copied by hand; the files are ordered by
name) is damaged in the same way.

The newest `keep` *valid* checkpoints are kept: a damaged file is never counted
among them and never deleted. It is moved aside to ``epoch-NNNNN.dynhp.damaged``
(with a warning naming it) when the next checkpoint is written, and left there for
the user to inspect or delete; no resume, count or cleanup looks at it again (also
when the file under the name being written is damaged: a resume went past it). The
temporary file of a write a kill interrupted is deleted by the next write.

`folder_lock` holds an exclusive `flock` on a folder: `fit` holds its
`checkpoint_dir`'s (a second `fit` there raises `FolderInUseError` at once; it would
remove or interleave the first one's checkpoints), `tf_dynhp.runs` its run folder's.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from tf_dynhp._checks import file_in_the_way, fsync_dir, positive_int, write_atomic

__all__ = [
    "CheckpointError",
    "FolderInUseError",
    "folder_lock",
    "write_checkpoint",
    "read_checkpoint",
    "list_checkpoints",
    "valid_checkpoints",
    "latest_valid_epoch",
    "listing",
    "latest_checkpoint",
    "probe_writable",
    "remove_checkpoints",
]

MAGIC = b"DYNHPCK1"
_NAME = re.compile(r"^epoch-(\d{5,})\.dynhp$")
#: What `_checks.write_atomic` writes a checkpoint to before renaming it.
_TEMPORARY = re.compile(r"^\.epoch-\d{5,}\.dynhp\..*\.tmp$")


class CheckpointError(ValueError):
    """A checkpoint file is not readable (bad magic, checksum, truncated)."""


class FolderInUseError(RuntimeError):
    """Another process holds the folder's lock (`folder_lock`): it is writing there."""


def probe_writable(folder: str | os.PathLike) -> Path:
    """Creates `folder` if needed and checks that a file can be written and synced there.

    Raises:
        OSError: the folder cannot be created or written (disk full, read-only, ...),
            with the folder named, before any training starts.
    """
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-", delete=True) as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        # A file at the path, or at a parent, was "is not writable: File exists".
        blocking = file_in_the_way(path)
        why = (f"{'it' if blocking == path else str(blocking)} is a file, not a folder" if blocking is not None
               else err.strerror or str(err))
        raise OSError(err.errno, f"checkpoint_dir '{path}' is not writable: {why}") from err
    return path


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, in_use: str | Exception):
    """Holds an exclusive `flock` on the folder `folder` while the block runs (no lock
    file: the lock dies with the process, a kill leaves nothing to clean). Another
    holder makes it raise `in_use` at once (a message: as `FolderInUseError`). No-op
    where `fcntl` does not exist."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise (FolderInUseError(in_use) if isinstance(in_use, str) else in_use) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def write_checkpoint(folder: str | os.PathLike, epoch: int, arrays: dict[str, np.ndarray], meta: dict[str, Any], keep: int = 2) -> Path:
    """Writes `epoch-XXXXX.dynhp` atomically; keeps the newest `keep` valid checkpoints.

    Older valid checkpoints beyond `keep` are deleted; damaged ones are moved aside
    (``.damaged``, with a warning) and not counted.

    Args:
        folder: checkpoint folder (must exist and be writable).
        epoch: number of epochs completed.
        arrays: named arrays (variables).
        meta: JSON-serializable metadata (configs, trainer state, settings).
        keep: how many valid checkpoints to keep (>= 1).

    Returns:
        The path written.

    Raises:
        OSError: the file could not be written (e.g. a full disk), naming it; the
            previous checkpoints are untouched and no temporary file is left.
    """
    keep = positive_int("keep", keep)
    folder = Path(folder)
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8), **arrays)
    payload = buf.getvalue()
    final = folder / f"epoch-{int(epoch):05d}.dynhp"

    def fill(f) -> None:
        f.write(MAGIC)
        f.write(hashlib.sha256(payload).digest())
        f.write(payload)

    problem = _damage(final) if final.exists() else None
    if problem is not None:  # a damaged file of this epoch (a resume went past it)
        _warn_moved(final, problem, stacklevel=3)
    write_atomic(final, fill)
    _remember_valid(final)
    _clean_up(folder, keep)
    return final


# Files verified in this process, by path -> (inode, size, mtime): the cleanup after each
# epoch reads each checkpoint once, not once per epoch.
_VALID: dict[str, tuple[int, int, int]] = {}


def _stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


def _remember_valid(path: Path) -> None:
    _VALID[str(path)] = _stamp(path)


def _bytes_problem(data: bytes) -> str | None:
    """What is wrong with a checkpoint file's bytes (magic, checksum), or None."""
    if len(data) < len(MAGIC) + 32 or data[: len(MAGIC)] != MAGIC:
        return f"not a tf_dynhp checkpoint (expected magic {MAGIC!r}, file of {len(data)} bytes)"
    if hashlib.sha256(data[len(MAGIC) + 32 :]).digest() != data[len(MAGIC) : len(MAGIC) + 32]:
        return f"checksum mismatch (truncated or corrupted file of {len(data)} bytes)"
    return None


def _damage(path: Path) -> str | None:
    """None when `path` is a readable checkpoint with a matching checksum, holding the
    epoch its name says, else what is wrong (`read_checkpoint`'s checks, reading only the
    metadata of the payload)."""
    try:
        if _VALID.get(str(path)) == _stamp(path):
            return None
        data = path.read_bytes()
    except OSError as err:
        return f"cannot read it: {err.strerror or err}"
    problem = _bytes_problem(data)
    if problem is not None:
        return problem
    try:
        with np.load(io.BytesIO(data[len(MAGIC) + 32 :]), allow_pickle=False) as npz:
            meta = json.loads(npz["__meta__"].tobytes().decode("utf-8"))
    except (OSError, ValueError, KeyError) as err:
        return f"unreadable contents ({err})"
    problem = _epoch_problem(path, meta)
    if problem is None:
        _remember_valid(path)
    return problem


def _epoch_problem(path: Path, meta: Any) -> str | None:
    """What is wrong when a checkpoint's file name names another epoch than the one it
    holds (a file renamed or copied by hand): the files are ordered by the name, so it
    would be taken for a newer or older checkpoint than it is."""
    match = _NAME.match(path.name)
    state = meta.get("state") if isinstance(meta, dict) else None
    held = state.get("epoch") if isinstance(state, dict) else None
    if match is None or not isinstance(held, int) or held == int(match.group(1)):
        return None
    return f"its name says epoch {int(match.group(1))} but it holds epoch {held}: renamed or copied by hand"


def _move_aside(path: Path) -> Path:
    target = path.with_name(path.name + ".damaged")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.damaged.{n}")
        n += 1
    os.replace(path, target)
    return target


def _warn_moved(path: Path, problem: str, stacklevel: int = 4) -> None:
    """Moves a damaged `path` aside, warning at the caller of `write_checkpoint`."""
    moved = _move_aside(path)
    warnings.warn(f"Checkpoint {path} is damaged ({problem}): moved aside to {moved.name}, not counted, not deleted.", RuntimeWarning, stacklevel=stacklevel)


def _clean_up(folder: Path, keep: int) -> None:
    """Keeps the newest `keep` valid checkpoints, deletes older valid ones, moves damaged
    ones aside, and deletes the temporary files of writes a kill interrupted (`fit` holds
    the folder's lock: no other writer's file is among them)."""
    for path in folder.iterdir():
        if _TEMPORARY.match(path.name):
            path.unlink(missing_ok=True)
    valid = 0
    for path in reversed(list_checkpoints(folder)):
        problem = _damage(path)
        if problem is not None:
            _warn_moved(path, problem)
            continue
        valid += 1
        if valid > keep:
            path.unlink(missing_ok=True)
            _VALID.pop(str(path), None)
    fsync_dir(folder)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Reads and verifies one checkpoint file.

    Returns:
        `(arrays, meta)`.

    Raises:
        CheckpointError: wrong magic, truncated, or checksum mismatch (names the file).
    """
    path = Path(path)
    data = path.read_bytes()
    problem = _bytes_problem(data)
    if problem is not None:
        raise CheckpointError(f"{path}: {problem}")
    with np.load(io.BytesIO(data[len(MAGIC) + 32 :]), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays.pop("__meta__").tobytes().decode("utf-8"))
    problem = _epoch_problem(path, meta)
    if problem is not None:
        raise CheckpointError(f"{path}: {problem}")
    return arrays, meta


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Checkpoint files in `folder`, oldest first (by epoch number)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def valid_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """The checkpoint files of `folder` that verify (checksum, and the epoch they hold is
    the one their name says), oldest first; a damaged one is left where it is."""
    return [p for p in list_checkpoints(folder) if _damage(p) is None]


def latest_valid_epoch(folder: str | os.PathLike) -> int:
    """The epoch of the newest valid checkpoint of `folder` (the one a resume continues
    from), or 0 without one."""
    found = valid_checkpoints(folder)
    return int(_NAME.match(found[-1].name).group(1)) if found else 0


def listing(folder: str | os.PathLike) -> list[tuple[str, int, int]]:
    """(name, size, mtime in ns) of every checkpoint file of `folder`, oldest first: tells
    whether the folder changed between two looks."""
    out = []
    for path in list_checkpoints(folder):
        try:
            st = path.stat()
        except OSError:
            continue
        out.append((path.name, st.st_size, st.st_mtime_ns))
    return out


def remove_checkpoints(folder: str | os.PathLike) -> int:
    """Deletes the checkpoint files of `folder` (a new run starting there); returns how many."""
    found = list_checkpoints(folder)
    for path in found:
        path.unlink(missing_ok=True)
    return len(found)


def latest_checkpoint(folder: str | os.PathLike) -> tuple[Path, dict[str, np.ndarray], dict[str, Any]] | None:
    """The newest checkpoint that verifies, skipping broken ones with a warning naming them.

    Returns:
        `(path, arrays, meta)`, or None when `folder` holds no checkpoint files at all.

    Raises:
        CheckpointError: checkpoint files exist but none verifies (the message names
            each and what is wrong with it): resuming must not restart from epoch 0.
    """
    damaged = []
    for path in reversed(list_checkpoints(folder)):
        try:
            arrays, meta = read_checkpoint(path)
        except (CheckpointError, OSError, ValueError) as err:
            damaged.append(str(err) if str(path) in str(err) else f"{path}: {err}")
            continue
        for problem in damaged:
            warnings.warn(f"Skipping checkpoint {problem}", RuntimeWarning, stacklevel=2)
        return path, arrays, meta
    if damaged:
        listing = "\n".join(f"  - {problem}" for problem in damaged)
        raise CheckpointError(
            f"No valid checkpoint in {Path(folder)}: all {len(damaged)} checkpoint file(s) are damaged:\n{listing}\n"
            "Resuming would start again from epoch 0. Restore them from a backup, rename a file whose name "
            "says another epoch than it holds to the epoch it holds, or move them away and start a new run "
            "(without resume; a run folder of tools/train.py or tf_dynhp.runs: with --overwrite / overwrite=True)."
        )
    return None
