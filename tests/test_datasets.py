"""Tests for tf_dynhp.datasets (IDX reader, search order, MNIST loaders)."""

from __future__ import annotations

import gzip
import hashlib
import importlib
import importlib.util
import io
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

MODULE_FILE = Path(__file__).resolve().parents[1] / "tf_dynhp" / "datasets.py"


def _import_datasets():
    """Import tf_dynhp.datasets; fall back to the file if the package is broken."""
    try:
        return importlib.import_module("tf_dynhp.datasets")
    except Exception:  # package __init__ may be mid-edit by someone else
        spec = importlib.util.spec_from_file_location("_tf_dynhp_datasets_file", MODULE_FILE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module


ds = _import_datasets()

DATA_ROOT = Path(
    os.environ.get("TF_DYNHP_DATA", Path(__file__).resolve().parents[2] / "shared" / "datasets")
)
IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
TYPE_CODES = {
    np.dtype("u1"): 0x08,
    np.dtype("i1"): 0x09,
    np.dtype(">i2"): 0x0B,
    np.dtype(">i4"): 0x0C,
    np.dtype(">f4"): 0x0D,
    np.dtype(">f8"): 0x0E,
}


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode `array` as an IDX file (independent of the module under test)."""
    dtype = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    code = TYPE_CODES[dtype]
    header = bytes([0, 0, code, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + np.ascontiguousarray(array, dtype=dtype).tobytes()


def write(path: Path, data: bytes, compress: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def make_fake_dataset(
    folder: Path,
    marker: int = 0,
    n_train: int = 5,
    n_test: int = 3,
    compress: bool = True,
) -> dict[str, np.ndarray]:
    """Write 4 small IDX files; the first train label is `marker`."""
    rng = np.random.default_rng(marker)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": ((np.arange(n_train) + marker) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": ((np.arange(n_test) + marker + 1) % 10).astype(np.uint8),
    }
    arrays["x_train"][0, 0, 0] = 255  # make the max pixel deterministic
    arrays["x_train"][0, 0, 1] = 0
    suffix = ".gz" if compress else ""
    for base, key in zip(IDX_NAMES, ("x_train", "y_train", "x_test", "y_test")):
        write(folder / (base + suffix), idx_bytes(arrays[key]), compress)
    return arrays


def make_fake_npz(path: Path, marker: int = 0) -> dict[str, np.ndarray]:
    arrays = make_fake_dataset(path.parent / "_npz_src", marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return arrays


@pytest.fixture
def places(tmp_path, monkeypatch):
    """Hermetic cache/system folders and no TF_DYNHP_DATA / KERAS_HOME."""
    monkeypatch.delenv("TF_DYNHP_DATA", raising=False)
    monkeypatch.delenv("KERAS_HOME", raising=False)
    cache = tmp_path / "keras_cache"
    system = tmp_path / "system"
    return {"cache_dir": cache, "system_dir": system}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any accidental download attempt fails fast instead of using the network."""

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def first_train_label(result) -> int:
    (_, y_train), _ = result
    return int(y_train[0])


# --------------------------------------------------------------------------
# real data
# --------------------------------------------------------------------------

real_data = pytest.mark.skipif(
    not all((DATA_ROOT / d / f"{n}.gz").is_file() for d in ("mnist", "fashion-mnist") for n in IDX_NAMES),
    reason=f"real MNIST/Fashion-MNIST IDX files not found under {DATA_ROOT} "
    "(set TF_DYNHP_DATA to the folder containing mnist/ and fashion-mnist/)",
)


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    empty = tmp_path_factory.mktemp("empty")
    return ds.load("mnist", DATA_ROOT, download=False, cache_dir=empty, system_dir=empty)


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    empty = tmp_path_factory.mktemp("empty")
    return ds.load("fashion_mnist", DATA_ROOT, download=False, cache_dir=empty, system_dir=empty)


MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@real_data
@pytest.mark.parametrize(
    "which, first_label, train_counts, test_counts",
    [
        ("mnist", 5, MNIST_TRAIN_COUNTS, MNIST_TEST_COUNTS),
        ("fashion", 9, [6000] * 10, [1000] * 10),
    ],
)
def test_real_dataset(request, which, first_label, train_counts, test_counts):
    (x_train, y_train), (x_test, y_test) = request.getfixturevalue(which)
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert x_train.dtype == np.float32 and x_test.dtype == np.float32
    assert y_train.dtype == np.uint8 and y_test.dtype == np.uint8
    for x in (x_train, x_test):
        assert x.min() == 0.0 and x.max() == 1.0
        # pixel / 255 exactly: 255 * x is (up to rounding) an integer
        sample = x[:500] * np.float32(255)
        np.testing.assert_allclose(sample, np.round(sample), atol=1e-4)
    assert int(y_train[0]) == first_label
    assert np.bincount(y_train, minlength=10).tolist() == train_counts
    assert np.bincount(y_test, minlength=10).tolist() == test_counts
    assert 0.05 < float(x_train.mean()) < 0.5  # mostly-black images, not noise


@real_data
@real_data
def test_a_folder_of_the_other_data_set_is_refused():
    """data_dir names a folder of IDX files; one of MNIST's given for Fashion-MNIST (or the
    other way round) trained on the wrong data in silence: the files look alike."""
    with pytest.raises(ValueError, match=r"holds the mnist data set .*not fashion_mnist"):
        ds.load("fashion_mnist", DATA_ROOT / "mnist", download=False)
    with pytest.raises(ValueError, match=r"holds the fashion_mnist data set .*not mnist"):
        ds.load("mnist", DATA_ROOT / "fashion-mnist", download=False)


def test_real_mnist_matches_raw_idx(mnist):
    (x_train, y_train), (x_test, _) = mnist
    raw = ds.read_idx(DATA_ROOT / "mnist" / "t10k-images-idx3-ubyte.gz")
    assert raw.dtype == np.uint8 and raw.shape == (10000, 28, 28)
    np.testing.assert_array_equal(x_test, raw.astype(np.float32) / np.float32(255))
    labels = ds.read_idx(DATA_ROOT / "mnist" / "train-labels-idx1-ubyte.gz")
    np.testing.assert_array_equal(labels, y_train)
    assert labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]


