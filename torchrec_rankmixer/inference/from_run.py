"""Export a ``rankmixer-train`` run: its resolved config + a DCP checkpoint -> artifact.

A run directory (``<run.out_dir>/<run.name>/``, see ``torchrec_rankmixer/train/rundir.py``)
holds ``config.yaml`` (the resolved settings) and ``checkpoints/step_XXXXXXXX/``
(torch.distributed.checkpoint files, sharded by the ranks that trained, plus
``progress.json``, which marks a checkpoint complete). Export needs neither the data files
nor a process group:

1. the model is rebuilt from ``config.yaml`` with training's own builder
   (:func:`torchrec_rankmixer.train.build.build_model`; the table schema comes from the
   data settings, no file is read), read into a :class:`ModelSpec` and built unsharded on
   CPU;
2. the model weights are read from the checkpoint in this one process
   (``dcp.load(..., no_dist=True)``; DCP reassembles table-wise and data-parallel shards
   written by any number of ranks). Training saved ``{"model": DMP(TrainModule)}``, so a
   model key ``k`` is stored as ``model.model.<k>``; the optimiser state is not read;
3. for a Sparse-MoE model, the h_infer router biases are calibrated to the target active
   ratio on ``calibrate_moe_batches`` training batches of the run's own data source
   (:func:`torchrec_rankmixer.modules.moe.calibration.calibrate_on_batches`, docs/moe.md);
4. for a run with ``data.id_transform=managed_collision``, the id mapping is read from the
   checkpoint's ``id_remap`` entry (:func:`load_run_id_remap`) and frozen into the artifact
   (:class:`~torchrec_rankmixer.inference.id_remap.RawIdRemap`): its features take raw ids;
5. :func:`export_model` quantizes and writes the artifact.
"""

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed.checkpoint as dcp
from torch import nn

from torchrec_rankmixer.inference.export import ExportResult, export_model
from torchrec_rankmixer.inference.quantize import QuantizationOptions
from torchrec_rankmixer.inference.spec import ModelSpec

RUN_CONFIG_FILE = "config.yaml"
CHECKPOINTS_DIR = "checkpoints"
# training saves {"model": DMP(TrainModule).state_dict()}; TrainModule keeps the model in .model
CHECKPOINT_MODEL_PREFIX = "model.model."
# training batches on which a Sparse-MoE run's h_infer routers are calibrated before export
DEFAULT_CALIBRATION_BATCHES = 16


@dataclass(frozen=True)
class RunCheckpoint:
    """One complete checkpoint of a training run.

    Attributes:
        run_dir: the run directory (holds ``config.yaml``).
        path: the checkpoint directory (``<run_dir>/checkpoints/step_XXXXXXXX``).
        step: the training step it was written at.
    """

    run_dir: str
    path: str
    step: int


def _complete_steps(root: str) -> Dict[int, str]:
    from torchrec_rankmixer.train.checkpoint import PROGRESS_FILE, STEP_DIR

    steps: Dict[int, str] = {}
    if os.path.isdir(root):
        for name in os.listdir(root):
            m = STEP_DIR.match(name)
            if m and os.path.isfile(os.path.join(root, name, PROGRESS_FILE)):
                steps[int(m.group(1))] = os.path.join(root, name)
    return steps


