"""Export a ``rankmixer-train`` run: its ``spec.json`` + a DCP checkpoint -> artifact.

A run directory's layout is run_format.py's. Export needs neither the trainer nor a
process group:

1. the model is built once, unsharded on CPU, from the run's ``spec.json``
   (:class:`~torchrec_rankmixer.models.spec.ModelSpec`, written by the trainer before
   its first step);
2. its weights are read from the checkpoint's ``model`` entry in this one process
   (``dcp.load(..., no_dist=True)``; DCP reassembles table-wise and data-parallel shards
   written by any number of ranks); the optimiser state is not read;
3. for a Sparse-MoE model, the h_infer router biases are calibrated to the target active
   ratio on ``calibrate_moe_batches`` training batches of the run's own data source
   (:func:`~torchrec_rankmixer.modules.moe.calibration.calibrate_on_batches`, docs/moe.md);
4. for a run with ``data.id_transform=managed_collision``, the id mapping is read from the
   checkpoint's ``id_remap`` entry (:func:`load_run_id_remap`) and frozen into the artifact
   (:class:`~torchrec_rankmixer.inference.id_remap.RawIdRemap`): its features take raw ids;
5. :func:`export_model` quantizes and writes the artifact.

Steps 3 and 4 and the feature preparation of file runs read the ``data`` section of the
run's ``config.yaml`` (:func:`~torchrec_rankmixer.run_format.read_data_settings`).
"""

import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from torchrec_rankmixer.data.settings import SYNTHETIC_FORMATS, DataSettings
from torchrec_rankmixer.data.sources import build_remapper, file_schema, make_source
from torchrec_rankmixer.inference.export import ExportResult, export_model
from torchrec_rankmixer.inference.quantize import QuantizationOptions
from torchrec_rankmixer.models.spec import ModelSpec
from torchrec_rankmixer.modules.moe.calibration import DEFAULT_CALIBRATION_BATCHES, calibrate_on_batches
from torchrec_rankmixer.modules.moe.dtsi import moe_layers
from torchrec_rankmixer.run_format import (
    ID_REMAP_KEY,
    MODEL_KEY,
    RunCheckpoint,
    find_run_checkpoint,
    read_data_settings,
    read_spec,
)
from torchrec_rankmixer.utils.checks import check_non_negative_int
from torchrec_rankmixer.utils.safe_load import dcp_load, dcp_metadata

PathLike = Union[str, "os.PathLike[str]"]


def _load_weights(model: nn.Module, path: str) -> None:
    """Read ``model``'s weights from the ``model`` entry of DCP checkpoint ``path``."""
    metadata = dcp_metadata(path)
    local = model.state_dict()
    wanted = {f"{MODEL_KEY}.{k}": v for k, v in local.items()}
    missing = sorted(k for k in wanted if k not in metadata)
    if missing:
        raise ValueError(
            f"checkpoint {path!r} does not match the run's spec.json: it lacks {missing[:3]}"
            f"{' ...' if len(missing) > 3 else ''} ({len(missing)} of {len(wanted)} model keys)"
        )
    for key, value in wanted.items():
        saved = tuple(getattr(metadata[key], "size", ()))
        if saved != tuple(value.shape):
            raise ValueError(
                f"checkpoint {path!r} does not match the run's spec.json: {key} has shape "
                f"{list(saved)} in the checkpoint, {list(value.shape)} in the model"
            )
    state = {MODEL_KEY: dict(local)}
    dcp_load(state, path, no_dist=True)
    model.load_state_dict(state[MODEL_KEY], strict=True)


def load_run_model(
    run_dir: PathLike, step: Optional[int] = None, validate_inputs: bool = True
) -> Tuple[nn.Module, RunCheckpoint, ModelSpec]:
    """The trained float DLRM_RankMixer of a run (CPU, eval mode, unsharded), built once
    from the run's ``spec.json``.

    Args:
        run_dir: a run directory or one of its checkpoint directories.
        step: training step to load (None: the latest complete checkpoint).
        validate_inputs: passed to the model.

    Returns:
        (model, the checkpoint loaded, the spec it was built from).

    Example::

        >>> load_run_model("/nonexistent/run")
        Traceback (most recent call last):
        ...
        ValueError: run directory '/nonexistent/run' does not exist
    """
    ckpt = find_run_checkpoint(run_dir, step)
    spec = read_spec(ckpt.run_dir)
    model = spec.build(validate_inputs=validate_inputs)
    _load_weights(model, ckpt.path)
    return model.eval(), ckpt, spec


def load_run_id_remap(
    run_dir: PathLike, step: Optional[int] = None, spec: Optional[ModelSpec] = None,
    data: Optional[DataSettings] = None,
) -> Optional[nn.Module]:
    """The run's :class:`~torchrec_rankmixer.features.managed_collision.ManagedCollisionRemapper`
    with the checkpoint's mapping (eval mode: read-only), or None when the run did not use
    ``data.id_transform=managed_collision``.

    Args:
        run_dir: a run directory or one of its checkpoint directories.
        step: training step (None: the latest complete checkpoint).
        spec: the run's spec (read from ``spec.json`` when None).
        data: the run's data settings (read from ``config.yaml`` when None).
    """
    ckpt = find_run_checkpoint(run_dir, step)
    spec = spec if spec is not None else read_spec(ckpt.run_dir)
    data = data if data is not None else read_data_settings(ckpt.run_dir)
    remapper = build_remapper(data, [t.to_config() for t in spec.tables])
    if remapper is None:
        return None
    metadata = dcp_metadata(ckpt.path)
    state = {k: v.clone() for k, v in remapper.state_dict().items()}
    missing = sorted(k for k in state if f"{ID_REMAP_KEY}.{k}" not in metadata)
    if missing:
        raise ValueError(
            f"checkpoint {ckpt.path!r} lacks the id mapping of a data.id_transform='managed_collision' "
            f"run ({len(missing)} entries, e.g. {ID_REMAP_KEY}.{missing[0]})"
        )
    dcp_load({ID_REMAP_KEY: state}, ckpt.path, no_dist=True)
    remapper.load_state_dict(state)
    return remapper.eval()


