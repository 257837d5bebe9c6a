"""Data files from elsewhere: gzip bombs and empty IDX files, damaged sweep files on --resume, the
temporary files of a killed run, and one lock for every writer of an output file."""

from __future__ import annotations

import gzip
import json
import struct
import tracemalloc
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from stosim.cli import main
from stosim.datasets import (
    MAX_IDX_BYTES,
    DatasetError,
    load_dataset,
    read_idx_images,
    read_idx_labels,
)
from stosim.storage import (
    OutputLockedError,
    atomic_output,
    output_lock,
    stale_temporaries,
    write_dataset_atomic,
    write_text_atomic,
)
from stosim.sweep import ResumeError, load_spec
from stosim.sweep.store import SweepState

# ---------------------------------------------------------------------------------------- IDX files


def _gzip_bomb(path: Path, n_images: int, payload_mib: int) -> Path:
    """A gzip IDX image file whose header announces ``n_images`` 28 x 28 images, followed by
    ``payload_mib`` MiB of zeros (about 1000 : 1 compressed)."""
    co = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [co.compress(struct.pack(">IIII", 2051, n_images, 28, 28))]
    chunk = bytes(1 << 20)
    parts += [co.compress(chunk) for _ in range(payload_mib)]
    parts.append(co.flush())
    path.write_bytes(b"".join(parts))
    return path


def _peak_bytes(fn) -> tuple[int, BaseException | None]:
    tracemalloc.start()
    error = None
    try:
        fn()
    except DatasetError as exc:
        error = exc
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, error


@pytest.mark.parametrize("n_images", [10, 2000])
def test_a_gzip_bomb_allocates_no_more_than_its_header_announces(tmp_path, n_images):
    payload = 24  # MiB of zeros behind a header announcing n_images x 784 bytes
    bomb = _gzip_bomb(tmp_path / "bomb.gz", n_images, payload)
    assert bomb.stat().st_size < 40_000
    announced = n_images * 28 * 28
    peak, error = _peak_bytes(lambda: read_idx_images(bomb))
    assert error is not None and str(bomb) in str(error) and "too many" in str(error)
    # the announced array plus the 64 KiB chunks of the stream and zlib's buffers; the whole payload
    # (24 MiB) was never held
    assert peak < announced + (1 << 20), peak
    assert peak < payload * (1 << 20) / 4


def test_an_absurd_header_is_refused_before_any_allocation(tmp_path):
    bomb = _gzip_bomb(tmp_path / "huge.gz", 2**32 - 1, 1)
    peak, error = _peak_bytes(lambda: read_idx_images(bomb))
    assert error is not None and f"more than the {MAX_IDX_BYTES} bytes" in str(error) and str(bomb) in str(error)
    assert peak < 2 * (1 << 20)


def test_a_short_gzip_payload_is_truncated(tmp_path):
    path = tmp_path / "short.gz"
    path.write_bytes(gzip.compress(struct.pack(">IIII", 2051, 3, 28, 28) + bytes(100)))
    with pytest.raises(DatasetError, match=rf"{path}: truncated.*expected {16 + 3 * 784} bytes.*found 116"):
        read_idx_images(path)


def _idx_pair(folder: Path, split: str, n_images: int, n_labels: int) -> None:
    stems = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }[split]
    (folder / f"{stems[0]}.gz").write_bytes(
        gzip.compress(struct.pack(">IIII", 2051, n_images, 4, 4) + bytes(16 * n_images))
    )
    (folder / f"{stems[1]}.gz").write_bytes(gzip.compress(struct.pack(">II", 2049, n_labels) + bytes(n_labels)))


