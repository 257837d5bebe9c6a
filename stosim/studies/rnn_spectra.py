"""Lyapunov spectra of random rate networks: the studies of Engelken, Wolf & Abbott (2023) (``stosim rnn-study``).

A spec (``experiments/rnn/*.toml``) names a ``study`` and gives its parameters at two scales,
``[reduced]`` (this machine, minutes) and ``[full]`` (the study's scale, for a Dask cluster)::

    study = "discrete-mle-vs-g"
    [reduced]
    n = 1000
    g = [0.5, 1.5, 2.0, 3.0]
    ...

Every study is a list of independent points (a full or partial Lyapunov spectrum of one network,
:func:`spectrum_point`; or a BPTT training run, :func:`trained_point`), run in this process or as
Dask tasks (``--workers`` for a loopback cluster, ``--scheduler`` for an existing one), then a
summary (numbers beside the theory, JSON) and a figure (PNG). Studies:

- ``discrete-mle-vs-g``: h' = J tanh h; lambda_max vs g against the mean-field value and ln rho(J);
- ``continuous-mle-vs-g``: tau dh/dt = -h + J tanh h; lambda_max vs g from the onset, with a
  two-trajectory cross-check;
- ``size-scaling``: full spectra for several N at fixed g against i/N; D_KY/N, h_KS/N; the sum of the
  exponents against the mean divergence;
- ``rmt``: spectra near onset, in intense chaos and in discrete time beside the random-matrix
  approximations of :mod:`stosim.analysis.rate_theory`, and their point symmetry;
- ``input``: h_KS and D_KY against the strength of a frozen Ornstein-Uhlenbeck (or white) input;
- ``trained``: spectrum of a network before and after training J (BPTT) to generate a sine wave.
"""

from __future__ import annotations

import json
import math
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stosim.analysis.lyapunov import kaplan_yorke_dimension, ks_entropy, lyapunov_spectrum, two_trajectory_mle
from stosim.analysis.rate_theory import (
    annealed_product_spectrum,
    averaged_jacobian_spectrum,
    dmft_discrete_mle,
    ginibre_product_spectrum,
    linear_spectrum,
    point_symmetry,
)
from stosim.analysis.tangent_rate import RateNetworkTangent
from stosim.integrate.threads import single_threaded_blas

__all__ = ["STUDIES", "StudySpec", "load_study", "run_study", "spectrum_point", "trained_point", "block_summary"]

N_BLOCKS = 20


# ------------------------------------------------------------------------------------------------
# points (module-level functions: they run in Dask workers)
# ------------------------------------------------------------------------------------------------
def block_summary(result) -> dict[str, float]:
    """D_KY, h_KS and their standard errors from 20 consecutive blocks of a Lyapunov run.

    The running estimates lambda(t_r) times t_r are the cumulative log-stretchings; differences over
    a block divided by its duration give the block's spectrum, from which D_KY and h_KS are computed;
    the standard error is their spread over sqrt(number of blocks).
    """
    t = np.asarray(result.running_time)
    cum = np.asarray(result.running_estimates) * t[:, None]
    groups = np.array_split(np.arange(t.size), min(N_BLOCKS, t.size))
    dky, hks, sums = [], [], []
    prev_c, prev_t = np.zeros(cum.shape[1]), 0.0
    for g in groups:
        end = g[-1]
        lam = (cum[end] - prev_c) / (t[end] - prev_t)
        prev_c, prev_t = cum[end], t[end]
        dky.append(kaplan_yorke_dimension(lam))
        hks.append(ks_entropy(lam))
        sums.append(float(lam.sum()))
    k = len(groups)

    def se(v: list[float]) -> float:
        return float(np.std(v, ddof=1) / math.sqrt(k)) if k > 1 else float("nan")

    return {
        "kaplan_yorke_dimension": result.kaplan_yorke_dimension,
        "kaplan_yorke_dimension_se": se(dky),
        "ks_entropy": result.ks_entropy,
        "ks_entropy_se": se(hks),
        "sum_se": se(sums),
    }


