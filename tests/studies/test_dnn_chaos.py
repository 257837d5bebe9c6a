"""FTMLE of conventional networks (toy tasks, init tables) and the `stosim dnn` command."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_MNIST
from torch import nn

from stosim.analysis.ftmle import model_ftmle
from stosim.cli import main
from stosim.studies.dnn_chaos import (
    ConvAutoencoder,
    DNNSpecError,
    boundary_statistics,
    ftmle_layers,
    init_weights_,
    layer_ftmle,
    layer_statistics,
    load_dnn_spec,
    mnist_cnn,
    toy_mlp,
)
from stosim.studies.toy_tasks import TASKS, grid_points, make_task

MNIST_DIR = Path(os.environ.get("STOSIM_MNIST_DIR", SHARED_MNIST))  # the shared data folder unless overridden
needs_mnist = pytest.mark.skipif(
    not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason=f"MNIST IDX files not found in {MNIST_DIR} (the shared data folder; set STOSIM_MNIST_DIR to another)",
)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Small products run far faster on one thread on a loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _symmetric_with_singular_values(s: np.ndarray, seed: int) -> torch.Tensor:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(s.size, s.size)))
    return torch.as_tensor(q @ np.diag(s) @ q.T)


@pytest.mark.parametrize("method,dim,tol", [("exact", 6, 1e-13), ("lanczos", 90, 1e-11), ("power", 90, 1e-9)])
def test_ftmle_of_linear_map_is_log_of_largest_singular_value(method, dim, tol):
    """A = Q diag(s) Q^T (s > 0 known): one layer gives ln s_max; L copies give ln(s_max^L) / L = ln s_max.
    The power method is held to a looser bound: its eigenvalue error is ~ tol_stop * theta."""
    s = np.linspace(0.2, 1.0, dim) * np.r_[np.ones(dim - 1), 3.0]  # s_max = 3, next 0.99: a clear gap
    a = _symmetric_with_singular_values(s, 1)
    layer = nn.Linear(dim, dim, bias=True, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(a)
    x = torch.randn(4, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    res = model_ftmle([layer, layer, layer], x, method=method, tol=1e-12, max_iter=500)
    for r in (*res.layers, res.total):
        assert np.all(np.abs(r.ftmle - math.log(3.0)) <= tol), (method, r.ftmle - math.log(3.0))
    assert res.total.time == 3.0


def test_lanczos_matches_svd_of_full_jacobian_of_small_mlp():
    """A 2-hidden-layer tanh MLP of width 80 (> 64, so 'auto' takes Lanczos): the matrix-free top singular
    value agrees with torch.linalg.svdvals of the full Jacobian (torch.autograd.functional.jacobian) to a relative 1e-8
    (Lanczos, tol 1e-10) and 1e-5 (power iteration, tol 1e-10, slower on close singular values)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(80, 80), nn.Tanh(), nn.Linear(80, 80), nn.Tanh()).double()
    x = torch.randn(3, 80, dtype=torch.float64)
    jac = torch.stack([torch.autograd.functional.jacobian(net, xb) for xb in x])
    expected = torch.linalg.svdvals(jac)[:, 0].numpy()
    for method, rel in (("lanczos", 1e-8), ("power", 1e-5)):
        res = model_ftmle([net], x, method=method, tol=1e-10, max_iter=400)
        assert res.total.method == method
        np.testing.assert_allclose(res.total.sigma_max, expected, rtol=rel)
    auto = model_ftmle([net], x, tol=1e-10)
    assert auto.total.method == "lanczos" and auto.total.all_converged


@pytest.mark.parametrize("task", list(TASKS))
def test_toy_tasks_are_seeded_and_balanced(task):
    n_classes = TASKS[task][0]
    x, y = make_task(task, 2001, seed=3)
    x2, y2 = make_task(task, 2001, seed=3)
    x3, _ = make_task(task, 2001, seed=4)
    assert x.shape == (2001, 2) and x.dtype == np.float64 and y.dtype == np.int64
    assert np.array_equal(x, x2) and np.array_equal(y, y2) and not np.array_equal(x, x3)
    counts = np.bincount(y, minlength=n_classes)
    assert counts.size == n_classes and counts.max() - counts.min() <= 1 and counts.sum() == 2001
    assert np.all(np.abs(x) < 2.5)


