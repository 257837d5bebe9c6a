"""FTMLE of a reservoir's substrate over a dataset, for an untrained or a trained model (``stosim ftmle``).

The read-in of the model (random from the seed when untrained, or loaded from a ``stosim train``
checkpoint) maps each input to the substrate's initial state; the FTMLE of the substrate's flow
map is computed per sample (:func:`stosim.analysis.ftmle.substrate_ftmle`). Results are an
xarray Dataset (``ftmle`` and ``label`` per sample, units and provenance) for HDF5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stosim.analysis.ftmle import substrate_ftmle
from stosim.checkpoint import load_checkpoint, restore_model
from stosim.datasets import load_dataset
from stosim.models import ReservoirClassifier
from stosim.studies.training import ConfigError, TrainConfig, build_model, model_inputs, validate_train_config
from stosim.substrates import registry

__all__ = ["dataset_ftmle"]


def dataset_ftmle(
    cfg: TrainConfig, checkpoint: Path | None = None, *, limit: int = 200, method: str = "auto", batch_size: int = 64
):
    """Per-sample FTMLE of the substrate of ``cfg`` (or of the checkpoint's configuration) on the test split.

    Returns an xarray Dataset with ``ftmle`` (1/time unit) and ``label`` over dim ``sample``.
    """
    import xarray as xr

    from stosim.storage import provenance_attrs

    state = None
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if checkpoint.is_dir():
            checkpoint = checkpoint / "checkpoint.pt"
        if not checkpoint.exists():
            raise FileNotFoundError(f"checkpoint={checkpoint} does not exist (a `stosim train` output folder)")
        state = load_checkpoint(checkpoint, validate_config=lambda c: validate_train_config(c, source="config"))
        cfg = state.settings
    ftmle_substrates = [name for name, spec in registry.specs().items() if spec.ftmle]
    if cfg.substrate not in ftmle_substrates:
        raise ConfigError(
            f"ftmle needs a reservoir model ({', '.join(ftmle_substrates)}); got substrate = {cfg.substrate!r}"
        )
    _, test = load_dataset(cfg.dataset, cfg.data_dir, cfg.download, seed=cfg.seed, limit_test=limit)
    model = build_model(cfg, test.n_features, test.n_classes, test.image_shape)
    if state is not None:
        restore_model(state, model)
    assert isinstance(model, ReservoirClassifier)
    dtype = model.substrate.dtype
    x = model_inputs(cfg, test, dtype)  # as the model was trained
    with torch.no_grad():
        readin = model.read_in(x)
    result = substrate_ftmle(model.substrate, readin, method=method, batch_size=batch_size)
    unit = f"1/{result.time_unit}"
    ds = xr.Dataset(
        {
            "ftmle": ("sample", result.ftmle, {"units": unit, "long_name": "finite-time maximum Lyapunov exponent"}),
            "label": ("sample", test.labels, {"units": "1", "long_name": "class label"}),
            "converged": (
                "sample",
                result.converged.astype(np.int8),
                {"units": "1", "long_name": "iterative method converged"},
            ),
        },
        coords={"sample": ("sample", np.arange(len(test)), {"units": "1", "long_name": "test sample index"})},
    )
    config = cfg.resolved()
    ds.attrs.update(
        provenance_attrs(
            config=config,
            config_units=_config_units(config, result.time_unit),
            trained=int(state is not None),
            trained_epochs=state.epoch if state is not None else 0,
            checkpoint=str(checkpoint) if checkpoint else "none",
            method=result.method,
            horizon=result.time,
            horizon_unit=result.time_unit,
            substrate_configuration=model.substrate.read_configuration(),
        )
    )
    return ds


def _config_units(config: dict, time_unit: str) -> dict[str, str]:
    """The unit of each value of ``config`` (internal units, stosim.parameters; substrate times in
    ``time_unit``, the substrate's): the ``config_units`` attribute beside ``config``."""
    from stosim.parameters import parameters

    declared = parameters()
    return {
        key: (time_unit if declared[key].substrate_time else declared[key].unit) for key in config if key in declared
    }
