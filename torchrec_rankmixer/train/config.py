"""Settings of ``rankmixer-train``: one validated dataclass per section.

Sections: ``model``, ``data``, ``optim``, ``sharding``, ``train``, ``run``. Every field is
documented in docs/training.md. Load with :func:`load_config` (file + ``key=value``
overrides); every error is a ``ValueError`` naming the dotted key.
"""

import os
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

from torchrec_rankmixer.config import RankMixerConfig
from torchrec_rankmixer.data.settings import SYNTHETIC_FORMATS, DataSettings
from torchrec_rankmixer.features.grouping import MODES
from torchrec_rankmixer.models.baselines import ARCHS, BASELINES, BaselineConfig
from torchrec_rankmixer.models.defaults import DEFAULT_OVER_ARCH_INIT
from torchrec_rankmixer.models.heads import TASKS
from torchrec_rankmixer.modules.deep import INITS, DeepConfig
from torchrec_rankmixer.modules.interaction import DOT_NORMS, INTERACTIONS
from torchrec_rankmixer.modules.moe.calibration import DEFAULT_CALIBRATION_BATCHES
from torchrec_rankmixer.utils.checks import (
    check_bool,
    check_choice,
    check_float,
    check_layer_sizes,
    check_non_negative,
    check_positive,
    check_positive_int,
)
from torchrec_rankmixer.utils.settings import apply_override, from_dict, load_file

DENSE_OPTIMIZERS = ("rmsprop", "adam", "adagrad", "sgd")
EMBEDDING_OPTIMIZERS = ("row_wise_adagrad", "adagrad", "sgd", "adam", "dense")
LR_DECAYS = ("none", "linear", "cosine", "exponential")
SHARDING_TYPES = ("table_wise", "data_parallel", "row_wise", "column_wise", "table_row_wise")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
# settings that moved in 0.2 (the model recipe: models/spec.py): old key -> new key
MOVED_SETTINGS = {f"model.{k}": f"model.rankmixer.{k}" for k in ("d_model", "num_tokens", "num_layers", "ffn_mult", "dropout")}


