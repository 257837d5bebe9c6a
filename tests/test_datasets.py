"""Tests of stosim.datasets: IDX reader, digits split, download checks, real MNIST.

Everything is written under ``tmp_path``; no test touches the network (``_fetch`` is
replaced where a download is exercised).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from stosim import datasets
from stosim.datasets import (
    DatasetError,
    ImageDataset,
    download_idx_dataset,
    load_dataset,
    load_idx_dataset,
    read_idx_images,
    read_idx_labels,
    to_tensor_dataset,
)

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
PARTIAL_TRAIN_COUNT = 24345
PARTIAL_TRAIN_CLASS_COUNTS = [2406, 2770, 2381, 2524, 2386, 2181, 2401, 2524, 2328, 2444]


# ---------------------------------------------------------------------------- helpers


def idx_images_bytes(images: np.ndarray, magic: int = 2051) -> bytes:
    """IDX image file content for a uint8 array of shape (n, rows, cols)."""
    n, rows, cols = images.shape
    return struct.pack(">IIII", magic, n, rows, cols) + images.astype(np.uint8).tobytes()


def idx_labels_bytes(labels: np.ndarray, magic: int = 2049) -> bytes:
    """IDX label file content for a uint8 array of shape (n,)."""
    return struct.pack(">II", magic, labels.shape[0]) + labels.astype(np.uint8).tobytes()


def write_file(path: Path, content: bytes, compress: bool) -> Path:
    """Write ``content`` to ``path`` (+ ``.gz`` and gzip-compressed when ``compress``)."""
    if compress:
        path = path.with_name(path.name + ".gz")
        content = gzip.compress(content)
    path.write_bytes(content)
    return path


def write_idx_split(
    folder: Path,
    split: str,
    images: np.ndarray,
    labels: np.ndarray,
    compress: bool,
) -> tuple[Path, Path]:
    """Write one split's images and labels with the standard file names."""
    stem_images, stem_labels = datasets.IDX_FILE_STEMS[split]
    folder.mkdir(parents=True, exist_ok=True)
    return (
        write_file(folder / stem_images, idx_images_bytes(images), compress),
        write_file(folder / stem_labels, idx_labels_bytes(labels), compress),
    )