def find_run_checkpoint(run_dir: Union[str, os.PathLike], step: Optional[int] = None) -> RunCheckpoint:
    """The checkpoint to export: step ``step``, or the latest complete one.

    Args:
        run_dir: a run directory, or one of its ``checkpoints/step_XXXXXXXX`` directories
            (then ``step`` must be None or that step).
        step: the training step; None: the highest complete checkpoint.

    Example::

        >>> find_run_checkpoint("/nonexistent/run")
        Traceback (most recent call last):
        ...
        ValueError: run directory '/nonexistent/run' does not exist
    """
    from torchrec_rankmixer.train.checkpoint import PROGRESS_FILE, STEP_DIR

    path = os.path.normpath(str(run_dir))
    if not os.path.isdir(path):
        raise ValueError(f"run directory {str(run_dir)!r} does not exist")
    m = STEP_DIR.match(os.path.basename(path))
    if m and os.path.isfile(os.path.join(path, PROGRESS_FILE)):  # a checkpoint directory
        own = int(m.group(1))
        if step is not None and step != own:
            raise ValueError(f"step ({step}) does not match checkpoint directory {path!r} (step {own})")
        root = os.path.dirname(os.path.dirname(path))
        if not os.path.isfile(os.path.join(root, RUN_CONFIG_FILE)):
            raise ValueError(f"checkpoint {path!r} is not inside a run directory (no {RUN_CONFIG_FILE} in {root!r})")
        return RunCheckpoint(root, path, own)
    if not os.path.isfile(os.path.join(path, RUN_CONFIG_FILE)):
        raise ValueError(
            f"{str(run_dir)!r} is not a rankmixer-train run directory (no {RUN_CONFIG_FILE})"
        )
    root = os.path.join(path, CHECKPOINTS_DIR)
    steps = _complete_steps(root)
    if not steps:
        raise ValueError(
            f"run directory {str(run_dir)!r} has no complete checkpoint under {root!r} "
            "(train with run.checkpoint_every > 0)"
        )
    if step is None:
        step = max(steps)
    elif isinstance(step, bool) or not isinstance(step, int) or step not in steps:
        raise ValueError(
            f"step ({step!r}) has no complete checkpoint in {root!r}; steps: {sorted(steps)}"
        )
    return RunCheckpoint(path, steps[step], step)


def _run_schema(cfg) -> Tuple[List, int, Optional[List[str]]]:  # type: ignore[no-untyped-def]
    """(table configs, dense width, dense column names or None) from the data settings,
    without reading any data file (the same schema the training source derives)."""
    from torchrec_rankmixer.data.sources import SyntheticSource

    d = cfg.data
    if d.format == "synthetic":
        source = SyntheticSource(d)
        return source.table_configs(cfg.model.embedding_dim), source.dense_in_features, None
    from torchrec_rankmixer.data.sources import file_schema

    _, dense, prep = file_schema(d)  # the layout FileSource trained with
    names = [dense[i] for i in prep.kept_dense]
    return prep.table_configs(cfg.model.embedding_dim), prep.dense_in_features, names


def _load_weights(model: nn.Module, path: str) -> None:
    """Read ``model``'s weights from DCP checkpoint ``path`` (one process, no group)."""
    try:
        metadata = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    except Exception as exc:  # noqa: BLE001 - re-raised with the path
        raise ValueError(f"cannot read checkpoint {path!r}: {exc}") from exc
    local = model.state_dict()
    wanted = {CHECKPOINT_MODEL_PREFIX + k: v for k, v in local.items()}
    missing = sorted(k for k in wanted if k not in metadata)
    if missing:
        raise ValueError(
            f"checkpoint {path!r} does not match the run's config.yaml: it lacks {missing[:3]}"
            f"{' ...' if len(missing) > 3 else ''} ({len(missing)} of {len(wanted)} model keys)"
        )
    for key, value in wanted.items():
        saved = tuple(getattr(metadata[key], "size", ()))
        if saved != tuple(value.shape):
            raise ValueError(
                f"checkpoint {path!r} does not match the run's config.yaml: {key} has shape "
                f"{list(saved)} in the checkpoint, {list(value.shape)} in the rebuilt model"
            )
    state = {"model": {k[len("model."):]: v for k, v in wanted.items()}}  # DCP joins with "."
    dcp.load(state, checkpoint_id=path, no_dist=True)
    model.load_state_dict({k[len(CHECKPOINT_MODEL_PREFIX):]: v for k, v in wanted.items()}, strict=True)


