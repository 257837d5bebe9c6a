"""Datasets on disk: xarray Datasets written as HDF5 (h5netcdf), atomically.

Every variable carries ``units`` and ``long_name``; attributes carry provenance (resolved
parameters, seed, package versions, time). A file is written to a temporary name in the
same folder and renamed into place, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import stat
import tempfile
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import xarray as xr

__all__ = [
    "write_dataset_atomic",
    "atomic_output",
    "write_text_atomic",
    "package_versions",
    "provenance_attrs",
    "output_lock",
    "check_output_free",
    "OutputLockedError",
    "stale_temporaries",
    "remove_stale_temporaries",
]

_PACKAGES = ("stosim", "numpy", "numba", "scipy", "torch", "xarray", "h5netcdf", "h5py")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape results."""
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _attr_value(value: Any) -> Any:
    """HDF5-storable attribute value (nested structures become JSON text). Booleans, Python's or NumPy's,
    scalar or in a sequence, are stored as integers 0/1 (HDF5 has no boolean type; h5py would write an
    enum that netCDF readers reject); flat numeric sequences and arrays stay arrays."""
    if value is None:
        return "none"
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, np.dtype):
        return value.name
    if isinstance(value, int) and not isinstance(value, np.integer) and not -(2**63) <= value < 2**63:
        return str(value)  # beyond HDF5's integers: keep every digit as text
    if isinstance(value, (int, float, str, np.integer, np.floating)):
        return value
    flat_numbers = isinstance(value, (list, tuple)) and all(
        isinstance(v, (int, float, np.number, np.bool_)) for v in value
    )
    if flat_numbers or (isinstance(value, np.ndarray) and value.ndim == 1):
        array = np.asarray(value)
        if array.dtype.kind in "biuf":
            return array.astype(np.int64) if array.dtype.kind == "b" else array
    return json.dumps(value, default=_json_default)


def _json_default(value: Any) -> Any:
    """JSON form of the NumPy values (and dtypes) that ``json`` does not know; anything else as text."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.dtype):
        return value.name
    return str(value)


def provenance_attrs(**extra: Any) -> dict[str, Any]:
    """Provenance attributes: package versions and creation time, plus ``extra``."""
    attrs = {f"version_{k}": v for k, v in package_versions().items()}
    attrs["created_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    attrs.update({k: _attr_value(v) for k, v in extra.items()})
    return attrs


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix, so writers pick the format from it); once the
    ``with`` block has written it, it is flushed to disk and renamed over ``path``, and the rename is
    flushed too (through the folder). The file gets the permissions a plain write would give it: those
    of the file it replaces, else 0666 less the umask. On an error the temporary file is removed and
    ``path`` is left as it was: never a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_TMP_TAG}", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _plain_write_mode(path))  # mkstemp creates 0600
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


_TMP_TAG = "tmp-"  # temporary files of atomic_output: .NAME.tmp-XXXXXXXX.SUFFIX beside NAME


def _temporary_name_pattern(path: Path) -> re.Pattern[str]:
    """Names :func:`atomic_output` gives the temporary files of ``path``: ``.NAME.tmp-XXXXXXXX.SUFFIX``
    (``XXXXXXXX``: eight of ``tempfile``'s characters), and ``.NAME.XXXXXXXX.SUFFIX`` of earlier versions."""
    return re.compile(rf"\.{re.escape(path.name)}\.(?:{_TMP_TAG})?[a-z0-9_]{{8}}{re.escape(path.suffix)}")


def stale_temporaries(path: str | Path) -> list[Path]:
    """The temporary files of :func:`atomic_output` for ``path`` in its folder (regular files only,
    sorted): left there by a writer that was killed before its rename (SIGKILL, power loss)."""
    path = Path(path)
    pattern = _temporary_name_pattern(path)
    try:
        entries = list(os.scandir(path.parent))
    except FileNotFoundError:
        return []
    return sorted(Path(e.path) for e in entries if pattern.fullmatch(e.name) and e.is_file(follow_symlinks=False))


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete :func:`stale_temporaries` of ``path``; returns what was deleted. Call it only while holding
    :func:`output_lock` on ``path``: a writer's temporary file is stale only when no writer runs."""
    removed = []
    for tmp in stale_temporaries(path):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    return removed


class OutputLockedError(FileExistsError):
    """Another process holds the lock of an output file (it is writing it)."""


def _lock_file(path: Path) -> Path:
    return path.parent / f".{path.name}.lock"


@contextlib.contextmanager
def output_lock(path: str | Path) -> Iterator[list[Path]]:
    """One writer per output file: an exclusive lock (``filelock``: ``flock`` on POSIX, released by the
    OS when the process dies) on ``.NAME.lock`` beside ``path``, taken without waiting. Every writer of
    an output (a sweep, ``simulate``, ``ftmle``, ``train``'s folder) holds it while writing; a second
    writer gets :class:`OutputLockedError`. Once held, the stale temporary files of ``path`` are
    removed; the ``with`` block receives their paths. The lock file stays (removing it would let a
    process that opened it before the removal and one that creates it anew both hold "the" lock)."""
    from filelock import FileLock, Timeout

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_file = _lock_file(path)
    lock = FileLock(lock_file, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise OutputLockedError(
            f"{path} is being written by another process (it holds the lock {lock_file}); "
            "wait until it has finished or write to another file"
        ) from None
    try:
        yield remove_stale_temporaries(path)
    finally:
        lock.release()


def check_output_free(path: str | Path) -> None:
    """Raise :class:`OutputLockedError` now if another process is writing ``path`` (before a long run
    whose result would be refused at the end)."""
    with output_lock(path):
        pass


def _plain_write_mode(path: Path) -> int:
    """Permission bits ``open(path, "w")`` would leave: an existing file keeps its own, a new one gets
    0666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_directory(folder: Path) -> None:
    """Flush ``folder``'s entries to disk, so that a rename into it survives a power loss."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_output`."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_dataset_atomic(
    ds: "xr.Dataset", path: str | Path, *, overwrite: bool = True, lock: bool = True, checksums: bool = False
) -> Path:
    """Write ``ds`` as HDF5 via h5netcdf to a temporary file beside ``path``, flush it to disk, then
    rename it into place: a crash (or power loss) leaves the old file or the new one, never a partial one.
    ``lock``: hold :func:`output_lock` while writing (refused while another process writes ``path``);
    False for a caller that holds it already (the sweep runner). ``checksums``: store every numeric
    array (variables and coordinates) with HDF5's Fletcher-32 checksum, so that reading a damaged
    one fails instead of returning wrong numbers (text arrays cannot carry one)."""
    path = Path(path)
    encoding = (
        {
            name: {"fletcher32": True}
            for name, var in ds.variables.items()
            if var.ndim > 0 and var.size > 0 and var.dtype.kind in "biuf"
        }
        if checksums
        else None
    )
    with output_lock(path) if lock else contextlib.nullcontext():
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        with atomic_output(path) as tmp:
            ds.to_netcdf(tmp, engine="h5netcdf", invalid_netcdf=True, encoding=encoding)
    return path