def random_split(rng: np.random.Generator, n: int, rows: int = 28, cols: int = 28):
    images = rng.integers(0, 256, size=(n, rows, cols), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    return images, labels


# ---------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "raw"])
def test_idx_round_trip(tmp_path: Path, compress: bool) -> None:
    rng = np.random.default_rng(1)
    train_images, train_labels = random_split(rng, 37, rows=5, cols=7)
    test_images, test_labels = random_split(rng, 11, rows=5, cols=7)
    img_path, lab_path = write_idx_split(tmp_path, "train", train_images, train_labels, compress)
    write_idx_split(tmp_path, "test", test_images, test_labels, compress)

    np.testing.assert_array_equal(read_idx_images(img_path), train_images)
    np.testing.assert_array_equal(read_idx_labels(lab_path), train_labels)

    for split, images, labels in (
        ("train", train_images, train_labels),
        ("test", test_images, test_labels),
    ):
        ds = load_idx_dataset(tmp_path, "mnist", split)
        assert ds.split == split and ds.name == "mnist"
        assert ds.images.dtype == np.float32 and ds.labels.dtype == np.int64
        assert ds.image_shape == (5, 7) and len(ds) == images.shape[0] and ds.n_classes == 10
        np.testing.assert_array_equal(ds.images * np.float32(255), images.astype(np.float32))
        np.testing.assert_array_equal(ds.labels, labels.astype(np.int64))
        assert ds.flat().shape == (images.shape[0], 35)
        np.testing.assert_array_equal(ds.flat()[3], ds.images[3].ravel())
        assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0


def test_gzip_detected_by_content_not_name(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    images, labels = random_split(rng, 4)
    # gzip content under the raw name, raw content under the .gz name
    (tmp_path / "train-images-idx3-ubyte").write_bytes(gzip.compress(idx_images_bytes(images)))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(idx_labels_bytes(labels))
    ds = load_idx_dataset(tmp_path, "fashion-mnist", "train")
    np.testing.assert_array_equal(np.rint(ds.images * 255).astype(np.uint8), images)
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.class_names[0] == "T-shirt/top"


def test_load_dataset_mnist_limits(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    write_idx_split(tmp_path, "train", *random_split(rng, 30), compress=True)
    write_idx_split(tmp_path, "test", *random_split(rng, 12), compress=False)
    train, test = load_dataset("mnist", data_dir=tmp_path)
    assert (len(train), len(test)) == (30, 12)
    small_train, small_test = load_dataset("MNIST", data_dir=tmp_path, limit_train=7, limit_test=100)
    assert (len(small_train), len(small_test)) == (7, 12)  # a limit is an upper bound
    np.testing.assert_array_equal(small_train.images, train.images[:7])
    with pytest.raises(ValueError, match="limit_train"):
        load_dataset("mnist", data_dir=tmp_path, limit_train=0)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("cifar10", data_dir=tmp_path)
    # a test set of another image shape (16 x 49 = 784 pixels, as many as 28 x 28) is refused, not reshaped
    write_idx_split(tmp_path, "test", *random_split(rng, 12, rows=16, cols=49), compress=False)
    with pytest.raises(DatasetError, match="training images are 28 x 28 pixels, the test images 16 x 49"):
        load_dataset("mnist", data_dir=tmp_path)


def test_digits_test_fraction_keeps_every_class_in_both_splits() -> None:
    train, test = load_dataset("digits", None, test_fraction=10 / 1797)
    assert len(test) == 10 and len(train) == 1787
    for bad in (0.001, 0.999, 0.0, float("nan")):
        with pytest.raises(ValueError, match=r"test_fraction = .* is out of range; valid: \[0\.0056, 0\.9944\]"):
            load_dataset("digits", None, test_fraction=bad)


def test_to_tensor_dataset(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    write_idx_split(tmp_path, "train", *random_split(rng, 9, 4, 6), compress=True)
    ds = load_idx_dataset(tmp_path, "mnist", "train")
    tds = to_tensor_dataset(ds)
    x, y = tds.tensors
    assert x.shape == (9, 24) and x.dtype == torch.float32
    assert y.shape == (9,) and y.dtype == torch.int64
    np.testing.assert_array_equal(x.numpy(), ds.flat())
    xi, yi = tds[2]
    assert int(yi) == int(ds.labels[2])
    assert to_tensor_dataset(ds, flatten=False).tensors[0].shape == (9, 4, 6)


# ---------------------------------------------------------------------------- clear errors


def test_wrong_magic(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    images, labels = random_split(rng, 3)
    path = tmp_path / "imgs"
    path.write_bytes(idx_images_bytes(images, magic=1234))
    with pytest.raises(DatasetError, match=r"imgs.*expected magic number 2051.*found 1234"):
        read_idx_images(path)
    # a labels file passed as images is recognised as such
    path.write_bytes(idx_labels_bytes(labels))
    with pytest.raises(DatasetError, match="this is an IDX labels file"):
        read_idx_images(path)
    path.write_bytes(idx_images_bytes(images))
    with pytest.raises(DatasetError, match=r"expected magic number 2049.*found 2051"):
        read_idx_labels(path)


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "raw"])
def test_truncated_images(tmp_path: Path, compress: bool) -> None:
    rng = np.random.default_rng(6)
    images, _ = random_split(rng, 5)
    content = idx_images_bytes(images)
    path = write_file(tmp_path / "train-images-idx3-ubyte", content[:-100], compress)
    expected = 16 + 5 * 28 * 28
    with pytest.raises(DatasetError) as info:
        read_idx_images(path)
    message = str(info.value)
    assert str(path) in message and "truncated" in message
    assert f"expected {expected} bytes" in message and f"found {expected - 100}" in message
    # header cut short
    path = write_file(tmp_path / "short", content[:10], compress)
    with pytest.raises(DatasetError, match="16-byte header"):
        read_idx_images(path)


def test_trailing_bytes(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    images, labels = random_split(rng, 5)
    path = write_file(tmp_path / "imgs", idx_images_bytes(images) + b"junk", compress=True)
    with pytest.raises(DatasetError, match=r"trailing bytes.*4 bytes too many"):
        read_idx_images(path)
    path = write_file(tmp_path / "labs", idx_labels_bytes(labels) + b"\x00", compress=False)
    with pytest.raises(DatasetError, match="trailing bytes"):
        read_idx_labels(path)


def test_truncated_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    _, labels = random_split(rng, 20)
    path = write_file(tmp_path / "train-labels-idx1-ubyte", idx_labels_bytes(labels)[:-3], True)
    with pytest.raises(DatasetError) as info:
        read_idx_labels(path)
    message = str(info.value)
    assert str(path) in message and "truncated" in message
    assert "expected 28 bytes" in message and "found 25" in message


def test_count_mismatch(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    images, _ = random_split(rng, 6)
    _, labels = random_split(rng, 5)
    write_idx_split(tmp_path, "test", images, labels, compress=True)
    with pytest.raises(DatasetError, match=r"counts disagree.*6 images.*5 labels"):
        load_idx_dataset(tmp_path, "mnist", "test")


def test_labels_out_of_range(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    images, labels = random_split(rng, 6)
    labels[4] = 10
    _, lab_path = write_idx_split(tmp_path, "train", images, labels, compress=False)
    with pytest.raises(DatasetError, match=r"0\.\.9.*index 4 \(value 10\)") as info:
        load_idx_dataset(tmp_path, "mnist", "train")
    assert str(lab_path) in str(info.value)


def test_missing_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    with pytest.raises(DatasetError) as info:
        load_idx_dataset(tmp_path / "nowhere", "mnist", "test")
    message = str(info.value)
    for needed in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "download=True"):
        assert needed in message
    assert str(tmp_path / "nowhere") in message and "does not exist" in message

    # only the labels are missing
    images, _ = random_split(rng, 3)
    write_file(tmp_path / "train-images-idx3-ubyte", idx_images_bytes(images), compress=True)
    with pytest.raises(DatasetError, match=r"missing: train-labels-idx1-ubyte\."):
        load_dataset("mnist", data_dir=tmp_path)


def test_corrupt_gzip(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    images, _ = random_split(rng, 8)
    compressed = gzip.compress(idx_images_bytes(images))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(DatasetError, match="corrupt gzip") as info:
        read_idx_images(cut)
    assert str(cut) in str(info.value)
    garbled = bytearray(compressed)
    garbled[20:40] = bytes(20)
    bad = tmp_path / "garbled.gz"
    bad.write_bytes(bytes(garbled))
    with pytest.raises(DatasetError, match="corrupt gzip"):
        read_idx_images(bad)


def test_image_dataset_validation() -> None:
    images = np.zeros((2, 3, 3), np.float32)
    with pytest.raises(DatasetError, match="int64"):
        ImageDataset(images=images, labels=np.zeros(2, np.int32), n_classes=10, name="x")
    with pytest.raises(DatasetError, match="2 images but 3 labels"):
        ImageDataset(images=images, labels=np.zeros(3, np.int64), n_classes=10, name="x")
    with pytest.raises(DatasetError, match=r"\[0, 1\]"):
        ImageDataset(images=images + 2, labels=np.zeros(2, np.int64), n_classes=10, name="x")
    with pytest.raises(DatasetError, match="0..1"):
        ImageDataset(images=images, labels=np.array([0, 2]), n_classes=2, name="x")


def test_n_classes_must_be_an_integer(tmp_path: Path) -> None:
    images = np.zeros((2, 3, 3), np.float32)
    labels = np.zeros(2, np.int64)
    # 10.0 used to be accepted and then crash np.bincount in class_counts()
    for bad in (10.0, float("nan"), None, "10"):
        with pytest.raises(DatasetError, match="n_classes must be a positive integer"):
            ImageDataset(images=images, labels=labels, n_classes=bad, name="x")  # type: ignore[arg-type]
    counts = ImageDataset(images=images, labels=labels, n_classes=np.int64(3), name="x").class_counts()
    assert counts.tolist() == [2, 0, 0]
    # a bad n_classes is blamed on the parameter, not on the (valid) file
    path = write_file(tmp_path / "labs", idx_labels_bytes(np.array([0, 1, 2], np.uint8)), compress=False)
    for bad in (0, -1, 257, 2.5):
        with pytest.raises(ValueError, match=r"n_classes = .* is out of range; valid: an integer in 1\.\.256"):
            read_idx_labels(path, bad)  # type: ignore[arg-type]
    assert read_idx_labels(path, 3).tolist() == [0, 1, 2]


# ---------------------------------------------------------------------------- digits


def test_digits_seed_must_be_an_integer_in_range() -> None:
    # 1.7 used to be truncated to 1 silently (two "different" seeds, one split); out-of-range
    # seeds failed inside scikit-learn with a message about random_state
    for bad in (1.7, -1, 2**32, None, True):
        with pytest.raises(ValueError, match=r"seed = .* is out of range; valid: an integer in \[0, 2\*\*32 - 1\]"):
            load_dataset("digits", seed=bad)  # type: ignore[arg-type]
    train, _ = load_dataset("digits", seed=np.int64(2**32 - 1), limit_train=5)
    assert len(train) == 5


def test_digits_split() -> None:
    train, test = load_dataset("digits", seed=0)
    assert train.image_shape == (8, 8) and test.image_shape == (8, 8)
    assert train.n_classes == 10 and test.n_classes == 10
    assert len(train) + len(test) == 1797 and len(test) == 360
    for ds in (train, test):
        assert ds.images.dtype == np.float32 and ds.labels.dtype == np.int64
        assert ds.images.min() >= 0.0 and ds.images.max() <= 1.0
        assert set(np.unique(ds.labels)) == set(range(10))
        assert ds.flat().shape == (len(ds), 64)
    assert train.images.max() == 1.0

    # stratified: every class has ~20 % of its images in the test set
    fraction = test.class_counts() / (train.class_counts() + test.class_counts())
    assert np.all(np.abs(fraction - 0.2) < 0.02)

    # deterministic for a seed, different for another seed
    train2, test2 = load_dataset("digits", seed=0)
    np.testing.assert_array_equal(train.images, train2.images)
    np.testing.assert_array_equal(test.labels, test2.labels)
    train3, _ = load_dataset("digits", seed=1)
    assert not np.array_equal(train.images, train3.images)

    # disjoint and complete: train + test is a partition of the 1,797 source images
    # (compared as multisets of pixel rows, since a few source images are duplicates)
    from sklearn.datasets import load_digits

    source = (load_digits().images / 16.0).astype(np.float32).reshape(1797, 64)
    split_rows = sorted(r.tobytes() for r in np.concatenate([train.flat(), test.flat()]))
    assert split_rows == sorted(r.tobytes() for r in source)

    small_train, small_test = load_dataset("digits", limit_train=100, limit_test=50)
    assert (len(small_train), len(small_test)) == (100, 50)


# ---------------------------------------------------------------------------- download


def fake_mirror(monkeypatch: pytest.MonkeyPatch, payloads: dict[str, bytes]) -> list[str]:
    """Replace ``datasets._fetch`` by a lookup of the file name in ``payloads``; log URLs."""
    calls: list[str] = []

    def fetch(url: str) -> bytes:
        calls.append(url)
        return payloads[url.rsplit("/", 1)[1]]

    monkeypatch.setattr(datasets, "_fetch", fetch)
    return calls


def fake_payloads(rng: np.random.Generator) -> dict[str, bytes]:
    out = {}
    for split, n in (("train", 12), ("test", 5)):
        images, labels = random_split(rng, n)
        stem_images, stem_labels = datasets.IDX_FILE_STEMS[split]
        out[stem_images + ".gz"] = gzip.compress(idx_images_bytes(images), mtime=0)
        out[stem_labels + ".gz"] = gzip.compress(idx_labels_bytes(labels), mtime=0)
    return out


def test_download_checksum_ok_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payloads = fake_payloads(np.random.default_rng(13))
    table = {name: hashlib.md5(data).hexdigest() for name, data in payloads.items()}
    monkeypatch.setattr(datasets, "IDX_MD5", {"mnist": table})
    calls = fake_mirror(monkeypatch, payloads)

    replaced: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy_replace(src, dst):
        # the data is complete under a temporary name in the same folder before the rename
        assert Path(src).parent == Path(dst).parent and Path(src).name != Path(dst).name
        assert Path(src).read_bytes() == payloads[Path(dst).name]
        assert not Path(dst).exists()
        replaced.append((str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(datasets.os, "replace", spy_replace)
    folder = download_idx_dataset("mnist", tmp_path / "cache")
    assert folder == tmp_path / "cache"
    assert sorted(p.name for p in folder.iterdir()) == sorted(payloads)  # no temp files left
    assert len(replaced) == 4 and len(calls) == 4
    assert all(url.startswith("https://ossci-datasets.s3.amazonaws.com/mnist/") for url in calls)
    for name, data in payloads.items():
        assert (folder / name).read_bytes() == data

    # present with the right checksum: not fetched again
    download_idx_dataset("mnist", folder)
    assert len(calls) == 4

    train, test = load_dataset("mnist", data_dir=folder)
    assert (len(train), len(test)) == (12, 5)


def test_download_wrong_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payloads = fake_payloads(np.random.default_rng(14))
    # the real table: the fake payloads cannot match it
    calls = fake_mirror(monkeypatch, payloads)
    folder = tmp_path / "cache"
    with pytest.raises(DatasetError, match="checksum mismatch") as info:
        download_idx_dataset("fashion-mnist", folder)
    message = str(info.value)
    assert datasets.IDX_MD5["fashion-mnist"]["train-images-idx3-ubyte.gz"] in message
    assert len(calls) == 1
    assert list(folder.iterdir()) == []  # neither the file nor a temporary file is left


def test_load_dataset_download_only_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(15)
    payloads = fake_payloads(rng)
    table = {name: hashlib.md5(data).hexdigest() for name, data in payloads.items()}
    monkeypatch.setattr(datasets, "IDX_MD5", {"mnist": table})
    calls = fake_mirror(monkeypatch, payloads)
    # the train split is already there (raw files, a different image count): kept as is
    write_idx_split(tmp_path, "train", *random_split(rng, 7), compress=False)
    train, test = load_dataset("mnist", data_dir=tmp_path, download=True)
    assert (len(train), len(test)) == (7, 5)
    assert sorted(url.rsplit("/", 1)[1] for url in calls) == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STOSIM_DATA", str(tmp_path / "store"))
    assert datasets.default_cache_dir() == tmp_path / "store"
    assert datasets.default_data_dir("fashion-mnist") == tmp_path / "store" / "fashion-mnist"
    monkeypatch.delenv("STOSIM_DATA")
    assert datasets.default_cache_dir() == Path.home() / ".cache" / "stosim"


def test_no_network_error_is_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error

    def offline(url: str) -> bytes:
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(datasets, "_fetch", offline)
    with pytest.raises(DatasetError, match=r"could not download train-images-idx3-ubyte\.gz.*no route"):
        download_idx_dataset("mnist", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_download_tries_next_mirror_after_dropped_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import http.client

    payloads = fake_payloads(np.random.default_rng(16))
    table = {name: hashlib.md5(data).hexdigest() for name, data in payloads.items()}
    monkeypatch.setattr(datasets, "IDX_MD5", {"mnist": table})
    first, second = datasets.IDX_MIRRORS["mnist"][:2]
    calls: list[str] = []

    def fetch(url: str) -> bytes:
        calls.append(url)
        if url.startswith(first):  # the connection drops mid-transfer
            raise http.client.IncompleteRead(b"partial", 1000)
        return payloads[url.rsplit("/", 1)[1]]

    monkeypatch.setattr(datasets, "_fetch", fetch)
    folder = download_idx_dataset("mnist", tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == sorted(payloads)
    assert sum(url.startswith(second) for url in calls) == 4

    # every mirror drops the connection: a DatasetError naming the file, nothing left behind
    monkeypatch.setattr(datasets, "_fetch", lambda url: fetch(first))
    with pytest.raises(DatasetError, match=r"could not download train-images-idx3-ubyte\.gz.*IncompleteRead"):
        download_idx_dataset("mnist", tmp_path / "again")
    assert list((tmp_path / "again").iterdir()) == []


# ---------------------------------------------------------------------------- real MNIST


def test_real_mnist() -> None:
    if not SHARED_MNIST.is_dir():
        pytest.skip(f"real MNIST files not available (looked in {SHARED_MNIST})")
    train, test = load_dataset("mnist", data_dir=SHARED_MNIST)
    assert len(train) in (PARTIAL_TRAIN_COUNT, 60000)
    assert len(test) == 10000
    assert train.image_shape == (28, 28) and test.image_shape == (28, 28)
    assert train.images.dtype == np.float32 and train.labels.dtype == np.int64
    assert 0.0 == train.images.min() and train.images.max() == 1.0
    assert test.class_counts().sum() == 10000 and np.all(test.class_counts() > 800)
    counts = train.class_counts()
    if len(train) == PARTIAL_TRAIN_COUNT:
        assert counts.tolist() == PARTIAL_TRAIN_CLASS_COUNTS
    else:
        assert counts.sum() == 60000
        assert train.head(PARTIAL_TRAIN_COUNT).class_counts().tolist() == PARTIAL_TRAIN_CLASS_COUNTS