def load_run_id_remap(run_dir: Union[str, os.PathLike], step: Optional[int] = None) -> Optional[nn.Module]:
    """The run's :class:`~torchrec_rankmixer.features.managed_collision.ManagedCollisionRemapper`
    with the checkpoint's mapping (eval mode: read-only), or None when the run did not use
    ``data.id_transform=managed_collision``.

    Args:
        run_dir: a run directory or one of its checkpoint directories.
        step: training step (None: the latest complete checkpoint).
    """
    from torchrec_rankmixer.train.build import build_remapper
    from torchrec_rankmixer.train.checkpoint import ID_REMAP_KEY
    from torchrec_rankmixer.train.config import load_config

    ckpt = find_run_checkpoint(run_dir, step)
    cfg = load_config(os.path.join(ckpt.run_dir, RUN_CONFIG_FILE))
    remapper = build_remapper(cfg, _run_schema(cfg)[0])
    if remapper is None:
        return None
    metadata = dcp.FileSystemReader(ckpt.path).read_metadata().state_dict_metadata
    state = {k: v.clone() for k, v in remapper.state_dict().items()}
    missing = sorted(k for k in state if f"{ID_REMAP_KEY}.{k}" not in metadata)
    if missing:
        raise ValueError(
            f"checkpoint {ckpt.path!r} lacks the id mapping of a data.id_transform='managed_collision' "
            f"run ({len(missing)} entries, e.g. {ID_REMAP_KEY}.{missing[0]})"
        )
    dcp.load({ID_REMAP_KEY: state}, checkpoint_id=ckpt.path, no_dist=True)
    remapper.load_state_dict(state)
    return remapper.eval()


def load_run_model(
    run_dir: Union[str, os.PathLike], step: Optional[int] = None, validate_inputs: bool = True
) -> Tuple[nn.Module, RunCheckpoint, Optional[List[str]]]:
    """The trained float DLRM_RankMixer of a run (CPU, eval mode, unsharded).

    Args:
        run_dir: a run directory or one of its checkpoint directories.
        step: training step to load (None: the latest complete checkpoint).
        validate_inputs: passed to the rebuilt model.

    Returns:
        (model, the checkpoint loaded, dense column names for file runs or None).

    Example (a two-step run with a checkpoint, then its model)::

        >>> import tempfile, torch.distributed as dist
        >>> from torchrec_rankmixer.train.config import load_config
        >>> from torchrec_rankmixer.train.loop import Trainer
        >>> out = tempfile.mkdtemp()
        >>> cfg = load_config(overrides=[
        ...     "train.steps=2", "train.eval_every=0", "data.eval_batches=0",
        ...     "data.batch_size=8", "train.progress_bar=false", "run.plots=false",
        ...     "run.tensorboard=false", "run.checkpoint_every=2", f"run.out_dir={out}",
        ...     "run.name=r"])
        >>> _ = Trainer(cfg).fit(); dist.destroy_process_group()
        >>> model, ckpt, _ = load_run_model(f"{out}/r")
        >>> ckpt.step, type(model).__name__, model.training
        (2, 'DLRM_RankMixer', False)
    """
    from torchrec_rankmixer.train.build import build_model
    from torchrec_rankmixer.train.config import load_config

    ckpt = find_run_checkpoint(run_dir, step)
    cfg = load_config(os.path.join(ckpt.run_dir, RUN_CONFIG_FILE))
    tables, dense_in, dense_names = _run_schema(cfg)
    # training's builder (EBC on meta) -> spec -> a plain CPU model with the same keys
    spec = ModelSpec.from_model(build_model(cfg, tables, dense_in, torch.device("cpu")))
    model = spec.build(validate_inputs=validate_inputs)
    _load_weights(model, ckpt.path)
    return model.eval(), ckpt, dense_names


