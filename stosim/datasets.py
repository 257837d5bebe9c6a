"""Image-classification datasets for training reservoirs.

Three sources, one result type (:class:`ImageDataset`):

- ``"digits"``: scikit-learn's embedded 8x8 handwritten digits (1,797 images, no download),
  split into train/test deterministically by a seed (stratified, 80/20 by default).
- ``"mnist"`` and ``"fashion-mnist"``: 28x28 images from the four standard IDX files
  (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte``, each gzip-compressed ``.gz`` or raw) in a folder. Any image
  count from 1 up is accepted (a partial training set, e.g. the first 24,345 images, works as well as
  the full 60,000). The files can be downloaded from public mirrors with
  :func:`download_idx_dataset` (``load_dataset(..., download=True)``; ``--download`` on the
  command line), every file checked against its known MD5 checksum.

IDX format (big-endian): an image file starts with the magic number 2051 (``0x00000803``),
then the image count, rows and columns as uint32, then ``count * rows * cols`` uint8 pixels
(row-major, 0 = background); a label file starts with the magic number 2049
(``0x00000801``), then the count as uint32, then ``count`` uint8 labels 0..9. Compression is
recognised by the gzip magic bytes ``1f 8b``, not by the file name. A file is read as a stream
(decompressed as it is read) into an array of the size its header announces, at most
:data:`MAX_IDX_BYTES`: a gzip bomb costs no more memory than that, and is refused at the first
64 KiB past the announced data.

Images are returned as float32 intensities in [0, 1] (IDX pixels / 255, digits values / 16),
shape ``(n, rows, cols)``; labels as int64 class indices, shape ``(n,)``.

Every problem with a file (missing, truncated, trailing bytes, wrong magic number, no images,
a header announcing more than 4 GiB, counts that disagree, labels out of range, corrupt gzip,
wrong checksum) raises :class:`DatasetError` (a ``ValueError``) whose message names the file,
what was expected and what was found.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.client
import os
import struct
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

import numpy as np

from stosim.storage import atomic_output

if TYPE_CHECKING:  # pragma: no cover
    from torch.utils.data import TensorDataset

__all__ = [
    "DatasetError",
    "ImageDataset",
    "DATASET_NAMES",
    "IDX_FILE_STEMS",
    "IDX_MD5",
    "IDX_MIRRORS",
    "read_idx_images",
    "read_idx_labels",
    "load_idx_dataset",
    "load_digits_dataset",
    "load_dataset",
    "download_idx_dataset",
    "default_cache_dir",
    "default_data_dir",
    "md5_of_file",
    "MAX_IDX_BYTES",
    "to_tensor_dataset",
]

DatasetName = Literal["digits", "mnist", "fashion-mnist"]
IdxName = Literal["mnist", "fashion-mnist"]
Split = Literal["train", "test"]

DATASET_NAMES: tuple[str, ...] = ("digits", "mnist", "fashion-mnist")
_IDX_NAMES: tuple[str, ...] = ("mnist", "fashion-mnist")
_SPLITS: tuple[str, ...] = ("train", "test")

IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte data, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned byte data, 1 dimension
_GZIP_MAGIC = b"\x1f\x8b"
_N_CLASSES_IDX = 10

#: File name stems (without ``.gz``) of each split: (images, labels).
IDX_FILE_STEMS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }
)

#: Base URLs tried in order; a file's URL is ``base + stem + ".gz"``.
IDX_MIRRORS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "mnist": (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    }
)

#: MD5 (hex) of the official gzip-compressed files, keyed by dataset then file name.
IDX_MD5: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {
        "mnist": MappingProxyType(
            {
                "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
                "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
                "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
            }
        ),
        "fashion-mnist": MappingProxyType(
            {
                "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
            }
        ),
    }
)

_CLASS_NAMES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "digits": tuple(str(d) for d in range(10)),
        "mnist": tuple(str(d) for d in range(10)),
        "fashion-mnist": (
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
    }
)

_DOWNLOAD_HINT = (
    "Get them with download=True (fetched from the mirrors, checksummed), "
    "or copy the four files from {mirror} into that folder"
)


class DatasetError(ValueError):
    """A dataset file is missing, corrupt or inconsistent; the message names the file."""


# ----------------------------------------------------------------------------------------
# Result type
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
    """One split of an image-classification dataset.

    Attributes:
        images: float32 array, shape ``(n, rows, cols)``, intensities in [0, 1]
            (0 = background).
        labels: int64 array, shape ``(n,)``, class indices in ``0 .. n_classes - 1``.
        n_classes: number of classes (10 for all built-in datasets).
        name: dataset name (``"digits"``, ``"mnist"``, ``"fashion-mnist"`` or user-defined).
        split: ``"train"`` or ``"test"``.
        class_names: human-readable name of each class index (empty: none given).
        source: where the data came from (folder path, ``"sklearn.datasets.load_digits"``).

    The instance is frozen (fields cannot be reassigned); the arrays are not copied on
    construction and are not made read-only.
    """

    images: np.ndarray
    labels: np.ndarray
    n_classes: int
    name: str
    split: str = "train"
    class_names: tuple[str, ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, np.ndarray) or images.ndim != 3 or images.dtype != np.float32:
            raise DatasetError(
                f"{self.name}: images must be a float32 array of shape (n, rows, cols); got "
                f"{type(images).__name__} dtype={getattr(images, 'dtype', None)} "
                f"shape={getattr(images, 'shape', None)}"
            )
        if not isinstance(labels, np.ndarray) or labels.ndim != 1 or labels.dtype != np.int64:
            raise DatasetError(
                f"{self.name}: labels must be an int64 array of shape (n,); got "
                f"{type(labels).__name__} dtype={getattr(labels, 'dtype', None)} "
                f"shape={getattr(labels, 'shape', None)}"
            )
        if images.shape[0] != labels.shape[0]:
            raise DatasetError(f"{self.name}: {images.shape[0]} images but {labels.shape[0]} labels")
        n_classes = self.n_classes
        if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 1:
            raise DatasetError(f"{self.name}: n_classes must be a positive integer, got {n_classes!r}")
        if labels.size and (labels.min() < 0 or labels.max() >= self.n_classes):
            raise DatasetError(
                f"{self.name}: labels must lie in 0..{self.n_classes - 1}; found "
                f"{int(labels.min())}..{int(labels.max())}"
            )
        if images.size and not (images.min() >= 0.0 and images.max() <= 1.0):
            raise DatasetError(
                f"{self.name}: image values must lie in [0, 1]; found {float(images.min())}..{float(images.max())}"
            )
        if self.class_names and len(self.class_names) != self.n_classes:
            raise DatasetError(f"{self.name}: {len(self.class_names)} class names for {self.n_classes} classes")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of one image, in pixels."""
        return (int(self.images.shape[1]), int(self.images.shape[2]))

    @property
    def n_features(self) -> int:
        """Pixels per image, ``rows * cols`` (the width of :meth:`flat`)."""
        rows, cols = self.image_shape
        return rows * cols

    def flat(self) -> np.ndarray:
        """Images as float32 rows, shape ``(n, rows * cols)``, row-major pixel order (a view)."""
        return self.images.reshape(len(self), self.n_features)

    def class_counts(self) -> np.ndarray:
        """Number of examples of each class, int64 array of shape ``(n_classes,)``."""
        return np.bincount(self.labels, minlength=self.n_classes).astype(np.int64)

    def head(self, n: int) -> ImageDataset:
        """The first ``min(n, len(self))`` examples (array views, no copy)."""
        n = _check_limit(n, "n")
        assert n is not None
        return dataclasses.replace(self, images=self.images[:n], labels=self.labels[:n])