def spectrum_point(
    *,
    n: int,
    g: float,
    time: str = "continuous",
    dt: float = 0.1,
    duration: float = 200.0,
    transient: float = 50.0,
    n_exponents: int | None = None,
    seed: int = 0,
    input_std: float = 0.0,
    input_tau: float = 0.0,
    reorthonormalize_every: int = 5,
    spectral_radius: bool = False,
    cross_check: bool = False,
    J: np.ndarray | None = None,
) -> dict[str, Any]:
    """Lyapunov spectrum (the leading ``n_exponents``, default all N) of one rate network and diagnostics.

    Returns exponents and standard errors (1/tau or 1/step), D_KY, h_KS with block standard errors,
    the mean divergence along the same orbit with its standard error, the per-unit mean of phi'(h)
    (for the averaged-Jacobian approximation), <phi'^2>, the point symmetry of a full spectrum,
    optionally ln rho(J) / max Re eig(J) - 1 and a two-trajectory MLE.
    """
    t0 = time_module()
    kw = {"g": g, "time": time, "dt": dt, "input_std": input_std, "input_tau": input_tau, "seed": seed}
    system = RateNetworkTangent(J=J, **kw) if J is not None else RateNetworkTangent(n=n, **kw)
    n = system.n
    k = n if n_exponents is None else int(n_exponents)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(7,)))
    x0 = system.initial_state(rng.standard_normal(n))
    steps, trans = round(duration / system.step_time), round(transient / system.step_time)
    reorth = 1 if time == "discrete" else reorthonormalize_every
    # record the divergence and phi'(h) at every step of the very orbit the exponents are computed on
    div_list: list[float] = []
    slope_sum, slope2 = np.zeros(n), [0.0]
    propagate = system.step_with_tangents

    def recording_step(x: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(div_list) >= trans:
            d = 1.0 - np.tanh(x[:n]) ** 2
            slope_sum[:] += d
            slope2[0] += float(np.mean(d * d))
        div_list.append(system.divergence(x))
        return propagate(x, q)

    system.step_with_tangents = recording_step  # type: ignore[method-assign]
    with single_threaded_blas():
        res = lyapunov_spectrum(system, x0, k, steps, transient_steps=trans, reorthonormalize_every=reorth, seed=seed)
        system.step_with_tangents = propagate  # type: ignore[method-assign]
        div = np.array(div_list[trans:])
        slope2 = slope2[0]
        out: dict[str, Any] = {}
        if spectral_radius:
            eig = np.linalg.eigvals(system.J)
            out["log_spectral_radius"] = float(np.log(np.abs(eig).max()))
            out["max_real_eig_minus_1"] = float(eig.real.max() - 1.0)
        if cross_check:
            out["two_trajectory_mle"] = two_trajectory_mle(
                system, x0, steps, transient_steps=trans, renormalize_every=reorth, seed=seed
            )
    blocks = np.array([b.mean() for b in np.array_split(div, N_BLOCKS)])
    out.update(
        {
            "n": n,
            "g": g,
            "time": time,
            "seed": seed,
            "input_std": input_std,
            "input_tau": input_tau,
            "exponents": res.exponents.tolist(),
            "standard_error": res.standard_error.tolist(),
            "mle": res.mle,
            "mle_se": float(res.standard_error[0]),
            "time_unit": res.time_unit,
            "sum": float(res.exponents.sum()),
            "divergence": float(div.mean()),
            "divergence_se": float(blocks.std(ddof=1) / math.sqrt(N_BLOCKS)),
            "mean_slope": (slope_sum / steps).tolist(),
            "mean_slope_squared": slope2 / steps,
            "duration": res.duration,
            "transient": res.transient,
            "full": k == n,
            **block_summary(res),
        }
    )
    if k == n:
        out["symmetry"] = point_symmetry(res.exponents)
    out["wall_s"] = time_module() - t0
    return out


def time_module() -> float:
    return time.perf_counter()


def trained_point(
    *,
    n: int = 64,
    g: float = 1.8,
    dt: float = 0.1,
    period: float = 10.0,
    horizon: float = 40.0,
    iterations: int = 300,
    lr: float = 3e-3,
    seed: int = 0,
    duration: float = 300.0,
    transient: float = 100.0,
) -> dict[str, Any]:
    """Train J and a readout w (BPTT through the RK4 steps, Adam) so that z = w . tanh(h(t)) follows
    sin(2 pi t / period) for t in (0, horizon] from a fixed h(0); full spectra before and after."""
    import torch

    t0 = time_module()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small products: one thread is ~25x faster than two on a loaded machine
    try:
        return _trained(n, g, dt, period, horizon, iterations, lr, seed, duration, transient, t0)
    finally:
        torch.set_num_threads(threads)


def _trained(
    n: int,
    g: float,
    dt: float,
    period: float,
    horizon: float,
    iterations: int,
    lr: float,
    seed: int,
    duration: float,
    transient: float,
    t0: float,
) -> dict[str, Any]:
    import torch

    from stosim.substrates.rate_network import RateNetwork

    torch.manual_seed(seed)
    sub = RateNetwork(n=n, g=g, dt=dt, duration=dt, seed=seed, trainable=True)
    before = spectrum_point(
        n=n, g=g, dt=dt, duration=duration, transient=transient, seed=seed, J=sub.J.detach().numpy().copy()
    )
    gen = torch.Generator().manual_seed(seed)
    h0 = torch.randn(1, n, dtype=torch.float64, generator=gen)
    w = torch.nn.Parameter(torch.randn(n, dtype=torch.float64, generator=gen) / math.sqrt(n))
    steps = round(horizon / dt)
    target = torch.sin(2 * math.pi * dt * torch.arange(1, steps + 1, dtype=torch.float64) / period)
    opt = torch.optim.Adam([sub.J, w], lr=lr)
    losses = []
    for _ in range(iterations):
        opt.zero_grad()
        h, zs = h0, []
        for _s in range(steps):
            h = sub.step(h)
            zs.append(torch.tanh(h[0]) @ w)
        loss = torch.mean((torch.stack(zs) - target) ** 2)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    after = spectrum_point(
        n=n, g=g, dt=dt, duration=duration, transient=transient, seed=seed, J=sub.J.detach().numpy().copy()
    )
    return {
        "before": before,
        "after": after,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "losses": losses,
        "wall_s": time_module() - t0,
    }


# ------------------------------------------------------------------------------------------------
# specs
# ------------------------------------------------------------------------------------------------
class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seeds: list[int] = Field(default=[0], min_length=1)
    dt: float = Field(default=0.1, gt=0, le=0.5, description="RK4 step in tau, (0, 0.5]")
    duration: float = Field(default=200.0, gt=0, description="averaging time (tau or steps)")
    transient: float = Field(default=50.0, ge=0, description="discarded time (tau or steps)")


class MLEvsGParams(_Params):
    n: int = Field(default=1000, ge=2, le=20_000)
    g: list[float] = Field(min_length=1)
    cross_check_g: list[float] = Field(default=[], description="g values with a two-trajectory cross-check")


class SizeParams(_Params):
    n: list[int] = Field(min_length=1)
    g: float = Field(default=3.0, gt=0, le=100)
    time: Literal["continuous", "discrete"] = "continuous"


class RMTParams(_Params):
    n: int = Field(default=200, ge=2, le=20_000)
    onset_g: float = Field(default=1.2, gt=1, le=100)
    intense_g: float = Field(default=8.0, gt=1, le=100)
    intense_dt: float = Field(default=0.05, gt=0, le=0.5)
    discrete_g: float = Field(default=3.0, gt=0, le=100)
    discrete_duration: float = Field(default=1000.0, gt=0)


class InputParams(_Params):
    n: int = Field(default=100, ge=2, le=20_000)
    g: float = Field(default=3.0, gt=0, le=100)
    input_std: list[float] = Field(min_length=1)
    input_tau: float = Field(default=1.0, ge=0, description="correlation time in tau (0: white)")


class TrainedParams(_Params):
    n: int = Field(default=64, ge=2, le=2000)
    g: float = Field(default=1.8, gt=0, le=100)
    period: float = Field(default=10.0, gt=0)
    horizon: float = Field(default=40.0, gt=0)
    iterations: int = Field(default=300, ge=1, le=100_000)
    lr: float = Field(default=3e-3, gt=0, le=1)


_PARAMS: dict[str, type[_Params]] = {
    "discrete-mle-vs-g": MLEvsGParams,
    "continuous-mle-vs-g": MLEvsGParams,
    "size-scaling": SizeParams,
    "rmt": RMTParams,
    "input": InputParams,
    "trained": TrainedParams,
}
STUDIES = tuple(_PARAMS)


class StudySpec(BaseModel):
    """A study spec: ``study`` and its parameters at the ``reduced`` and ``full`` scales."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    study: Literal["discrete-mle-vs-g", "continuous-mle-vs-g", "size-scaling", "rmt", "input", "trained"]
    description: str = ""
    reduced: dict[str, Any]
    full: dict[str, Any] = Field(default_factory=dict)

    def parameters(self, scale: str) -> _Params:
        if scale not in ("reduced", "full"):
            raise ValueError(f"scale = {scale!r}; valid: reduced, full")
        values = getattr(self, scale)
        if not values:
            raise ValueError(f"the spec has no [{scale}] table")
        try:
            return _PARAMS[self.study](**values)
        except ValidationError as exc:
            lines = [
                f"[{scale}] {'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})"
                for e in exc.errors()
            ]
            raise ValueError("; ".join(lines)) from None


def load_study(path: str | Path) -> StudySpec:
    """Read and validate a study spec (both scales); ``ValueError`` naming the key otherwise."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: cannot read ({exc})") from None
    try:
        spec = StudySpec(**raw)
    except ValidationError as exc:
        lines = [
            f"{path}: {'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors()
        ]
        raise ValueError("\n".join(lines)) from None
    for scale in ("reduced", "full"):
        if getattr(spec, scale):
            spec.parameters(scale)
    return spec


