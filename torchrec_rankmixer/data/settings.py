"""The ``data`` section of ``rankmixer-train``'s settings: where batches come from.

Every field is documented in docs/training.md (section ``data``). Validation errors are
``ValueError`` naming the dotted key (``data.batch_size``). Training (the ``data``
section of :class:`~torchrec_rankmixer.train.config.TrainConfig`) and export (which reads
a run directory's ``config.yaml``) both use this one class.
"""

from dataclasses import asdict, dataclass, field, fields, make_dataclass
from typing import Any, Dict, List, Optional, Tuple

from torchrec_rankmixer.data.synthetic import SyntheticClickData
from torchrec_rankmixer.data.synthetic_families import ContextRuleData, LatentAffinityData
from torchrec_rankmixer.data.synthetic_sequences import SyntheticSequenceData
from torchrec_rankmixer.features.managed_collision import EVICTION_POLICIES
from torchrec_rankmixer.features.prep import DENSE_TRANSFORMS, ID_TRANSFORMS
from torchrec_rankmixer.utils.checks import (
    check_choice,
    check_float,
    check_non_negative_int,
    check_positive,
    check_positive_int,
)

SYNTHETIC_FORMATS: Tuple[str, ...] = (
    "synthetic", "synthetic_sequences", "synthetic_affinity", "synthetic_context_rules")
DATA_FORMATS: Tuple[str, ...] = (*SYNTHETIC_FORMATS, "csv", "libsvm", "criteo", "criteo_binary", "parquet", "orc")
TEXT_READERS: Tuple[str, ...] = ("vectorised", "reference")
FILE_FORMATS_WITH_COLUMNS: Tuple[str, ...] = ("csv", "libsvm", "parquet", "orc")
EVICTED_ROW_INITS: Tuple[str, ...] = ("table_init", "zero")


def _settings_of(cls: type, name: str, exclude: Tuple[str, ...], prefix: str, doc: str) -> type:
    """A settings dataclass with the fields (names, types, defaults) of data class ``cls``,
    minus ``exclude``; ``validate()`` builds ``cls``, which checks its own arguments, and
    names the failing setting ``<prefix>.<field>``. One source for fields and checks."""

    def validate(self: Any) -> None:
        try:
            cls(**asdict(self))
        except ValueError as e:
            raise ValueError(f"{prefix}.{e}") from e

    members = [(f.name, f.type, field(default=f.default)) for f in fields(cls) if f.name not in exclude]
    return make_dataclass(name, members, namespace={"validate": validate, "__doc__": doc,
                                                    "__module__": __name__})


SyntheticSettings = _settings_of(
    SyntheticClickData, "SyntheticSettings", ("latent_dim", "conversion_label"), "data.synthetic",
    """Built-in synthetic data: the fields of
    :class:`~torchrec_rankmixer.data.synthetic.SyntheticClickData` (same defaults)."""
)
SyntheticSequenceSettings = _settings_of(
    SyntheticSequenceData, "SyntheticSequenceSettings", ("base",), "data.sequences",
    """``data.format=synthetic_sequences``: behaviour sequences on top of ``data.synthetic``,
    the fields of :class:`~torchrec_rankmixer.data.synthetic_sequences.SyntheticSequenceData`
    (same defaults): a candidate ``item`` and a history ``hist_item`` sharing one table."""
)
AffinitySettings = _settings_of(
    LatentAffinityData, "AffinitySettings", (), "data.affinity",
    """``data.format=synthetic_affinity``: the fields of
    :class:`~torchrec_rankmixer.data.synthetic_families.LatentAffinityData` (same defaults)."""
)
ContextRuleSettings = _settings_of(
    ContextRuleData, "ContextRuleSettings", (), "data.context_rules",
    """``data.format=synthetic_context_rules``: the fields of
    :class:`~torchrec_rankmixer.data.synthetic_families.ContextRuleData` (same defaults)."""
)


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
        check_choice("data.managed_collision.eviction_policy", self.eviction_policy, EVICTION_POLICIES)
        check_choice("data.managed_collision.evicted_row_init", self.evicted_row_init, EVICTED_ROW_INITS)
        check_positive_int("data.managed_collision.eviction_interval", self.eviction_interval)
        check_positive("data.managed_collision.decay_exponent", self.decay_exponent)
        if self.input_hash_size is not None and self.input_hash_size < 2:
            raise ValueError(f"data.managed_collision.input_hash_size ({self.input_hash_size}) must be >= 2")