@dataclass
class ModelSettings:
    """The model recipe (:class:`~torchrec_rankmixer.models.spec.ModelSpec`) minus what the
    data defines (the tables and the dense width); docs/training.md, section ``model``.

    ``rankmixer`` holds :class:`~torchrec_rankmixer.config.RankMixerConfig` fields (any of
    them); ``num_tokens`` and ``d_model`` left out follow the model's default rule
    (:func:`~torchrec_rankmixer.models.defaults.default_config`); ``interaction``
    ``"auto"`` (the default; ``none`` on the command line is ``"none"``, the encoder alone)
    follows the model's rule (:func:`~torchrec_rankmixer.modules.interaction.resolve_interaction`,
    and for the cross rank :func:`~torchrec_rankmixer.modules.interaction.default_cross_rank`);
    ``dcn_num_layers`` / ``dcn_low_rank_dim`` size its cross layers (None: TorchRec
    dlrm_main's 3 / 512; :func:`~torchrec_rankmixer.modules.interaction.resolve_cross`);
    ``deep`` holds :class:`~torchrec_rankmixer.modules.deep.DeepConfig` fields ({}: no deep branch);
    ``over_arch_init`` is ``DLRM_RankMixer``'s head init (``"xavier"`` or ``"torch"``);
    ``dot_norm`` ``"auto"`` (the default) follows the model's rule
    (:func:`~torchrec_rankmixer.modules.interaction.resolve_dot_norm`: ``"batch"`` with dot
    products), or ``"batch"`` / ``"none"``.
    """

    embedding_dim: int = 16
    embedding_init_std: Optional[float] = None
    arch: str = "rankmixer"
    rankmixer: Dict[str, Any] = field(default_factory=dict)
    baseline: Dict[str, Any] = field(default_factory=dict)
    tokenization: Optional[str] = None
    feature_groups: Optional[Dict[str, List[str]]] = None
    num_dense_tokens: int = 1
    interaction: str = "auto"
    dcn_num_layers: Optional[int] = None
    dcn_low_rank_dim: Optional[int] = None
    deep: Dict[str, Any] = field(default_factory=dict)
    dense_arch_layer_sizes: List[int] = field(default_factory=lambda: [64, 16])
    task: str = "ctr"
    over_arch_layer_sizes: List[int] = field(default_factory=lambda: [64, 1])
    tower_layer_sizes: List[int] = field(default_factory=lambda: [64])
    cvr_loss_weight: float = 0.0
    sequence_features: List[Dict[str, Any]] = field(default_factory=list)
    over_arch_init: str = DEFAULT_OVER_ARCH_INIT
    dot_norm: str = "auto"

    def validate(self) -> None:
        check_positive_int("model.embedding_dim", self.embedding_dim)
        if self.embedding_init_std is not None:
            check_positive("model.embedding_init_std", self.embedding_init_std)
        check_choice("model.arch", self.arch, ARCHS)
        if self.arch != "rankmixer" and self.rankmixer:
            raise ValueError(f"model.rankmixer ({self.rankmixer}) is for model.arch='rankmixer', not {self.arch!r}")
        if self.arch == "rankmixer" and self.baseline:
            raise ValueError(f"model.baseline ({self.baseline}) is for the baseline archs {list(BASELINES)}")
        known_baseline = {f.name for f in fields(BaselineConfig)}
        unknown_baseline = sorted(set(self.baseline) - known_baseline)
        if unknown_baseline:
            raise ValueError(f"model.baseline names {unknown_baseline}; known: {sorted(known_baseline)}")
        check_positive_int("model.num_dense_tokens", self.num_dense_tokens)
        check_choice("model.interaction", self.interaction, ("auto",) + INTERACTIONS)
        if self.interaction != "auto":
            if self.arch != "rankmixer":
                raise ValueError(f"model.interaction ({self.interaction!r}) is for model.arch='rankmixer', not {self.arch!r}")
        for key in ("dcn_num_layers", "dcn_low_rank_dim"):
            value = getattr(self, key)
            if value is not None:
                check_positive_int(f"model.{key}", value)
                if self.arch != "rankmixer":
                    raise ValueError(f"model.{key} ({value}) sizes DLRM_RankMixer's cross layers (model.arch="
                                     f"'rankmixer'); the {self.arch!r} baseline takes model.baseline.cross_*")
        if self.deep:
            if self.arch != "rankmixer":
                raise ValueError(f"model.deep ({self.deep}) is for model.arch='rankmixer', not {self.arch!r}")
            known = sorted(f.name for f in fields(DeepConfig))
            if set(self.deep) - set(known) or "layer_sizes" not in self.deep:
                raise ValueError(f"model.deep ({self.deep}) takes layer_sizes (required) and the other "
                                 f"DeepConfig fields; known: {known}")
            try:
                DeepConfig(**self.deep)
            except ValueError as e:
                raise ValueError(f"model.deep ({self.deep}): {e}") from e
        check_choice("model.dot_norm", self.dot_norm, ("auto",) + DOT_NORMS)
        if self.arch != "rankmixer" and self.dot_norm != "auto":
            raise ValueError(f"model.dot_norm ({self.dot_norm!r}) is for model.arch='rankmixer', not {self.arch!r}")
        check_choice("model.over_arch_init", self.over_arch_init, INITS)
        if self.arch != "rankmixer" and self.over_arch_init != DEFAULT_OVER_ARCH_INIT:
            raise ValueError(f"model.over_arch_init ({self.over_arch_init!r}) is for model.arch='rankmixer'; "
                             f"the {self.arch!r} baseline takes model.baseline.init")
        check_choice("model.task", self.task, TASKS)
        if self.tokenization is not None:
            check_choice("model.tokenization", self.tokenization, MODES)
        check_layer_sizes("model.dense_arch_layer_sizes", self.dense_arch_layer_sizes)
        check_layer_sizes("model.over_arch_layer_sizes", self.over_arch_layer_sizes, min_len=2)
        check_layer_sizes("model.tower_layer_sizes", self.tower_layer_sizes, min_len=0)
        check_non_negative("model.cvr_loss_weight", self.cvr_loss_weight)
        known = {f.name for f in fields(RankMixerConfig)}
        unknown = sorted(set(self.rankmixer) - known)
        if unknown:
            raise ValueError(f"model.rankmixer names {unknown}, which are not RankMixerConfig fields; known: {sorted(known)}")


