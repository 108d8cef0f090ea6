"""ModelSpec: the one serialisable recipe of a :class:`DLRM_RankMixer` (weights excluded).

The spec holds exactly what shapes the model's parameters: the embedding tables, the
dense arch, the :class:`RankMixerConfig`, the token plan (tokenization mode, groups,
dense tokens), the heads (one over-arch, or ESMM's two towers) and, for behaviour
sequences, the EmbeddingCollection tables and their :class:`SequenceFeatureConfig`.
``rankmixer-train`` writes it to ``<run>/spec.json`` before the first step; export,
checkpoints and artifacts carry it, and :meth:`ModelSpec.build` makes the model from it.

JSON layout (``ModelSpec.to_dict()``; version 2)::

    {"spec_version": 2,
     "tables": [{"name": "t_f0", "embedding_dim": 16, "num_embeddings": 200,
                 "feature_names": ["f0"], "pooling": "SUM"}, ...],
     "dense_in_features": 4, "dense_arch_layer_sizes": [32, 16],
     "rankmixer_config": {"d_model": 64, "num_tokens": 8, ...every field...},
     "task": "ctr", "over_arch_layer_sizes": [32, 1], "tower_layer_sizes": null,
     "tokenization": "auto", "feature_groups": null, "num_dense_tokens": 1,
     "interaction": "dot", "dcn_num_layers": null, "dcn_low_rank_dim": null, "deep": null,
     "sequence_tables": [], "sequence_features": [], "over_arch_init": "xavier",
     "dot_norm": "batch"}

``feature_groups`` is a list of ``[group_name, [feature, ...]]`` pairs (group order is
token order, and JSON writers may sort object keys). Version-1 specs (torchrec-rankmixer
0.1 artifacts and model files) are read too (models/spec_upgrade.py).
"""

import json
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from torchrec_rankmixer.config import RankMixerConfig
from torchrec_rankmixer.features.grouping import MODES
from torchrec_rankmixer.features.sequence import SequenceFeatureConfig
from torchrec_rankmixer.models.baselines import ARCHS, BaselineConfig, BaselineModel
from torchrec_rankmixer.models.defaults import DEFAULT_OVER_ARCH_INIT
from torchrec_rankmixer.models.heads import TASKS, TaskTowers
from torchrec_rankmixer.models.spec_upgrade import upgrade_v1
from torchrec_rankmixer.models.table_spec import TableSpec
from torchrec_rankmixer.modules.deep import INITS, DeepConfig
from torchrec_rankmixer.modules.interaction import DOT_NORMS, INTERACTIONS, resolve_cross, resolve_dot_norm
from torchrec_rankmixer.utils.checks import (
    check_choice,
    check_layer_sizes,
    check_non_negative_int,
    check_positive_int,
)

SPEC_VERSION = 2


def _tables(value: Sequence[Any]) -> Tuple[TableSpec, ...]:
    return tuple(t if isinstance(t, TableSpec) else TableSpec(**t) for t in value)