@real_data
def test_real_data_found_via_env_var_and_folder(monkeypatch, places):
    monkeypatch.setenv("TF_DYNHP_DATA", str(DATA_ROOT))
    assert ds.find_dataset_dir("fashion-mnist", **places) == DATA_ROOT / "fashion-mnist"
    assert ds.find_dataset_dir("mnist", DATA_ROOT / "mnist", **places) == DATA_ROOT / "mnist"


# --------------------------------------------------------------------------
# read_idx
# --------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize(
    "dtype, shape",
    [
        ("u1", (4, 3, 2)),
        ("u1", (7,)),
        ("i1", (2, 5)),
        (">i2", (3, 4)),
        (">i4", (2, 2, 2, 2)),
        (">f4", (6,)),
        (">f8", (2, 3)),
        ("u1", (0, 28, 28)),
    ],
)
def test_read_idx_roundtrip(tmp_path, dtype, shape, compress):
    rng = np.random.default_rng(0)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        expected = rng.normal(size=shape).astype(dtype)
    else:
        info = np.iinfo(dtype)
        expected = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    path = write(tmp_path / ("data.idx" + (".gz" if compress else "")), idx_bytes(expected), compress)
    result = ds.read_idx(path)
    assert result.shape == shape
    assert result.dtype == dtype.newbyteorder("=")  # same kind/size, native order
    assert result.dtype.isnative
    np.testing.assert_array_equal(result, expected)
    result[...] = 0  # writable
    assert ds.read_idx(str(path)).shape == shape  # accepts str too


def test_read_idx_known_bytes(tmp_path):
    # Hand-written file: int16 values -2, 258 in shape (2,), big-endian.
    data = bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 0xFF, 0xFE, 0x01, 0x02])
    path = write(tmp_path / "small", data, compress=False)
    assert ds.read_idx(path).tolist() == [-2, 258]


def test_read_idx_detects_gzip_by_content(tmp_path):
    expected = np.arange(12, dtype=np.uint8).reshape(3, 4)
    gz_without_suffix = write(tmp_path / "a-idx2-ubyte", idx_bytes(expected), compress=True)
    raw_with_suffix = write(tmp_path / "b-idx2-ubyte.gz", idx_bytes(expected), compress=False)
    np.testing.assert_array_equal(ds.read_idx(gz_without_suffix), expected)
    np.testing.assert_array_equal(ds.read_idx(raw_with_suffix), expected)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        ds.read_idx(tmp_path / "nope.gz")


# --------------------------------------------------------------------------
# error paths
# --------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
def test_truncated_pixel_data(tmp_path, compress):
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (60000, 28, 28))
    path = write(tmp_path / "x" / "train-images-idx3-ubyte.gz", header + bytes(1000), compress)
    expected_msg = (
        re.escape(str(path))
        + r".*expected 47040000 bytes of pixel data after the header \(60000 x 28 x 28.*received 1000$"
    )
    with pytest.raises(ValueError, match=expected_msg):
        ds.read_idx(path)


def test_truncated_label_data(tmp_path):
    data = idx_bytes(np.arange(10, dtype=np.uint8))[:-3]
    path = write(tmp_path / "train-labels-idx1-ubyte", data, compress=False)
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte: truncated.*expected 10 bytes of label data.*received 7"):
        ds.read_idx(path)


@pytest.mark.parametrize("n_bytes", [0, 3])
def test_truncated_magic(tmp_path, n_bytes):
    path = write(tmp_path / "short.gz", b"\0\0\x08"[:n_bytes], compress=True)
    with pytest.raises(ValueError, match=rf"short\.gz: truncated.*4-byte magic number, received {n_bytes} bytes"):
        ds.read_idx(path)


def test_truncated_dimensions(tmp_path):
    path = write(tmp_path / "dims", bytes([0, 0, 8, 3, 0, 0, 0, 5, 0, 0]), compress=False)
    with pytest.raises(ValueError, match=r"dims: truncated IDX header: expected 12 bytes of dimension sizes.*received 6"):
        ds.read_idx(path)