def export_from_run_dir(
    run_dir: Union[str, os.PathLike],
    output_dir: Union[str, os.PathLike],
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
        calibrate_moe_batches: see :func:`calibrate_run_moe` (default: 16 training
            batches for a Sparse-MoE model, none otherwise; 0 turns it off).
        preprocessing: for a file run, build its feature preparation (id hash / mod,
            ``log1p``, buckets: :class:`~torchrec_rankmixer.features.prep.RawFeaturePrep`)
            into the artifact, which then takes the training files' raw columns; False:
            the artifact takes prepared ids and values (synthetic runs have none).

    Returns:
        (what export wrote, the checkpoint exported).
    """
    from torchrec_rankmixer.inference.id_remap import RawIdRemap
    from torchrec_rankmixer.train.config import load_config

    model, ckpt, run_names = load_run_model(run_dir, step)
    remapper = load_run_id_remap(ckpt.path)
    calibrate_run_moe(model, ckpt.run_dir, calibrate_moe_batches, remapper)
    data = load_config(os.path.join(ckpt.run_dir, RUN_CONFIG_FILE)).data
    prep = None
    if preprocessing and data.format != "synthetic":
        from torchrec_rankmixer.data.sources import file_schema

        prep = file_schema(data)[2].module  # the transform training ran
        run_names = list(prep.dense_features)
    names = dense_feature_names if dense_feature_names is not None else run_names
    id_remap = RawIdRemap.from_remapper(remapper, model.feature_names) if remapper is not None else None
    return export_model(model, output_dir, options, artifact, names, id_remap, prep), ckpt


def _has_moe(model: nn.Module) -> bool:
    from torchrec_rankmixer.modules.moe import PerTokenSparseMoE

    return any(isinstance(m, PerTokenSparseMoE) for m in model.modules())


def calibrate_run_moe(
    model: nn.Module, run_dir: Union[str, os.PathLike], num_batches: Optional[int] = None,
    id_remap: Optional[nn.Module] = None,
) -> List[Dict[str, float]]:
    """Calibrate a run model's MoE h_infer routers on the run's training batches.

    Args:
        model: the unsharded model from :func:`load_run_model`.
        run_dir: the run directory (its ``config.yaml`` names the data source).
        num_batches: training batches to calibrate on; ``None`` means
            ``DEFAULT_CALIBRATION_BATCHES`` for a model with Sparse-MoE layers and nothing
            otherwise; 0 turns calibration off.
        id_remap: the run's remapper (:func:`load_run_id_remap`) for managed-collision
            runs, whose batches hold raw ids; None otherwise.

    Returns:
        One record per calibrated MoE layer (``ratio_before``, ``ratio_after``, ...);
        empty when nothing was calibrated.
    """
    if num_batches is None:
        num_batches = DEFAULT_CALIBRATION_BATCHES if _has_moe(model) else 0
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 0:
        raise ValueError(f"calibrate_moe_batches ({num_batches!r}) must be an int >= 0")
    if num_batches == 0:
        return []
    if not _has_moe(model):
        raise ValueError(
            f"calibrate_moe_batches ({num_batches}) was asked for, but the model of run "
            f"{str(run_dir)!r} has no Sparse-MoE layer"
        )
    from torchrec_rankmixer.modules.moe.calibration import calibrate_on_batches
    from torchrec_rankmixer.train.config import load_config
    from torchrec_rankmixer.train.distributed import DistEnv
    from torchrec_rankmixer.data.sources import make_source

    cfg = load_config(os.path.join(run_dir, RUN_CONFIG_FILE))
    env = DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1,
                  device=torch.device("cpu"), backend="gloo")
    source = make_source(cfg.data, cfg.model.task == "esmm", env.rank, env.world_size)
    batches = source.train_batches(cursor=0, rank=0, world_size=1, num=num_batches)
    if id_remap is not None:
        batches = map(id_remap.eval().remap_batch, batches)
    with torch.no_grad():
        return calibrate_on_batches(model.eval(), batches)
