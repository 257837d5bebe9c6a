"""The Python API: unit strings everywhere, dtype handling, the scikit-learn style estimator, the version,
and the command line's help, --version and refusal of flags that do not apply."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import stosim
from stosim.cli import build_parser, main
from stosim.estimator import ReservoirEstimator
from stosim.quantities import quantity
from stosim.units import UnitError

ROOT = Path(__file__).resolve().parent.parent


# -- quantities ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "dimension", "expected"),
    [
        ("500 Oe", "field", 500.0),
        ("0.05 T", "field", 500.0),
        (500, "field", 500.0),
        ("300 ps", "time", 3e-10),
        (3e-10, "time", 3e-10),
        ("2.5 mA", "current", 2.5e-3),
        (np.float32(2.0), "temperature", 2.0),
    ],
)
def test_quantity_takes_unit_strings_and_plain_numbers(value, dimension, expected) -> None:
    assert quantity(value, dimension, "x") == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize("value", [None, [500.0], float("nan"), True, "500", "500 ps", "Oe"])
def test_quantity_refuses_the_rest_naming_the_parameter(value) -> None:
    with pytest.raises(UnitError, match="coupling"):
        quantity(value, "field", "coupling")


def test_sto_array_from_unit_strings_equals_the_one_from_numbers() -> None:
    a = stosim.CoupledSTOArray(
        n=6, coupling="0.05 T", duration="20 ps", dt="1 ps", current="2 mA", temperature="0 K", seed=3
    )
    b = stosim.CoupledSTOArray(n=6, coupling_oe=500.0, duration_s=20e-12, dt_s=1e-12, current_a=2e-3, seed=3)
    c = stosim.CoupledSTOArray(6, "500 Oe", "20 ps", "1 ps", current_a="2 mA", seed=3)  # strings in the old keywords
    assert a.read_configuration() == b.read_configuration() == c.read_configuration()
    assert a.n_steps == 20 and a.array.coupling_oe == 500.0 and a.array.current_a == pytest.approx(2e-3, rel=1e-15)
    np.testing.assert_array_equal(a.array.coupling_matrix, b.array.coupling_matrix)


def test_sto_array_refuses_both_keywords_of_one_setting_and_names_bad_ones() -> None:
    with pytest.raises(ValueError, match="coupling or coupling_oe"):
        stosim.CoupledSTOArray(n=4, coupling="500 Oe", coupling_oe=200.0)
    with pytest.raises(ValueError, match="duration"):
        stosim.CoupledSTOArray(n=4, duration="300 Oe")
    with pytest.raises(ValueError, match="dt"):
        stosim.CoupledSTOArray(n=4, dt=None, dt_s=None)


def test_simulate_takes_unit_strings() -> None:
    array = stosim.CoupledSTOArray(n=3, seed=1).array
    m0 = np.tile([1.0, 0.0, 0.0], (3, 1))
    a = stosim.simulate(array, m0, "50 ps", "1 ps", save_every=10)
    b = stosim.simulate(array, m0, 50e-12, 1e-12, save_every=10)
    np.testing.assert_array_equal(a.m, b.m)


# -- dtype --------------------------------------------------------------------------------------------
def test_models_cast_inputs_to_their_dtype() -> None:
    from stosim.models import MLPClassifier, ReservoirClassifier
    from stosim.substrates import FFESN

    torch.manual_seed(0)
    model = ReservoirClassifier(5, 3, FFESN(n=8, seed=0))  # float64
    x64 = torch.rand(4, 5, dtype=torch.float64)
    out32 = model(x64.to(torch.float32))  # torch's default dtype: cast, no raw dtype error
    assert out32.dtype == torch.float64
    torch.testing.assert_close(model(x64), model(x64.to(torch.float32).to(torch.float64)))
    assert model(np.ones((2, 5), dtype=np.int64)).shape == (2, 3)  # integer pixels, a NumPy array
    with pytest.raises(ValueError, match="dtype torch.bool"):
        model(torch.ones(2, 5, dtype=torch.bool))
    assert MLPClassifier(5, 3, 4)(x64).dtype == torch.float32  # a float32 model casts float64 input down


# -- the estimator ------------------------------------------------------------------------------------
def _blobs(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated Gaussian blobs in 4 dimensions."""
    rng = np.random.default_rng(seed)
    centres = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], dtype=float) * 2.0
    y = rng.integers(0, 3, n)
    return centres[y] + 0.3 * rng.standard_normal((n, 4)), y


