"""IDX files (MNIST's format): written here by hand, read back by `jaxbp.datasets.load_file`
and `jaxbp train --data`, gzipped or not; damaged ones refused naming the file."""

import gzip
import re
import struct

import numpy as np
import pytest

from jaxbp import datasets
from jaxbp._files.idx import read_idx
from jaxbp.app.cli import main

CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D}


def idx_bytes(arr):
    """An IDX file of `arr` written from the format's definition (independent of the reader)."""
    arr = np.asarray(arr)
    head = bytes([0, 0, CODES[arr.dtype.type], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write(path, arr, gz=False):
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def mnist_like(n=60, seed=0):
    """`n` 4x5 uint8 images whose class (0..2) is the brightest third of the image."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = rng.integers(0, 60, size=(n, 4, 5)).astype(np.uint8)
    for i, c in enumerate(labels):
        images[i].reshape(-1)[c * 6 : c * 6 + 6] += 180
    return images, labels.astype(np.uint8)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzipped"])
def test_images_with_labels_beside(tmp_path, gz):
    images, labels = mnist_like()
    ext = ".gz" if gz else ""
    write(tmp_path / f"train-images-idx3-ubyte{ext}", images, gz)
    write(tmp_path / f"train-labels-idx1-ubyte{ext}", labels, gz)
    data, info = datasets.load_file(tmp_path / f"train-images-idx3-ubyte{ext}", seed=1)
    assert info == datasets.DatasetInfo("classification", "cross_entropy", 3)
    assert data.x_train.shape[1] == 20 and data.x_train.shape[0] + data.x_test.shape[0] == 60
    # The same split and standardisation as the same table in an .npz file.
    np.savez(tmp_path / "same.npz", x=images.reshape(60, 20), y=labels)
    reference, _ = datasets.load_file(tmp_path / "same.npz", seed=1)
    for got, want in zip(data, reference):
        np.testing.assert_array_equal(got, want)


def test_labels_named_and_mixed_compression(tmp_path):
    images, labels = mnist_like()
    write(tmp_path / "t10k-images-idx3-ubyte.gz", images, gz=True)
    write(tmp_path / "t10k-labels-idx1-ubyte", labels)  # beside, not gzipped
    assert datasets.load_file(tmp_path / "t10k-images-idx3-ubyte.gz")[1].n_outputs == 3
    write(tmp_path / "pics.idx", images)
    write(tmp_path / "answers.idx", labels, gz=True)
    data, _ = datasets.load_file(tmp_path / "pics.idx", labels=tmp_path / "answers.idx")
    assert data.x_train.shape[1] == 20


def test_read_idx_dtypes_and_byte_order(tmp_path):
    for dtype in (np.uint8, np.int8, np.int16, np.int32, np.float32):
        arr = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype)
        got = read_idx(write(tmp_path / "a.idx", arr))
        np.testing.assert_array_equal(got, arr)
        assert got.dtype == arr.dtype and got.dtype.isnative


def damaged(tmp_path):
    images, labels = mnist_like(10)
    good = idx_bytes(images)
    return {
        "truncated": (good[:-7], "is truncated: its header promises (10, 4, 5) values"),
        "extra-bytes": (good + b"\0", "has bytes after the (10, 4, 5) values"),
        "bad-type-byte": (b"\0\0\x07\x03" + good[4:], "does not start like an IDX file"),
        "empty": (b"", "does not start like an IDX file"),
        "huge-header": (
            bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2**31, 2**31, 2**31),
            "over the 17,179,869,184-byte limit",
        ),
        "huge-header-with-a-zero": (  # no values, yet a shape numpy refuses (found by fuzzing)
            bytes([0, 0, 0x0B, 4]) + struct.pack(">4I", 0, 46534, 374120, 66224461),
            "over the 17,179,869,184-byte limit",
        ),
        "truncated-gzip": (gzip.compress(good)[:-20], "gzip stream is truncated or damaged"),
        "labels-as-images": (idx_bytes(labels), "looks like a labels file"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "truncated",
        "extra-bytes",
        "bad-type-byte",
        "empty",
        "huge-header",
        "huge-header-with-a-zero",
        "truncated-gzip",
        "labels-as-images",
    ],
)
def test_damaged_images_file(tmp_path, case):
    blob, fragment = damaged(tmp_path)[case]
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(blob)
    write(tmp_path / "train-labels-idx1-ubyte", mnist_like(10)[1])
    with pytest.raises(ValueError, match=re.escape(fragment)) as err:
        datasets.load_file(path)
    assert str(path) in str(err.value)


def test_labels_problems(tmp_path):
    images, labels = mnist_like(10)
    path = write(tmp_path / "train-images-idx3-ubyte", images)
    with pytest.raises(
        ValueError, match=r"no labels file found beside it \(looked for train-labels"
    ):
        datasets.load_file(path)
    write(tmp_path / "train-labels-idx1-ubyte", labels[:9])
    with pytest.raises(ValueError, match=r"one value per image, \(10,\) .* got \(9,\)"):
        datasets.load_file(path)
    write(tmp_path / "train-labels-idx1-ubyte", labels.astype(np.float32))
    with pytest.raises(ValueError, match="labels must be integers"):
        datasets.load_file(path)
    other = write(tmp_path / "pictures", images)
    with pytest.raises(ValueError, match=r"no labels file found beside it; name it with labels="):
        datasets.load_file(other)
    np.savez(tmp_path / "d.npz", x=np.ones((4, 2)), y=np.arange(4))
    with pytest.raises(ValueError, match=r"labels names the labels file of IDX images"):
        datasets.load_file(tmp_path / "d.npz", labels=path)


def test_train_on_idx_files(tmp_path, capsys):
    images, labels = mnist_like(300)
    write(tmp_path / "train-images-idx3-ubyte.gz", images, gz=True)
    write(tmp_path / "train-labels-idx1-ubyte.gz", labels, gz=True)
    data = str(tmp_path / "train-images-idx3-ubyte.gz")
    code = main(["train", "--data", data, "--hidden", "16", "--epochs", "15", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert float(out.splitlines()[-2].split()[-1]) > 0.9  # test accuracy
    code = main(["train", "--data", data, "--labels", str(tmp_path / "missing"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "missing: no such data file" not in err and "missing" in err
    assert len(err.strip().splitlines()) == 1