def test_toy_task_geometry_and_bad_arguments():
    x, y = make_task("circles", 400, seed=0, noise_scale=0.0)
    r = np.linalg.norm(x, axis=1)
    np.testing.assert_allclose(r[y == 0], 0.5, atol=1e-12)
    np.testing.assert_allclose(r[y == 1], 1.0, atol=1e-12)
    for kwargs, name in (
        ({"name": "swirl"}, "task"),
        ({"name": "blobs", "n": 3}, "n"),
        ({"name": "moons", "seed": -1}, "seed"),
        ({"name": "moons", "noise_scale": -1.0}, "noise_scale"),
    ):
        with pytest.raises(ValueError, match=name):
            make_task(**{"n": 100, **kwargs})
    xs, ys, pts = grid_points(5, 1.0)
    assert pts.shape == (25, 2) and pts[7].tolist() == [xs[2], ys[1]]


def test_boundary_statistics_on_a_known_map():
    """Two half-planes, FTMLE = -distance to the boundary: near > far and Spearman = -1."""
    n = 40
    pred = np.zeros((n, n), dtype=int)
    pred[:, n // 2 :] = 1
    col = np.arange(n)
    dist = np.minimum(np.abs(col - (n // 2 - 1)), np.abs(col - n // 2))
    ftmle = -np.tile(dist, (n, 1)).astype(float)
    st = boundary_statistics(pred, ftmle, band=2)
    assert st["near_mean"] > st["far_mean"] and st["spearman_vs_distance"] == pytest.approx(-1.0)
    assert math.isnan(boundary_statistics(np.zeros((5, 5), dtype=int), np.zeros((5, 5)), 1)["near_mean"])


def test_layers_and_inits_of_the_study_models():
    mlp = toy_mlp(3, depth=5, hidden=16, seed=0)
    assert [n for n, _ in ftmle_layers(mlp)] == ["hidden1", "hidden2", "hidden3", "hidden4", "hidden5", "readout"]
    assert [n for n, _ in ftmle_layers(mnist_cnn(0))] == ["conv1", "pool1", "conv2", "pool2", "fc", "readout"]
    ae = ConvAutoencoder()
    assert [n for n, _ in ftmle_layers(ae)] == ["encoder", "decoder"]
    assert ae.encoder(torch.zeros(1, 1, 28, 28)).numel() == 784
    assert ae(torch.zeros(2, 1, 28, 28)).shape == (2, 1, 28, 28)
    init_weights_(mlp, "xavier", 1)
    lin = mlp.net[2]
    bound = math.sqrt(6 / (16 + 16))
    assert torch.all(lin.bias == 0) and lin.weight.abs().max() <= bound
    init_weights_(mlp, "default", 1)
    assert lin.weight.abs().max() <= 1 / math.sqrt(16) and bool((lin.bias != 0).any())
    with pytest.raises(ValueError, match="scheme"):
        init_weights_(mlp, "orthogonal", 1)


def test_layer_ftmle_of_the_cnn_matches_the_exact_jacobian():
    """The CNN's conv layer (784 -> 6272, Lanczos) against the SVD of its full Jacobian; max-pools give 0."""
    model = mnist_cnn(0).double().eval()
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    res = model_ftmle([model.conv1, model.pool1], x, tol=1e-10)
    assert res.layers[0].method == "lanczos" and res.layers[0].all_converged

    def conv(z: torch.Tensor) -> torch.Tensor:
        return model.conv1(z.reshape(1, 1, 28, 28)).flatten()

    for b in range(2):
        jac = torch.autograd.functional.jacobian(conv, x[b].flatten())
        assert res.layers[0].ftmle[b] == pytest.approx(math.log(float(torch.linalg.svdvals(jac)[0])), abs=1e-8)
    np.testing.assert_allclose(res.layers[1].ftmle, 0.0, atol=1e-12)
    values = layer_ftmle(toy_mlp(2, depth=2, hidden=8), torch.rand(6, 2, dtype=torch.float64))
    assert bool(values["_converged"].all())
    st = layer_statistics(values)
    assert set(st) == {"overall", "hidden1", "hidden2", "readout"}
    assert st["overall"]["max"] >= st["overall"]["mean"] and st["readout"]["std"] <= 1e-12  # linear: constant J


def _toy_spec(tmp_path, **extra):
    spec = tmp_path / "toy.toml"
    body = {
        "study": "toy-ftmle",
        "tasks": ["moons"],
        "n_train": 60,
        "n_test": 20,
        "depth": 2,
        "hidden": 8,
        "epochs": 2,
        "grid": 8,
        **extra,
    }
    spec.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in body.items()) + "\n")
    return spec


def test_spec_errors_name_the_key(tmp_path):
    with pytest.raises(DNNSpecError, match="epochz"):
        load_dnn_spec(_toy_spec(tmp_path, epochz=3))
    bad = tmp_path / "bad.toml"
    bad.write_text('study = "resnet"\n')
    with pytest.raises(DNNSpecError, match="study"):
        load_dnn_spec(bad)
    spec = load_dnn_spec(_toy_spec(tmp_path), scale="study")
    assert spec.epochs == 500 and spec.grid == 95 and spec.n_train == 2000


def test_cli_dnn_toy_smoke(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["dnn", str(_toy_spec(tmp_path)), "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["study"] == "toy-ftmle"
    res = json.loads((out / "results.json").read_text())
    st = res["tasks"]["moons"]["statistics"]
    assert set(st) == {"overall", "hidden1", "hidden2", "readout"}
    assert (out / "dnn_toy_moons.png").stat().st_size > 0 and (out / "results.md").exists()
    assert main(["validate", str(_toy_spec(tmp_path))]) == 0
    assert "dnn study" in capsys.readouterr().out


@needs_mnist
def test_cli_dnn_mnist_studies_smoke(tmp_path, capsys):
    table = tmp_path / "table.toml"
    table.write_text(
        f'study = "init-table"\nmodels = ["mnist-ae", "mnist-mlp"]\ndata_dir = "{MNIST_DIR}"\n'
        "n_train = 40\nepochs = 1\nn_ftmle = 2\nmlp_depth = 2\nmlp_hidden = 16\n"
    )
    assert main(["dnn", str(table), "--out", str(tmp_path / "t")]) == 0
    res = json.loads((tmp_path / "t" / "results.json").read_text())["models"]
    assert set(res["mnist-ae"]["trained"]) >= {"overall", "encoder", "decoder"}
    assert set(res["mnist-mlp"]) >= {"trained", "default", "xavier"}
    ci = tmp_path / "ci.toml"
    ci.write_text(
        f'study = "chaotic-init"\ndata_dir = "{MNIST_DIR}"\nrhos = [0.5, 2.0]\nhidden = 16\n'
        "n_train = 40\nn_test = 20\nepochs = 2\ntrack_rhos = [2.0]\n"
    )
    assert main(["dnn", str(ci), "--out", str(tmp_path / "c")]) == 0
    runs = json.loads((tmp_path / "c" / "results.json").read_text())["runs"]
    assert len(runs["2.0"]["rho"]) == 3 and len(runs["2.0"]["rho"][0]) == 3
    assert runs["2.0"]["rho"][0][0] == pytest.approx(2.0, rel=1e-6)  # float32 weights
    for name in ("dnn_chaotic_test_loss.png", "dnn_chaotic_convergence.png", "dnn_chaotic_rho_tracks.png"):
        assert (tmp_path / "c" / name).exists()


def test_cli_dnn_refuses_bad_flags(tmp_path, capsys):
    assert main(["dnn", str(_toy_spec(tmp_path)), "--out", str(tmp_path / "o"), "--data-dir", "x"]) == 2
    assert "--data-dir" in capsys.readouterr().err


@pytest.mark.slow
def test_trained_toy_mlp_expands_near_the_decision_boundary(tmp_path):
    """The study's A.2 claim on two spirals: the whole-model FTMLE is higher within 2 grid cells of the
    decision boundary than farther away (measured: 0.67 vs -0.07 1/layer at 150 epochs)."""
    spec = _toy_spec(tmp_path, tasks=["spirals"], n_train=2000, depth=5, hidden=64, epochs=150, grid=60)
    assert main(["dnn", str(spec), "--out", str(tmp_path / "o")]) == 0
    res = json.loads((tmp_path / "o" / "results.json").read_text())["tasks"]["spirals"]
    assert res["test_accuracy"] > 0.95
    assert res["boundary"]["near_mean"] > res["boundary"]["far_mean"] + 0.3
    assert res["boundary"]["spearman_vs_distance"] < -0.3