# ------------------------------------------------------------------------------------------------
# studies: points -> summary
# ------------------------------------------------------------------------------------------------
Mapper = Callable[[Callable[..., Any], Sequence[dict[str, Any]]], list[Any]]


def _serial_map(func: Callable[..., Any], kwargs: Sequence[dict[str, Any]]) -> list[Any]:
    return [func(**kw) for kw in kwargs]


def _mle_vs_g(p: MLEvsGParams, mapper: Mapper, discrete: bool) -> dict[str, Any]:
    time_kind = "discrete" if discrete else "continuous"
    points = [
        {
            "n": p.n,
            "g": g,
            "time": time_kind,
            "dt": p.dt,
            "duration": p.duration,
            "transient": p.transient,
            "n_exponents": 1,
            "seed": s,
            "spectral_radius": g < 1.0,
            "cross_check": g in p.cross_check_g,
        }
        for g in p.g
        for s in p.seeds
    ]
    results = mapper(spectrum_point, points)
    rows = []
    for g in p.g:
        rs = [r for r in results if r["g"] == g]
        mle = np.array([r["mle"] for r in rs])
        row = {
            "g": g,
            "mle": float(mle.mean()),
            "mle_se": float(math.sqrt(np.mean([r["mle_se"] ** 2 for r in rs]) / len(rs))),
            "mle_seed_std": float(mle.std(ddof=1)) if len(rs) > 1 else float("nan"),
            "seeds": len(rs),
        }
        if discrete:
            row["dmft"] = dmft_discrete_mle(g)
            row["relative_deviation"] = (row["mle"] - row["dmft"]) / abs(row["dmft"])
        if g < 1.0:
            key = "log_spectral_radius" if discrete else "max_real_eig_minus_1"
            row["fixed_point_prediction"] = float(np.mean([r[key] for r in rs]))
            row["fixed_point_deviation"] = row["mle"] - row["fixed_point_prediction"]
        cc = [r["two_trajectory_mle"] for r in rs if "two_trajectory_mle" in r]
        if cc:
            row["two_trajectory_mle"] = float(np.mean(cc))
        rows.append(row)
    summary: dict[str, Any] = {"rows": rows, "n": p.n, "time_unit": results[0]["time_unit"]}
    if discrete:
        chaotic = [r for r in rows if r["g"] >= 2.0]
        summary["max_abs_relative_deviation_g_ge_2"] = (
            max(abs(r["relative_deviation"]) for r in chaotic) if chaotic else float("nan")
        )
    return summary