@dataclass
class OptimSettings:
    """Dense and embedding optimisers, LR schedule, clipping."""

    dense: str = "rmsprop"
    lr: float = 0.001
    weight_decay: float = 0.0
    eps: float = 1e-8
    momentum: float = 0.0
    embedding: str = "row_wise_adagrad"
    embedding_lr: float = 0.05
    embedding_eps: float = 1e-8
    embedding_l2: float = 0.0
    warmup_steps: int = 50
    decay: str = "none"
    decay_steps: Optional[int] = None
    min_lr_ratio: float = 0.0
    plateau_decay: float = 1.0
    plateau_min_lr: float = 1e-6
    grad_clip_norm: Optional[float] = 1.0

    def validate(self) -> None:
        check_choice("optim.dense", self.dense, DENSE_OPTIMIZERS)
        check_choice("optim.embedding", self.embedding, EMBEDDING_OPTIMIZERS)
        check_choice("optim.decay", self.decay, LR_DECAYS)
        for k in ("lr", "embedding_lr", "eps", "embedding_eps"):
            check_positive(f"optim.{k}", getattr(self, k))
        for k in ("weight_decay", "momentum", "warmup_steps"):
            check_non_negative(f"optim.{k}", getattr(self, k))
        if self.decay_steps is not None:
            check_positive("optim.decay_steps", self.decay_steps)
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"optim.min_lr_ratio ({self.min_lr_ratio}) must be in [0, 1]")
        if self.grad_clip_norm is not None:
            check_positive("optim.grad_clip_norm", self.grad_clip_norm)
        check_non_negative("optim.embedding_l2", self.embedding_l2)
        if self.embedding_l2 > 0 and self.embedding != "dense":
            raise ValueError(
                f"optim.embedding_l2 ({self.embedding_l2}) needs optim.embedding='dense': the penalty decays every "
                f"row of every table each step, which the fused {self.embedding!r} optimiser (it updates the "
                "batch's rows only) cannot do"
            )
        check_float("optim.plateau_decay", self.plateau_decay, 0.0, 1.0, "(]")
        check_positive("optim.plateau_min_lr", self.plateau_min_lr)


@dataclass
class ShardingSettings:
    """TorchRec planner inputs."""

    sharding_types: List[str] = field(default_factory=lambda: ["table_wise", "data_parallel"])
    constraints: Dict[str, List[str]] = field(default_factory=dict)
    hbm_gb: Optional[float] = None

    def validate(self) -> None:
        if not self.sharding_types:
            raise ValueError("sharding.sharding_types ([]) must name at least one type")
        for t in self.sharding_types:
            check_choice("sharding.sharding_types", t, SHARDING_TYPES)
        for table, types in self.constraints.items():
            for t in types:
                check_choice(f"sharding.constraints.{table}", t, SHARDING_TYPES)
        if self.hbm_gb is not None:
            check_positive("sharding.hbm_gb", self.hbm_gb)


@dataclass
class TrainSettings:
    """Loop length, evaluation cadence, device and precision."""

    steps: int = 1000
    eval_every: int = 250
    log_every: int = 25
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    progress_bar: bool = True
    validate_inputs: bool = False
    num_threads: Optional[int] = None
    keep_freed_memory: bool = True
    calibrate_moe_batches: int = DEFAULT_CALIBRATION_BATCHES
    early_stop_patience: int = 0
    early_stop_min_delta: float = 1e-6
    restore_best: bool = False
    compile: bool = False

    def validate(self) -> None:
        check_positive("train.steps", self.steps)
        check_bool("train.compile", self.compile)
        check_bool("train.keep_freed_memory", self.keep_freed_memory)
        check_non_negative("train.early_stop_patience", self.early_stop_patience)
        check_non_negative("train.early_stop_min_delta", self.early_stop_min_delta)
        check_non_negative("train.calibrate_moe_batches", self.calibrate_moe_batches)
        if self.num_threads is not None:
            check_positive("train.num_threads", self.num_threads)
        check_non_negative("train.eval_every", self.eval_every)
        check_positive("train.log_every", self.log_every)
        check_choice("train.device", self.device, DEVICES)
        check_choice("train.precision", self.precision, PRECISIONS)