def test_ridge_readout_is_the_closed_form_ridge_solution() -> None:
    """Oracle: W, b minimize |F W + b - Y|^2 + alpha |W|^2 on the model's features F (b not penalized):
    with centred F_c, Y_c, W = (F_c^T F_c + alpha I)^-1 F_c^T Y_c and b = mean(Y) - mean(F) W."""
    x, y = _blobs()
    alpha = 0.3
    clf = ReservoirEstimator("lorenz96", substrate_params={"n": 8, "duration": 0.2}, ridge_alpha=alpha).fit(x, y)
    with torch.no_grad():
        f = clf.model_.features(torch.as_tensor(x)).numpy()
    yy = np.eye(3)[y]
    fc, yc = f - f.mean(0), yy - yy.mean(0)
    w = np.linalg.solve(fc.T @ fc + alpha * np.eye(f.shape[1]), fc.T @ yc)
    b = yy.mean(0) - f.mean(0) @ w
    np.testing.assert_allclose(clf.decision_function(x), f @ w + b, rtol=1e-9, atol=1e-10)
    assert clf.score(x, y) > 0.9


def test_partial_fit_streams_to_the_same_readout_as_fit() -> None:
    x, y = _blobs()
    params = {"substrate_params": {"n": 16}, "seed": 2}
    full = ReservoirEstimator("ffesn", **params).fit(x, y)
    stream = ReservoirEstimator("ffesn", **params)
    for i in range(0, 120, 50):
        stream.partial_fit(x[i : i + 50], y[i : i + 50], classes=[0, 1, 2])
    np.testing.assert_allclose(stream.decision_function(x), full.decision_function(x), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="classes"):
        ReservoirEstimator("ffesn", **params).partial_fit(x, y)
    with pytest.raises(ValueError, match=r"labels \[7\]"):
        stream.partial_fit(x[:2], np.array([0, 7]))


def test_estimator_labels_probabilities_and_params() -> None:
    x, y = _blobs()
    names = np.array(["cat", "dog", "eel"])[y]
    clf = ReservoirEstimator("ffesn", substrate_params={"n": 16}, training="gradient", epochs=12, lr=0.05)
    assert clf.fit(x.astype(np.float32), names) is clf
    assert clf.classes_.tolist() == ["cat", "dog", "eel"]
    assert set(clf.predict(x)) <= {"cat", "dog", "eel"}
    proba = clf.predict_proba(x)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(1)], clf.predict(x))
    assert clf.score(x, names) > 0.9 and len(clf.history_) == 12 and clf.history_[-1] < clf.history_[0]
    params = clf.get_params()
    assert params["training"] == "gradient" and params["substrate_params"] == {"n": 16}
    copy = ReservoirEstimator(**params)
    assert copy.get_params() == params
    assert copy.set_params(epochs=2, lr=0.1).epochs == 2
    with pytest.raises(ValueError, match="not a parameter"):
        copy.set_params(epoch=2)


def test_estimator_accepts_a_substrate_instance_and_refuses_bad_input() -> None:
    from stosim.substrates import FFESN

    x, y = _blobs()
    clf = ReservoirEstimator(FFESN(n=12, seed=1, dtype=torch.float32))
    with pytest.raises(RuntimeError, match="not fitted"):
        clf.predict(x)
    clf.fit(x, y)
    assert clf.model_.readout.weight.dtype == torch.float32
    with pytest.raises(ValueError, match="3 features; this estimator was fitted with 4"):
        clf.predict(x[:, :3])
    with pytest.raises(ValueError, match="NaN"):
        clf.predict(np.full((2, 4), np.nan))
    with pytest.raises(ValueError, match="one label per row"):
        clf.fit(x, y[:-1])
    with pytest.raises(ValueError, match="training"):
        ReservoirEstimator(training="adam").fit(x, y)
    with pytest.raises(ValueError, match="at least 2"):
        ReservoirEstimator("ffesn").fit(x, np.zeros(len(x), dtype=int))
    with pytest.raises(ValueError, match="substrate = 'nope'"):
        ReservoirEstimator("nope").fit(x, y)


def test_predictions_are_reproducible_with_noise() -> None:
    x, y = _blobs(60)
    params = {"n": 4, "duration": "20 ps", "observation_snr_db": 20.0}
    clf = ReservoirEstimator("sto", substrate_params=params).fit(x, y)
    np.testing.assert_array_equal(clf.decision_function(x), clf.decision_function(x))
    again = ReservoirEstimator("sto", substrate_params=params).fit(x, y)
    np.testing.assert_array_equal(again.decision_function(x), clf.decision_function(x))


