"""MLPs with depth, tanh and spectral-radius initialization; the C.3 study's helpers and its CLI path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from stosim.cli import main
from stosim.models import MLPClassifier
from stosim.studies.chaotic_init import chaotic_mlp, epochs_to_converge, spectral_radius
from stosim.studies.training import ConfigError, TrainConfig, build_model


@pytest.mark.parametrize("rho", [0.3, 1.0, 2.3, 10.0])
def test_spectral_radius_init_reaches_rho_to_1e_10(rho):
    model = chaotic_mlp(20, 3, 32, 3, rho, seed=4, dtype=torch.float64)
    weights = model.hidden_weights()
    assert len(weights) == 3 and all(w.shape == (32, 32) for w in weights)
    for w in weights:
        assert abs(spectral_radius(w) - rho) <= 1e-10 * rho
    # the three matrices are different draws, and the draw depends on the seed only
    assert not torch.equal(weights[0], weights[1])
    again = chaotic_mlp(20, 3, 32, 3, rho, seed=4, dtype=torch.float64)
    assert all(torch.equal(a, b) for a, b in zip(weights, again.hidden_weights()))
    other = chaotic_mlp(20, 3, 32, 3, rho, seed=5, dtype=torch.float64)
    assert not torch.equal(weights[0], other.hidden_weights()[0])


def test_spectral_radius_is_max_eigenvalue_modulus_not_norm():
    w = np.array([[0.0, 4.0], [0.0, 0.0]])  # nilpotent: spectral radius 0, norm 4
    assert spectral_radius(w) == 0.0
    assert spectral_radius(np.diag([0.5, -3.0])) == pytest.approx(3.0, rel=1e-15)
    with pytest.raises(ValueError, match="square"):
        spectral_radius(np.zeros((2, 3)))


def test_default_mlp_is_unchanged():
    """depth 1, ReLU, PyTorch initialization: the same module and the same random draws as before."""
    torch.manual_seed(7)
    model = MLPClassifier(10, 3, 16)
    torch.manual_seed(7)
    reference = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    assert [type(m) for m in model.net] == [nn.Linear, nn.ReLU, nn.Linear]
    for a, b in zip(model.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b)
    assert model.hidden_weights() == []


def test_mlp_options_are_checked():
    with pytest.raises(ValueError, match="depth >= 2"):
        MLPClassifier(4, 2, 8, spectral_radius=1.0)
    with pytest.raises(ValueError, match="spectral_radius"):
        MLPClassifier(4, 2, 8, depth=3, spectral_radius=11.0)
    with pytest.raises(ValueError, match="activation"):
        MLPClassifier(4, 2, 8, activation="gelu")
    with pytest.raises(ValueError, match="depth"):
        MLPClassifier(4, 2, 8, depth=0)
    deep = MLPClassifier(4, 2, 8, depth=3, activation="tanh")
    assert sum(isinstance(m, nn.Tanh) for m in deep.net) == 3 and len(deep.hidden_weights()) == 2


def test_epochs_to_converge_is_the_first_epoch_within_tolerance():
    loss = [2.0, 1.0, 0.52, 0.504, 0.5, 0.51]
    assert epochs_to_converge(loss, 0.01) == 4  # 0.504 is within 1% of 0.5
    assert epochs_to_converge(loss, 0.05) == 3
    assert epochs_to_converge(loss, 1e-6) == 5
    with pytest.raises(ValueError, match="test_loss"):
        epochs_to_converge([1.0, float("nan")], 0.01)


def test_train_config_builds_the_chaotic_mlp():
    cfg = TrainConfig(substrate="mlp", hidden=24, depth=4, activation="tanh", init_spectral_radius=1.7, seed=3)
    model = build_model(cfg, 64, 10, (8, 8))
    assert len(model.hidden_weights()) == 3
    for w in model.hidden_weights():
        assert w.dtype == torch.float64 and abs(spectral_radius(w) - 1.7) <= 1e-10 * 1.7
    with pytest.raises(ConfigError, match="mlp"):
        build_model(TrainConfig(substrate="linear", depth=2), 64, 10, (8, 8))
    with pytest.raises(ValueError, match="init_spectral_radius"):
        TrainConfig(substrate="mlp", depth=3, init_spectral_radius=0.0)


def test_cli_train_mlp_with_spectral_radius(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--substrate",
            "mlp",
            "--dataset",
            "digits",
            "--limit-train",
            "200",
            "--limit-test",
            "100",
            "--epochs",
            "1",
            "--hidden",
            "16",
            "--depth",
            "3",
            "--activation",
            "tanh",
            "--init-spectral-radius",
            "1.3",
            "--optimizer",
            "sgd",
            "--lr",
            "0.05",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert rc == 0
    assert '"substrate": "mlp"' in capsys.readouterr().out
    assert (
        main(
            [
                "train",
                "--substrate",
                "sto",
                "--depth",
                "2",
                "--dataset",
                "digits",
                "--epochs",
                "1",
                "--out",
                str(tmp_path / "bad"),
            ]
        )
        == 2
    )
    assert "--depth does not apply to --substrate sto" in capsys.readouterr().err
