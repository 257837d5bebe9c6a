"""Models, ridge readout, training with checkpoints and exact resume, and `stosim train`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

from stosim.cli import main
from stosim.datasets import load_dataset
from stosim.ridge import RidgeAccumulator
from stosim.studies.training import ConfigError, TrainConfig, build_model, load_train_config, train

SMALL = dict(dataset="digits", limit_train=200, limit_test=100, batch_size=50, n=8, duration="20 ps", dt="1 ps")


def test_ridge_readout_equals_scikit_learn():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 12))
    labels = rng.integers(0, 4, 300)
    acc = RidgeAccumulator(12, 4)
    for i in range(0, 300, 64):  # streamed in batches
        acc.update(x[i : i + 64], labels[i : i + 64])
    w, b = acc.solve(alpha=0.7)
    ref = Ridge(alpha=0.7, fit_intercept=True).fit(x, np.eye(4)[labels])
    np.testing.assert_allclose(w, ref.coef_.T, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b, ref.intercept_, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="alpha"):
        acc.solve(0.0)
    w0, b0 = acc.solve(alpha=0.7, fit_intercept=False)  # for bias-free readouts (FFESN)
    ref0 = Ridge(alpha=0.7, fit_intercept=False).fit(x, np.eye(4)[labels])
    np.testing.assert_allclose(w0, ref0.coef_.T, rtol=1e-10, atol=1e-12)
    assert not b0.any()


@pytest.mark.parametrize("substrate", ["sto", "ffesn", "lorenz96", "linear", "mlp", "cnn", "cnn-sto", "deep-sto"])
def test_every_model_trains_above_chance(substrate):
    extra = {"ffesn": dict(n=40, duration=None, dt=None), "lorenz96": dict(n=40, duration=0.1, dt=0.01)}
    cfg = TrainConfig(**{**SMALL, **extra.get(substrate, {}), "substrate": substrate, "epochs": 3, "lr": 0.03})
    result = train(cfg)
    assert result.epochs == 3 and len(result.history) == 3
    assert result.best_test_accuracy > 0.4  # chance is 0.1
    logits = result.model(torch.zeros(3, 64, dtype=torch.float64))
    assert logits.shape == (3, 10)


@pytest.mark.parametrize("batch_size", [50, 300, 700])
def test_reported_accuracy_counts_every_test_image(batch_size):
    # the evaluation chunks must tile the test set for any batch size (also one above the 256-image chunk)
    cfg = TrainConfig(
        dataset="digits",
        substrate="mlp",
        n=10,
        limit_train=600,
        limit_test=797,
        batch_size=batch_size,
        epochs=10,
        lr=0.05,
    )
    result = train(cfg)
    _, test_ds = load_dataset("digits", None, False, seed=0, limit_train=600, limit_test=797)
    x = torch.as_tensor(test_ds.flat(), dtype=torch.float64)
    y = torch.as_tensor(test_ds.labels)
    with torch.no_grad():
        direct = float((result.model(x).argmax(1) == y).double().mean())
    assert result.test_accuracy == pytest.approx(direct, abs=1e-12)
    assert result.test_accuracy > 0.5


def test_model_hidden_sizes_are_equal():
    cfg = TrainConfig(substrate="mlp", n=30)
    mlp = build_model(cfg, 64, 10, (8, 8))
    sto = build_model(TrainConfig(substrate="sto", n=30), 64, 10, (8, 8))
    assert mlp.net[0].out_features == sto.readout.in_features == 90


def _strict_json(path) -> dict:
    """``path`` parsed as standard JSON (NaN / Infinity are not JSON and fail here)."""

    def refuse(constant: str):
        raise ValueError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_readout_only_ridge_training_for_a_fixed_reservoir(tmp_path):
    cfg = TrainConfig(**{**SMALL, "n": 30, "readout_only": True, "epochs": 5})
    result = train(cfg, tmp_path / "run")
    assert result.epochs == 1  # exact after one pass
    assert result.test_accuracy > 0.6
    assert _strict_json(tmp_path / "run" / "metrics.json")["history"][0]["train_loss"] is None
    # resuming a finished ridge run fits nothing again
    resumed = train(cfg, tmp_path / "run", resume=True)
    assert [h["epoch"] for h in resumed.history] == [1]
    assert torch.equal(resumed.model.readout.weight, result.model.readout.weight)


def test_readout_only_for_a_bias_free_readout():
    # the FFESN's readout has no bias (y = W_out x_K): the ridge fit has no intercept either
    cfg = TrainConfig(**{**SMALL, "substrate": "ffesn", "n": 60, "duration": None, "dt": None, "readout_only": True})
    result = train(cfg)
    assert result.model.readout.bias is None
    assert result.test_accuracy > 0.5


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _interrupt_at_batch(n: int):
    """An ``on_batch`` callback that raises KeyboardInterrupt at the n-th training batch (a crash)."""
    calls: list[int] = []

    def interrupt(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) == n:
            raise KeyboardInterrupt

    return interrupt


def test_resume_after_interruption_gives_the_same_weights(tmp_path):
    cfg = TrainConfig(**{**SMALL, "epochs": 3, "temperature": 300.0})  # noisy: noise streams must resume too
    full = _weights(train(cfg, tmp_path / "full").model)

    # stopped after epoch 2 (a crash), then resumed
    train(TrainConfig(**{**SMALL, "epochs": 2, "temperature": 300.0}), tmp_path / "a")
    resumed = _weights(train(cfg, tmp_path / "a", resume=True).model)
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k

    # interrupted in the middle of epoch 3 (4 batches per epoch): the checkpoint of epoch 2 survives
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "b", on_batch=_interrupt_at_batch(10))
    metrics_missing = not (tmp_path / "b" / "metrics.json").exists()
    assert metrics_missing
    again = _weights(train(cfg, tmp_path / "b", resume=True).model)
    for k in full:
        assert torch.equal(full[k], again[k]), k
    history = json.loads((tmp_path / "b" / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]

    with pytest.raises(ConfigError, match="different configuration"):
        train(TrainConfig(**{**SMALL, "epochs": 4, "lr": 0.5}), tmp_path / "b", resume=True)
    with pytest.raises(ConfigError, match="epochs = 2.*already trained 3 epochs"):
        train(TrainConfig(**{**SMALL, "epochs": 2, "temperature": 300.0}), tmp_path / "b", resume=True)


def test_config_validation_names_the_key(tmp_path):
    with pytest.raises(Exception, match="coupling"):
        TrainConfig(coupling="500 mA")
    bad = tmp_path / "bad.toml"
    bad.write_text('substrate = "sto"\ncouplingg = "500 Oe"\n')
    with pytest.raises(ConfigError, match="couplingg"):
        load_train_config(bad)
    bad.write_text('substrate = "sto"\nepochs = 0\n')
    with pytest.raises(ConfigError, match="epochs"):
        load_train_config(bad)
    # a plain number where a unit is needed (300 would be 300 s for the STOs); Lorenz 96 time is plain
    for text, match in (
        ('substrate = "sto"\nduration = 300\n', r'duration = 300 has no unit.*"300 ps"'),
        ('substrate = "deep-sto"\ndt = 1e-12\n', r"dt = 1e-12 has no unit"),
        ('substrate = "sto"\ncoupling = 500\n', r'coupling = 500 has no unit.*"500 Oe"'),
        ('substrate = "lorenz96"\ntemperature = 0\n', r"temperature = 0 has no unit"),
    ):
        bad.write_text(text)
        with pytest.raises(ConfigError, match=match):
            load_train_config(bad)
    good = tmp_path / "l96.toml"
    good.write_text('substrate = "lorenz96"\nduration = 1.0\ndt = 0.01\n')
    assert load_train_config(good).duration == 1.0


def test_cli_train_writes_metrics_curve_and_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        "--substrate",
        "sto",
        "--dataset",
        "digits",
        "--limit-train",
        "150",
        "--limit-test",
        "60",
        "--n",
        "6",
        "--duration",
        "10 ps",
        "--epochs",
        "2",
        "--batch-size",
        "50",
        "--out",
        str(out),
        "--json",
    ]
    assert main(args) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("test_accuracy", "best_test_accuracy", "epochs", "wall_time_s"):
        assert key in line
    assert line["epochs"] == 2
    assert (out / "metrics.json").exists() and (out / "checkpoint.pt").exists()
    assert (out / "learning_curve.png").stat().st_size > 5000
    assert main(args) == 2  # an existing checkpoint needs --resume
    assert "--resume" in capsys.readouterr().err
    assert main([*args[:-3], "--epochs", "3", "--out", str(out), "--resume", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["epochs"] == 3


def test_cli_train_with_config_file(tmp_path, capsys):
    cfg = tmp_path / "exp.toml"
    cfg.write_text(
        'substrate = "ffesn"\ndataset = "digits"\nn = 30\nspectral_radius = 0.9\nsteps = 3\n'
        "epochs = 1\nlimit_train = 100\nlimit_test = 50\n"
    )
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "o"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["substrate"] == "ffesn"
    assert main(["train", "--config", str(cfg), "--lr", "-1", "--out", str(tmp_path / "p")]) == 2
    assert "lr" in capsys.readouterr().err


def test_weight_decay_is_decoupled_for_adam_and_l2_for_sgd():
    from stosim.studies.training import _optimizer

    w0 = torch.tensor([2.0, -1.0], dtype=torch.float64)
    for optimizer, expected in (
        # AdamW with a zero gradient: w <- w (1 - lr wd); the Adam step itself is 0
        ("adam", w0 * (1 - 0.1 * 0.5)),
        # SGD: the gradient becomes wd w, first step w <- w - lr wd w
        ("sgd", w0 - 0.1 * 0.5 * w0),
    ):
        w = torch.nn.Parameter(w0.clone())
        opt = _optimizer(TrainConfig(optimizer=optimizer, lr=0.1, weight_decay=0.5), [w])
        w.grad = torch.zeros_like(w)
        opt.step()
        torch.testing.assert_close(w.detach(), expected, rtol=1e-15, atol=0)
    plain = _optimizer(TrainConfig(optimizer="adam", lr=0.1), [torch.nn.Parameter(w0.clone())])
    assert type(plain) is torch.optim.Adam
    with pytest.raises(Exception, match="weight_decay"):
        TrainConfig(weight_decay=-1e-3)


def test_input_offset_shifts_the_inputs_seen_by_the_model(monkeypatch):
    import stosim.studies.training as training

    seen: list[torch.Tensor] = []
    cfg = TrainConfig(
        dataset="digits", substrate="linear", limit_train=50, limit_test=20, epochs=1, batch_size=50, input_offset=0.5
    )
    model = build_model(cfg, 64, 10, (8, 8))
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    monkeypatch.setattr(training, "build_model", lambda *a, **k: model)
    train(cfg)
    train_ds, test_ds = load_dataset("digits", None, False, seed=0, limit_train=50, limit_test=20)
    expected = torch.as_tensor(np.concatenate([train_ds.flat(), test_ds.flat()]), dtype=torch.float64) - 0.5
    # every training and test image reaches the model shifted by -0.5 (in some order)
    torch.testing.assert_close(torch.cat(seen).sum(0), expected.sum(0), rtol=1e-12, atol=1e-12)
    assert float(torch.cat(seen).min()) == pytest.approx(-0.5, abs=1e-12)
    with pytest.raises(Exception, match="input_offset"):
        TrainConfig(input_offset=2.0)


def test_cosine_schedule_sets_the_lr_of_every_step(monkeypatch):
    import stosim.studies.training as training
    from stosim.studies.training import learning_rate

    cfg = TrainConfig(lr=0.2, lr_schedule="cosine")
    # lr_k = lr (1 + cos(pi k / K)) / 2: lr at k = 0, lr / 2 at k = K / 2, lr (1 + cos(pi 3/4)) / 2 at k = 3K / 4
    assert learning_rate(cfg, 0, 8) == 0.2
    assert learning_rate(cfg, 4, 8) == pytest.approx(0.1, rel=1e-15)
    assert learning_rate(cfg, 6, 8) == pytest.approx(0.1 * (1 - 2**-0.5), rel=1e-14)
    assert learning_rate(TrainConfig(lr=0.2), 6, 8) == 0.2
    with pytest.raises(ValueError, match="step"):
        learning_rate(cfg, 8, 8)
    with pytest.raises(Exception, match="lr_schedule"):
        TrainConfig(lr_schedule="step")

    # the training loop applies it at every optimizer step: 2 epochs x 4 batches of 50 images
    seen: list[float] = []
    make = training._optimizer

    def recording(c, params):
        opt = make(c, params)
        opt.register_step_pre_hook(lambda o, args, kwargs: seen.append(o.param_groups[0]["lr"]))
        return opt

    monkeypatch.setattr(training, "_optimizer", recording)
    train(
        TrainConfig(
            dataset="digits",
            substrate="linear",
            limit_train=200,
            limit_test=50,
            batch_size=50,
            epochs=2,
            lr=0.2,
            lr_schedule="cosine",
        )
    )
    expected = [0.1 * (1 + np.cos(np.pi * k / 8)) for k in range(8)]
    np.testing.assert_allclose(seen, expected, rtol=1e-14, atol=0)


def test_a_resumed_cosine_run_continues_its_schedule(tmp_path):
    cfg = TrainConfig(**{**SMALL, "epochs": 3, "lr_schedule": "cosine"})
    full = _weights(train(cfg, tmp_path / "full").model)

    with pytest.raises(KeyboardInterrupt):  # stops in the middle of epoch 3
        train(cfg, tmp_path / "run", on_batch=_interrupt_at_batch(10))
    resumed = _weights(train(cfg, tmp_path / "run", resume=True).model)
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
    # the epoch count fixes a cosine schedule: extending the run would change every lr it used
    with pytest.raises(ConfigError, match="epochs"):
        train(TrainConfig(**{**SMALL, "epochs": 4, "lr_schedule": "cosine"}), tmp_path / "run", resume=True)


def test_runs_saved_before_a_config_key_existed_still_match(tmp_path):
    # a checkpoint / metrics file written before weight_decay and input_offset existed lacks those keys;
    # it is the same configuration as today's with their defaults
    from stosim.studies.compare import _finished
    from stosim.studies.training import with_defaults

    cfg = TrainConfig(**{**SMALL, "epochs": 1})
    saved = {
        k: v
        for k, v in json.loads(json.dumps(cfg.resolved(), default=str)).items()
        if k not in ("weight_decay", "input_offset")
    }
    assert with_defaults(saved) == json.loads(json.dumps(cfg.resolved(), default=str))
    (tmp_path / "metrics.json").write_text(json.dumps({"config": saved, "test_accuracy": 0.5}))
    assert _finished(cfg, tmp_path) is not None
    assert _finished(TrainConfig(**{**SMALL, "epochs": 1, "weight_decay": 0.1}), tmp_path) is None

    train(TrainConfig(**{**SMALL, "epochs": 1}), tmp_path / "run")
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    state["config"] = {k: v for k, v in state["config"].items() if k not in ("weight_decay", "input_offset")}
    torch.save(state, tmp_path / "run" / "checkpoint.pt")
    result = train(TrainConfig(**{**SMALL, "epochs": 2}), tmp_path / "run", resume=True)
    assert [h["epoch"] for h in result.history] == [1, 2]
    with pytest.raises(ConfigError, match="weight_decay"):
        train(TrainConfig(**{**SMALL, "epochs": 3, "weight_decay": 0.1}), tmp_path / "run", resume=True)


def test_atomic_output_leaves_no_partial_file(tmp_path):
    from stosim.storage import atomic_output, write_text_atomic

    target = tmp_path / "table.md"
    write_text_atomic("old\n", target)
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("the writer failed")
    assert target.read_text() == "old\n"  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["table.md"]  # no temporary file left behind
    write_text_atomic("new\n", target)
    assert target.read_text() == "new\n"


def test_plots_take_their_format_from_the_suffix_and_default_to_png(tmp_path):
    from stosim.plotting import plot_learning_curve

    history = [
        {"epoch": 1, "train_accuracy": 0.5, "test_accuracy": 0.4},
        {"epoch": 2, "train_accuracy": 0.7, "test_accuracy": 0.6},
    ]
    written = plot_learning_curve(history, tmp_path / "curve")  # no suffix: PNG, as matplotlib does
    assert written == tmp_path / "curve.png" and written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pdf = plot_learning_curve(history, tmp_path / "curve.pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.pdf", "curve.png"]  # no temporary files left