def _sizes(name: str, value: Optional[Sequence[int]], min_len: int) -> Optional[Tuple[int, ...]]:
    if value is None:
        return None
    check_layer_sizes(name, value, min_len)
    return tuple(value)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a :class:`DLRM_RankMixer` (weights excluded).

    Args:
        tables: the EmbeddingBagCollection's tables, in order.
        dense_in_features: dense input width (0: no dense input).
        dense_arch_layer_sizes: DenseArch MLP sizes (empty when there is no dense input).
        rankmixer_config: the encoder's :class:`RankMixerConfig` (or a mapping of its fields).
        task: ``"ctr"`` (the over-arch gives the logits) or ``"esmm"`` (CTR and CVR
            towers: logits [B, 2] = (CTR, CVR); CTCVR = sigmoid(CTR) * sigmoid(CVR)).
        over_arch_layer_sizes: ``task="ctr"``: OverArch sizes, the last is the number of
            logits (as DLRM_DCN). None for ESMM.
        tower_layer_sizes: ``task="esmm"``: hidden sizes of each tower (each ends in one
            logit). None for CTR.
        tokenization: ``"groups"``, ``"auto"`` or ``"split"`` (features/grouping.py).
        feature_groups: group -> feature names (``"groups"``/``"split"``) or None.
        num_dense_tokens: tokens made from the dense arch output.
        interaction: what joins the pooled tokens (modules/interaction.py): ``"dot"``
            (pairwise dot products of the embeddings), ``"cross"`` (DCN-V2 cross layers),
            ``"dot_cross"`` (both) or ``"none"``. A spec without the key (written before
            the setting existed) means ``"none"``.
        dcn_num_layers: cross layers of a ``"cross"`` / ``"dot_cross"`` interaction (None:
            3); must be None without cross layers.
        dcn_low_rank_dim: rank of each cross layer (None: 512); as ``dcn_num_layers``.
        deep: the parallel deep branch's :class:`DeepConfig` (or a mapping of its fields);
            None: no branch (and the meaning of a spec without the key).
        sequence_tables: the sequence EmbeddingCollection's tables (empty: none).
        sequence_features: one :class:`SequenceFeatureConfig` per sequence feature.
        arch: ``"rankmixer"`` (DLRM_RankMixer, the default) or a baseline of
            models/baselines.py (``"dnn"``, ``"dcnv2"``, ``"dlrm"``, ``"dlrm_dcn"``) trained on
            the same tables for comparison, with the same ``over_arch_layer_sizes`` and
            ``dense_arch_layer_sizes`` (``dlrm`` / ``dlrm_dcn`` only), ``baseline`` settings
            and no ``rankmixer_config``, CTR task only.
        baseline: the baseline's :class:`BaselineConfig` (``arch`` != ``"rankmixer"``).
        over_arch_init: ``DLRM_RankMixer``'s head init, ``"xavier"`` or ``"torch"``
            (its ``over_arch_init``); it shapes no parameter, but a model built from the
            spec trains as the recorded one did. A spec without the key means the default.
        dot_norm: how the dot products reach their projection, ``"batch"`` (raw and
            BatchNorm'd, side by side) or ``"none"``; ``"batch"`` needs dot products. A
            spec without the key (written before the setting existed) means ``"none"``.

    Example::

        >>> spec = ModelSpec(
        ...     tables=(TableSpec("t0", 8, 50, ("f0",)), TableSpec("t1", 8, 50, ("f1",))),
        ...     dense_in_features=3, dense_arch_layer_sizes=(16, 8),
        ...     rankmixer_config={"d_model": 18, "num_tokens": 3, "num_layers": 1},
        ...     over_arch_layer_sizes=(16, 1))
        >>> model = spec.build()
        >>> ModelSpec.from_json(spec.to_json()) == spec == ModelSpec.from_model(model)
        True
    """

    tables: Tuple[TableSpec, ...]
    dense_in_features: int
    dense_arch_layer_sizes: Tuple[int, ...]
    rankmixer_config: Optional[RankMixerConfig] = None
    task: str = "ctr"
    over_arch_layer_sizes: Optional[Tuple[int, ...]] = None
    tower_layer_sizes: Optional[Tuple[int, ...]] = None
    tokenization: str = "auto"
    feature_groups: Optional[Mapping[str, Tuple[str, ...]]] = None
    num_dense_tokens: int = 1
    interaction: str = "none"
    dcn_num_layers: Optional[int] = None
    dcn_low_rank_dim: Optional[int] = None
    deep: Optional[DeepConfig] = None
    sequence_tables: Tuple[TableSpec, ...] = ()
    sequence_features: Tuple[SequenceFeatureConfig, ...] = ()
    arch: str = "rankmixer"
    baseline: Optional[BaselineConfig] = None
    over_arch_init: str = DEFAULT_OVER_ARCH_INIT
    dot_norm: str = "none"

    def __post_init__(self) -> None:
        if len(self.tables) == 0:
            raise ValueError("tables is empty: a DLRM_RankMixer needs at least one embedding table")
        object.__setattr__(self, "tables", _tables(self.tables))
        object.__setattr__(self, "sequence_tables", _tables(self.sequence_tables))
        object.__setattr__(self, "sequence_features", tuple(
            c if isinstance(c, SequenceFeatureConfig) else SequenceFeatureConfig(**c)
            for c in self.sequence_features))
        check_non_negative_int("dense_in_features", self.dense_in_features)
        check_positive_int("num_dense_tokens", self.num_dense_tokens)
        object.__setattr__(self, "dense_arch_layer_sizes", tuple(self.dense_arch_layer_sizes))
        check_choice("task", self.task, TASKS)
        check_choice("tokenization", self.tokenization, MODES)
        check_choice("interaction", self.interaction, INTERACTIONS)
        check_choice("arch", self.arch, ARCHS)
        check_choice("over_arch_init", self.over_arch_init, INITS)
        check_choice("dot_norm", self.dot_norm, DOT_NORMS)
        if self.arch != "rankmixer":
            self._check_baseline()
            return
        if self.dense_in_features > 0:
            check_layer_sizes("dense_arch_layer_sizes", self.dense_arch_layer_sizes)
        if self.baseline is not None:
            raise ValueError("baseline sizes are for arch != 'rankmixer'")
        if self.rankmixer_config is None:
            raise ValueError("arch 'rankmixer' needs rankmixer_config")
        if isinstance(self.deep, Mapping):
            object.__setattr__(self, "deep", DeepConfig(**self.deep))
        layers, rank = resolve_cross(self.interaction, self.dcn_num_layers, self.dcn_low_rank_dim)
        resolve_dot_norm(self.dot_norm, self.interaction)  # "batch" needs dot products
        object.__setattr__(self, "dcn_num_layers", layers)
        object.__setattr__(self, "dcn_low_rank_dim", rank)
        if self.task == "ctr":
            if self.tower_layer_sizes is not None:
                raise ValueError(f"tower_layer_sizes ({list(self.tower_layer_sizes)}) are ESMM's; task is 'ctr'")
            if self.over_arch_layer_sizes is None:
                raise ValueError("task 'ctr' needs over_arch_layer_sizes (hidden..., num_logits)")
            object.__setattr__(self, "over_arch_layer_sizes", _sizes("over_arch_layer_sizes", self.over_arch_layer_sizes, 2))
        else:
            if self.over_arch_layer_sizes is not None:
                raise ValueError(
                    f"over_arch_layer_sizes ({list(self.over_arch_layer_sizes)}) are for task 'ctr'; "
                    "ESMM's towers take tower_layer_sizes"
                )
            object.__setattr__(self, "tower_layer_sizes", _sizes("tower_layer_sizes", self.tower_layer_sizes or (), 0))
        if self.feature_groups is not None:
            pairs = (self.feature_groups.items() if isinstance(self.feature_groups, Mapping)
                     else self.feature_groups)  # [[name, features], ...] as in to_dict()
            object.__setattr__(self, "feature_groups", {str(k): tuple(v) for k, v in pairs})
        config = self.rankmixer_config
        if config is not None and not isinstance(config, RankMixerConfig):
            known = {f.name for f in fields(RankMixerConfig)}
            unknown = sorted(set(config) - known)
            if unknown:
                raise ValueError(
                    f"rankmixer_config has unknown field(s) {unknown}; this torchrec_rankmixer "
                    f"knows {sorted(known)}"
                )
            object.__setattr__(self, "rankmixer_config", RankMixerConfig(**config))
        if bool(self.sequence_tables) != bool(self.sequence_features):
            raise ValueError("sequence_tables and sequence_features must be given together")

    def _check_baseline(self) -> None:
        baseline = self.baseline if self.baseline is not None else BaselineConfig()
        if isinstance(baseline, Mapping):
            baseline = BaselineConfig(**baseline)
        object.__setattr__(self, "baseline", baseline)
        extra = [name for name, value in (("rankmixer_config", self.rankmixer_config),
                                          ("tower_layer_sizes", self.tower_layer_sizes),
                                          ("sequence_tables", self.sequence_tables or None),
                                          ("interaction", None if self.interaction == "none" else self.interaction),
                                          ("dcn_num_layers", self.dcn_num_layers),
                                          ("dcn_low_rank_dim", self.dcn_low_rank_dim),
                                          ("deep", self.deep),
                                          ("over_arch_init", None if self.over_arch_init == DEFAULT_OVER_ARCH_INIT
                                           else self.over_arch_init),
                                          ("dot_norm", None if self.dot_norm == "none" else self.dot_norm))
                 if value is not None]
        if extra or self.task != "ctr":
            raise ValueError(f"arch {self.arch!r} (a baseline) takes the CTR task and no RankMixer, tower or "
                             f"sequence settings; got {extra or ['task ' + repr(self.task)]}")
        if self.over_arch_layer_sizes is None:
            raise ValueError(f"arch {self.arch!r} needs over_arch_layer_sizes (hidden..., num_logits)")
        object.__setattr__(self, "over_arch_layer_sizes", _sizes("over_arch_layer_sizes", self.over_arch_layer_sizes, 1))

    # ------------------------------------------------------------------ derived
    @property
    def feature_names(self) -> List[str]:
        """The KJT's keys: the EBC's features (KeyedTensor order), then the sequences'."""
        return [f for t in self.tables + self.sequence_tables for f in t.feature_names]

    @property
    def num_embeddings(self) -> List[int]:
        """Table rows per feature, aligned with :attr:`feature_names`."""
        return [t.num_embeddings for t in self.tables + self.sequence_tables for _ in t.feature_names]

    @property
    def num_logits(self) -> int:
        if self.task == "esmm":
            return 2
        return 1 if self.over_arch_layer_sizes is None else self.over_arch_layer_sizes[-1]

    # ------------------------------------------------------------------ build
    def build(
        self, device: Optional[torch.device] = None, validate_inputs: bool = True,
        table_device: Optional[torch.device] = None,
    ) -> nn.Module:
        """A freshly initialised :class:`DLRM_RankMixer` of this shape.

        Args:
            device: device of the dense parameters (``"meta"`` works).
            validate_inputs: passed to the model (eager input checks in forward).
            table_device: device of the embedding tables (default: ``device``); training
                passes ``"meta"`` so DistributedModelParallel materialises them sharded.
        """
        from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

        from torchrec_rankmixer.models.dlrm_rankmixer import DLRM_RankMixer

        tables_on = device if table_device is None else table_device
        ebc = EmbeddingBagCollection(tables=[t.to_config() for t in self.tables], device=tables_on)
        if self.arch != "rankmixer":
            assert self.over_arch_layer_sizes is not None  # a baseline has them (_check_baseline)
            return BaselineModel(self.arch, ebc, self.dense_in_features, self.over_arch_layer_sizes,
                                 self.dense_arch_layer_sizes, self.baseline or BaselineConfig(), device,
                                 validate_inputs)
        ec = None
        if self.sequence_tables:
            ec = EmbeddingCollection(tables=[t.to_sequence_config() for t in self.sequence_tables], device=tables_on)
        config = self.rankmixer_config
        assert config is not None  # arch 'rankmixer' has one (__post_init__)
        over_arch = None
        if self.task == "esmm":
            assert self.tower_layer_sizes is not None  # set in __post_init__
            over_arch = TaskTowers(config.output_dim, list(self.tower_layer_sizes), 2, device)
        return DLRM_RankMixer(
            embedding_bag_collection=ebc,
            dense_in_features=self.dense_in_features,
            dense_arch_layer_sizes=list(self.dense_arch_layer_sizes),
            over_arch_layer_sizes=list(self.over_arch_layer_sizes) if self.over_arch_layer_sizes else None,
            dense_device=device,
            rankmixer_config=config,
            feature_groups=self.feature_groups,
            tokenization=self.tokenization,
            num_dense_tokens=self.num_dense_tokens,
            interaction=self.interaction,
            dot_norm=self.dot_norm,
            dcn_num_layers=self.dcn_num_layers,
            dcn_low_rank_dim=self.dcn_low_rank_dim,
            deep=self.deep,
            validate_inputs=validate_inputs,
            sequence_embedding_collection=ec,
            sequence_features=list(self.sequence_features) or None,
            over_arch=over_arch,
            over_arch_init=self.over_arch_init,
        )

    # ------------------------------------------------------------------ (de)serialise
    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON types only (lists, dicts, str, int, float, bool, None)."""
        out: Dict[str, Any] = {"spec_version": SPEC_VERSION}
        for f in fields(self):
            out[f.name] = getattr(self, f.name)
        out["tables"] = [dict(asdict(t), feature_names=list(t.feature_names)) for t in self.tables]
        out["sequence_tables"] = [dict(asdict(t), feature_names=list(t.feature_names)) for t in self.sequence_tables]
        out["sequence_features"] = [asdict(c) for c in self.sequence_features]
        out["rankmixer_config"] = None if self.rankmixer_config is None else asdict(self.rankmixer_config)
        out["baseline"] = None if self.baseline is None else asdict(self.baseline)
        out["deep"] = None if self.deep is None else dict(asdict(self.deep), layer_sizes=list(self.deep.layer_sizes))
        for key in ("dense_arch_layer_sizes", "over_arch_layer_sizes", "tower_layer_sizes"):
            out[key] = None if out[key] is None else list(out[key])
        if self.feature_groups is not None:
            out["feature_groups"] = [[k, list(v)] for k, v in self.feature_groups.items()]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelSpec":
        """Inverse of :meth:`to_dict` (version 1 is upgraded); unknown or missing keys
        raise ValueError."""
        data = dict(data)
        version = data.pop("spec_version", None)
        if version == 1:
            data = upgrade_v1(data)
        elif version != SPEC_VERSION:
            raise ValueError(f"spec_version ({version!r}) must be 1 or {SPEC_VERSION}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"model spec has unknown key(s) {unknown}")
        missing = sorted({f.name for f in fields(cls) if f.default is MISSING} - set(data))
        if missing:
            raise ValueError(f"model spec lacks key(s) {missing}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"model spec is not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise ValueError(f"model spec must be a JSON object, got {type(data).__name__}")
        return cls.from_dict(data)

    # ------------------------------------------------------------------ from a model
    @classmethod
    def from_model(cls, model: nn.Module) -> "ModelSpec":
        """Read the spec off a built :class:`DLRM_RankMixer` (plain or inside DMP).

        Every field is read from what the model recorded at construction (tables, token
        plan, heads); nothing is inferred by trial.
        """
        model = unwrap_model(model)
        recipe = getattr(model, "recipe", None)
        if recipe is None:
            raise ValueError(f"{type(model).__name__} is not a DLRM_RankMixer (it has no recipe)")
        return cls(**recipe())


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
