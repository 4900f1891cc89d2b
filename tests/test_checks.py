"""tf_dynhp._checks: the argument checks and the one atomic write."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tf_dynhp import _checks


def test_invalid_has_keras_error_shape():
    err = _checks.invalid("gamma", "a float in (0, 1)", 1.5)
    assert str(err) == "Invalid value received for argument `gamma`. Expected a float in (0, 1). Received: gamma=1.5"


@pytest.mark.parametrize("value", [0, -3, 2.0, True, "4", None])
def test_positive_int_refuses(value):
    with pytest.raises(ValueError, match="`n`. Expected a positive integer"):
        _checks.positive_int("n", value)


def test_positive_int_and_real_number_accept_numpy_types():
    assert _checks.positive_int("n", np.int64(3)) == 3
    assert _checks.real_number("x", np.float32(2.5), "a float", lambda v: v > 0) == 2.5
    for bad in (float("nan"), float("inf"), -1.0, True, np.bool_(True), "1.0", None):
        with pytest.raises(ValueError, match="`x`. Expected a float > 0"):
            _checks.real_number("x", bad, "a float > 0", lambda v: v > 0)


def test_write_atomic_bytes_text_and_writer(tmp_path):
    assert _checks.write_atomic(tmp_path / "a.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert _checks.write_atomic(tmp_path / "a.txt", "é").read_text(encoding="utf-8") == "é"
    _checks.write_atomic(tmp_path / "a.npy", lambda f: np.save(f, np.arange(3)))
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.arange(3))
    _checks.write_atomic(tmp_path / "m", b"x", mode=0o644)
    assert (os.stat(tmp_path / "m").st_mode & 0o777) == 0o644
    old = os.umask(0o027)  # the default: what open() gives (it was tempfile's 0o600)
    try:
        _checks.write_atomic(tmp_path / "u", b"x")
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "u").st_mode & 0o777) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "a.npy", "a.txt", "m", "u"]  # no temporary left


def test_write_atomic_keeps_the_old_file_and_no_temp_when_the_writer_fails(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("old")

    def broken(f):
        f.write(b"half")
        raise ConnectionError("network down")  # an OSError of the writer's own: passed as it is

    with pytest.raises(ConnectionError, match="network down"):
        _checks.write_atomic(target, broken)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_write_atomic_names_the_path_it_cannot_write(tmp_path):
    with pytest.raises(OSError, match=f"cannot write {tmp_path / 'missing' / 'f.txt'}"):
        _checks.write_atomic(tmp_path / "missing" / "f.txt", "x")
