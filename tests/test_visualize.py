"""State-space pictures: trajectories, PCA, and `stosim visualize` at a tiny scale."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stosim.cli import main
from stosim.substrates.ffesn import FFESN
from stosim.substrates.lorenz96 import Lorenz96
from stosim.substrates.sto_array import CoupledSTOArray
from stosim.visualize import pca, substrate_trajectory


def test_trajectories_end_where_the_substrate_ends():
    """The recorded trajectory's last state is the substrate's own evolve() result (float64)."""
    x = torch.randn(3, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for sub, x0 in (
        (FFESN(n=12, spectral_radius=1.5, steps=7, seed=1), x),
        (Lorenz96(n=12, forcing=8.0, duration=0.3, dt=0.01), x + 8.0),
    ):
        traj = substrate_trajectory(sub, x0)
        assert traj.states.shape[:2] == (sub.steps + 1 if isinstance(sub, FFESN) else sub.n_steps + 1, 3)
        np.testing.assert_allclose(traj.states[-1], sub.evolve(x0).numpy(), rtol=0, atol=1e-12)
        np.testing.assert_array_equal(traj.states[0], x0.numpy())
    sto = CoupledSTOArray(n=4, coupling_oe=100.0, duration_s=20e-12, dt_s=1e-12)
    m0 = sto.initial_state(x[:, :12])
    traj = substrate_trajectory(sto, m0, every=5)
    assert traj.states.shape == (5, 3, 12) and traj.time_unit == "s"
    np.testing.assert_allclose(traj.time[-1], 20e-12)
    np.testing.assert_allclose(traj.states[-1], sto.evolve(m0).numpy(), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="every"):
        substrate_trajectory(sto, m0, every=0)


def test_pca_recovers_a_known_plane():
    """Points on a 2-D plane in 5-D: two PCs explain all the variance, the axes span the plane."""
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((5, 2)))[0].T  # (2, 5) orthonormal
    coef = rng.standard_normal((200, 2)) * [3.0, 1.0]
    proj, axes, ratio = pca(coef @ basis + 7.0, 3)
    assert proj.shape == (200, 3)
    np.testing.assert_allclose(ratio.sum(), 1.0, atol=1e-12)
    assert ratio[2] < 1e-20 and ratio[0] > ratio[1] > 0.05
    np.testing.assert_allclose(np.linalg.norm(axes[:2] @ basis.T, axis=1), 1.0, atol=1e-10)


def test_visualize_command_writes_pngs(tmp_path):
    assert (
        main(["visualize", "--scale", "tiny", "--figure", "ffesn", "--figure", "lorenz96", "--out-dir", str(tmp_path)])
        == 0
    )
    for name in ("state_space_ffesn.png", "state_space_lorenz96.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_visualize_sto_figures_tiny(tmp_path):
    assert (
        main(
            [
                "visualize",
                "--scale",
                "tiny",
                "--figure",
                "sto-flow",
                "--figure",
                "sto-timeseries",
                "--figure",
                "pca",
                "--out-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "state_space_pca.png",
        "state_space_sto_flow.png",
        "state_space_sto_timeseries.png",
    ]
