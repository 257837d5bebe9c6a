"""Fuzzing every kind of file stosim reads: device files, experiment files, sweep specs, station files (TOML),
training checkpoints, sweep HDF5 files and IDX files, mutated at random (byte flips, garbage, truncation) and
structurally (deleted keys, wrong types, booleans, NaN / inf / huge / negative numbers, wrong units, unicode,
deep nesting).

Property: every mutant ends in a clean refusal (a ValueError naming the file; the CLI's exit status 2) or is
accepted, and then only when the run accepts it too (for experiment files: the run's model builds); never a
traceback, never code execution, never a memory blow-up.

The mutants are drawn from seeds that hypothesis supplies (``derandomize=True``: the same mutants on every
run). The default run tries a few dozen; ``-m slow`` runs a campaign of >= 1000 mutants over all file kinds in
a subprocess, whose peak memory must stay below 1 GB. ``python tests/test_fuzz_files.py N`` runs N mutants per
kind and prints the counts.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO_ROOT = Path(__file__).resolve().parents[1]
DEVICE = REPO_ROOT / "devices" / "seed-pmtj.toml"
STATION = REPO_ROOT / "devices" / "stations" / "sim-lab.toml"
DEFAULT_EXAMPLES = 8  # mutants per kind in the default run (each kind takes a few seconds)

# ----------------------------------------------------------------------------------------------
# seed documents (small, so that an accepted mutant is cheap to check)
# ----------------------------------------------------------------------------------------------

EXPERIMENT = """substrate = "sto"
dataset = "digits"
n = 8
coupling = "500 Oe"
duration = "100 ps"
dt = "1 ps"
epochs = 2
batch_size = 64
lr = 0.01
optimizer = "adam"
seed = 0
limit_train = 100
limit_test = 50
temperature = "0 K"
variability = 0.0
"""

EXPERIMENT_L96 = """substrate = "lorenz96"
n = 8
forcing = 8.0
duration = 0.5
dt = 0.01
epochs = 1
"""

SWEEP = """name = "fuzz"
kind = "{kind}"
seeds = [0, 1]
[base]
n = 4
{base}
[grid]
coupling = ["100 Oe", "500 Oe"]
"""
SWEEP_BASES = {
    "train": 'substrate = "sto"\nepochs = 1\ndt = "1 ps"\nduration = "100 ps"',
    "simulate": 'duration = "100 ps"\ndt = "1 ps"',
    "mle": 'substrate = "sto"',
    "ftmle": 'substrate = "sto"\nsamples = 2',
}


def _station_text() -> str:
    return STATION.read_text().replace('"../seed-pmtj.toml"', json.dumps(DEVICE.as_posix()))


# ----------------------------------------------------------------------------------------------
# mutation engine (driven by a random.Random, so that a mutant is a seed)
# ----------------------------------------------------------------------------------------------


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


HOSTILE: tuple[Any, ...] = (
    True,
    False,
    0,
    -1,
    1,
    2**31,
    2**63,
    2**64,
    -(2**63),
    2**100,
    0.0,
    -0.0,
    1e-320,
    1e308,
    -1e308,
    math.nan,
    math.inf,
    -math.inf,
    0.5,
    "",
    " ",
    "1",
    "true",
    "nan",
    "inf Oe",
    "-inf ps",
    "nan ps",
    "1e30 Oe",
    "1e-300 ps",
    "1e300 s",
    "5 kg",
    "500",
    "500 oe",
    "500 Oe Oe",
    "2.5 mA",
    "1 ns",
    "300 K",
    "-5 K",
    "µs",
    "1 µs",
    "1 μm",
    "ÅÅÅ",
    "\u0000",
    "\u202e500 Oe",
    "é" * 50,
    "x" * 5000,
    "../../etc/passwd",
    "os:system",
    "stosim.hardware.instruments:CurrentSource2400",
    "evil_module:Thing",
    [],
    [1, 2, 3],
    ["a", 1],
    {},
    {"a": 1},
    {"substrate": "sto"},
    _deep(40),
    [math.nan],
    ["500 Oe", "500 Oe"],
    ["500 Oe", "0.5 kOe"],
)


def _paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of the tables in ``tree`` (lists addressed by index)."""
    out = []
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.append((*prefix, k))
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out.append((*prefix, i))
            out.extend(_paths(v, (*prefix, i)))
    return out


def _parent(tree: Any, path: tuple) -> Any:
    for key in path[:-1]:
        tree = tree[key]
    return tree