def _per_unit(rs: list[dict[str, Any]], key: str, n: int) -> tuple[float, float]:
    """Seed mean of ``key`` / N and its standard error (block standard errors combined over seeds) / N."""
    mean = float(np.mean([r[key] for r in rs]))
    se = float(math.sqrt(np.mean([r[key + "_se"] ** 2 for r in rs]) / len(rs)))
    return mean / n, se / n


def _seed_sd(rs: list[dict[str, Any]], key: str, n: int) -> float:
    """Sample standard deviation of ``key`` / N over the seeds (independent networks); NaN for one seed."""
    v = [r[key] / n for r in rs]
    return float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")


def _size_scaling(p: SizeParams, mapper: Mapper) -> dict[str, Any]:
    points = [
        {"n": n, "g": p.g, "time": p.time, "dt": p.dt, "duration": p.duration, "transient": p.transient, "seed": s}
        for n in p.n
        for s in p.seeds
    ]
    results = mapper(spectrum_point, points)
    x = np.linspace(0.02, 0.98, 49)
    curves, rows = {}, []
    for n in p.n:
        rs = [r for r in results if r["n"] == n]
        lam = np.mean([r["exponents"] for r in rs], axis=0)
        curves[n] = np.interp(x, (np.arange(1, n + 1) - 0.5) / n, lam)
        dky, dky_se = _per_unit(rs, "kaplan_yorke_dimension", n)
        hks, hks_se = _per_unit(rs, "ks_entropy", n)
        rows.append(
            {
                "n": n,
                "seeds": len(rs),
                "mle": float(lam[0]),
                "dky_over_n": dky,
                "dky_over_n_se": dky_se,
                "hks_over_n": hks,
                "hks_over_n_se": hks_se,
                "sum": float(np.mean([r["sum"] for r in rs])),
                "divergence": float(np.mean([r["divergence"] for r in rs])),
                "sum_minus_divergence": float(np.mean([r["sum"] - r["divergence"] for r in rs])),
                "divergence_se": float(np.mean([r["divergence_se"] for r in rs])),
                "sum_se": float(np.mean([r["sum_se"] for r in rs])),
                "symmetry_relative": float(np.mean([r["symmetry"]["relative"] for r in rs])),
                # seed-to-seed spread (sample standard deviation over networks), NaN for one seed
                "dky_over_n_seed_sd": _seed_sd(rs, "kaplan_yorke_dimension", n),
                "hks_over_n_seed_sd": _seed_sd(rs, "ks_entropy", n),
                "wall_s": float(sum(r["wall_s"] for r in rs)),
            }
        )
    ref = curves[max(p.n)]
    for row in rows:
        dev = curves[row["n"]] - ref
        row["collapse_max_abs_vs_largest_n"] = float(np.max(np.abs(dev)))
        row["collapse_rms_vs_largest_n"] = float(np.sqrt(np.mean(dev**2)))
    return {
        "rows": rows,
        "g": p.g,
        "time": p.time,
        "time_unit": results[0]["time_unit"],
        "spectra": {str(r["n"]) + ":" + str(r["seed"]): r["exponents"] for r in results},
    }


