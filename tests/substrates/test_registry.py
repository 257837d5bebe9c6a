"""The substrate registry: a substrate's name is written once (its own module), every dispatch site looks it
up; a substrate declared in this file only is usable by training, the CLI and the Lyapunov runner."""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from stosim.analysis.lyapunov import TangentSystem
from stosim.model_kinds import kind_names, kinds
from stosim.substrates import registry
from stosim.substrates.base import Substrate, SubstrateDescription
from stosim.substrates.protocols import Differentiable

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "stosim"

# where a substrate's or model kind's name may be written as a string literal: the registries and each
# substrate's own module (its declaration, its describe() name)
DECLARING_MODULES = {"stosim/substrates/registry.py", "stosim/model_kinds.py"} | {
    module.replace(".", "/") + ".py" for module in registry.builtin_modules()
}
# the literals that remain elsewhere, per file: name -> count. Each is a known exception; the test fails when
# one is removed too, so the list only shrinks.
EXCEPTIONS = {
    # `stosim lyapunov --substrate` default and the unit-check fallback for an unreadable config: the parser
    # must not import the registry (torch) to build; the --figure choices are figure names, not substrates
    "stosim/cli.py": {"sto": 2, "ffesn": 1, "lorenz96": 1},
    # sweep ftmle points build their substrates with the point's keys (density, device overrides, no dtype)
    "stosim/studies/sweep_points.py": {"sto": 1, "ffesn": 1, "rate-network": 1},
    # sweep spec's run-level checks of mle / ftmle points (they build with the point's keys); not yet moved
    "stosim/sweep/spec.py": {"sto": 1, "ffesn": 2, "lorenz96": 1},
    # figure names of `stosim visualize` (state-space pictures of these substrates)
    "stosim/visualize.py": {"ffesn": 1, "lorenz96": 1},
}


def _name_literals(names: set[str]) -> dict[str, dict[str, int]]:
    found: dict[str, dict[str, int]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                counts = found.setdefault(rel, {})
                counts[node.value] = counts.get(node.value, 0) + 1
    return found


def test_substrate_names_are_written_only_where_declared() -> None:
    names = set(kind_names())
    assert {"sto", "ffesn", "lorenz96", "rate-network", "deep-sto", "cnn-sto", "linear", "mlp", "cnn"} <= names
    outside = {path: counts for path, counts in _name_literals(names).items() if path not in DECLARING_MODULES}
    assert outside == EXCEPTIONS


def test_each_builtin_substrate_is_declared_in_its_own_module() -> None:
    for name, spec in registry.specs().items():
        assert spec.build.__module__ in registry.builtin_modules(), name
        assert spec.cls is not None and spec.cls.__module__ == spec.build.__module__
    assert registry.names() == ("sto", "ffesn", "lorenz96", "rate-network")
    assert registry.builtin_modules() == registry.BUILTIN_MODULES  # no other module declares one today


def test_registry_keeps_the_defaults() -> None:
    from stosim.studies.run_lyapunov import LYAPUNOV_DEFAULTS
    from stosim.studies.training import SUBSTRATE_KEYS, TrainConfig

    assert {name: TrainConfig(substrate=name).default_n for name in kind_names()} == {
        "sto": 100,
        "cnn-sto": 100,
        "deep-sto": 100,
        "ffesn": 500,
        "lorenz96": 500,
        "rate-network": 200,
        "linear": 100,
        "mlp": 100,
        "cnn": 100,
    }
    assert LYAPUNOV_DEFAULTS["sto"]["duration"] == 200e-9 and LYAPUNOV_DEFAULTS["lorenz96"]["n"] == 40
    assert LYAPUNOV_DEFAULTS["ffesn"]["reorthonormalize_every"] == 1
    assert SUBSTRATE_KEYS["cnn-sto"][-1] == "conv_channels" and SUBSTRATE_KEYS["linear"] == ()
    assert TrainConfig().substrate == "sto"


def test_unknown_substrate_is_refused_naming_the_valid_ones() -> None:
    from stosim.studies.training import ConfigError, validate_train_config

    with pytest.raises(ConfigError, match=r"substrate: Input should be 'sto', .* or 'deep-sto' \(got 'nope'\)"):
        validate_train_config({"substrate": "nope"})
    with pytest.raises(ValueError, match="valid: sto, ffesn, lorenz96, rate-network"):
        registry.get("nope")


def test_docs_table_is_up_to_date() -> None:
    from stosim.substrate_docs import DOCS_PATH, substrates_markdown

    assert DOCS_PATH.read_text(encoding="utf-8") == substrates_markdown(), (
        "docs/substrates.md is out of date: run python -m stosim.substrate_docs"
    )


def test_building_the_parser_imports_no_torch() -> None:
    code = "import sys; from stosim.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False"]