@dataclass
class RunSettings:
    """Output directory, checkpoints, TensorBoard, plots."""

    out_dir: str = "runs"
    name: Optional[str] = None
    checkpoint_every: int = 0
    save_final: bool = True
    resume: Optional[str] = None
    overwrite: bool = False
    tensorboard: bool = True
    plots: bool = True

    def validate(self) -> None:
        check_non_negative("run.checkpoint_every", self.checkpoint_every)
        if not self.out_dir:
            raise ValueError("run.out_dir ('') must name a directory")
        if os.path.exists(self.out_dir) and not os.path.isdir(self.out_dir):
            raise ValueError(f"run.out_dir ({self.out_dir!r}) is a file, not a directory")
        if self.resume and self.overwrite:
            raise ValueError(f"run.resume ({self.resume!r}) and run.overwrite (true) exclude each other")


@dataclass
class TrainConfig:
    """All settings of one training run.

    Example::

        >>> cfg = load_config(overrides=["model.rankmixer.d_model=64", "model.rankmixer.num_tokens=8"])
        >>> cfg.model.rankmixer, cfg.optim.dense, cfg.optim.lr
        ({'d_model': 64, 'num_tokens': 8}, 'rmsprop', 0.001)
        >>> load_config(overrides=["model.d_modle=64"])
        Traceback (most recent call last):
        ...
        ValueError: unknown setting 'model.d_modle'; known settings here: [...]
    """

    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    sharding: ShardingSettings = field(default_factory=ShardingSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    run: RunSettings = field(default_factory=RunSettings)

    def validate(self) -> "TrainConfig":
        """Check every section; returns self."""
        for section in (self.model, self.data, self.optim, self.sharding, self.train, self.run):
            section.validate()
        if self.model.task == "esmm" and self.data.format not in SYNTHETIC_FORMATS and not self.data.label2_column:
            raise ValueError("model.task ('esmm') needs data.label2_column (the conversion label)")
        interval = self.data.managed_collision.eviction_interval
        if (self.data.id_transform == "managed_collision" and self.run.checkpoint_every
                and self.run.checkpoint_every % interval):
            raise ValueError(
                f"run.checkpoint_every ({self.run.checkpoint_every}) must be a multiple of "
                f"data.managed_collision.eviction_interval ({interval}), so that checkpoints hold "
                "no ids pending in the eviction history (exact resume)"
            )
        adaptive = {"train.early_stop_patience": self.train.early_stop_patience > 0,
                    "train.restore_best": self.train.restore_best, "optim.plateau_decay": self.optim.plateau_decay < 1}
        on = [k for k, v in adaptive.items() if v]
        if on and not self.train.eval_every:
            raise ValueError(f"{on} act on evaluations; set train.eval_every > 0 (and a validation set)")
        if self.train.compile and self.model.arch != "rankmixer":
            raise ValueError(f"train.compile (true) compiles DLRM_RankMixer's dense path; "
                             f"model.arch is {self.model.arch!r}")
        if self.model.task == "ctr" and self.model.cvr_loss_weight > 0:
            raise ValueError(
                f"model.cvr_loss_weight ({self.model.cvr_loss_weight}) needs model.task='esmm'"
            )
        return self


def load_config(path: Optional[str] = None, overrides: Optional[List[str]] = None) -> TrainConfig:
    """Defaults, then the YAML/JSON file at ``path``, then ``section.key=value`` overrides.

    Args:
        path: optional settings file.
        overrides: e.g. ``["model.rankmixer.d_model=64", "optim.dense=adam"]``.
    """
    data = load_file(path) if path else {}
    for assignment in overrides or []:
        apply_override(data, assignment)
    model = data.get("model")
    for old, new in MOVED_SETTINGS.items():
        if isinstance(model, dict) and old.split(".", 1)[1] in model:
            raise ValueError(f"setting {old!r} is now {new!r} (the model recipe, docs/training.md)")
    return from_dict(TrainConfig, data).validate()