@dataclass
class DataSettings:
    """Where batches come from (see docs/training.md, section ``data``).

    Example::

        >>> d = DataSettings(format="csv", train_files=["a.csv"])
        >>> d.validate()
        Traceback (most recent call last):
        ...
        ValueError: data.sparse_columns is empty; data.format='csv' needs the categorical column names
    """

    format: str = "synthetic"
    train_files: List[str] = field(default_factory=list)
    eval_files: List[str] = field(default_factory=list)
    test_files: List[str] = field(default_factory=list)
    batch_size: int = 256
    eval_batch_size: int = 1024
    eval_batches: int = 10
    test_batches: int = 0
    synthetic: SyntheticSettings = field(default_factory=SyntheticSettings)  # type: ignore[valid-type]
    sequences: SyntheticSequenceSettings = field(default_factory=SyntheticSequenceSettings)  # type: ignore[valid-type]
    affinity: AffinitySettings = field(default_factory=AffinitySettings)  # type: ignore[valid-type]
    context_rules: ContextRuleSettings = field(default_factory=ContextRuleSettings)  # type: ignore[valid-type]
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
    text_reader: str = "vectorised"
    prefetch_batches: int = 8
    read_block_kb: int = 2048

    def validate(self) -> None:
        check_choice("data.format", self.format, DATA_FORMATS)
        for k in ("batch_size", "eval_batch_size", "num_embeddings"):
            check_positive_int(f"data.{k}", getattr(self, k))
        check_non_negative_int("data.eval_batches", self.eval_batches)
        check_non_negative_int("data.test_batches", self.test_batches)
        check_choice("data.dense_transform", self.dense_transform, DENSE_TRANSFORMS)
        check_choice("data.id_transform", self.id_transform, ID_TRANSFORMS)
        self.managed_collision.validate()
        self.synthetic.validate()
        self.sequences.validate()
        self.affinity.validate()
        self.context_rules.validate()
        if self.id_transform == "managed_collision" and self.format == "synthetic_sequences":
            raise ValueError(
                "data.id_transform ('managed_collision') does not support data.format='synthetic_sequences' "
                "(sequence tables are not remapped); use 'hash' or 'none'"
            )
        if self.id_transform == "managed_collision":
            sizes = {"synthetic.num_embeddings": self.synthetic.num_embeddings} if self.format == "synthetic" else {
                "num_embeddings": self.num_embeddings, **{f"table_sizes.{k}": v for k, v in self.table_sizes.items()}}
            for key, rows in sizes.items():
                if rows < 2:
                    raise ValueError(
                        f"data.{key} ({rows}) must be >= 2 with data.id_transform='managed_collision' "
                        "(one id slot plus the shared slot of unadmitted ids)"
                    )
        check_float("data.max_malformed_fraction", self.max_malformed_fraction, 0.0, 1.0, "[]")
        check_choice("data.text_reader", self.text_reader, TEXT_READERS)
        check_non_negative_int("data.prefetch_batches", self.prefetch_batches)
        check_positive_int("data.read_block_kb", self.read_block_kb)
        if self.format == "criteo_binary" and self.dense_transform != "none":
            raise ValueError(
                f"data.dense_transform ({self.dense_transform!r}) must be 'none' with data.format='criteo_binary': "
                "TorchRec's preprocessing already stores log-transformed dense values"
            )
        for name, rows in self.table_sizes.items():
            check_positive_int(f"data.table_sizes.{name}", rows)
        for name, bounds in self.bucket_boundaries.items():
            if not bounds or any(a >= b for a, b in zip(bounds, bounds[1:])):
                raise ValueError(
                    f"data.bucket_boundaries.{name} ({bounds}) must be a non-empty, "
                    "strictly increasing list"
                )
        if self.format not in SYNTHETIC_FORMATS:
            if not self.train_files:
                raise ValueError(f"data.train_files is empty; data.format={self.format!r} needs files")
            if self.format in FILE_FORMATS_WITH_COLUMNS and not self.sparse_columns:
                raise ValueError(
                    f"data.sparse_columns is empty; data.format={self.format!r} needs the "
                    "categorical column names"
                )
