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
never a broken one under a final name. A truncated or corrupted file fails its
checksum and is skipped (with a warning naming it) in favour of the previous one.
The last `keep` checkpoints are kept.
"""

from __future__ import annotations

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

__all__ = [
    "CheckpointError",
    "write_checkpoint",
    "read_checkpoint",
    "list_checkpoints",
    "latest_checkpoint",
    "probe_writable",
    "remove_checkpoints",
]

MAGIC = b"DYNHPCK1"
_NAME = re.compile(r"^epoch-(\d{5,})\.dynhp$")


class CheckpointError(ValueError):
    """A checkpoint file is not readable (bad magic, checksum, truncated)."""


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
        raise OSError(err.errno, f"checkpoint_dir '{path}' is not writable: {err.strerror or err}") from err
    return path


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(folder: str | os.PathLike, epoch: int, arrays: dict[str, np.ndarray], meta: dict[str, Any], keep: int = 2) -> Path:
    """Writes `epoch-XXXXX.dynhp` atomically and removes all but the newest `keep`.

    Args:
        folder: checkpoint folder (must exist and be writable).
        epoch: number of epochs completed.
        arrays: named arrays (variables).
        meta: JSON-serializable metadata (configs, trainer state, settings).
        keep: how many checkpoints to keep (>= 1).

    Returns:
        The path written.
    """
    folder = Path(folder)
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8), **arrays)
    payload = buf.getvalue()
    final = folder / f"epoch-{int(epoch):05d}.dynhp"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{final.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC)
            f.write(hashlib.sha256(payload).digest())
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(folder)
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Reads and verifies one checkpoint file.

    Returns:
        `(arrays, meta)`.

    Raises:
        CheckpointError: wrong magic, truncated, or checksum mismatch (names the file).
    """
    path = Path(path)
    data = path.read_bytes()
    if len(data) < len(MAGIC) + 32 or data[: len(MAGIC)] != MAGIC:
        raise CheckpointError(f"{path}: not a tf_dynhp checkpoint (expected magic {MAGIC!r}, file of {len(data)} bytes)")
    digest, payload = data[len(MAGIC) : len(MAGIC) + 32], data[len(MAGIC) + 32 :]
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"{path}: checksum mismatch (truncated or corrupted file of {len(data)} bytes)")
    with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays.pop("__meta__").tobytes().decode("utf-8"))
    return arrays, meta


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Checkpoint files in `folder`, oldest first (by epoch number)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def remove_checkpoints(folder: str | os.PathLike) -> int:
    """Deletes the checkpoint files of `folder` (a new run starting there); returns how many."""
    found = list_checkpoints(folder)
    for path in found:
        path.unlink(missing_ok=True)
    return len(found)


def latest_checkpoint(folder: str | os.PathLike) -> tuple[Path, dict[str, np.ndarray], dict[str, Any]] | None:
    """The newest checkpoint that verifies, skipping broken ones with a warning naming them."""
    for path in reversed(list_checkpoints(folder)):
        try:
            arrays, meta = read_checkpoint(path)
        except (CheckpointError, OSError, ValueError) as err:
            warnings.warn(f"Skipping checkpoint {path}: {err}", RuntimeWarning, stacklevel=2)
            continue
        return path, arrays, meta
    return None