def mutate_tree(tree: dict, rng: random.Random) -> dict:
    """A structural mutant of a parsed document: a value replaced by a hostile one, a key deleted, an
    unknown key added, a value moved to another key, or a table nested deeply."""
    tree = json.loads(json.dumps(tree))  # a copy (the seeds hold no NaN)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        paths = _paths(tree)
        op = rng.random()
        if not paths or op < 0.1:
            target = (
                tree
                if not paths
                else rng.choice(
                    [tree, *[_parent(tree, p)[p[-1]] for p in paths if isinstance(_parent(tree, p)[p[-1]], dict)]]
                )
            )
            target[rng.choice(("n", "seed", "zzz", "substrate", "kind", "grid", "base", "driver", "ß"))] = rng.choice(
                HOSTILE
            )
            continue
        path = rng.choice(paths)
        parent = _parent(tree, path)
        if op < 0.2:
            del parent[path[-1]]
        elif op < 0.45:  # a plausible value off by a factor: near the limits, where validate and run may differ
            parent[path[-1]] = _scaled(parent[path[-1]], rng)
        elif op < 0.85:
            parent[path[-1]] = rng.choice(HOSTILE)
        elif op < 0.95:
            other = rng.choice(paths)
            try:
                parent[path[-1]] = json.loads(json.dumps(_parent(tree, other)[other[-1]]))
            except (KeyError, IndexError, TypeError):
                pass
        else:
            parent[path[-1]] = {"x": _deep(rng.randint(30, 60))}
    return tree


_QUANTITY = re.compile(r"^([-+]?[0-9.]+(?:[eE][-+]?\d+)?)(\s*.*)$")


def _scaled(value: Any, rng: random.Random) -> Any:
    """``value`` (a number, or a quantity such as "500 Oe") times 10**u, u uniform in [-3, 3], sign kept."""
    factor = 10 ** rng.uniform(-3, 3)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return value
    if isinstance(value, int):
        return max(0, round(value * factor)) if rng.random() < 0.8 else round(value * factor)
    if isinstance(value, float):
        return value * factor
    match = _QUANTITY.match(value)
    if match is None:
        return value
    return f"{float(match.group(1)) * factor:.6g}{match.group(2)}"


_BARE = re.compile(r"[A-Za-z0-9_-]+")


def _key(k: str) -> str:
    return k if _BARE.fullmatch(k) else json.dumps(k, ensure_ascii=False)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def to_toml(tree: dict) -> str:
    """TOML text of a document: scalars first, then one [table] per dict of the top level."""
    lines = [f"{_key(k)} = {_value(v)}" for k, v in tree.items() if not isinstance(v, dict)]
    for k, v in tree.items():
        if isinstance(v, dict):
            lines.append(f"[{_key(k)}]")
            lines.extend(f"{_key(kk)} = {_value(vv)}" for kk, vv in v.items())
    return "\n".join(lines) + "\n"


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """A random mutant of bytes: truncated, bytes flipped, garbage inserted, a chunk repeated, or emptied."""
    data = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 4))):
        op = rng.random()
        n = len(data)
        if n == 0:
            data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op < 0.3:
            del data[rng.randrange(n) :]
        elif op < 0.6:
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(n)] = rng.randrange(256)
        elif op < 0.8:
            i = rng.randrange(n + 1)
            data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        elif op < 0.95:
            i = rng.randrange(n)
            j = min(n, i + rng.randint(1, 256))
            data[i:i] = data[i:j] * rng.randint(1, 8)
        else:
            data = bytearray(rng.choice((b"", b"[[[[", b"a = " + b"[" * 5000, b"\xff\xfe\x00", b"\x00" * 64)))
    return bytes(data)


def toml_mutant(text: str, rng: random.Random) -> bytes:
    import tomllib

    if rng.random() < 0.7:
        data = to_toml(mutate_tree(tomllib.loads(text), rng)).encode("utf-8", "surrogatepass")
        return mutate_bytes(data, rng) if rng.random() < 0.15 else data
    return mutate_bytes(text.encode(), rng)


# ----------------------------------------------------------------------------------------------
# the property, per kind
# ----------------------------------------------------------------------------------------------


class Failure(AssertionError):
    """A mutant that ended otherwise than in a clean refusal or a justified acceptance."""


def _refusal_names_file(exc: BaseException, path: Path, data: bytes) -> None:
    if str(path) not in str(exc):
        raise Failure(f"the refusal does not name the file: {exc!r}\nmutant: {data[:400]!r}")


