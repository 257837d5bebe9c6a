"""FTMLE of the coupled STO array (Numba JVP/VJP operators) and `stosim ftmle`."""

from __future__ import annotations

import json

import numpy as np
import torch
import xarray as xr

from stosim.analysis.ftmle import (
    flow_ftmle,
    flow_operators_from_function,
    substrate_ftmle,
    unit_sphere_tangent_projection,
)
from stosim.cli import main
from stosim.integrate.flow import sto_flow
from stosim.substrates.sto_array import CoupledSTOArray


def test_sto_operators_iterative_equals_exact_and_autograd_reference():
    sub = CoupledSTOArray(n=10, duration_s=100e-12, seed=0)
    u = torch.randn(4, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = substrate_ftmle(sub, u, method="exact")
    lanczos = substrate_ftmle(sub, u, method="lanczos", tol=1e-10)
    assert lanczos.all_converged
    np.testing.assert_allclose(lanczos.ftmle, exact.ftmle, rtol=1e-6)
    # reference: the Jacobian of the same map through autograd (reverse mode only), tangent-projected
    states = sub.initial_state(u)
    ref = flow_ftmle(
        flow_operators_from_function(
            lambda x: sto_flow(
                (x / x.reshape(-1, 10, 3).norm(dim=-1).repeat_interleave(3, 1)).reshape(-1, 10, 3),
                sub.array,
                sub.n_steps,
                sub.dt_s,
            ).reshape(x.shape[0], -1),
            time=sub.duration_s,
            time_unit="s",
            project_tangent=unit_sphere_tangent_projection,
        ),
        states,
        method="exact",
    )
    np.testing.assert_allclose(exact.ftmle, ref.ftmle, rtol=1e-9)
    assert np.all(exact.ftmle > 0)  # transient expansion at mu = 500 Oe


def test_uncoupled_array_ftmle_is_the_largest_single_oscillator_ftmle():
    """With mu = 0 the Jacobian is block diagonal (one 2 x 2 tangent block per oscillator), so the
    array's FTMLE is exactly the largest of the oscillators' own FTMLEs."""
    u = torch.randn(5, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    array = substrate_ftmle(CoupledSTOArray(n=3, coupling_oe=0.0, duration_s=100e-12, seed=0), u, method="exact")
    single = CoupledSTOArray(n=1, coupling_oe=0.0, duration_s=100e-12, seed=0)
    each = np.stack([substrate_ftmle(single, u[:, 3 * i : 3 * i + 3], method="exact").ftmle for i in range(3)])
    np.testing.assert_allclose(array.ftmle, each.max(axis=0), rtol=1e-10)


def test_cli_ftmle_untrained_and_trained(tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--n",
                "6",
                "--duration",
                "20 ps",
                "--epochs",
                "1",
                "--limit-train",
                "100",
                "--limit-test",
                "20",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    capsys.readouterr()
    for name, extra in (
        ("u", ["--substrate", "sto", "--n", "6", "--duration", "20 ps"]),
        ("t", ["--checkpoint", str(run)]),
    ):
        out = tmp_path / f"{name}.h5"
        assert (
            main(
                ["ftmle", *extra, "--limit", "20", "--out", str(out), "--plot", str(tmp_path / f"{name}.png"), "--json"]
            )
            == 0
        )
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["n_samples"] == 20 and summary["units"] == "1/s"
        assert summary["trained"] == (name == "t")
        ds = xr.open_dataset(out, engine="h5netcdf")
        assert ds["ftmle"].attrs["units"] == "1/s" and ds.sizes["sample"] == 20
        # the configuration's values are in internal units; their units from stosim.parameters
        units = json.loads(ds.attrs["config_units"])
        assert units["coupling"] == "Oe" and units["duration"] == "s" and units["temperature"] == "K"
        assert units["dynamical_snr"] == "dB" and units["substrate"] == "n/a"
        ds.close()
        assert (tmp_path / f"{name}.png").stat().st_size > 5000
    assert main(["ftmle", "--checkpoint", str(run), "--n", "5", "--out", str(tmp_path / "x.h5")]) == 2
    assert "drop --config and the other model flags" in capsys.readouterr().err