def export_from_run_dir(
    run_dir: PathLike,
    output_dir: PathLike,
    options: QuantizationOptions = QuantizationOptions(),
    step: Optional[int] = None,
    artifact: str = "auto",
    dense_feature_names: Optional[Sequence[str]] = None,
    calibrate_moe_batches: Optional[int] = None,
    preprocessing: bool = True,
) -> Tuple[ExportResult, RunCheckpoint]:
    """Quantize and export the model of a ``rankmixer-train`` run (see module docstring).

    Args:
        run_dir: a run directory or one of its ``checkpoints/step_*`` directories.
        output_dir: export directory (see :func:`export_model`).
        options: table and dense dtypes.
        step: training step to export (None: the latest complete checkpoint).
        artifact: ``"auto"``, ``"export"`` or ``"torchscript"``.
        dense_feature_names: dense column names; default: the run's ``data.dense_columns``
            (all of them with ``preprocessing``, else without bucketised ones) for file
            runs, ``dense_0 ..`` for synthetic runs.
        calibrate_moe_batches: see :func:`calibrate_run_moe` (default:
            ``DEFAULT_CALIBRATION_BATCHES`` training batches for a Sparse-MoE model, none
            otherwise; 0 turns it off).
        preprocessing: for a file run, build its feature preparation (id hash / mod,
            ``log1p``, buckets: :class:`~torchrec_rankmixer.features.prep.RawFeaturePrep`)
            into the artifact, which then takes the training files' raw columns; False:
            the artifact takes prepared ids and values (synthetic runs have none).

    Returns:
        (what export wrote, the checkpoint exported).

    Example::

        >>> export_from_run_dir("/nonexistent/run", "/tmp/art")
        Traceback (most recent call last):
        ...
        ValueError: run directory '/nonexistent/run' does not exist
    """
    from torchrec_rankmixer.inference.id_remap import RawIdRemap

    model, ckpt, spec = load_run_model(run_dir, step)
    data = read_data_settings(ckpt.run_dir)
    remapper = load_run_id_remap(ckpt.path, spec=spec, data=data)
    calibrate_run_moe(model, spec, data, calibrate_moe_batches, remapper)
    prep, run_names = None, None
    if data.format not in SYNTHETIC_FORMATS:
        _, dense, file_prep = file_schema(data)  # the layout and transform training ran
        run_names = [dense[i] for i in file_prep.kept_dense]
        if preprocessing:
            prep = file_prep.module
            run_names = list(prep.dense_features)
    names = dense_feature_names if dense_feature_names is not None else run_names
    id_remap = RawIdRemap.from_remapper(remapper, model.feature_names) if remapper is not None else None
    return export_model(model, output_dir, options, artifact, names, id_remap, prep, spec=spec), ckpt


def calibrate_run_moe(
    model: nn.Module, spec: ModelSpec, data: DataSettings, num_batches: Optional[int] = None,
    id_remap: Optional[nn.Module] = None,
) -> List[Dict[str, float]]:
    """Calibrate a run model's MoE h_infer routers on the run's training batches.

    Args:
        model: the unsharded model from :func:`load_run_model`.
        spec: the run's spec (its task decides whether batches carry two labels).
        data: the run's data settings (:func:`~torchrec_rankmixer.run_format.read_data_settings`).
        num_batches: training batches to calibrate on; ``None`` means
            ``DEFAULT_CALIBRATION_BATCHES`` for a model with Sparse-MoE layers and nothing
            otherwise; 0 turns calibration off.
        id_remap: the run's remapper (:func:`load_run_id_remap`) for managed-collision
            runs, whose batches hold raw ids; None otherwise.

    Returns:
        One record per calibrated MoE layer (``ratio_before``, ``ratio_after``, ...);
        empty when nothing was calibrated.
    """
    has_moe = bool(moe_layers(model))
    if num_batches is None:
        num_batches = DEFAULT_CALIBRATION_BATCHES if has_moe else 0
    check_non_negative_int("calibrate_moe_batches", num_batches)
    if num_batches == 0:
        return []
    if not has_moe:
        raise ValueError(
            f"calibrate_moe_batches ({num_batches}) was asked for, but the model has no Sparse-MoE layer"
        )
    source = make_source(data, spec.task == "esmm", rank=0, world_size=1)
    batches = source.train_batches(cursor=0, rank=0, world_size=1, num=num_batches)
    if id_remap is not None:
        batches = map(id_remap.eval().remap_batch, batches)
    with torch.no_grad():
        return calibrate_on_batches(model.eval(), batches)