def _check_limit(limit: int | None, what: str) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise ValueError(f"{what} must be a positive integer or None, got {limit!r}")
    return int(limit)


# ----------------------------------------------------------------------------------------
# IDX files
# ----------------------------------------------------------------------------------------


MAX_IDX_BYTES = 1 << 32  # an IDX header announcing more data than this (4 GiB) is refused
_TRAILING_PROBE = 1 << 16  # trailing bytes past the announced data are counted up to this many
_CHUNK = 1 << 16


class _Stream:
    """An IDX file opened for reading: the file, or a gzip stream decompressed as it is read (never
    more than is asked for: a gzip bomb costs only what the reader requests)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._file = open(path, "rb")  # closed by close()
        except FileNotFoundError:
            raise DatasetError(f"{path}: file not found") from None
        except OSError as exc:
            raise DatasetError(f"{path}: cannot read file ({exc})") from exc
        self.size = os.fstat(self._file.fileno()).st_size
        self.compressed = self._file.read(2) == _GZIP_MAGIC
        self._file.seek(0)
        self._stream = gzip.GzipFile(fileobj=self._file, mode="rb") if self.compressed else self._file

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._stream is not self._file:
            self._stream.close()
        self._file.close()

    def _corrupt(self, exc: BaseException) -> DatasetError:
        return DatasetError(
            f"{self.path}: corrupt gzip stream ({type(exc).__name__}: {exc}); "
            f"expected a complete gzip file of {self.size} compressed bytes, "
            "delete it and download or copy it again"
        )

    def readinto(self, buffer: memoryview) -> int:
        """Fill ``buffer`` as far as the stream goes; returns the number of bytes read."""
        done = 0
        try:
            while done < len(buffer):
                n = self._stream.readinto(buffer[done : done + _CHUNK])
                if not n:
                    break
                done += n
        except (OSError, EOFError, zlib.error) as exc:
            if self.compressed:
                raise self._corrupt(exc) from exc
            raise DatasetError(f"{self.path}: cannot read file ({exc})") from exc
        return done

    def raise_if_corrupt(self, limit: int = 1 << 24) -> None:
        """A damaged gzip stream can decompress to a plausible-looking but wrong header before the
        damage is detected: read on (discarding, at most ``limit`` bytes, one chunk of memory) and
        raise the corrupt-gzip error if the stream is damaged there."""
        if not self.compressed:
            return
        buffer = memoryview(bytearray(_CHUNK))
        for _ in range(max(1, limit // _CHUNK)):
            if self.readinto(buffer) < _CHUNK:
                return

    def read(self, n: int) -> bytes:
        buffer = bytearray(n)
        return bytes(buffer[: self.readinto(memoryview(buffer))])


def _check_magic(path: Path, data: bytes, expected: int, kind: str) -> None:
    header = 16 if expected == IMAGES_MAGIC else 8
    if len(data) < 4:
        raise DatasetError(
            f"{path}: truncated IDX {kind} file: expected a {header}-byte header, found only {len(data)} bytes"
        )
    (magic,) = struct.unpack(">I", data[:4])
    if magic != expected:
        hint = ""
        if magic == (LABELS_MAGIC if expected == IMAGES_MAGIC else IMAGES_MAGIC):
            other = "labels" if expected == IMAGES_MAGIC else "images"
            hint = f" (this is an IDX {other} file)"
        elif magic == struct.unpack("<I", struct.pack(">I", expected))[0]:
            hint = " (byte order reversed: the IDX header must be big-endian)"
        raise DatasetError(
            f"{path}: not an IDX {kind} file: expected magic number {expected} "
            f"(0x{expected:08x}), found {magic} (0x{magic:08x}){hint}"
        )
    if len(data) < header:
        raise DatasetError(
            f"{path}: truncated IDX {kind} file: expected a {header}-byte header, found only {len(data)} bytes"
        )


def _check_length(path: Path, found: int, header: int, item_bytes: int, count: int, what: str) -> None:
    expected = header + count * item_bytes
    if found == expected:
        return
    kind = "truncated" if found < expected else "trailing bytes after the data"
    diff = abs(expected - found)
    raise DatasetError(
        f"{path}: {kind}: the header announces {what}, so expected {expected} bytes "
        f"(decompressed), found {found} ({diff} bytes {'missing' if found < expected else 'too many'})"
    )


def _read_payload(stream: _Stream, header: int, item_bytes: int, count: int, what: str) -> np.ndarray:
    """The ``count * item_bytes`` bytes after the header, exactly: the array is allocated at the size
    the header announces (at most :data:`MAX_IDX_BYTES`) and filled from the stream; a shorter stream
    is truncated, a longer one refused after reading at most ``_TRAILING_PROBE`` bytes past the end
    (a gzip bomb is never decompressed further than that)."""
    path = stream.path
    expected = count * item_bytes
    if expected > MAX_IDX_BYTES:
        raise DatasetError(
            f"{path}: the header announces {what}, {expected} bytes, more than the "
            f"{MAX_IDX_BYTES} bytes an IDX file may hold here; not a dataset file"
        )
    if not stream.compressed and stream.size != header + expected:  # a plain file: its size tells
        _check_length(path, stream.size, header, item_bytes, count, what)
    data = np.empty(expected, dtype=np.uint8)
    found = stream.readinto(memoryview(data))
    if found < expected:
        _check_length(path, header + found, header, item_bytes, count, what)
    trailing = len(stream.read(_TRAILING_PROBE))
    if trailing:
        more = " at least" if trailing == _TRAILING_PROBE else ""
        raise DatasetError(
            f"{path}: trailing bytes after the data: the header announces {what}, so expected "
            f"{header + expected} bytes (decompressed), found{more} {header + expected + trailing} "
            f"({more.strip() + ' ' if more else ''}{trailing} bytes too many)"
        )
    return data


def read_idx_images(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX image file (magic 2051), gzip-compressed or raw.

    Returns:
        uint8 array of shape ``(count, rows, cols)``, pixel values 0..255 as stored.

    Raises:
        DatasetError: missing/unreadable file, corrupt gzip, wrong magic number, zero rows
            or columns, or a byte length that disagrees with the header.
    """
    path = Path(path)
    with _Stream(path) as stream:
        header = stream.read(16)
        try:
            _check_magic(path, header, IMAGES_MAGIC, "images")
            count, rows, cols = struct.unpack(">III", header[4:16])
            if rows == 0 or cols == 0:
                raise DatasetError(f"{path}: expected images of at least 1x1 pixel, header says {rows}x{cols}")
            if count == 0:
                raise DatasetError(f"{path}: the header announces 0 images; an image file needs at least one")
        except DatasetError:
            stream.raise_if_corrupt()  # a damaged gzip stream is the better explanation
            raise
        pixels = _read_payload(stream, 16, rows * cols, count, f"{count} images of {rows}x{cols} uint8 pixels")
    return pixels.reshape(count, rows, cols)