def test_empty_idx_files_are_refused_naming_the_file(tmp_path, capsys):
    _idx_pair(tmp_path, "train", 0, 0)
    _idx_pair(tmp_path, "test", 5, 5)
    images, labels = tmp_path / "train-images-idx3-ubyte.gz", tmp_path / "train-labels-idx1-ubyte.gz"
    with pytest.raises(DatasetError, match=rf"{images}: the header announces 0 images"):
        read_idx_images(images)
    with pytest.raises(DatasetError, match=rf"{labels}: the header announces 0 labels"):
        read_idx_labels(labels)
    # `stosim train` on them: one line naming the file (it used to end in a ZeroDivisionError)
    args = ["train", "--substrate", "linear", "--dataset", "mnist", "--data-dir", str(tmp_path), "--epochs", "1"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 2  # not the default data/train of the current folder
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(images) in err and "0 images" in err


def test_image_and_label_counts_that_disagree_are_refused(tmp_path):
    _idx_pair(tmp_path, "train", 6, 6)
    _idx_pair(tmp_path, "test", 4, 3)
    with pytest.raises(DatasetError, match=r"counts disagree.*t10k-images.*4 images.*t10k-labels.*3 labels"):
        load_dataset("mnist", tmp_path)


# ---------------------------------------------------------------------------------------- sweep files

SPEC = """name = "s"
kind = "simulate"
seed = 1
[base]
n = 2
dt = "1 ps"
[grid]
duration = ["10 ps", "20 ps"]
"""


def _done_sweep(tmp_path: Path) -> tuple[Path, Path]:
    """A spec file and its sweep file with every point done (a resume has nothing to run)."""
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC, encoding="utf-8")
    sweep = load_spec(spec)
    state = SweepState(sweep)
    for k, point in enumerate(sweep.points):
        state.record(
            point, {"status": "done", "values": {o.name: 0.25 + k for o in sweep.kind.outputs}, "wall_time_s": 1.0}
        )
    return spec, state.save(tmp_path / "s.h5")