def _rmt(p: RMTParams, mapper: Mapper) -> dict[str, Any]:
    s = p.seeds[0]
    points = [
        {"n": p.n, "g": p.onset_g, "dt": p.dt, "duration": p.duration, "transient": p.transient, "seed": s},
        {"n": p.n, "g": p.intense_g, "dt": p.intense_dt, "duration": p.duration, "transient": p.transient, "seed": s},
        {
            "n": p.n,
            "g": p.discrete_g,
            "time": "discrete",
            "duration": p.discrete_duration,
            "transient": p.transient,
            "seed": s,
        },
    ]
    onset, intense, disc = mapper(spectrum_point, points)
    out: dict[str, Any] = {"n": p.n}
    # near onset: time-averaged Jacobian -1 + J diag(<phi'>)
    sys = RateNetworkTangent(n=p.n, g=p.onset_g, dt=p.dt, seed=s)
    approx = averaged_jacobian_spectrum(sys.J, np.array(onset["mean_slope"]))
    # intense chaos: the same averaged Jacobian (most units saturated, <phi'> small), and, for comparison,
    # equally spaced exponents anchored at the measured mean and lambda_1 (one-parameter shape test)
    sys_i = RateNetworkTangent(n=p.n, g=p.intense_g, dt=p.intense_dt, seed=s)
    approx_i = averaged_jacobian_spectrum(sys_i.J, np.array(intense["mean_slope"]))
    lam_i = np.array(intense["exponents"])
    lin = linear_spectrum(p.n, float(lam_i.mean()), float(lam_i[0]))
    # discrete time: Ginibre products (analytic) and annealed products J_s D_s (numerical)
    gin = ginibre_product_spectrum(p.n, p.discrete_g)
    ann = annealed_product_spectrum(p.n, p.discrete_g, n_steps=int(min(p.discrete_duration, 400)), seed=s)
    for name, point, model in (
        ("onset", onset, approx),
        ("intense", intense, approx_i),
        ("intense_linear", intense, lin),
        ("discrete_ginibre", disc, gin),
        ("discrete_annealed", disc, ann),
    ):
        lam = np.array(point["exponents"])
        width = float(lam[0] - lam[-1])
        out[name] = {
            "g": point["g"],
            "time": point["time"],
            "measured": lam.tolist(),
            "approximation": model.tolist(),
            "rms_difference": float(np.sqrt(np.mean((lam - model) ** 2))),
            "rms_relative_to_width": float(np.sqrt(np.mean((lam - model) ** 2)) / width),
            "mle": float(lam[0]),
            "mle_approximation": float(model[0]),
            "symmetry": point["symmetry"],
            "sum": point["sum"],
            "sum_se": point["sum_se"],
            "divergence": point["divergence"],
            "divergence_se": point["divergence_se"],
        }
    return out