# -- a substrate declared here only ------------------------------------------------------------------------


class Decay(Substrate, Differentiable):
    """x -> a^steps x: a linear contraction map (the smallest substrate that trains)."""

    def __init__(self, n: int, decay: float, steps: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.n, self.steps = n, steps
        self.register_buffer("decay", torch.tensor(decay, dtype=dtype))

    def describe(self) -> SubstrateDescription:
        return SubstrateDescription(
            name="test-decay",
            state_size=self.n,
            readin_size=self.n,
            readout_size=self.n,
            state_units="1",
            readout_units="1",
            time_unit="step",
            summary="x -> a x",
        )

    def read_configuration(self) -> dict[str, float | int | str]:
        return {"n": self.n, "decay": float(self.decay), "steps": self.steps}

    @property
    def dtype(self) -> torch.dtype:
        return self.decay.dtype

    def reset(self, seed: int) -> None:
        pass

    def initial_state(self, readin: torch.Tensor) -> torch.Tensor:
        return readin

    def evolve(self, state: torch.Tensor) -> torch.Tensor:
        return state * self.decay**self.steps


class DecayTangent(TangentSystem):
    """The map x -> a x: every Lyapunov exponent is ln|a| per step."""

    def __init__(self, n: int, decay: float) -> None:
        self.dimension = self.ambient_dimension = n
        self.step_time, self.time_unit, self.decay = 1.0, "step", decay

    def step(self, x: np.ndarray) -> np.ndarray:
        return self.decay * x

    def step_with_tangents(self, x: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.decay * x, self.decay * q


DECAY = 0.5


def _tangent(n: int, dt: float, seed: int, rng: np.random.Generator, *, decay: float = DECAY):
    return DecayTangent(n, decay), rng.standard_normal(n)


@pytest.fixture
def test_substrate():
    spec = registry.register(
        registry.SubstrateSpec(
            name="test-decay",
            summary="x -> a^steps x",
            keys=("n", "steps"),
            default_n=6,
            time_unit="steps",
            cls=Decay,
            build=lambda cfg, seed, dtype: Decay(cfg.n or 6, DECAY, cfg.steps, dtype),
            tangent=registry.TangentSpec(
                build=_tangent,
                defaults={"duration": 20.0, "transient": 2.0, "dt": 1.0, "n": 4, "reorthonormalize_every": 1},
            ),
        )
    )
    yield spec
    registry.unregister(spec.name)


def test_a_substrate_registered_in_a_test_is_usable_everywhere(test_substrate) -> None:
    from stosim.cli import build_parser
    from stosim.studies.run_lyapunov import substrate_lyapunov
    from stosim.studies.training import SUBSTRATE_KEYS, build_model, resolved_config, validate_train_config

    assert "test-decay" in kinds() and SUBSTRATE_KEYS["test-decay"] == ("n", "steps")
    cfg = validate_train_config({"substrate": "test-decay", "steps": 3})
    assert cfg.default_n == 6 and resolved_config(cfg)["n"] == 6
    model = build_model(cfg, n_inputs=64, n_classes=10, image_shape=(8, 8))
    assert isinstance(model.substrate, Decay) and model.substrate.n == 6
    x = torch.ones(2, 64, dtype=torch.float64)
    torch.testing.assert_close(model.substrate(model.read_in(x)), DECAY**3 * model.read_in(x))
    parser = build_parser()
    for argv in (
        ["train", "--substrate", "test-decay", "--out", "x"],
        ["lyapunov", "--substrate", "test-decay"],
        ["ftmle", "--substrate", "test-decay", "--out", "x.h5"],
    ):
        assert parser.parse_args(argv).substrate == "test-decay"
    result = substrate_lyapunov("test-decay", n_exponents=2)
    np.testing.assert_allclose(result.exponents, [math.log(DECAY)] * 2, rtol=1e-12)  # ln a per step, exactly


def test_the_cli_refuses_an_unregistered_substrate(capsys) -> None:
    from stosim.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["lyapunov", "--substrate", "test-decay"])
    assert "invalid choice: 'test-decay'" in capsys.readouterr().err