def read_idx_labels(path: str | os.PathLike[str], n_classes: int = _N_CLASSES_IDX) -> np.ndarray:
    """Read an IDX label file (magic 2049), gzip-compressed or raw.

    Args:
        path: the file.
        n_classes: labels must lie in ``0 .. n_classes - 1`` (10 for MNIST/Fashion-MNIST).

    Returns:
        uint8 array of shape ``(count,)``.

    Raises:
        DatasetError: missing/unreadable file, corrupt gzip, wrong magic number, a byte
            length that disagrees with the header, or labels out of range.
        ValueError: ``n_classes`` not an integer in 1..256.
    """
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or not 1 <= n_classes <= 256:
        raise ValueError(
            f"n_classes = {n_classes!r} is out of range; valid: an integer in 1..256 (IDX labels are uint8)"
        )
    path = Path(path)
    with _Stream(path) as stream:
        header = stream.read(8)
        try:
            _check_magic(path, header, LABELS_MAGIC, "labels")
            (count,) = struct.unpack(">I", header[4:8])
            if count == 0:
                raise DatasetError(f"{path}: the header announces 0 labels; a label file needs at least one")
        except DatasetError:
            stream.raise_if_corrupt()
            raise
        labels = _read_payload(stream, 8, 1, count, f"{count} uint8 labels")
    bad = np.flatnonzero(labels >= n_classes)
    if bad.size:
        raise DatasetError(
            f"{path}: labels must lie in 0..{n_classes - 1}; found {bad.size} out of range, "
            f"first at index {int(bad[0])} (value {int(labels[bad[0]])})"
        )
    return labels