def _resume_error(spec: Path, out: Path, capsys) -> str:
    capsys.readouterr()
    assert main(["sweep", str(spec), "--out", str(out), "--resume", "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and str(out) in err, err
    return err


def test_a_garbage_sweep_file_is_refused_in_one_line(tmp_path, capsys):
    spec, out = _done_sweep(tmp_path)
    out.write_bytes(np.random.default_rng(0).bytes(4096))
    assert "cannot read" in _resume_error(spec, out, capsys)
    out.write_bytes(b"")
    assert "cannot read" in _resume_error(spec, out, capsys)


def test_flipped_bytes_are_refused_or_harmless(tmp_path, capsys):
    """Flip each of a spread of bytes: the resume either refuses the file in one line naming it, or
    (a flip in unused space) reads back exactly the values that were written."""
    spec, out = _done_sweep(tmp_path)
    sweep = load_spec(spec)
    good = out.read_bytes()
    reference = SweepState(sweep)
    reference.load_completed(out)
    refused = 0
    for position in range(0, len(good), max(1, len(good) // 60)):
        damaged = bytearray(good)
        damaged[position] ^= 0xFF
        out.write_bytes(bytes(damaged))
        state = SweepState(sweep)
        try:
            state.load_completed(out)
        except ResumeError as exc:
            assert str(out) in str(exc) and "\n" not in str(exc)
            refused += 1
            continue
        for name, values in reference.values.items():
            np.testing.assert_array_equal(state.values[name], values, err_msg=f"flip at byte {position}")
        assert (state.status == reference.status).all()
    assert refused > 0
    damaged = bytearray(good)
    damaged[:8] = b"garbage!"  # the HDF5 signature
    out.write_bytes(bytes(damaged))
    _resume_error(spec, out, capsys)


def _edit(out: Path, change) -> None:
    with h5py.File(out, "r+") as f:
        change(f)


def _replace(name: str, values):
    def change(f):
        dims = [d.label for d in f[name].dims]
        attrs = dict(f[name].attrs)
        del f[name]
        f[name] = values
        for k, v in attrs.items():
            if k not in ("DIMENSION_LIST", "REFERENCE_LIST", "_Netcdf4Dimid"):
                f[name].attrs[k] = v
        for i, label in enumerate(dims):
            if label:
                f[name].dims[i].attach_scale(f[label])

    return change


SCHEMA_CASES = {
    "bad JSON in sweep_runs": (
        lambda f: f.attrs.__setitem__("sweep_runs", "[{"),
        "attribute sweep_runs is not valid JSON",
    ),
    "bad JSON in the spec": (
        lambda f: f.attrs.__setitem__("sweep_spec_json", "{'a': 1"),
        "attribute sweep_spec_json is not valid JSON",
    ),
    "spec not an object": (
        lambda f: f.attrs.__setitem__("sweep_spec_json", "[1, 2]"),
        "attribute sweep_spec_json must hold a JSON dict",
    ),
    "format": (lambda f: f.attrs.__setitem__("stosim_sweep_format", 7), "attribute stosim_sweep_format = 7"),
    "status type": (_replace("status", np.zeros(2)), "status in"),
    "status value": (_replace("status", np.array([b"done", b"maybe"], dtype="S5")), "holds ['maybe']"),
    "run_seed": (_replace("run_seed", np.array([7, 8], dtype=np.int64)), "run_seed in"),
    "wall time": (_replace("wall_time_s", np.array([1.0, -5.0])), "wall_time_s in"),
    "output type": (_replace("mx_mean", np.array([b"a", b"b"], dtype="S1")), "mx_mean in"),
    "coordinate": (_replace("duration", np.array([10e-12, 99e-12])), "the coordinate duration in"),
    "missing variable": (lambda f: f.__delitem__("run_seed"), "lacks the variable run_seed"),
}


@pytest.mark.parametrize("case", list(SCHEMA_CASES))
def test_sweep_file_schema_is_checked_on_resume(tmp_path, capsys, case):
    spec, out = _done_sweep(tmp_path)
    change, message = SCHEMA_CASES[case]
    _edit(out, change)
    err = _resume_error(spec, out, capsys)
    assert message in err, err


def test_a_resume_removes_the_temporary_files_a_killed_run_left(tmp_path, capsys):
    spec, out = _done_sweep(tmp_path)
    ours = [tmp_path / ".s.h5.tmp-a1b2c3d4.h5", tmp_path / ".s.h5.k9_x0zq1.h5"]  # this version's, an earlier one's
    others = [
        tmp_path / ".s.h5.tmp-a1b2c3d4.h5.bak",
        tmp_path / ".other.h5.tmp-a1b2c3d4.h5",
        tmp_path / "s.h5.tmp",
        tmp_path / ".s.h5.tmp-TOOLONG12.h5",
        tmp_path / "notes.txt",
    ]
    for p in ours + others:
        p.write_bytes(b"partial")
    (tmp_path / ".s.h5.tmp-dir00000.h5").mkdir()  # a folder with our pattern: not ours to delete
    (tmp_path / ".s.h5.tmp-link0000.h5").symlink_to(tmp_path / "notes.txt")  # a link: neither
    assert set(stale_temporaries(out)) == set(ours)
    assert main(["sweep", str(spec), "--out", str(out), "--resume", "--workers", "1"]) == 0
    assert not any(p.exists() for p in ours)
    assert all(p.exists() for p in others)
    assert (tmp_path / ".s.h5.tmp-dir00000.h5").is_dir() and (tmp_path / ".s.h5.tmp-link0000.h5").is_symlink()


def test_atomic_writes_use_the_temporary_name_pattern(tmp_path):
    target = tmp_path / "t.json"
    with atomic_output(target) as tmp:
        assert tmp in stale_temporaries(target)
        tmp.write_text("{}")
    assert stale_temporaries(target) == [] and json.loads(target.read_text()) == {}


# ---------------------------------------------------------------------------------------- one lock


def test_simulate_is_refused_while_another_process_writes_the_output(tmp_path, capsys):
    spec, out = _done_sweep(tmp_path)
    before = out.read_bytes()
    with output_lock(out):  # as a running sweep holds it
        assert main(["simulate", "--n", "2", "--duration", "10 ps", "--out", str(out), "--overwrite"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(out) in err and "being written by another process" in err
        with pytest.raises(OutputLockedError, match="being written by another process"):
            write_dataset_atomic(SweepState(load_spec(spec)).to_dataset(), out, overwrite=True)
        assert main(["sweep", str(spec), "--out", str(out), "--overwrite", "--workers", "1"]) == 2
        assert "being written by another process" in capsys.readouterr().err
        assert main(["train", "--substrate", "linear", "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    assert out.read_bytes() == before
    # a training folder is locked while it trains: a second writer of its checkpoint is refused
    with output_lock(tmp_path / "run" / "checkpoint.pt"):
        assert (
            main(["train", "--substrate", "linear", "--epochs", "2", "--out", str(tmp_path / "run"), "--resume"]) == 2
        )
        assert "being written by another process" in capsys.readouterr().err
    write_text_atomic("free again", tmp_path / "x.txt")