def _input(p: InputParams, mapper: Mapper) -> dict[str, Any]:
    points = [
        {
            "n": p.n,
            "g": p.g,
            "dt": p.dt,
            "duration": p.duration,
            "transient": p.transient,
            "seed": s,
            "input_std": sd,
            "input_tau": p.input_tau,
        }
        for sd in p.input_std
        for s in p.seeds
    ]
    results = mapper(spectrum_point, points)
    rows = []
    for sd in p.input_std:
        rs = [r for r in results if r["input_std"] == sd]
        rows.append(
            {
                "input_std": sd,
                "mle": float(np.mean([r["mle"] for r in rs])),
                "ks_entropy": float(np.mean([r["ks_entropy"] for r in rs])),
                "ks_entropy_se": float(math.sqrt(np.mean([r["ks_entropy_se"] ** 2 for r in rs]) / len(rs))),
                "kaplan_yorke_dimension": float(np.mean([r["kaplan_yorke_dimension"] for r in rs])),
                "kaplan_yorke_dimension_se": float(
                    math.sqrt(np.mean([r["kaplan_yorke_dimension_se"] ** 2 for r in rs]) / len(rs))
                ),
            }
        )
    return {"rows": rows, "n": p.n, "g": p.g, "input_tau": p.input_tau}


def _trained_study(p: TrainedParams, mapper: Mapper) -> dict[str, Any]:
    points = [
        {
            "n": p.n,
            "g": p.g,
            "dt": p.dt,
            "period": p.period,
            "horizon": p.horizon,
            "iterations": p.iterations,
            "lr": p.lr,
            "seed": s,
            "duration": p.duration,
            "transient": p.transient,
        }
        for s in p.seeds
    ]
    results = mapper(trained_point, points)
    rows = []
    for r in results:
        b, a = r["before"], r["after"]
        rows.append(
            {
                "seed": b["seed"],
                "loss_first": r["loss_first"],
                "loss_last": r["loss_last"],
                "mle_before": b["mle"],
                "mle_before_se": b["mle_se"],
                "mle_after": a["mle"],
                "mle_after_se": a["mle_se"],
                "dky_before": b["kaplan_yorke_dimension"],
                "dky_after": a["kaplan_yorke_dimension"],
                "hks_before": b["ks_entropy"],
                "hks_after": a["ks_entropy"],
                "exponents_before": b["exponents"],
                "exponents_after": a["exponents"],
                "second_exponent_after": a["exponents"][1],
            }
        )
    return {"rows": rows, "n": p.n, "g": p.g}


def run_study(spec: StudySpec, scale: str = "reduced", mapper: Mapper | None = None) -> dict[str, Any]:
    """Run ``spec`` at ``scale`` with ``mapper`` (default: serially in this process); the summary dict."""
    params = spec.parameters(scale)
    mapper = mapper or _serial_map
    t0 = time_module()
    run = {
        "discrete-mle-vs-g": lambda: _mle_vs_g(params, mapper, True),
        "continuous-mle-vs-g": lambda: _mle_vs_g(params, mapper, False),
        "size-scaling": lambda: _size_scaling(params, mapper),
        "rmt": lambda: _rmt(params, mapper),
        "input": lambda: _input(params, mapper),
        "trained": lambda: _trained_study(params, mapper),
    }[spec.study]
    summary = run()
    summary.update(
        {"study": spec.study, "scale": scale, "parameters": params.model_dump(), "wall_time_s": time_module() - t0}
    )
    return summary


def dask_mapper(client) -> Mapper:
    """A mapper that runs the points as Dask tasks on ``client`` (results in input order)."""

    def mapper(func: Callable[..., Any], kwargs: Sequence[dict[str, Any]]) -> list[Any]:
        futures = [client.submit(func, pure=False, **kw) for kw in kwargs]
        return client.gather(futures)

    return mapper


def write_summary(summary: dict[str, Any], out: Path) -> Path:
    """``out``/summary.json (atomic)."""
    from stosim.storage import write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    path = out / "summary.json"

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, np.generic):
            return clean(v.item())
        return v

    write_text_atomic(json.dumps(clean(summary), indent=1), path)
    return path