def _accepted_experiment_runs(path: Path) -> None:
    """An accepted experiment file: the run's model builds (what `stosim train` does before training)."""
    from stosim.studies.training import build_model, load_train_config

    cfg = load_train_config(path)
    n = cfg.n or cfg.default_n
    if n > 256 or (cfg.hidden or 3 * n) > 1024:
        return  # too large to build here; validation built what it could
    shape = (8, 8) if cfg.dataset == "digits" else (28, 28)
    build_model(cfg, shape[0] * shape[1], 10, shape)


def _accepted_train_sweep_runs(path: Path) -> None:
    """An accepted train sweep: every point's model builds as its run builds it (points without device
    overrides, which the run writes to a temporary device file)."""
    from stosim.studies.training import build_model
    from stosim.sweep.spec import load_spec

    sweep = load_spec(path)
    if sweep.kind.name != "train":
        return
    for point in sweep.points:
        cfg = sweep.kind.config.model_validate(point.config)
        n = cfg.n or cfg.default_n
        if cfg.device_overrides() or n > 256 or (cfg.hidden or 3 * n) > 1024:
            continue
        shape = (8, 8) if cfg.dataset == "digits" else (28, 28)
        build_model(cfg.train_config(), shape[0] * shape[1], 10, shape)


def check_toml(path: Path, data: bytes, kind: str) -> str:
    """Write ``data`` to ``path`` and validate it as `stosim validate` does; returns "accepted" / "refused"."""
    from stosim.cli import _validate_one

    path.write_bytes(data)
    try:
        what = _validate_one(path)
    except ValueError as exc:
        _refusal_names_file(exc, path, data)
        return "refused"
    except Exception as exc:  # the defect the fuzzer looks for
        raise Failure(f"{kind} mutant raised {type(exc).__name__}: {exc}\nmutant: {data[:400]!r}") from exc
    if what.startswith(("experiment", "sweep spec")):
        try:
            (_accepted_experiment_runs if what.startswith("experiment") else _accepted_train_sweep_runs)(path)
        except Exception as exc:
            raise Failure(f"validated, but the run refuses it: {exc!r}\nmutant: {data[:400]!r}") from exc
    return "accepted"


SEEDS: dict[str, Callable[[], str]] = {
    "device": lambda: DEVICE.read_text(),
    "experiment": lambda: EXPERIMENT,
    "experiment-l96": lambda: EXPERIMENT_L96,
    "sweep-train": lambda: SWEEP.format(kind="train", base=SWEEP_BASES["train"]),
    "sweep-simulate": lambda: SWEEP.format(kind="simulate", base=SWEEP_BASES["simulate"]),
    "sweep-mle": lambda: SWEEP.format(kind="mle", base=SWEEP_BASES["mle"]),
    "sweep-ftmle": lambda: SWEEP.format(kind="ftmle", base=SWEEP_BASES["ftmle"]),
    "station": _station_text,
}


def run_toml_mutant(kind: str, seed: int, folder: Path) -> str:
    rng = random.Random(seed)
    return check_toml(folder / f"{kind}.toml", toml_mutant(SEEDS[kind](), rng), kind)


# -- IDX ---------------------------------------------------------------------------------------


def _idx_seed(labels: bool) -> bytes:
    import struct

    if labels:
        return struct.pack(">II", 2049, 6) + bytes([0, 1, 2, 3, 4, 9])
    return struct.pack(">IIII", 2051, 3, 4, 5) + bytes(range(60))


def _idx_mutant(rng: random.Random, labels: bool) -> bytes:
    import struct

    data = bytearray(_idx_seed(labels))
    if rng.random() < 0.5:  # a header field replaced: huge counts / sizes must not allocate
        slot = rng.randrange(1, 2 if labels else 4)
        data[4 * slot : 4 * slot + 4] = struct.pack(">I", rng.choice((0, 1, 7, 2**16, 2**31, 2**32 - 1)))
        return bytes(data) if rng.random() < 0.6 else mutate_bytes(bytes(data), rng)
    if rng.random() < 0.2:
        import gzip

        return gzip.compress(mutate_bytes(bytes(data), rng))[: rng.choice((None, 10, 20))]
    return mutate_bytes(bytes(data), rng)