def _normalize_name(name: str, allowed: tuple[str, ...]) -> str:
    key = str(name).strip().lower().replace("_", "-")
    if key == "fashionmnist":
        key = "fashion-mnist"
    if key not in allowed:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(allowed)}")
    return key


def _check_split(split: str) -> str:
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


def _find_idx_file(folder: Path, stem: str) -> Path | None:
    """``folder/stem.gz`` if present, else ``folder/stem``, else None."""
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _missing_stems(folder: Path, splits: tuple[str, ...]) -> list[str]:
    return [stem for split in splits for stem in IDX_FILE_STEMS[split] if _find_idx_file(folder, stem) is None]


def load_idx_dataset(
    data_dir: str | os.PathLike[str],
    name: IdxName = "mnist",
    split: Split = "train",
) -> ImageDataset:
    """Load one split of MNIST or Fashion-MNIST from the standard IDX files in ``data_dir``.

    Looks for ``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte`` (split ``"train"``)
    or ``t10k-images-idx3-ubyte`` / ``t10k-labels-idx1-ubyte`` (split ``"test"``), each
    with ``.gz`` (preferred when both exist) or without. Any image count from 1 up is accepted.

    Returns:
        :class:`ImageDataset` with float32 images in [0, 1] (pixel / 255), shape
        ``(n, 28, 28)`` for the official files, and int64 labels 0..9.

    Raises:
        DatasetError: files missing (the message names the folder, the file names and how
            to get them) or invalid (see :func:`read_idx_images`, :func:`read_idx_labels`),
            or image and label counts that disagree.
        ValueError: unknown ``name`` or ``split``.
    """
    name = _normalize_name(name, _IDX_NAMES)
    split = _check_split(split)
    folder = Path(data_dir).expanduser()
    images_stem, labels_stem = IDX_FILE_STEMS[split]
    missing = _missing_stems(folder, (split,))
    if missing:
        where = f"folder {folder}" if folder.is_dir() else f"folder {folder} (which does not exist)"
        looked_for = ", ".join(f"{s}.gz (or {s})" for s in (images_stem, labels_stem))
        raise DatasetError(
            f"{name} {split} files not found in {where}: looked for {looked_for}; "
            f"missing: {', '.join(missing)}. " + _DOWNLOAD_HINT.format(name=name, mirror=IDX_MIRRORS[name][0])
        )
    images_path = _find_idx_file(folder, images_stem)
    labels_path = _find_idx_file(folder, labels_stem)
    assert images_path is not None and labels_path is not None
    raw_images = read_idx_images(images_path)
    raw_labels = read_idx_labels(labels_path, _N_CLASSES_IDX)
    if raw_images.shape[0] != raw_labels.shape[0]:
        raise DatasetError(
            f"{name} {split}: image and label counts disagree: {images_path} holds "
            f"{raw_images.shape[0]} images, {labels_path} holds {raw_labels.shape[0]} labels"
        )
    images = np.divide(raw_images, np.float32(255.0), dtype=np.float32)
    return ImageDataset(
        images=images,
        labels=raw_labels.astype(np.int64),
        n_classes=_N_CLASSES_IDX,
        name=name,
        split=split,
        class_names=_CLASS_NAMES[name],
        source=str(folder),
    )