def test_truncated_gzip_stream(tmp_path):
    payload = gzip.compress(idx_bytes(np.arange(5000, dtype=np.uint8).reshape(50, 100)))
    path = tmp_path / "cut-idx2-ubyte.gz"
    path.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(ValueError, match=r"cut-idx2-ubyte\.gz: truncated or corrupt gzip data.*expected a complete gzip stream"):
        ds.read_idx(path)


def test_a_gzip_stream_breaking_off_says_how_far_it_got(tmp_path):
    """It said "after 16 decompressed bytes" (the header) of a file cut after megabytes."""
    pixels = np.random.default_rng(0).integers(0, 256, (3000, 28, 28), dtype=np.uint8)  # incompressible
    payload = gzip.compress(idx_bytes(pixels))
    path = tmp_path / "cut-idx3-ubyte.gz"
    path.write_bytes(payload[: len(payload) * 3 // 4])
    with pytest.raises(ValueError, match=r"broke off after at least (\d+) decompressed bytes") as info:
        ds.read_idx(path)
    got = int(re.search(r"at least (\d+) decompressed", str(info.value)).group(1))
    assert 1 << 20 <= got <= pixels.size * 3 // 4, got


@pytest.mark.parametrize("damage", ["truncated", "corrupt member"])
def test_a_damaged_npz_found_by_the_search_is_named(tmp_path, places, monkeypatch, damage):
    """A truncated mnist.npz under $TF_DYNHP_DATA (or the Keras cache) ended the tools in a
    bare zipfile.BadZipFile, a compressed one with a damaged member in a bare zlib.error:
    the search's check for the other data set let them through."""
    folder = tmp_path / "env"
    folder.mkdir()
    if damage == "truncated":
        make_fake_npz(tmp_path / "full.npz")
        data = (tmp_path / "full.npz").read_bytes()
        (folder / "mnist.npz").write_bytes(data[: len(data) // 2])
    else:  # the training labels' member (read by the search) damaged, as Keras' compressed mnist.npz could be
        np.savez_compressed(tmp_path / "full.npz", y_train=np.arange(5000, dtype=np.uint8) % 10,
                            x_train=np.zeros((5000, 28, 28), np.uint8), x_test=np.zeros((5, 28, 28), np.uint8),
                            y_test=np.zeros(5, np.uint8))
        data = bytearray((tmp_path / "full.npz").read_bytes())
        for i in range(100, 140):
            data[i] ^= 0xFF
        (folder / "mnist.npz").write_bytes(bytes(data))
    monkeypatch.setenv("TF_DYNHP_DATA", str(folder))
    with pytest.raises(ValueError, match=re.escape(str(folder / "mnist.npz")) + r": not a readable \.npz archive"):
        ds.load("mnist", download=False, **places)


@pytest.mark.parametrize(
    "magic, received",
    [
        (b"\x12\x34\x08\x03", "0x12340803"),  # non-zero leading bytes
        (b"\x00\x00\x0a\x03", "0x00000A03"),  # unknown type code 0x0A
        (b"\x00\x00\x07\x01", "0x00000701"),  # unknown type code 0x07
    ],
)
def test_wrong_magic(tmp_path, magic, received):
    path = write(tmp_path / "bad-idx3-ubyte.gz", magic + bytes(100), compress=True)
    with pytest.raises(ValueError, match=rf"bad-idx3-ubyte\.gz: wrong magic number: expected 0x0000TTNN.*received {received}$"):
        ds.read_idx(path)


def test_wrong_magic_non_idx_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello world")
    with pytest.raises(ValueError, match=r"notes\.txt: wrong magic number.*received 0x68656C6C"):
        ds.read_idx(path)


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
def test_wrong_element_count_trailing_data(tmp_path, compress):
    data = idx_bytes(np.zeros((2, 28, 28), dtype=np.uint8)) + bytes(28 * 28)
    path = write(tmp_path / "t10k-images-idx3-ubyte.gz", data, compress)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz: wrong element count: expected 1568 bytes of pixel data.*\(2 x 28 x 28.*received 2352$"):
        ds.read_idx(path)


def test_wrong_element_count_multibyte(tmp_path):
    data = idx_bytes(np.zeros(3, dtype=">f8"))[:-4]
    path = write(tmp_path / "floats", data, compress=False)
    with pytest.raises(ValueError, match=r"floats: truncated.*expected 24 bytes of label data after the header \(3, float64, 8 byte\(s\) each\), received 20"):
        ds.read_idx(path)


def test_images_labels_count_mismatch(tmp_path, places):
    folder = tmp_path / "mismatch"
    make_fake_dataset(folder)
    write(folder / "t10k-labels-idx1-ubyte.gz", idx_bytes(np.zeros(2, np.uint8)), compress=True)
    with pytest.raises(ValueError) as info:
        ds.load("mnist", folder, download=False, **places)
    msg = str(info.value)
    assert msg.startswith(str(folder / "t10k-labels-idx1-ubyte.gz"))
    assert "count mismatch: expected 3 labels" in msg
    assert str(folder / "t10k-images-idx3-ubyte.gz") in msg
    assert msg.endswith("received 2")


def test_wrong_image_shape(tmp_path, places):
    folder = tmp_path / "shape"
    make_fake_dataset(folder)
    write(folder / "train-images-idx3-ubyte.gz", idx_bytes(np.zeros((5, 32, 32), np.uint8)), compress=True)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz: expected images of shape \(n, 28, 28\), received shape \(5, 32, 32\)"):
        ds.load("mnist", folder, download=False, **places)


def test_non_uint8_images_rejected(tmp_path, places):
    folder = tmp_path / "float"
    make_fake_dataset(folder)
    write(folder / "train-images-idx3-ubyte.gz", idx_bytes(np.zeros((5, 28, 28), ">f4")), compress=True)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz: expected uint8 pixels.*received float32"):
        ds.load("mnist", folder, download=False, **places)


def test_corrupt_file_in_dataset_names_it(tmp_path, places):
    folder = tmp_path / "corrupt"
    make_fake_dataset(folder, compress=False)
    path = folder / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match=re.escape(str(path)) + r": truncated.*expected 5 bytes of label data.*received 4"):
        ds.load("mnist", folder, download=False, **places)


def test_npz_missing_keys(tmp_path, places):
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(ValueError, match=r"mnist\.npz: expected arrays \['x_train', 'y_train', 'x_test', 'y_test'\].*missing \['y_train', 'x_test', 'y_test'\]"):
        ds.load("mnist", path, download=False, **places)


@pytest.mark.parametrize("damage,match", [
    ("truncated", r"not a readable \.npz archive \(BadZipFile"),
    ("text", r"not an \.npz archive of numeric arrays"),
    ("one array", r"expected an \.npz archive of arrays .*received one array"),
    ("objects", r"not an \.npz archive of numeric arrays \(NumPy: Object arrays cannot be loaded"),
    ("corrupt member", r"not a readable \.npz archive \((error|BadZipFile)"),
])
def test_a_damaged_npz_is_a_value_error_naming_it(tmp_path, places, damage, match):
    """A truncated archive raised zipfile.BadZipFile (the tools printed a traceback), a text
    file NumPy's pickle message without the file's name, an .npy under an .npz name a TypeError."""
    path = tmp_path / "mnist.npz"
    if damage == "truncated":
        make_fake_npz(tmp_path / "full.npz")
        data = (tmp_path / "full.npz").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "text":
        path.write_bytes(b"not a zip at all")
    elif damage == "corrupt member":  # one byte of a compressed member's data flipped: zlib.error named no file
        np.savez_compressed(tmp_path / "full.npz", x_train=np.arange(28 * 28 * 50, dtype=np.uint8).reshape(50, 28, 28),
                            y_train=np.zeros(50, np.uint8), x_test=np.zeros((5, 28, 28), np.uint8), y_test=np.zeros(5, np.uint8))
        data = bytearray((tmp_path / "full.npz").read_bytes())
        data[100] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "one array":
        with open(path, "wb") as f:
            np.save(f, np.zeros(3))
    else:
        np.savez(path, x_train=np.array([{"a": 1}], dtype=object), y_train=np.zeros(1), x_test=np.zeros(1), y_test=np.zeros(1))
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": " + match):
        ds.load("mnist", path, download=False, **places)


def test_idx_files_of_no_images_are_refused_naming_the_file(tmp_path, places):
    """A header announcing 0 images loaded, and fit later said "`x` is empty", naming no file."""
    folder = tmp_path / "mnist"
    make_fake_dataset(folder, n_test=0)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz: holds no images \(0 in the file\)"):
        ds.load("mnist", folder, download=False, **places)


def test_unknown_name():
    expected = (
        "Invalid value received for argument `name`. Expected one of "
        "['mnist', 'fashion_mnist']. Received: name='cifar'"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        ds.load("cifar", download=False)
    with pytest.raises(ValueError, match="Received: name='MNIST'"):
        ds.find_dataset_dir("MNIST")


@pytest.mark.parametrize("name", ["fashion_mnist", "fashion-mnist"])
def test_missing_dataset_lists_every_place(tmp_path, monkeypatch, places, name):
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    (env_dir / "fashion-mnist").mkdir()
    (env_dir / "fashion-mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    monkeypatch.setenv("TF_DYNHP_DATA", str(env_dir))
    with pytest.raises(FileNotFoundError) as info:
        ds.load(name, download=False, **places)
    msg = str(info.value)
    cache, system = places["cache_dir"], places["system_dir"]
    in_order = [
        "data_dir argument: (not given)",
        f"$TF_DYNHP_DATA: {env_dir} (no IDX files)",
        f"$TF_DYNHP_DATA: {env_dir / 'fashion-mnist'} (incomplete, missing "
        "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz])",
        f"$TF_DYNHP_DATA: {env_dir / 'fashion_mnist'} (does not exist)",
        f"system data folder: {system / 'fashion-mnist'} (does not exist)",
        f"Keras cache: {cache / 'fashion-mnist'} (does not exist)",
        "download https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
        "(skipped: download=False)",
        "apt-get install dataset-fashion-mnist",
        "set TF_DYNHP_DATA",
        "pass data_dir=",
        "download=True",
    ]
    positions = [msg.find(s) for s in in_order]
    assert -1 not in positions, [s for s, p in zip(in_order, positions) if p == -1]
    assert positions == sorted(positions), msg
    assert msg.startswith("Dataset 'fashion_mnist' not found. Looked in, in order:\n  1. data_dir")
    assert "  6. Keras cache" in msg and "  7. download" in msg


@pytest.mark.parametrize("download", [False, True])
def test_explicit_data_dir_without_the_data_is_an_error(tmp_path, monkeypatch, places, download):
    """Not a silent fall-through to $TF_DYNHP_DATA (or a download) when data_dir is given."""
    make_fake_dataset(tmp_path / "env" / "mnist", marker=2)
    monkeypatch.setenv("TF_DYNHP_DATA", str(tmp_path / "env"))
    missing = tmp_path / "nonexistent"
    with pytest.raises(FileNotFoundError) as info:
        ds.load("mnist", missing, download=download, **places)
    msg = str(info.value)
    assert msg.startswith(f"Dataset 'mnist' not found in data_dir={str(missing)!r} (given explicitly, so no other place is looked at):")
    for line in (f"  - {missing} (does not exist)", f"  - {missing / 'mnist'} (does not exist)", f"  - {missing / 'mnist.npz'} (does not exist)"):
        assert line in msg.splitlines(), msg
    assert "Expected the four IDX files" in msg and str(tmp_path / "env") not in msg
    assert not places["cache_dir"].exists()  # nothing downloaded
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=f"{re.escape(str(tmp_path / 'empty'))} \\(no IDX files\\)"):
        ds.find_dataset_dir("mnist", tmp_path / "empty", **places)


def test_missing_mnist_lists_places_without_apt(places):
    with pytest.raises(FileNotFoundError) as info:
        ds.find_dataset_dir("mnist", **places)
    msg = str(info.value)
    cache, system = places["cache_dir"], places["system_dir"]
    for expected in (
        "1. data_dir argument: (not given)",
        "2. $TF_DYNHP_DATA: (not set)",
        f"3. system data folder: {system / 'mnist'} (does not exist)",
        f"4. Keras cache: {cache / 'mnist'} (does not exist)",
        f"5. Keras cache: {cache / 'mnist.npz'} (does not exist)",
        f"6. download https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz -> {cache / 'mnist.npz'} (skipped: download=False)",
        "set TF_DYNHP_DATA",
        "pass data_dir=",
    ):
        assert expected in msg, msg
    assert "apt-get" not in msg  # Debian has no MNIST package


# --------------------------------------------------------------------------
# search order
# --------------------------------------------------------------------------


def test_load_fake_dataset_values(tmp_path, places):
    folder = tmp_path / "plain"
    arrays = make_fake_dataset(folder, marker=3, compress=False)
    (x_train, y_train), (x_test, y_test) = ds.load("mnist", folder, download=False, **places)
    assert x_train.shape == (5, 28, 28) and x_test.shape == (3, 28, 28)
    assert x_train.dtype == np.float32 and x_train.max() == 1.0 and x_train.min() == 0.0
    np.testing.assert_allclose(x_train, arrays["x_train"] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(x_test, arrays["x_test"] / 255.0, rtol=1e-6)
    assert y_train.tolist() == [3, 4, 5, 6, 7] and y_test.tolist() == [4, 5, 6]
    assert y_train.dtype == np.uint8


def test_data_dir_wins_over_env_var(tmp_path, monkeypatch, places):
    make_fake_dataset(tmp_path / "given", marker=1)
    make_fake_dataset(tmp_path / "env" / "mnist", marker=2)
    monkeypatch.setenv("TF_DYNHP_DATA", str(tmp_path / "env"))
    assert ds.find_dataset_dir("mnist", tmp_path / "given", **places) == tmp_path / "given"
    assert first_train_label(ds.load("mnist", tmp_path / "given", download=False, **places)) == 1
    # Without data_dir, the env var is used (parent-folder layout).
    assert first_train_label(ds.load("mnist", download=False, **places)) == 2


def test_env_var_wins_over_system_dir(tmp_path, monkeypatch, places):
    make_fake_dataset(places["system_dir"] / "fashion-mnist", marker=4)
    make_fake_dataset(tmp_path / "env" / "fashion-mnist", marker=5)
    monkeypatch.setenv("TF_DYNHP_DATA", str(tmp_path / "env"))
    assert first_train_label(ds.load("fashion_mnist", download=False, **places)) == 5
    monkeypatch.delenv("TF_DYNHP_DATA")
    assert first_train_label(ds.load("fashion_mnist", download=False, **places)) == 4
    monkeypatch.setenv("TF_DYNHP_DATA", "")  # empty value is ignored
    assert ds.find_dataset_dir("fashion_mnist", **places) == places["system_dir"] / "fashion-mnist"


def test_system_dir_wins_over_keras_cache(tmp_path, places):
    make_fake_dataset(places["system_dir"] / "mnist", marker=6)
    make_fake_npz(places["cache_dir"] / "mnist.npz", marker=7)
    assert first_train_label(ds.load("mnist", download=False, **places)) == 6


@pytest.mark.parametrize("subfolder", ["fashion-mnist", "fashion_mnist"])
def test_parent_folder_layout(tmp_path, places, subfolder):
    make_fake_dataset(tmp_path / "parent" / subfolder, marker=8)
    make_fake_dataset(tmp_path / "parent" / "mnist", marker=1)
    found = ds.find_dataset_dir("fashion_mnist", tmp_path / "parent", **places)
    assert found == tmp_path / "parent" / subfolder
    assert first_train_label(ds.load("fashion-mnist", tmp_path / "parent", download=False, **places)) == 8
    assert first_train_label(ds.load("mnist", tmp_path / "parent", download=False, **places)) == 1


def test_keras_cache_idx_folder(places):
    make_fake_dataset(places["cache_dir"] / "fashion-mnist", marker=9, compress=False)
    assert ds.find_dataset_dir("fashion_mnist", **places) == places["cache_dir"] / "fashion-mnist"
    assert first_train_label(ds.load("fashion_mnist", download=False, **places)) == 9


def test_keras_cache_npz(places):
    arrays = make_fake_npz(places["cache_dir"] / "mnist.npz", marker=7)
    assert ds.find_dataset_dir("mnist", **places) == places["cache_dir"] / "mnist.npz"
    (x_train, y_train), (x_test, y_test) = ds.load("mnist", download=False, **places)
    assert x_train.dtype == np.float32 and x_train.shape == (5, 28, 28)
    np.testing.assert_allclose(x_train, arrays["x_train"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y_train, arrays["y_train"])
    np.testing.assert_array_equal(y_test, arrays["y_test"])
    assert x_test.shape == (3, 28, 28)


def test_keras_cache_idx_folder_wins_over_npz(places):
    make_fake_dataset(places["cache_dir"] / "mnist", marker=2)
    make_fake_npz(places["cache_dir"] / "mnist.npz", marker=3)
    assert first_train_label(ds.load("mnist", download=False, **places)) == 2


def test_data_dir_may_be_npz_file(tmp_path, places):
    make_fake_npz(tmp_path / "elsewhere" / "digits.npz", marker=4)
    assert first_train_label(ds.load("mnist", tmp_path / "elsewhere" / "digits.npz", download=False, **places)) == 4


def test_default_cache_dir_uses_keras_home_then_home(tmp_path, monkeypatch, places):
    make_fake_npz(tmp_path / "kh" / "datasets" / "mnist.npz", marker=5)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    found = ds.find_dataset_dir("mnist", system_dir=places["system_dir"])
    assert found == tmp_path / "kh" / "datasets" / "mnist.npz"
    monkeypatch.delenv("KERAS_HOME")
    make_fake_dataset(tmp_path / "home" / ".keras" / "datasets" / "mnist", marker=6)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    found = ds.find_dataset_dir("mnist", system_dir=places["system_dir"])
    assert found == tmp_path / "home" / ".keras" / "datasets" / "mnist"


def test_incomplete_data_dir_names_the_missing_file(tmp_path, places):
    make_fake_dataset(tmp_path / "given", marker=1)
    (tmp_path / "given" / "t10k-labels-idx1-ubyte.gz").unlink()
    make_fake_dataset(places["system_dir"] / "mnist", marker=2)
    with pytest.raises(FileNotFoundError) as info:
        ds.load("mnist", tmp_path / "given", download=False, **places)
    assert f"  - {tmp_path / 'given'} (incomplete, missing t10k-labels-idx1-ubyte[.gz])" in str(info.value).splitlines()


def test_incomplete_env_folder_is_skipped(tmp_path, monkeypatch, places):
    make_fake_dataset(tmp_path / "env", marker=1)
    (tmp_path / "env" / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setenv("TF_DYNHP_DATA", str(tmp_path / "env"))
    make_fake_dataset(places["system_dir"] / "mnist", marker=2)
    assert first_train_label(ds.load("mnist", download=False, **places)) == 2


# --------------------------------------------------------------------------
# SHA256SUMS
# --------------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("where", ["folder", "parent", "parent_bsd"])
def test_sha256sums_beside_the_data_are_checked(tmp_path, places, where):
    folder = tmp_path / "root" / "mnist"
    make_fake_dataset(folder, marker=3)
    files = sorted(folder.iterdir())
    if where == "folder":
        sums, lines = folder / "SHA256SUMS", [f"{sha256(f)}  {f.name}" for f in files]
    elif where == "parent":
        sums, lines = folder.parent / "SHA256SUMS", [f"{sha256(f)} *mnist/{f.name}" for f in files]
    else:
        sums, lines = folder.parent / "SHA256SUMS", [f"SHA256 (mnist/{f.name}) = {sha256(f)}" for f in files]
    sums.write_text("# checksums\n" + "\n".join(lines + [f"{'0' * 64}  mnist/not-read.gz"]) + "\n")
    assert first_train_label(ds.load("mnist", folder.parent, download=False, **places)) == 3
    # One byte changed in a listed file (a valid IDX file still): refused, naming it and the list.
    labels = folder / "train-labels-idx1-ubyte.gz"
    write(labels, idx_bytes(np.arange(5, dtype=np.uint8)[::-1].copy()), compress=True)
    with pytest.raises(ValueError) as info:
        ds.load("mnist", folder.parent, download=False, **places)
    msg = str(info.value)
    assert msg.startswith(f"{labels}: SHA-256 mismatch: expected ") and f"(listed in {sums})" in msg
    assert f"received {sha256(labels)}" in msg


def test_unlisted_files_are_not_checked_and_bad_lines_are_named(tmp_path, places):
    folder = tmp_path / "mnist"
    make_fake_dataset(folder, marker=4)
    (folder / "SHA256SUMS").write_text(f"{'1' * 64}  some-other-file.gz\n")
    assert first_train_label(ds.load("mnist", folder, download=False, **places)) == 4
    (folder / "SHA256SUMS").write_text("abc  train-images-idx3-ubyte.gz\n")
    with pytest.raises(ValueError, match=re.escape(str(folder / "SHA256SUMS")) + ", line 1: expected '<64 hex digits>  <file name>'"):
        ds.load("mnist", folder, download=False, **places)
    (folder / "SHA256SUMS").write_text("SIZE (train-labels-idx1-ubyte.gz) = 120\n")  # named as a whole: refused
    with pytest.raises(ValueError, match=", line 1: expected"):
        ds.load("mnist", folder, download=False, **places)


def test_lines_of_a_list_that_name_no_file_read_do_not_block_loading(tmp_path, places):
    """A PGP-signed list, or one with another tool's lines, in the data's folder or its
    parent: its odd lines blocked loading although they name none of the files read."""
    folder = tmp_path / "root" / "mnist"
    make_fake_dataset(folder, marker=6)
    listed = [f"{sha256(f)}  mnist/{f.name}" for f in sorted(folder.iterdir())]
    (folder.parent / "SHA256SUMS").write_text("\n".join(
        ["-----BEGIN PGP SIGNED MESSAGE-----", "Hash: SHA256", ""] + listed
        + ["md5 d41d8cd98f00b204e9800998ecf8427e  other.tar", "-----BEGIN PGP SIGNATURE-----", "iQIzBAEBCAAdFiEE", "-----END PGP SIGNATURE-----",
           # another folder's file of the same name, and a longer name beginning with one read
           "SIZE (fashion-mnist/train-images-idx3-ubyte.gz) = 26421856", "SIZE (mnist/train-labels-idx1-ubyte.gz.old) = 1"]) + "\n")
    assert first_train_label(ds.load("mnist", folder.parent, download=False, **places)) == 6
    # the listed files are still checked
    labels = folder / "train-labels-idx1-ubyte.gz"
    write(labels, idx_bytes(np.arange(5, dtype=np.uint8)[::-1].copy()), compress=True)
    with pytest.raises(ValueError, match="SHA-256 mismatch"):
        ds.load("mnist", folder.parent, download=False, **places)


def test_npz_is_checked_against_sha256sums(tmp_path, places):
    path = tmp_path / "data" / "mnist.npz"
    make_fake_npz(path, marker=5)
    (path.parent / "SHA256SUMS").write_text(f"{'2' * 64}  mnist.npz\n")
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": SHA-256 mismatch"):
        ds.load("mnist", path, download=False, **places)


@real_data
def test_real_data_has_sha256sums_that_match():
    assert (DATA_ROOT / "SHA256SUMS").is_file()
    listed, odd = ds._read_sums(DATA_ROOT / "SHA256SUMS")
    assert odd == []
    assert os.path.normpath((DATA_ROOT / "mnist" / "train-images-idx3-ubyte.gz").resolve()) in listed
    ds._check_sums(sorted((DATA_ROOT / "mnist").glob("*.gz")))  # the fixtures loaded them through the check


# --------------------------------------------------------------------------
# download (network replaced by a fake urlopen)
# --------------------------------------------------------------------------


def fake_server(monkeypatch, files: dict[str, bytes]) -> list[str]:
    requested: list[str] = []

    def urlopen(url, timeout=None):
        requested.append(url)
        name = url.rsplit("/", 1)[-1]
        if name not in files:
            raise urllib.error.HTTPError(url, 404, "Not Found", None, None)
        return io.BytesIO(files[name])

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return requested


def test_download_fashion_into_keras_cache(tmp_path, monkeypatch, places, capsys):
    arrays = make_fake_dataset(tmp_path / "server", marker=7)
    files = {p.name: p.read_bytes() for p in (tmp_path / "server").iterdir()}
    requested = fake_server(monkeypatch, files)
    (x_train, y_train), _ = ds.load("fashion_mnist", **places)  # download=True by default
    base = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
    assert sorted(requested) == sorted(base + n + ".gz" for n in IDX_NAMES)
    cache_folder = places["cache_dir"] / "fashion-mnist"
    assert sorted(p.name for p in cache_folder.iterdir()) == sorted(n + ".gz" for n in IDX_NAMES)
    np.testing.assert_array_equal(y_train, arrays["y_train"])
    assert "Downloading data from" in capsys.readouterr().err
    # Second call finds the cache and does not download again.
    requested.clear()
    assert first_train_label(ds.load("fashion_mnist", **places)) == 7
    assert requested == []


def test_download_failure_is_one_file_not_found_error(places):
    # The autouse no_network fixture makes urlopen fail.
    with pytest.raises(FileNotFoundError) as info:
        ds.load("fashion_mnist", download=True, **places)
    msg = str(info.value)
    assert "(failed: URLError:" in msg and "network disabled in tests" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "Keras cache:" in msg
    assert not any((places["cache_dir"] / "fashion-mnist").glob("*"))  # no partial files


def test_download_mnist_npz_checksum_mismatch(tmp_path, monkeypatch, places):
    make_fake_npz(tmp_path / "srv" / "mnist.npz")
    data = (tmp_path / "srv" / "mnist.npz").read_bytes()
    requested = fake_server(monkeypatch, {"mnist.npz": data})
    with pytest.raises(FileNotFoundError) as info:
        ds.load("mnist", **places)
    assert requested == ["https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"]
    msg = str(info.value)
    digest = hashlib.sha256(data).hexdigest()
    assert f"expected SHA-256 731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1, received a file with SHA-256 {digest}" in msg
    assert list(places["cache_dir"].iterdir()) == []  # bad file not kept


def test_find_dataset_dir_does_not_download_by_default(places, monkeypatch):
    requested = fake_server(monkeypatch, {})
    with pytest.raises(FileNotFoundError, match="skipped: download=False"):
        ds.find_dataset_dir("fashion_mnist", **places)
    assert requested == []


# --------------------------------------------------------------------------
# module hygiene
# --------------------------------------------------------------------------


def test_module_import_is_cheap():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('m', {str(MODULE_FILE)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "heavy = [k for k in ('tensorflow', 'keras', 'urllib.request', 'http.client') if k in sys.modules]\n"
        "print(sorted(m.__all__), heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['find_dataset_dir', 'load', 'read_idx'] []"


def test_labels_outside_the_ten_classes_are_refused_naming_the_file(tmp_path, places):
    folder = tmp_path / "label11"
    make_fake_dataset(folder)
    write(folder / "t10k-labels-idx1-ubyte.gz", idx_bytes(np.array([0, 11, 3], np.uint8)), compress=True)
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz: expected labels in \[0, 10\) .*received labels in \[0, 11\]"):
        ds.load("mnist", folder, download=False, **places)


def test_the_fashion_mnist_alias_loads_the_real_data():
    """load("fashion-mnist") (the documented alias) refused Fashion-MNIST as 'the
    fashion_mnist data set, not fashion-mnist'."""
    (x, y), _ = ds.load("fashion-mnist", DATA_ROOT, download=False)
    assert x.shape == (60000, 28, 28) and y[0] == 9


@real_data
def test_a_search_place_holding_the_other_data_set_is_passed_over(tmp_path, places, monkeypatch):
    """TF_DYNHP_DATA naming MNIST's folder blocked Fashion-MNIST found further on: the
    search took the first folder of four IDX files, and load then refused it."""
    system = places["system_dir"]
    system.mkdir()
    (system / "fashion-mnist").symlink_to(DATA_ROOT / "fashion-mnist")
    monkeypatch.setenv("TF_DYNHP_DATA", str(DATA_ROOT / "mnist"))
    assert ds.find_dataset_dir("fashion_mnist", **places) == system / "fashion-mnist"
    (_, y), _ = ds.load("fashion_mnist", download=False, **places)
    assert len(y) == 60000
    # an explicit data_dir is still refused by name (no data from elsewhere)
    with pytest.raises(ValueError, match="holds the mnist data set"):
        ds.load("fashion_mnist", DATA_ROOT / "mnist", download=False, **places)


def test_a_sha256sums_beside_links_to_the_data_is_read(tmp_path, places):
    """A folder of symbolic links with its own SHA256SUMS: the list was looked for only
    beside the links' targets, so a wrong digest there went unnoticed."""
    real = tmp_path / "real" / "mnist"
    make_fake_dataset(real, marker=7)
    links = tmp_path / "links" / "mnist"
    links.mkdir(parents=True)
    for f in real.iterdir():
        (links / f.name).symlink_to(f)
    labels = "train-labels-idx1-ubyte.gz"
    (links.parent / "SHA256SUMS").write_text(f"{'0' * 64}  mnist/{labels}\n")
    with pytest.raises(ValueError, match=re.escape(f"{links / labels}: SHA-256 mismatch")):
        ds.load("mnist", links.parent, download=False, **places)
    (links.parent / "SHA256SUMS").write_text(f"{sha256(real / labels)}  mnist/{labels}\n")
    assert first_train_label(ds.load("mnist", links.parent, download=False, **places)) == 7