def run_idx_mutant(seed: int, folder: Path) -> str:
    from stosim.datasets import read_idx_images, read_idx_labels

    rng = random.Random(seed)
    labels = rng.random() < 0.5
    path = folder / ("labels-idx1-ubyte" if labels else "images-idx3-ubyte")
    data = _idx_mutant(rng, labels)
    path.write_bytes(data)
    try:
        array = read_idx_labels(path) if labels else read_idx_images(path)
    except ValueError as exc:
        _refusal_names_file(exc, path, data)
        return "refused"
    except Exception as exc:
        raise Failure(f"IDX mutant raised {type(exc).__name__}: {exc}\nmutant: {data[:200]!r}") from exc
    if array.nbytes > len(data):
        raise Failure(f"an IDX file of {len(data)} bytes gave an array of {array.nbytes} bytes")
    return "accepted"


# -- sweep HDF5 files ----------------------------------------------------------------------------


def _sweep_file(folder: Path) -> tuple[Path, Any]:
    from stosim.sweep.spec import load_spec
    from stosim.sweep.store import SweepState

    spec = folder / "h5-spec.toml"
    spec.write_text(SWEEP.format(kind="simulate", base=SWEEP_BASES["simulate"]))
    sweep = load_spec(spec)
    state = SweepState(sweep)
    path = folder / "seed.h5"
    state.save(path)
    return path, sweep


def run_h5_mutant(seed: int, folder: Path, seed_file: Path, sweep: Any) -> str:
    """A mutated sweep file read as `stosim sweep --resume` and `stosim plot` read it."""
    from stosim.sweep.store import SweepState

    rng = random.Random(seed)
    data = mutate_bytes(seed_file.read_bytes(), rng)
    path = folder / "mutant.h5"
    path.write_bytes(data)
    try:
        SweepState(sweep).load_completed(path)
    except (ValueError, OSError) as exc:
        _refusal_names_file(exc, path, data[:64])
        outcome = "refused"
    except Exception as exc:
        raise Failure(f"sweep file mutant (resume) raised {type(exc).__name__}: {exc}") from exc
    else:
        outcome = "accepted"
    from stosim.cli import main

    with open(os.devnull, "w") as sink:
        old_err, sys.stderr = sys.stderr, sink
        try:
            status = main(["plot", str(path), "--x", "coupling", "--var", "mx_mean", "--out", str(folder / "p.png")])
        except SystemExit as exc:  # argparse
            status = exc.code
        except Exception as exc:
            raise Failure(f"sweep file mutant (plot) raised {type(exc).__name__}: {exc}") from exc
        finally:
            sys.stderr = old_err
    if status not in (0, 2):
        raise Failure(f"stosim plot of a sweep file mutant exited {status}")
    return outcome


# ----------------------------------------------------------------------------------------------
# default run: a few mutants per kind (hypothesis supplies the seeds, derandomized)
# ----------------------------------------------------------------------------------------------

