"""Settings of ``rankmixer-train``: one validated dataclass per section.

Sections: ``model``, ``data``, ``optim``, ``sharding``, ``train``, ``run``. Every field is
documented in docs/training.md. Load with :func:`load_config` (file + ``key=value``
overrides); every error is a ``ValueError`` naming the dotted key.
"""

from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional, Sequence

from torchrec_rankmixer.config import RankMixerConfig
from torchrec_rankmixer.data.features import ID_TRANSFORMS
from torchrec_rankmixer.data.synthetic import SyntheticClickData
from torchrec_rankmixer.train.settings import apply_override, from_dict, load_file

DATA_FORMATS = ("synthetic", "csv", "libsvm", "criteo", "parquet", "orc")
DENSE_OPTIMIZERS = ("rmsprop", "adam", "adagrad", "sgd")
EMBEDDING_OPTIMIZERS = ("row_wise_adagrad", "adagrad", "sgd", "adam")
LR_DECAYS = ("none", "linear", "cosine", "exponential")
SHARDING_TYPES = ("table_wise", "data_parallel", "row_wise", "column_wise", "table_row_wise")
TASKS = ("ctr", "esmm")
DEVICES = ("auto", "cpu", "cuda")
EVICTED_ROW_INITS = ("table_init", "zero")
PRECISIONS = ("auto", "fp32", "bf16")
DENSE_TRANSFORMS = ("log1p", "none")
EVICTION_POLICIES = ("distance_lfu", "lfu", "lru")
OWN_RANKMIXER_FIELDS = {"d_model", "num_tokens", "num_layers", "ffn_mult", "dropout"}