# ----------------------------------------------------------------------------------------
# scikit-learn digits (embedded, no download)
# ----------------------------------------------------------------------------------------


def load_digits_dataset(seed: int = 0, test_fraction: float = 0.2) -> tuple[ImageDataset, ImageDataset]:
    """scikit-learn's 8x8 digits (1,797 images, 10 classes), split into (train, test).

    The split is stratified by class and deterministic for a given ``seed`` (an integer in
    ``[0, 2**32 - 1]``; ``sklearn.model_selection.train_test_split``); ``test_fraction`` of
    the images go to the test set (0.2: 1,437 train / 360 test). Pixel values 0..16 are
    scaled to [0, 1] (value / 16), float32, shape ``(n, 8, 8)``.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(
            f"seed = {seed!r} is out of range; valid: an integer in [0, 2**32 - 1] (the digits train/test split seed)"
        )
    # every class (10) needs at least one image in each split: 10 of the 1,797 images at least
    lo, hi = 10 / 1797, 1 - 10 / 1797
    if not lo <= float(test_fraction) <= hi:
        raise ValueError(
            f"test_fraction = {test_fraction!r} is out of range; valid: [{lo:.4f}, {hi:.4f}] "
            "(at least 10 of the 1,797 digits, one per class, in each split)"
        )
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.divide(bunch.images, 16.0).astype(np.float32)
    labels = np.asarray(bunch.target, dtype=np.int64)
    index = np.arange(labels.shape[0])
    train_idx, test_idx = train_test_split(
        index, test_size=float(test_fraction), stratify=labels, random_state=int(seed), shuffle=True
    )
    source = "sklearn.datasets.load_digits"
    out = []
    for split, idx in (("train", train_idx), ("test", test_idx)):
        out.append(
            ImageDataset(
                images=np.ascontiguousarray(images[idx]),
                labels=labels[idx],
                n_classes=10,
                name="digits",
                split=split,
                class_names=_CLASS_NAMES["digits"],
                source=source,
            )
        )
    return out[0], out[1]


# ----------------------------------------------------------------------------------------
# Download
# ----------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Root of the download cache: ``$STOSIM_DATA`` if set and non-empty, else ``~/.cache/stosim``."""
    env = os.environ.get("STOSIM_DATA", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "stosim"


def default_data_dir(name: IdxName) -> Path:
    """Folder holding one dataset's IDX files by default: ``default_cache_dir() / name``."""
    return default_cache_dir() / _normalize_name(name, _IDX_NAMES)


def md5_of_file(path: str | os.PathLike[str]) -> str:
    """Hex MD5 digest of a file's bytes (as stored, i.e. of the compressed ``.gz``)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, timeout_s: float = 60.0) -> bytes:
    """Body of ``url`` (HTTP GET). Tests replace this function; it is the only network access."""
    request = urllib.request.Request(url, headers={"User-Agent": "stosim-datasets"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return response.read()


def _write_atomic(path: Path, data: bytes, expected_md5: str | None = None) -> None:
    """Write ``data`` to ``path`` through :func:`stosim.storage.atomic_output` (a temporary file beside
    it, flushed, renamed into place, the rename flushed through the folder).

    With ``expected_md5``, the temporary file's MD5 is checked before the rename; on a
    mismatch it is deleted (``path`` is left as it was) and :class:`DatasetError` raised.
    """
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
        if expected_md5 is not None:
            found_md5 = md5_of_file(tmp)
            if found_md5 != expected_md5:
                raise DatasetError(
                    f"{path}: checksum mismatch: expected MD5 {expected_md5}, found {found_md5} "
                    f"({len(data)} bytes); the downloaded file was deleted"
                )


def _download_file(name: str, folder: Path, filename: str) -> Path:
    """Fetch ``filename`` from the first mirror that delivers it with the right MD5; store it."""
    expected_md5 = IDX_MD5[name][filename]
    target = folder / filename
    errors = []
    for base in IDX_MIRRORS[name]:
        url = base + filename
        try:
            data = _fetch(url)
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
            # HTTPException: e.g. IncompleteRead when the connection drops mid-transfer
            errors.append(f"{url}: {exc}")
            continue
        try:
            _write_atomic(target, data, expected_md5)
        except DatasetError as exc:
            errors.append(f"{url}: {exc}")
            continue
        return target
    raise DatasetError(
        f"could not download {filename} ({name}) into {folder}: "
        + "; ".join(errors)
        + f". Try again later, or copy the official {filename} into {folder} by hand."
    )


def download_idx_dataset(
    name: IdxName,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
) -> Path:
    """Download the four gzip IDX files of MNIST or Fashion-MNIST into ``cache_dir``.

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"``.
        cache_dir: folder that receives the files (created if needed; the same folder
            :func:`load_idx_dataset` reads). Default :func:`default_data_dir`, i.e.
            ``$STOSIM_DATA/<name>`` or ``~/.cache/stosim/<name>``.
        force: fetch again even when a file with the right checksum is already there.

    Each file is fetched from the mirrors in :data:`IDX_MIRRORS` (in order, until one
    delivers it), written to a temporary name in the same folder, checked against
    :data:`IDX_MD5` and only then renamed into place (``os.replace``); a download with the
    wrong checksum is deleted and, when no mirror delivers the right bytes,
    :class:`DatasetError` raised. Files already present with the right checksum are kept.

    Returns:
        The folder holding the files.
    """
    name = _normalize_name(name, _IDX_NAMES)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_data_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    for filename in IDX_MD5[name]:
        target = folder / filename
        if not force and target.is_file() and md5_of_file(target) == IDX_MD5[name][filename]:
            continue
        _download_file(name, folder, filename)
    return folder


# ----------------------------------------------------------------------------------------
# Entry point used by the training CLI
# ----------------------------------------------------------------------------------------


def load_dataset(
    name: DatasetName,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    seed: int = 0,
    limit_train: int | None = None,
    limit_test: int | None = None,
    *,
    test_fraction: float = 0.2,
) -> tuple[ImageDataset, ImageDataset]:
    """Load (train, test) of ``"digits"``, ``"mnist"`` or ``"fashion-mnist"``.

    Args:
        name: dataset name (case-insensitive; ``_`` may replace ``-``).
        data_dir: folder with the four IDX files (MNIST / Fashion-MNIST only); default
            :func:`default_data_dir`. Ignored for ``"digits"``.
        download: fetch IDX files that are missing from ``data_dir`` (see
            :func:`download_idx_dataset`); files already there (gz or raw) are used as
            they are. Ignored for ``"digits"``.
        seed: train/test split seed for ``"digits"``; MNIST and Fashion-MNIST have a
            fixed official split and ignore it.
        limit_train, limit_test: keep at most this many examples, the first ones in file
            order (``"digits"``: in the seeded split order); ``len()`` of the result gives
            the number actually kept. None keeps all.
        test_fraction: fraction of ``"digits"`` used as the test set.

    Returns:
        ``(train, test)`` :class:`ImageDataset` pair.
    """
    key = _normalize_name(name, DATASET_NAMES)
    limit_train = _check_limit(limit_train, "limit_train")
    limit_test = _check_limit(limit_test, "limit_test")
    if key == "digits":
        train, test = load_digits_dataset(seed=seed, test_fraction=test_fraction)
    else:
        folder = Path(data_dir).expanduser() if data_dir is not None else default_data_dir(key)
        if download and _missing_stems(folder, _SPLITS):
            folder.mkdir(parents=True, exist_ok=True)
            for stem in _missing_stems(folder, _SPLITS):
                _download_file(key, folder, f"{stem}.gz")
        train = load_idx_dataset(folder, key, "train")
        test = load_idx_dataset(folder, key, "test")
        if train.image_shape != test.image_shape:
            raise DatasetError(
                f"{key} in {folder}: the training images are {train.image_shape[0]} x "
                f"{train.image_shape[1]} pixels, the test images {test.image_shape[0]} x "
                f"{test.image_shape[1]}; both splits must come from one dataset"
            )
    if limit_train is not None:
        train = train.head(limit_train)
    if limit_test is not None:
        test = test.head(limit_test)
    return train, test


def to_tensor_dataset(ds: ImageDataset, flatten: bool = True) -> TensorDataset:
    """``torch.utils.data.TensorDataset`` of (images, labels).

    Images are float32, flattened to ``(n, rows * cols)`` when ``flatten`` (default; the
    reservoir input layout) or kept as ``(n, rows, cols)``; labels are int64 ``(n,)``.
    Tensors share memory with the dataset's arrays when these are writable and
    contiguous, otherwise they are copies.
    """
    import torch
    from torch.utils.data import TensorDataset

    images = ds.flat() if flatten else ds.images

    def as_tensor(array: np.ndarray) -> torch.Tensor:
        array = np.ascontiguousarray(array)
        return torch.from_numpy(array) if array.flags.writeable else torch.tensor(array)

    return TensorDataset(as_tensor(images), as_tensor(ds.labels))