FUZZ = settings(
    derandomize=True,
    max_examples=DEFAULT_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SEED = st.integers(min_value=0, max_value=2**32 - 1)


@pytest.mark.parametrize("kind", list(SEEDS))
def test_toml_mutants_are_refused_cleanly_or_valid(kind, tmp_path) -> None:
    @FUZZ
    @given(seed=SEED)
    def prop(seed: int) -> None:
        run_toml_mutant(kind, seed, tmp_path)

    prop()


@FUZZ
@given(seed=SEED)
def test_idx_mutants_are_refused_cleanly_or_consistent(seed, tmp_path) -> None:
    run_idx_mutant(seed, tmp_path)


def test_sweep_file_mutants_are_refused_cleanly(tmp_path) -> None:
    seed_file, sweep = _sweep_file(tmp_path)

    @FUZZ
    @given(seed=SEED)
    def prop(seed: int) -> None:
        run_h5_mutant(seed, tmp_path, seed_file, sweep)

    prop()


def test_the_engine_makes_the_mutants_it_promises() -> None:
    """The mutants include each hostile class (not a fuzzer that only ever deletes one key)."""
    import tomllib

    rng = random.Random(0)
    texts = [toml_mutant(EXPERIMENT, rng) for _ in range(300)]
    joined = b"\n".join(texts)
    for needle in (b"= true", b"= nan", b"= inf", b"kg", b"[[[[[[[[[[", b"\xc2\xb5"):
        assert needle in joined, needle
    parsed = 0
    for t in texts:
        try:
            tomllib.loads(t.decode())
            parsed += 1
        except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
            pass
    assert 100 < parsed < 300  # most are valid TOML (structural), some are broken bytes


# -- checkpoints, through the public CLI ------------------------------------------------------

TRAIN_ARGS = ["train", "--substrate", "linear", "--epochs", "1", "--limit-train", "40", "--limit-test", "20"]


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> bytes:
    from stosim.cli import main

    out = tmp_path_factory.mktemp("ckpt")
    with open(os.devnull, "w") as sink:
        old, sys.stdout = sys.stdout, sink
        try:
            assert main([*TRAIN_ARGS, "--out", str(out)]) == 0
        finally:
            sys.stdout = old
    return (out / "checkpoint.pt").read_bytes()


def run_checkpoint_mutant(seed: int, folder: Path, seed_bytes: bytes) -> int:
    """`stosim train --resume` on a mutated checkpoint: a clean refusal (2) or acceptance (0), never a
    traceback."""
    from stosim.cli import main

    rng = random.Random(seed)
    out = folder / f"run-{seed}"
    out.mkdir(exist_ok=True)
    (out / "checkpoint.pt").write_bytes(mutate_bytes(seed_bytes, rng))
    with open(os.devnull, "w") as sink:
        old_out, old_err, sys.stdout, sys.stderr = sys.stdout, sys.stderr, sink, sink
        try:
            status = main([*TRAIN_ARGS, "--out", str(out), "--resume"])
        except BaseException as exc:
            raise Failure(f"train --resume on a checkpoint mutant raised {type(exc).__name__}: {exc}") from exc
        finally:
            sys.stdout, sys.stderr = old_out, old_err
    if status not in (0, 2):
        raise Failure(f"train --resume on a checkpoint mutant exited {status}")
    return status


def test_checkpoint_mutants_are_refused_cleanly(checkpoint_bytes, tmp_path) -> None:
    @settings(
        derandomize=True,
        max_examples=4,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(seed=SEED)
    def prop(seed: int) -> None:
        run_checkpoint_mutant(seed, tmp_path, checkpoint_bytes)

    prop()


# ----------------------------------------------------------------------------------------------
# the campaign (-m slow): >= 1000 mutants over every kind, in a subprocess whose peak memory is measured
# ----------------------------------------------------------------------------------------------


def campaign(per_kind: int, folder: Path, seed0: int = 1) -> dict[str, Any]:
    """Run ``per_kind`` mutants of every kind; returns the counts, the failures (text) and the time."""
    t0 = time.perf_counter()
    counts: dict[str, dict[str, int]] = {}
    failures: list[str] = []
    # an exception raised in a destructor after a refusal (pytest turns these into errors) is a failure too
    sys.unraisablehook = lambda u: failures.append(f"unraisable {u.exc_type.__name__}: {u.exc_value} in {u.object!r}")

    def tally(kind: str, fn: Callable[[int], Any]) -> None:
        c = counts.setdefault(kind, {"accepted": 0, "refused": 0, "failed": 0})
        for i in range(per_kind):
            seed = seed0 * 1_000_003 + i
            try:
                outcome = fn(seed)
            except Failure as exc:
                c["failed"] += 1
                failures.append(f"{kind} seed {seed}: {str(exc)[:600]}")
                continue
            c["accepted" if outcome in ("accepted", 0) else "refused"] += 1

    for kind in SEEDS:
        tally(kind, lambda s, k=kind: run_toml_mutant(k, s, folder))
    tally("idx", lambda s: run_idx_mutant(s, folder))
    seed_file, sweep = _sweep_file(folder)
    tally("sweep-h5", lambda s: run_h5_mutant(s, folder, seed_file, sweep))
    return {
        "counts": counts,
        "failures": failures,
        "seconds": time.perf_counter() - t0,
        "mutants": sum(sum(c.values()) for c in counts.values()),
    }


@pytest.mark.slow
def test_fuzz_campaign_over_every_file_kind(tmp_path) -> None:
    per_kind = 120  # 10 kinds: 1200 mutants
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, __file__, str(per_kind), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=3000,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["mutants"] >= 1000
    assert report["failures"] == [], "\n".join(report["failures"][:20])
    assert report["peak_rss_bytes"] < 1 << 30, report["peak_rss_bytes"]
    for kind, c in report["counts"].items():  # the mutants reach both outcomes, not only the parser
        assert c["refused"] > 0, kind


@pytest.mark.slow
def test_checkpoint_campaign(checkpoint_bytes, tmp_path) -> None:
    failures = []
    for seed in range(200):
        try:
            run_checkpoint_mutant(seed, tmp_path, checkpoint_bytes)
        except Failure as exc:
            failures.append(f"seed {seed}: {exc}")
    assert failures == [], f"{len(failures)} of 200 checkpoint mutants:\n" + "\n".join(failures[:10])


if __name__ == "__main__":
    import resource

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    where = Path(sys.argv[2]) if len(sys.argv) > 2 else Path.cwd()
    result = campaign(n, where)
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(json.dumps(result))
