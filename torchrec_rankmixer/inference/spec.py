"""ModelSpec: the small JSON-serialisable recipe that rebuilds a DLRM_RankMixer.

A checkpoint or an exported artifact carries a ``ModelSpec`` next to its weights, so
loading needs neither the training script nor its config files. The spec holds exactly
the constructor arguments of :class:`DLRM_RankMixer` that shape parameters: the
embedding tables, the dense/over-arch sizes, every :class:`RankMixerConfig` field and
the token plan (groups / mode / dense tokens).

JSON layout (``ModelSpec.to_dict()``)::

    {"spec_version": 1,
     "tables": [{"name": "t_f0", "embedding_dim": 16, "num_embeddings": 200,
                 "feature_names": ["f0"], "pooling": "SUM"}, ...],
     "dense_in_features": 4, "dense_arch_layer_sizes": [32, 16],
     "over_arch_layer_sizes": [32, 1],
     "rankmixer_config": {"d_model": 64, "num_tokens": 8, ...},
     "tokenization": "auto", "feature_groups": null, "num_dense_tokens": 1}

``feature_groups`` is a list of ``[group_name, [feature, ...]]`` pairs (group order is
token order, and JSON writers may sort object keys) or null.
"""

import json
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType

from torchrec_rankmixer.config import RankMixerConfig
from torchrec_rankmixer.features.grouping import plan_tokens
from torchrec_rankmixer.models.heads import TASKS, TaskTowers, attach_esmm_towers

SPEC_VERSION = 1