def test_estimator_builds_every_registered_substrate_by_name() -> None:
    """The estimator reads the substrate registry: each registered substrate is built by its declared class,
    the rate network included, with the read-in/readout bias and the matrix seed its spec declares."""
    from stosim.substrates import registry
    from stosim.substrates.rate_network import RateNetwork, draw_coupling_matrix

    assert stosim.substrate_names() == registry.names()
    x, y = _blobs(90)
    params = {"n": 20, "g": 1.5, "duration": 2.0, "dt": 0.1}
    clf = ReservoirEstimator("rate-network", substrate_params=params, seed=3).fit(x, y)
    sub = clf.model_.substrate
    assert isinstance(sub, RateNetwork) and sub.n == 20 and sub.dtype == torch.float64
    # the estimator's seed draws the coupling matrix J (the spec declares seeded_matrix)
    np.testing.assert_array_equal(sub.J.numpy(), draw_coupling_matrix(20, 1.5, 3))
    assert (clf.model_.readout.bias is not None) == registry.get("rate-network").readout_bias
    assert clf.score(x, y) > 0.9
    grad = ReservoirEstimator("rate-network", substrate_params=params, training="gradient", epochs=4, lr=0.05)
    assert grad.fit(x, y).history_[-1] < grad.history_[0]
    assert ReservoirEstimator("ffesn", substrate_params={"n": 8}).fit(x, y).model_.readout.bias is None
    with pytest.raises(ValueError, match="valid: one of sto, ffesn, lorenz96, rate-network"):
        stosim.build_substrate("nope")


# -- version, import, CLI -----------------------------------------------------------------------------
def test_version_has_one_source(capsys: pytest.CaptureFixture[str]) -> None:
    assert stosim.__version__ == importlib.metadata.version("stosim")
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"stosim {stosim.__version__}"


def test_import_stosim_is_lazy() -> None:
    code = "import sys, stosim; print('torch' in sys.modules, 'numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"]


