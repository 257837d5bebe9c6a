"""Checkpoints are data: a pickled payload is never run, and every damaged or tampered checkpoint is
refused by `stosim train --resume` and `stosim ftmle --checkpoint` with one line naming the file."""

from __future__ import annotations

import math
import os
import pickle
import shutil

import pytest
import torch

from stosim.checkpoint import CheckpointError, load_checkpoint
from stosim.cli import main

TRAIN = [
    "train",
    "--substrate",
    "ffesn",
    "--n",
    "12",
    "--steps",
    "2",
    "--limit-train",
    "60",
    "--limit-test",
    "20",
    "--batch-size",
    "30",
    "--epochs",
    "2",
]


class _Payload:
    """Pickles to ``os.system("touch MARKER")``: what an attacker would put in a checkpoint."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 2-epoch run (its folder) and its checkpoint's contents, read as plain data."""
    run = tmp_path_factory.mktemp("ckpt") / "run"
    assert main([*TRAIN, "--out", str(run)]) == 0
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    return run, state


def _copy(run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


def _resume(out) -> list[str]:
    return [*TRAIN[:-1], "3", "--out", str(out), "--resume"]


def _refused(argv, capsys, *fragments: str) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def test_a_checkpoint_holds_plain_data_and_round_trips(trained, tmp_path):
    run, state = trained
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt.epoch == 2 and [h["epoch"] for h in ckpt.history] == [1, 2]
    assert set(state) == {"format", "model", "optimizer", "epoch", "history", "config", "wall_time_s"}
    # resuming for a third epoch equals training three epochs at once
    out = _copy(run, tmp_path)
    stale = [out / ".checkpoint.pt.tmp-x1y2z3w4.pt", out / ".metrics.json.tmp-00000000.json"]  # a killed run's
    for path in stale:
        path.write_bytes(b"partial")
    keep = out / ".checkpoint.pt.backup"
    keep.write_bytes(b"mine")
    assert main(_resume(out)) == 0
    assert not any(p.exists() for p in stale) and keep.read_bytes() == b"mine"
    full = tmp_path / "full"
    assert main([*TRAIN[:-1], "3", "--out", str(full)]) == 0
    a, b = load_checkpoint(out / "checkpoint.pt"), load_checkpoint(full / "checkpoint.pt")
    assert a.epoch == b.epoch == 3
    for name in a.model:
        assert torch.equal(a.model[name], b.model[name]), name


def _malicious_zip(path, state, marker) -> None:
    """A torch checkpoint (zip) whose pickle calls os.system when loaded the old way."""
    torch.save({**state, "history": _Payload(str(marker))}, path)


def _malicious_bare(path, marker) -> None:
    path.write_bytes(pickle.dumps({"model": _Payload(str(marker))}))


def test_the_malicious_files_do_run_code_when_unpickled(trained, tmp_path):
    """The fixtures are real exploits: an unrestricted load creates the marker."""
    _, state = trained
    for name, write in (("zip", lambda p, m: _malicious_zip(p, state, m)), ("bare", _malicious_bare)):
        marker = tmp_path / f"pwned-{name}"
        write(tmp_path / f"{name}.pt", marker)
        if name == "zip":
            torch.load(tmp_path / f"{name}.pt", weights_only=False)
        else:
            pickle.loads((tmp_path / f"{name}.pt").read_bytes())  # the point of this test
        assert marker.exists()


@pytest.mark.parametrize("kind", ["zip", "bare"])
def test_a_malicious_checkpoint_is_refused_and_never_run(trained, tmp_path, capsys, kind):
    run, state = trained
    out = _copy(run, tmp_path)
    marker = tmp_path / "pwned"
    ckpt = out / "checkpoint.pt"
    if kind == "zip":
        _malicious_zip(ckpt, state, marker)
    else:
        _malicious_bare(ckpt, marker)
    err = _refused(_resume(out), capsys, str(ckpt))
    assert ("posix.system" in err or "os.system" in err) if kind == "zip" else "not a torch zip archive" in err
    assert not marker.exists()
    _refused(["ftmle", "--checkpoint", str(out), "--limit", "5", "--out", str(tmp_path / "f.h5")], capsys, str(ckpt))
    assert not marker.exists()
    assert not (tmp_path / "f.h5").exists()


def _tampered(state: dict, case: str):
    """``state`` changed as in ``case`` (a copy), or raw bytes."""
    s = {**state, "model": dict(state["model"]), "optimizer": {**state["optimizer"]}}
    name = next(k for k, v in s["model"].items() if v.is_floating_point() and v.ndim == 2)
    if case == "empty":
        return b""
    if case == "random":
        return bytes(range(256)) * 40
    if case == "truncated zip":
        return None  # filled in by the test from the real file
    if case == "string epoch":
        s["epoch"] = "2"
    elif case == "negative epoch":
        s["epoch"] = -1
    elif case == "epoch beyond epochs":
        s["epoch"] = 7
    elif case == "missing key":
        del s["optimizer"]
    elif case == "unknown key":
        s["extra"] = 1
    elif case == "wrong type":
        s["model"][name] = s["model"][name].tolist()
    elif case == "wrong shape":
        s["model"][name] = torch.zeros(s["model"][name].shape[0] + 1, s["model"][name].shape[1], dtype=torch.float64)
    elif case == "wrong dtype":
        s["model"][name] = s["model"][name].float()
    elif case == "NaN weights":
        s["model"][name] = s["model"][name].clone()
        s["model"][name][0, 0] = math.nan
    elif case == "history":
        s["history"] = s["history"][:1]
    elif case == "config":
        s["config"] = {**s["config"], "lr": "fast"}
    elif case == "optimizer state shape":
        st = {k: dict(v) for k, v in s["optimizer"]["state"].items()}
        st[0]["exp_avg"] = torch.zeros(3, dtype=torch.float64)
        s["optimizer"]["state"] = st
    elif case == "optimizer kind":
        groups = [{k: v for k, v in g.items() if k != "betas"} for g in s["optimizer"]["param_groups"]]
        s["optimizer"]["param_groups"] = groups
    elif case == "wall time":
        s["wall_time_s"] = math.inf
    return s


CASES = {
    "empty": "empty file",
    "random": "not a torch zip archive",
    "truncated zip": "damaged or not a checkpoint",
    "string epoch": "epoch must be an integer, found str",
    "negative epoch": "epoch = -1 is out of range",
    "epoch beyond epochs": "epoch = 7 is out of range; valid: 0 <= epoch <= epochs = 2",
    "missing key": "missing optimizer",
    "unknown key": "unknown extra",
    "wrong type": "must be a tensor, found list",
    "wrong shape": "the configured model needs shape",
    "wrong dtype": "dtype torch.float32",
    "NaN weights": "non-finite",
    "history": "history has 1 records for epoch = 2",
    "config": "config: config: lr",
    "optimizer state shape": "optimizer.state[0].exp_avg has shape (3,)",
    "optimizer kind": "not that of the configured optimizer",
    "wall time": "wall_time_s = inf is out of range",
}


# found only against the configured model and optimizer (restore_model / restore_optimizer)
NEED_THE_MODEL = ("optimizer state shape", "optimizer kind", "wrong shape", "wrong dtype", "config")


@pytest.mark.parametrize("case", list(CASES))
def test_a_damaged_checkpoint_is_refused_in_one_line_naming_the_file(trained, tmp_path, capsys, case):
    run, state = trained
    out = _copy(run, tmp_path)
    ckpt = out / "checkpoint.pt"
    content = _tampered(state, case)
    if case == "truncated zip":
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    elif isinstance(content, bytes):
        ckpt.write_bytes(content)
    else:
        torch.save(content, ckpt)
    before = ckpt.read_bytes()
    _refused(_resume(out), capsys, f"checkpoint {ckpt}:", CASES[case])
    assert ckpt.read_bytes() == before  # left as it was
    if case not in NEED_THE_MODEL:  # the file alone shows the damage
        with pytest.raises(CheckpointError, match=str(ckpt)):
            load_checkpoint(ckpt)


@pytest.mark.parametrize("case", ["random", "NaN weights", "wrong shape", "string epoch"])
def test_ftmle_refuses_a_damaged_checkpoint(trained, tmp_path, capsys, case):
    run, state = trained
    out = _copy(run, tmp_path)
    ckpt = out / "checkpoint.pt"
    content = _tampered(state, case)
    ckpt.write_bytes(content) if isinstance(content, bytes) else torch.save(content, ckpt)
    _refused(
        ["ftmle", "--checkpoint", str(out), "--limit", "5", "--out", str(tmp_path / "f.h5")],
        capsys,
        f"checkpoint {ckpt}:",
        CASES[case],
    )


@pytest.mark.parametrize("how", ["compressed entry", "entries larger than the file"])
def test_a_zip_bomb_checkpoint_is_refused_before_it_is_unpacked(trained, tmp_path, how):
    """A checkpoint whose archive unpacks to more than the file holds (a deflated entry of 64 MiB of zeros
    in a file of ~70 KiB) is refused before torch reads it; torch.save stores entries uncompressed."""
    import zipfile

    run, _ = trained
    good = run / "checkpoint.pt"
    bomb = tmp_path / "checkpoint.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bomb, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data.pkl"):
                dst.writestr(info, data)
                if how == "compressed entry":
                    dst.writestr(info.filename.replace("data.pkl", "padding"), bytes(64 << 20), zipfile.ZIP_DEFLATED)
            else:
                dst.writestr(info, data)
    if how == "entries larger than the file":  # a stored entry whose declared size was raised afterwards
        with zipfile.ZipFile(bomb) as z:
            target = next(i for i in z.infolist() if i.filename.endswith("/data.pkl"))
        raw = bytearray(bomb.read_bytes())
        central = raw.rfind(b"PK\x01\x02", 0, len(raw))
        while central >= 0:  # the central-directory record of data.pkl: sizes at +20 (compressed), +24
            name_len = int.from_bytes(raw[central + 28 : central + 30], "little")
            if raw[central + 46 : central + 46 + name_len].decode() == target.filename:
                for offset in (20, 24):
                    raw[central + offset : central + offset + 4] = (1 << 30).to_bytes(4, "little")
                break
            central = raw.rfind(b"PK\x01\x02", 0, central)
        bomb.write_bytes(bytes(raw))
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(CheckpointError, match="refused: (entry .* is compressed|its entries declare)"):
        load_checkpoint(bomb)