@dataclass(frozen=True)
class TableSpec:
    """One embedding table (the fields of ``EmbeddingBagConfig`` that shape it).

    Example::

        >>> TableSpec("t", 8, 100, ("a", "b")).to_config().num_embeddings
        100
    """

    name: str
    embedding_dim: int
    num_embeddings: int
    feature_names: Tuple[str, ...]
    pooling: str = "SUM"

    def __post_init__(self) -> None:
        for key in ("embedding_dim", "num_embeddings"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"table {self.name!r}: {key} ({value!r}) must be a positive int")
        if isinstance(self.feature_names, str) or len(self.feature_names) == 0:
            raise ValueError(
                f"table {self.name!r}: feature_names ({self.feature_names!r}) must be a "
                "non-empty list of names"
            )
        if self.pooling not in PoolingType.__members__:
            raise ValueError(
                f"table {self.name!r}: pooling ({self.pooling!r}) must be one of "
                f"{list(PoolingType.__members__)}"
            )
        object.__setattr__(self, "feature_names", tuple(self.feature_names))

    def to_config(self) -> EmbeddingBagConfig:
        """The TorchRec ``EmbeddingBagConfig``."""
        return EmbeddingBagConfig(
            name=self.name,
            embedding_dim=self.embedding_dim,
            num_embeddings=self.num_embeddings,
            feature_names=list(self.feature_names),
            pooling=PoolingType[self.pooling],
        )

    @classmethod
    def from_config(cls, config: EmbeddingBagConfig) -> "TableSpec":
        return cls(
            name=config.name,
            embedding_dim=config.embedding_dim,
            num_embeddings=config.num_embeddings,
            feature_names=tuple(config.feature_names),
            pooling=config.pooling.name,
        )


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a :class:`DLRM_RankMixer` (weights excluded).

    Args:
        tables: the embedding tables, in EmbeddingBagCollection order.
        dense_in_features: dense input width (0: no dense input).
        dense_arch_layer_sizes: DenseArch MLP sizes (empty when there is no dense input).
        over_arch_layer_sizes: OverArch sizes; the last is the number of logits. With
            ``task="esmm"``: the sizes of each of the two task towers (last must be 1).
        rankmixer_config: every :class:`RankMixerConfig` field, by name.
        tokenization: ``"groups"``, ``"auto"`` or ``"split"`` (None: groups if
            ``feature_groups`` else auto, as in the model).
        feature_groups: group -> feature names (``"groups"``/``"split"`` modes) or None.
        num_dense_tokens: tokens made from the dense arch output.
        task: ``"ctr"`` (one logit) or ``"esmm"`` (CTR and CVR towers replace the
            over-arch: logits [B, 2] = (CTR, CVR); CTCVR = sigmoid(CTR) * sigmoid(CVR)).

    Example::

        >>> spec = ModelSpec(
        ...     tables=(TableSpec("t0", 8, 50, ("f0",)), TableSpec("t1", 8, 50, ("f1",))),
        ...     dense_in_features=3, dense_arch_layer_sizes=(16, 8),
        ...     over_arch_layer_sizes=(16, 1),
        ...     rankmixer_config={"d_model": 18, "num_tokens": 3, "num_layers": 1})
        >>> model = spec.build()
        >>> ModelSpec.from_json(spec.to_json()) == spec == ModelSpec.from_model(model)
        True
    """

    tables: Tuple[TableSpec, ...]
    dense_in_features: int
    dense_arch_layer_sizes: Tuple[int, ...]
    over_arch_layer_sizes: Tuple[int, ...]
    rankmixer_config: Mapping[str, Any]
    tokenization: Optional[str] = None
    feature_groups: Optional[Mapping[str, Tuple[str, ...]]] = None
    num_dense_tokens: int = 1
    task: str = "ctr"

    def __post_init__(self) -> None:
        if len(self.tables) == 0:
            raise ValueError("tables is empty: a DLRM_RankMixer needs at least one table")
        tables = tuple(t if isinstance(t, TableSpec) else TableSpec(**t) for t in self.tables)
        object.__setattr__(self, "tables", tables)
        object.__setattr__(self, "dense_arch_layer_sizes", tuple(self.dense_arch_layer_sizes))
        object.__setattr__(self, "over_arch_layer_sizes", tuple(self.over_arch_layer_sizes))
        if self.task not in TASKS:
            raise ValueError(f"task ({self.task!r}) must be one of {list(TASKS)}")
        if self.task == "esmm" and self.over_arch_layer_sizes[-1:] != (1,):
            raise ValueError(
                f"over_arch_layer_sizes ({list(self.over_arch_layer_sizes)}) are the ESMM towers' "
                "sizes and must end in 1 (one logit per tower)"
            )
        if self.feature_groups is not None:
            pairs = (
                self.feature_groups.items()
                if isinstance(self.feature_groups, Mapping)
                else self.feature_groups  # [[name, features], ...] as in to_dict()
            )
            groups = {str(k): tuple(v) for k, v in pairs}
            object.__setattr__(self, "feature_groups", groups)
        object.__setattr__(self, "rankmixer_config", dict(self.rankmixer_config))
        # validate (ValueError names the bad field) and store every field explicitly
        object.__setattr__(self, "rankmixer_config", asdict(self.config()))
        if self.tokenization is None:
            object.__setattr__(self, "tokenization", "groups" if self.feature_groups else "auto")

    # ------------------------------------------------------------------ derived
    def config(self) -> RankMixerConfig:
        """The :class:`RankMixerConfig` (unknown field names raise ValueError)."""
        known = {f.name for f in fields(RankMixerConfig)}
        unknown = sorted(set(self.rankmixer_config) - known)
        if unknown:
            raise ValueError(
                f"rankmixer_config has unknown field(s) {unknown}; this torchrec_rankmixer "
                f"knows {sorted(known)}"
            )
        return RankMixerConfig(**self.rankmixer_config)

    @property
    def feature_names(self) -> List[str]:
        """Sparse features in KeyedTensor (EmbeddingBagCollection) order."""
        return [f for t in self.tables for f in t.feature_names]

    @property
    def num_embeddings(self) -> List[int]:
        """Table rows per feature, aligned with :attr:`feature_names`."""
        return [t.num_embeddings for t in self.tables for _ in t.feature_names]

    @property
    def num_logits(self) -> int:
        return 2 if self.task == "esmm" else self.over_arch_layer_sizes[-1]

    # ------------------------------------------------------------------ build
    def build(self, device: Optional[torch.device] = None, validate_inputs: bool = True) -> nn.Module:
        """A freshly initialised :class:`DLRM_RankMixer` of this shape.

        Args:
            device: device of every parameter (``"meta"`` works, e.g. before DMP).
            validate_inputs: passed to the model (eager input checks in forward).
        """
        from torchrec.modules.embedding_modules import EmbeddingBagCollection

        from torchrec_rankmixer.models.dlrm_rankmixer import DLRM_RankMixer

        ebc = EmbeddingBagCollection(tables=[t.to_config() for t in self.tables], device=device)
        model = DLRM_RankMixer(
            embedding_bag_collection=ebc,
            dense_in_features=self.dense_in_features,
            dense_arch_layer_sizes=list(self.dense_arch_layer_sizes),
            over_arch_layer_sizes=list(self.over_arch_layer_sizes),
            dense_device=device,
            rankmixer_config=self.config(),
            feature_groups=self.feature_groups,
            tokenization=self.tokenization,
            num_dense_tokens=self.num_dense_tokens,
            validate_inputs=validate_inputs,
        )
        if self.task == "esmm":
            attach_esmm_towers(model, list(self.over_arch_layer_sizes[:-1]))
        return model

    # ------------------------------------------------------------------ (de)serialise
    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON types only (lists, dicts, str, int, float, bool, None)."""
        out = asdict(self)
        out["tables"] = [dict(asdict(t), feature_names=list(t.feature_names)) for t in self.tables]
        out["dense_arch_layer_sizes"] = list(self.dense_arch_layer_sizes)
        out["over_arch_layer_sizes"] = list(self.over_arch_layer_sizes)
        if self.feature_groups is not None:
            # [name, features] pairs: group order defines token order, and JSON writers
            # may sort object keys
            out["feature_groups"] = [[k, list(v)] for k, v in self.feature_groups.items()]
        return {"spec_version": SPEC_VERSION, **out}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelSpec":
        """Inverse of :meth:`to_dict`; unknown or missing keys raise ValueError."""
        data = dict(data)
        version = data.pop("spec_version", None)
        if version != SPEC_VERSION:
            raise ValueError(f"spec_version ({version!r}) must be {SPEC_VERSION}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"model spec has unknown key(s) {unknown}")
        required = {f.name for f in fields(cls) if f.default is MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise ValueError(f"model spec lacks key(s) {missing}")
        data["tables"] = tuple(TableSpec(**t) for t in data["tables"])
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        return cls.from_dict(json.loads(text))

    # ------------------------------------------------------------------ from a model
    @classmethod
    def from_model(cls, model: nn.Module) -> "ModelSpec":
        """Read the spec off a built :class:`DLRM_RankMixer` (plain or inside DMP).

        The token plan is recovered from the tokenizer and checked: rebuilding from the
        spec gives the same plan, or ValueError.
        """
        model = unwrap_model(model)
        for attr in ("tokenizer", "encoder", "over_arch", "sparse_arch"):
            if not hasattr(model, attr):
                raise ValueError(
                    f"{type(model).__name__} is not a DLRM_RankMixer (it has no {attr!r})"
                )
        ebc = model.sparse_arch.embedding_bag_collection
        configs = (
            ebc.embedding_bag_configs()
            if hasattr(ebc, "embedding_bag_configs")
            else getattr(ebc, "_embedding_bag_configs")
        )
        tables = tuple(TableSpec.from_config(c) for c in configs)
        dense_sizes: Tuple[int, ...] = ()
        if model.dense_arch is not None:
            dense_sizes = tuple(_linear_out_sizes(model.dense_arch))
        task = "ctr"
        if isinstance(model.over_arch, TaskTowers):
            if len(model.over_arch.towers) != 2:
                raise ValueError(
                    f"over_arch has {len(model.over_arch.towers)} task towers; a ModelSpec "
                    "describes one logit or the 2 ESMM towers (CTR, CVR)"
                )
            task = "esmm"
            over_sizes = tuple(_linear_out_sizes(model.over_arch.towers[0]))
        else:
            over_sizes = tuple(_linear_out_sizes(model.over_arch))
        tok = model.tokenizer
        feature_dims = {f: t.embedding_dim for t in tables for f in t.feature_names}
        mode, groups = _recover_tokenization(tok, feature_dims)
        return cls(
            tables=tables,
            dense_in_features=model.dense_in_features,
            dense_arch_layer_sizes=dense_sizes,
            over_arch_layer_sizes=over_sizes,
            rankmixer_config=asdict(model.config),
            tokenization=mode,
            feature_groups=groups,
            num_dense_tokens=tok.num_dense_tokens if model.dense_in_features > 0 else 1,
            task=task,
        )


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside TorchRec's ``DistributedModelParallel`` (or the model itself).

    Example::

        >>> m = nn.Linear(2, 2)
        >>> unwrap_model(m) is m
        True
    """
    inner = getattr(model, "_dmp_wrapped_module", None)
    while inner is not None:
        model = inner
        inner = getattr(model, "_dmp_wrapped_module", None)
    return model.module if type(model).__name__ == "DistributedDataParallel" else model


def _linear_out_sizes(module: nn.Module) -> List[int]:
    """out_features of every Linear-like child, in order (float or quantized Linear)."""
    sizes = []
    for m in module.modules():
        if isinstance(m, nn.Linear) or type(m).__name__ in ("Linear", "DynamicQuantizedLinear"):
            sizes.append(int(m.out_features))
    return sizes


def _recover_tokenization(
    tok: nn.Module, feature_dims: Mapping[str, int]
) -> Tuple[str, Optional[Dict[str, Tuple[str, ...]]]]:
    """(mode, groups) that rebuild ``tok.plan`` exactly (see :func:`plan_tokens`).

    Tries, in order: ``"auto"``, ``"split"`` without groups, the plan's own groups, and
    ``"split"`` over one group listing the features in the plan's column order (which
    reproduces any grouped split, since only that order matters).
    """
    plan = tok.plan
    starts, start = {}, 0
    for name, dim in feature_dims.items():
        starts[name] = (start, start + dim)
        start += dim
    order: List[str] = []
    for cols in plan.columns:
        for c in cols:
            owner = next(n for n, (lo, hi) in starts.items() if lo <= c < hi)
            if owner not in order:
                order.append(owner)
    candidates: List[Tuple[str, Optional[Dict[str, Tuple[str, ...]]]]] = [
        ("auto", None),
        ("split", None),
        ("groups", {n: tuple(f) for n, f in zip(plan.names, plan.features)}),
        ("split", {"all": tuple(order)}),
    ]
    for mode, groups in candidates:
        try:
            num = None if mode == "groups" else len(plan.columns)
            rebuilt = plan_tokens(feature_dims, num, groups, mode)
        except ValueError:
            continue
        if rebuilt == plan:
            return mode, groups
    raise ValueError(
        f"cannot express the tokenizer's plan {plan.names} as a ModelSpec; "
        "build the model from a ModelSpec to export it"
    )