def test_every_command_has_examples_and_defaults_in_its_help() -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, command in commands.items():
        text = command.format_help()
        assert "examples:" in text and f"stosim {name}" in text, name
        for action in command._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and action.help.strip(), f"stosim {name} {action.option_strings[0]} has no help"
    train_help = " ".join(commands["train"].format_help().split())
    assert "(default 500 Oe)" in train_help and "default 20" in train_help


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--substrate", "ffesn", "--coupling", "500 Oe"], "--coupling does not apply to --substrate ffesn"),
        (
            ["--substrate", "lorenz96", "--spectral-radius", "1.2", "--temperature", "3 K"],
            "--spectral-radius, --temperature do not apply to --substrate lorenz96",
        ),
        (["--substrate", "linear", "--hidden", "10"], "--hidden does not apply to --substrate linear"),
    ],
)
def test_train_refuses_flags_of_other_substrates(
    flags, named, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", *flags, "--out", str(tmp_path / "run")]) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_unit_error_names_its_key_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--coupling", "500", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "coupling: coupling" not in err and "coupling: unit ''" in err


def test_paths_in_experiment_files_are_relative_to_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stosim.studies.training import config_differences, load_train_config

    folder = tmp_path / "experiments" / "table"
    folder.mkdir(parents=True)
    path = folder / "run.toml"
    path.write_text('substrate = "linear"\ndataset = "mnist"\ndata_dir = "../data/mnist"\n')
    monkeypatch.chdir(tmp_path.parent)
    cfg = load_train_config(path)
    assert Path(cfg.data_dir) == (tmp_path / "experiments" / "data" / "mnist").resolve()
    # where the data lives does not make another run: a run saved with the path as written still matches
    assert config_differences({**cfg.resolved(), "data_dir": "../data/mnist"}, cfg) == []


def test_all_experiment_files_validate_from_another_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    files = sorted(str(p) for p in (ROOT / "experiments" / "table1").glob("*.toml"))
    monkeypatch.chdir(tmp_path)
    assert main(["validate", *files]) == 0, capsys.readouterr().err


def test_compilation_notice_once_while_compiling_and_never_on_a_warm_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib
    import sys

    from stosim.cli import COMPILATION_NOTICE, _compilation_notice

    (tmp_path / "h22_fresh_kernels.py").write_text(
        textwrap.dedent("""
        from numba import njit

        @njit(cache=True)
        def twice(x):
            return 2.0 * x

        @njit(cache=True)
        def thrice(x):
            return 3.0 * x
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import h22_fresh_kernels as kernels

    with _compilation_notice():
        assert capsys.readouterr().err == ""  # nothing before a compilation starts
        assert kernels.twice(2.0) == 4.0
        assert kernels.thrice(2.0) == 6.0
    assert capsys.readouterr().err == COMPILATION_NOTICE + "\n"  # once for the two compilations
    assert kernels.twice(2) == 4.0  # a new signature compiles, but outside the block: no line
    assert capsys.readouterr().err == ""
    # a new process (here: the module imported again) loads both from the on-disk cache: no line
    del sys.modules["h22_fresh_kernels"]
    kernels = importlib.import_module("h22_fresh_kernels")
    with _compilation_notice():
        assert kernels.twice(2.0) == 4.0
        assert kernels.thrice(2.0) == 6.0
    assert capsys.readouterr().err == ""


def test_training_reports_progress_within_epochs_without_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import stosim.cli

    monkeypatch.setattr(stosim.cli, "PLAIN_PROGRESS_S", 0.0)  # a plain line at every batch instead of every 30 s
    assert (
        main(
            [
                "train",
                "--substrate",
                "linear",
                "--epochs",
                "2",
                "--limit-train",
                "100",
                "--limit-test",
                "20",
                "--batch-size",
                "32",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "epoch 1: 1 / 4 batches (25 %)" in err and "epoch 2: 4 / 4 batches (100 %)" in err


def test_api_reference_builds_from_the_docstrings(tmp_path: Path) -> None:
    pytest.importorskip("pdoc")
    from stosim.docs import build_docs

    index = build_docs(tmp_path / "api", ["stosim.estimator", "stosim.quantities"])
    page = (tmp_path / "api" / "stosim" / "estimator.html").read_text(encoding="utf-8")
    assert index.exists() and "ReservoirEstimator" in page and "partial_fit" in page
    assert (tmp_path / "api" / "tutorial.md").exists()


def test_evolve_and_noise_settings_take_unit_strings() -> None:
    array = stosim.CoupledSTOArray(n=3, seed=1).array
    m0 = np.tile([0.6, 0.0, 0.8], (2, 3, 1))
    a, _, _ = stosim.evolve(array, m0, 20, "1 ps")
    b, _, _ = stosim.evolve(array, m0, 20, 1e-12)
    np.testing.assert_array_equal(a, b)
    assert stosim.NoiseSettings(temperature_k="300 K").temperature_k == 300.0
    with pytest.raises(ValueError, match="temperature"):
        stosim.NoiseSettings(temperature_k="300 Oe")


def test_help_examples_parse() -> None:
    """Every example command in the help texts is accepted by the parser (flags, choices, units)."""
    import shlex

    from stosim.cli import _EPILOGS

    parser = build_parser()
    examples = [
        line.strip()
        for text in _EPILOGS.values()
        for line in text.splitlines()
        if line.strip().startswith("stosim ") and "COMMAND" not in line
    ]
    assert len(examples) >= 15
    for line in examples:
        args = parser.parse_args(shlex.split(line)[1:])
        assert args.command == shlex.split(line)[1], line


def test_score_refuses_labels_of_another_length() -> None:
    x, y = _blobs(30)
    clf = ReservoirEstimator("ffesn", substrate_params={"n": 8}).fit(x, y)
    with pytest.raises(ValueError, match="one label per row"):
        clf.score(x, y[:-3])
    assert clf.score(x, torch.as_tensor(y)) == clf.score(x, y)


# -- the public API: one screen of entry points at the top level --------------------------------------
# what a user needs without knowing the module paths; removing one of these fails here
ENTRY_POINTS = {
    "simulate",
    "evolve",
    "load_device",
    "CoupledSTOArray",
    "FFESN",
    "Lorenz96",
    "RateNetwork",
    "Substrate",
    "ReservoirClassifier",
    "DeepReservoirClassifier",
    "LinearClassifier",
    "MLPClassifier",
    "train",
    "TrainConfig",
    "lyapunov_spectrum",
    "substrate_lyapunov",
    "substrate_ftmle",
    "model_ftmle",
    "run_sweep",
    "load_sweep_spec",
    "ReservoirEstimator",
}


def test_top_level_names_resolve_are_listed_and_documented() -> None:
    import stosim.analysis.ftmle
    import stosim.studies.training
    import stosim.substrates.rate_network
    import stosim.sweep.spec

    assert ENTRY_POINTS <= set(stosim.__all__)
    assert set(stosim.__all__) <= set(dir(stosim))
    for name in stosim.__all__:
        assert getattr(stosim, name) is not None, name
        if name != "__version__":
            assert f"`{name}`" in stosim.__doc__, f"{name} is missing from stosim's docstring"
    # the same objects as in their modules (no copies), aliases included
    assert stosim.train is stosim.studies.training.train and stosim.TrainConfig is stosim.studies.training.TrainConfig
    assert stosim.RateNetwork is stosim.substrates.rate_network.RateNetwork
    assert stosim.load_sweep_spec is stosim.sweep.spec.load_spec
    assert stosim.substrate_ftmle is stosim.analysis.ftmle.substrate_ftmle
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        stosim.nope  # noqa: B018
    # one screen: the list of entry points in the docstring
    api = stosim.__doc__.split("\n\n")[1:3]
    assert sum(len(part.splitlines()) for part in api) <= 30


def test_listing_the_api_imports_nothing_heavy() -> None:
    code = (
        "import sys, stosim; names = dir(stosim); assert 'train' in names and 'RateNetwork' in names; "
        "print('torch' in sys.modules, 'numba' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"]


def test_train_through_the_top_level_names() -> None:
    cfg = stosim.TrainConfig(
        substrate="rate-network",
        dataset="digits",
        n=40,
        duration=1.0,
        limit_train=200,
        limit_test=100,
        batch_size=50,
        epochs=3,
        lr=0.03,
    )
    result = stosim.train(cfg)
    assert result.epochs == 3 and isinstance(result.model, stosim.ReservoirClassifier)
    assert isinstance(result.model.substrate, stosim.RateNetwork)
    assert result.best_test_accuracy > 0.4  # chance is 0.1


def test_lyapunov_spectrum_through_the_top_level_names() -> None:
    """Oracle: below the onset of chaos (g < 1) the rate network decays to h = 0, where its Jacobian is
    (-I + J) / tau; the largest exponent is -1 + max Re eig(J) (tau = 1, RK4 error O(dt^4) ~ 1e-5)."""
    from stosim.analysis.lyapunov import TangentSystem
    from stosim.substrates.rate_network import draw_coupling_matrix

    g, n, seed = 0.5, 20, 2
    result = stosim.substrate_lyapunov(
        "rate-network", n=n, g=g, seed=seed, n_exponents=1, duration=200.0, transient=20.0
    )
    expected = -1.0 + np.linalg.eigvals(draw_coupling_matrix(n, g, seed)).real.max()
    assert result.exponents[0] == pytest.approx(expected, abs=0.03)

    class Diagonal(TangentSystem):
        """x -> diag(a) x: exponents ln|a_i| per step, exactly."""

        dimension = ambient_dimension = 3
        step_time, time_unit = 1.0, "step"
        a = np.array([2.0, 0.5, -0.25])

        def step(self, x):
            return self.a * x

        def step_with_tangents(self, x, q):
            return self.a * x, self.a[:, None] * q

    spectrum = stosim.lyapunov_spectrum(Diagonal(), np.ones(3), n_exponents=3, n_steps=50)
    np.testing.assert_allclose(spectrum.exponents, np.log([2.0, 0.5, 0.25]), rtol=1e-12)


def test_ftmle_through_the_top_level_names() -> None:
    """Oracles: a linear layer's FTMLE is ln sigma_max(W); one FFESN step x -> tanh(W x) has the Jacobian
    diag(1 - tanh^2(W x)) W (time unit: one step)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 6, bias=False).double()
    x = torch.randn(3, 6, dtype=torch.float64)
    total = stosim.model_ftmle([layer], x, method="exact").total.ftmle
    sigma = torch.linalg.matrix_norm(layer.weight.detach(), ord=2)
    np.testing.assert_allclose(total, np.log(float(sigma)), rtol=1e-10)

    ffesn = stosim.FFESN(n=8, steps=1, spectral_radius=1.2, seed=1)
    result = stosim.substrate_ftmle(ffesn, states=x[:, :1].repeat(1, 8) * 0.3, method="exact")
    for b, x0 in enumerate(x[:, :1].repeat(1, 8) * 0.3):
        jac = torch.diag(1 - torch.tanh(ffesn.W @ x0) ** 2) @ ffesn.W
        assert result.ftmle[b] == pytest.approx(float(torch.log(torch.linalg.matrix_norm(jac, ord=2))), rel=1e-10)