def _positive(key: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{key} ({value!r}) must be > 0")


def _non_negative(key: str, value: float) -> None:
    if value < 0:
        raise ValueError(f"{key} ({value!r}) must be >= 0")


def _choice(key: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{key} ({value!r}) must be one of {list(choices)}")


@dataclass
class ModelSettings:
    """DLRM_RankMixer size and heads (see docs/training.md, section ``model``)."""

    embedding_dim: int = 16
    d_model: Optional[int] = None
    num_tokens: Optional[int] = None
    num_layers: int = 2
    ffn_mult: int = 4
    dropout: float = 0.0
    tokenization: Optional[str] = None
    feature_groups: Optional[Dict[str, List[str]]] = None
    dense_arch_layer_sizes: List[int] = field(default_factory=lambda: [64, 16])
    over_arch_layer_sizes: List[int] = field(default_factory=lambda: [64, 1])
    task: str = "ctr"
    tower_layer_sizes: List[int] = field(default_factory=lambda: [64])
    cvr_loss_weight: float = 0.0
    rankmixer: Dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        for k in ("embedding_dim", "num_layers", "ffn_mult"):
            _positive(f"model.{k}", getattr(self, k))
        for k in ("d_model", "num_tokens"):
            if getattr(self, k) is not None:
                _positive(f"model.{k}", getattr(self, k))
        if (self.d_model is None) != (self.num_tokens is None):
            raise ValueError(
                f"model.d_model ({self.d_model}) and model.num_tokens ({self.num_tokens}) "
                "must be set together (or both left unset for the automatic size)"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout ({self.dropout}) must be in [0, 1)")
        _choice("model.task", self.task, TASKS)
        for k in ("dense_arch_layer_sizes", "over_arch_layer_sizes", "tower_layer_sizes"):
            sizes = getattr(self, k)
            if any(s < 1 for s in sizes):
                raise ValueError(f"model.{k} ({sizes}) must hold positive ints")
        if not self.dense_arch_layer_sizes:
            raise ValueError("model.dense_arch_layer_sizes ([]) must not be empty")
        if len(self.over_arch_layer_sizes) < 2:
            raise ValueError(
                f"model.over_arch_layer_sizes ({self.over_arch_layer_sizes}) needs >= 2 sizes"
            )
        _non_negative("model.cvr_loss_weight", self.cvr_loss_weight)
        known = {f.name for f in fields(RankMixerConfig)} - OWN_RANKMIXER_FIELDS
        unknown = sorted(set(self.rankmixer) - known)
        if unknown:
            raise ValueError(
                f"model.rankmixer names {unknown}, which are not RankMixerConfig fields "
                f"settable here (model.* sets {sorted(OWN_RANKMIXER_FIELDS)}); known: {sorted(known)}"
            )


@dataclass
class SyntheticSettings:
    """Built-in synthetic data (:class:`~torchrec_rankmixer.data.synthetic.SyntheticClickData`;
    the defaults are that class's)."""

    num_sparse_features: int = SyntheticClickData.num_sparse_features
    num_embeddings: int = SyntheticClickData.num_embeddings
    dense_in_features: int = SyntheticClickData.dense_in_features
    num_interactions: int = SyntheticClickData.num_interactions
    ids_per_feature: int = SyntheticClickData.ids_per_feature
    seed: int = SyntheticClickData.seed


@dataclass
class ManagedCollisionSettings:
    """``data.id_transform=managed_collision``: TorchRec ZCH remapping of raw ids
    (:class:`~torchrec_rankmixer.features.managed_collision.ManagedCollisionRemapper`);
    each managed table's rows (``data.num_embeddings`` / ``data.table_sizes``, synthetic:
    ``data.synthetic.num_embeddings``) are its ``zch_size``."""

    eviction_policy: str = "distance_lfu"
    eviction_interval: int = 1
    decay_exponent: float = 1.0
    input_hash_size: Optional[int] = None
    reset_evicted_rows: bool = True
    evicted_row_init: str = "table_init"

    def validate(self) -> None:
        _choice("data.managed_collision.eviction_policy", self.eviction_policy, EVICTION_POLICIES)
        _choice("data.managed_collision.evicted_row_init", self.evicted_row_init, EVICTED_ROW_INITS)
        _positive("data.managed_collision.eviction_interval", self.eviction_interval)
        _positive("data.managed_collision.decay_exponent", self.decay_exponent)
        if self.input_hash_size is not None and self.input_hash_size < 2:
            raise ValueError(f"data.managed_collision.input_hash_size ({self.input_hash_size}) must be >= 2")


@dataclass
class DataSettings:
    """Where batches come from (see docs/training.md, section ``data``)."""

    format: str = "synthetic"
    train_files: List[str] = field(default_factory=list)
    eval_files: List[str] = field(default_factory=list)
    batch_size: int = 256
    eval_batch_size: int = 1024
    eval_batches: int = 10
    synthetic: SyntheticSettings = field(default_factory=SyntheticSettings)
    label_column: str = "label"
    label2_column: Optional[str] = None
    user_column: Optional[str] = None
    sparse_columns: List[str] = field(default_factory=list)
    dense_columns: List[str] = field(default_factory=list)
    num_embeddings: int = 100_000
    table_sizes: Dict[str, int] = field(default_factory=dict)
    id_transform: str = "hash"
    managed_collision: ManagedCollisionSettings = field(default_factory=ManagedCollisionSettings)
    dense_transform: str = "log1p"
    bucket_boundaries: Dict[str, List[float]] = field(default_factory=dict)
    delimiter: str = ","
    max_malformed_fraction: float = 0.01

    def validate(self) -> None:
        _choice("data.format", self.format, DATA_FORMATS)
        for k in ("batch_size", "eval_batch_size", "num_embeddings"):
            _positive(f"data.{k}", getattr(self, k))
        _non_negative("data.eval_batches", self.eval_batches)
        _choice("data.dense_transform", self.dense_transform, DENSE_TRANSFORMS)
        _choice("data.id_transform", self.id_transform, ID_TRANSFORMS)
        self.managed_collision.validate()
        if self.id_transform == "managed_collision":
            sizes = {"synthetic.num_embeddings": self.synthetic.num_embeddings} if self.format == "synthetic" else {
                "num_embeddings": self.num_embeddings, **{f"table_sizes.{k}": v for k, v in self.table_sizes.items()}}
            for key, rows in sizes.items():
                if rows < 2:
                    raise ValueError(
                        f"data.{key} ({rows}) must be >= 2 with data.id_transform='managed_collision' "
                        "(one id slot plus the shared slot of unadmitted ids)"
                    )
        if not 0.0 <= self.max_malformed_fraction <= 1.0:
            raise ValueError(
                f"data.max_malformed_fraction ({self.max_malformed_fraction}) must be in [0, 1]"
            )
        for name, rows in self.table_sizes.items():
            _positive(f"data.table_sizes.{name}", rows)
        for name, bounds in self.bucket_boundaries.items():
            if not bounds or any(a >= b for a, b in zip(bounds, bounds[1:])):
                raise ValueError(
                    f"data.bucket_boundaries.{name} ({bounds}) must be a non-empty, "
                    "strictly increasing list"
                )
        s = self.synthetic
        for k in ("num_sparse_features", "num_embeddings", "ids_per_feature"):
            _positive(f"data.synthetic.{k}", getattr(s, k))
        for k in ("dense_in_features", "num_interactions"):
            _non_negative(f"data.synthetic.{k}", getattr(s, k))
        if self.format != "synthetic":
            if not self.train_files:
                raise ValueError(f"data.train_files is empty; data.format={self.format!r} needs files")
            if self.format in ("csv", "libsvm", "parquet", "orc") and not self.sparse_columns:
                raise ValueError(
                    f"data.sparse_columns is empty; data.format={self.format!r} needs the "
                    "categorical column names"
                )


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
    warmup_steps: int = 50
    decay: str = "none"
    decay_steps: Optional[int] = None
    min_lr_ratio: float = 0.0
    grad_clip_norm: Optional[float] = 1.0

    def validate(self) -> None:
        _choice("optim.dense", self.dense, DENSE_OPTIMIZERS)
        _choice("optim.embedding", self.embedding, EMBEDDING_OPTIMIZERS)
        _choice("optim.decay", self.decay, LR_DECAYS)
        for k in ("lr", "embedding_lr", "eps", "embedding_eps"):
            _positive(f"optim.{k}", getattr(self, k))
        for k in ("weight_decay", "momentum", "warmup_steps"):
            _non_negative(f"optim.{k}", getattr(self, k))
        if self.decay_steps is not None:
            _positive("optim.decay_steps", self.decay_steps)
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"optim.min_lr_ratio ({self.min_lr_ratio}) must be in [0, 1]")
        if self.grad_clip_norm is not None:
            _positive("optim.grad_clip_norm", self.grad_clip_norm)


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
            _choice("sharding.sharding_types", t, SHARDING_TYPES)
        for table, types in self.constraints.items():
            for t in types:
                _choice(f"sharding.constraints.{table}", t, SHARDING_TYPES)
        if self.hbm_gb is not None:
            _positive("sharding.hbm_gb", self.hbm_gb)


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
    calibrate_moe_batches: int = 16

    def validate(self) -> None:
        _positive("train.steps", self.steps)
        _non_negative("train.calibrate_moe_batches", self.calibrate_moe_batches)
        if self.num_threads is not None:
            _positive("train.num_threads", self.num_threads)
        _non_negative("train.eval_every", self.eval_every)
        _positive("train.log_every", self.log_every)
        _choice("train.device", self.device, DEVICES)
        _choice("train.precision", self.precision, PRECISIONS)


@dataclass
class RunSettings:
    """Output directory, checkpoints, TensorBoard, plots."""

    out_dir: str = "runs"
    name: Optional[str] = None
    checkpoint_every: int = 0
    save_final: bool = True
    resume: Optional[str] = None
    tensorboard: bool = True
    plots: bool = True

    def validate(self) -> None:
        _non_negative("run.checkpoint_every", self.checkpoint_every)
        if not self.out_dir:
            raise ValueError("run.out_dir ('') must name a directory")


@dataclass
class TrainConfig:
    """All settings of one training run.

    Example::

        >>> cfg = load_config(overrides=["model.d_model=64", "model.num_tokens=8"])
        >>> cfg.model.d_model, cfg.optim.dense, cfg.optim.lr
        (64, 'rmsprop', 0.001)
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
        if self.model.task == "esmm" and self.data.format != "synthetic" and not self.data.label2_column:
            raise ValueError("model.task ('esmm') needs data.label2_column (the conversion label)")
        interval = self.data.managed_collision.eviction_interval
        if (self.data.id_transform == "managed_collision" and self.run.checkpoint_every
                and self.run.checkpoint_every % interval):
            raise ValueError(
                f"run.checkpoint_every ({self.run.checkpoint_every}) must be a multiple of "
                f"data.managed_collision.eviction_interval ({interval}), so that checkpoints hold "
                "no ids pending in the eviction history (exact resume)"
            )
        if self.model.task == "ctr" and self.model.cvr_loss_weight > 0:
            raise ValueError(
                f"model.cvr_loss_weight ({self.model.cvr_loss_weight}) needs model.task='esmm'"
            )
        return self


def load_config(path: Optional[str] = None, overrides: Optional[List[str]] = None) -> TrainConfig:
    """Defaults, then the YAML/JSON file at ``path``, then ``section.key=value`` overrides.

    Args:
        path: optional settings file.
        overrides: e.g. ``["model.d_model=64", "optim.dense=adam"]``.
    """
    data = load_file(path) if path else {}
    for assignment in overrides or []:
        apply_override(data, assignment)
    return from_dict(TrainConfig, data).validate()
