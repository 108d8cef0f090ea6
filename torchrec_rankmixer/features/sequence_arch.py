"""SequenceArch: a TorchRec EmbeddingCollection (unpooled) + per-feature truncation and pooling.

KJT (all keys) -> EmbeddingCollection -> Dict[str, JaggedTensor] -> truncate/pad to
[B, L, d] -> mean / max / target-attention pooling -> [B, d] per sequence feature,
merged after the EmbeddingBagCollection's KeyedTensor so the SemanticTokenizer sees the
pooled sequences as ordinary features (place them in a group or give them a token).

The EmbeddingCollection is an ordinary TorchRec module: DistributedModelParallel
shards it with ``EmbeddingCollectionSharder`` like any table (see docs/sequences.md).
"""

from typing import Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from torchrec_rankmixer.features.sequence import (
    MaxSequencePooling,
    MeanSequencePooling,
    SequenceFeatureConfig,
    TargetAttentionPooling,
    jagged_index,
    jagged_to_padded,
)


@torch.fx.wrap
def _pad_sequences(
    embedded: Dict[str, JaggedTensor], names: List[str], max_lens: List[int], keeps: List[str]
) -> List[torch.Tensor]:
    """[padded_0, mask_0, padded_1, mask_1, ...]; waits on a sharded module's awaitable."""
    jt_dict = dict(embedded.items())  # a LazyAwaitable (sharded EC) waits here
    out: List[torch.Tensor] = []
    for name, max_len, keep in zip(names, max_lens, keeps):
        jt = jt_dict[name]
        padded, mask = jagged_to_padded(jt.values(), jt.lengths(), max_len, keep)
        out.extend([padded, mask])
    return out


@torch.fx.wrap
def _pooled_column(pooled: KeyedTensor, name: str) -> torch.Tensor:
    return pooled.to_dict()[name]


@torch.fx.wrap
def _merge(pooled: Optional[KeyedTensor], names: List[str], vectors: List[torch.Tensor]) -> KeyedTensor:
    keys, dims, values = list(names), [v.shape[1] for v in vectors], list(vectors)
    if pooled is not None:
        keys = pooled.keys() + keys
        dims = pooled.length_per_key() + dims
        values = [pooled.values()] + values
    return KeyedTensor(keys=keys, length_per_key=dims, values=torch.cat(values, dim=1))


class SequenceArch(nn.Module):
    """Embeds, truncates and pools every sequence feature of an EmbeddingCollection.

    Every feature of the EmbeddingCollection needs exactly one
    :class:`SequenceFeatureConfig` (a candidate id that shares the history's table is
    a sequence of length 1: ``max_len=1, pooling="mean"``).

    Args:
        embedding_collection: the EC (may be on the meta device, for DMP). All its
            tables share one width d (a TorchRec EC requirement).
        sequence_features: one config per EC feature; output order follows this list.
        pooled_feature_dims: feature -> width of the pooled (EBC) features that come in
            with ``forward``; candidates may name them; names must not clash.
        device: device of the attention parameters.

    Shapes:
        features KJT (stride B; extra keys ignored), pooled KeyedTensor [B, W] ->
        KeyedTensor [B, W + S * d] (pooled keys first, then the sequence features).

    Example::

        >>> from torchrec import EmbeddingCollection, EmbeddingConfig, KeyedJaggedTensor
        >>> ec = EmbeddingCollection(tables=[EmbeddingConfig(
        ...     name="item", embedding_dim=8, num_embeddings=100,
        ...     feature_names=["cand", "hist"])])
        >>> arch = SequenceArch(ec, [SequenceFeatureConfig("cand", max_len=1),
        ...     SequenceFeatureConfig("hist", max_len=4, pooling="target", candidate="cand")])
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(keys=["cand", "hist"],
        ...     values=torch.tensor([1, 2, 3, 4, 5, 6, 7]), lengths=torch.tensor([1, 1, 5, 0]))
        >>> out = arch(kjt)
        >>> out.keys(), out.values().shape
        (['cand', 'hist'], torch.Size([2, 16]))
    """

    def __init__(
        self,
        embedding_collection: EmbeddingCollection,
        sequence_features: Sequence[SequenceFeatureConfig],
        pooled_feature_dims: Optional[Mapping[str, int]] = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        pooled_dims = dict(pooled_feature_dims or {})
        configs = list(sequence_features)
        ec_features: List[str] = []
        self.num_embeddings: Dict[str, int] = {}
        for table in embedding_collection.embedding_configs():
            for f in table.feature_names:
                if f in self.num_embeddings:
                    raise ValueError(f"sequence feature {f!r} is in two EmbeddingCollection tables")
                ec_features.append(f)
                self.num_embeddings[f] = table.num_embeddings
        if not ec_features:
            raise ValueError("the sequence EmbeddingCollection has no features")
        names = [c.name for c in configs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"sequence features {dupes} are configured more than once")
        unknown = [n for n in names if n not in self.num_embeddings]
        if unknown:
            raise ValueError(
                f"sequence features {unknown} are not in the EmbeddingCollection ({ec_features})"
            )
        missing = [f for f in ec_features if f not in names]
        if missing:
            raise ValueError(
                f"EmbeddingCollection features {missing} have no SequenceFeatureConfig"
            )
        clash = [n for n in names if n in pooled_dims]
        if clash:
            raise ValueError(f"features {clash} are embedded by both the EBC and the sequence EC")

        dim = embedding_collection.embedding_dim()
        by_name = {c.name: c for c in configs}
        self.poolings = nn.ModuleDict()
        for c in configs:
            if c.pooling == "mean":
                self.poolings[c.name] = MeanSequencePooling()
            elif c.pooling == "max":
                self.poolings[c.name] = MaxSequencePooling()
            else:
                cand = by_name.get(c.candidate)  # type: ignore[arg-type]
                if cand is not None and cand.pooling == "target":
                    raise ValueError(
                        f"candidate {c.candidate!r} of {c.name!r} is itself target-pooled; "
                        "a candidate must be an EBC feature or a mean/max sequence feature"
                    )
                if cand is None and c.candidate not in pooled_dims:
                    raise ValueError(
                        f"candidate {c.candidate!r} of {c.name!r} is neither a sequence feature "
                        f"{names} nor a pooled feature {list(pooled_dims)}"
                    )
                query_dim = dim if cand is not None else pooled_dims[c.candidate]  # type: ignore[index]
                self.poolings[c.name] = TargetAttentionPooling(
                    dim, query_dim, c.attention_hidden, c.attention_normalization, device=device
                )
        self.embedding_collection = embedding_collection
        self.sequence_features = configs
        self.embedding_dim = dim
        self._names = names
        self._max_lens = [c.max_len for c in configs]
        self._keeps = [c.keep for c in configs]
        self._seq_candidate = {c.name: c.candidate in by_name for c in configs}

    @property
    def output_dims(self) -> Dict[str, int]:
        """Sequence feature -> pooled width d, in output order."""
        return {n: self.embedding_dim for n in self._names}

    def forward(
        self, features: KeyedJaggedTensor, pooled: Optional[KeyedTensor] = None
    ) -> KeyedTensor:
        embedded = self.embedding_collection(features)  # Dict[str, JaggedTensor]
        padded = _pad_sequences(embedded, self._names, self._max_lens, self._keeps)
        vectors: Dict[str, torch.Tensor] = {}
        for i, c in enumerate(self.sequence_features):  # non-target first: they may be queries
            if c.pooling != "target":
                vectors[c.name] = self.poolings[c.name](padded[2 * i], padded[2 * i + 1])  # (B, d)
        for i, c in enumerate(self.sequence_features):
            if c.pooling == "target":
                cand: str = c.candidate  # type: ignore[assignment]
                if self._seq_candidate[c.name]:
                    query = vectors[cand]
                elif pooled is None:
                    raise ValueError(f"candidate {cand!r} of {c.name!r} needs the pooled EBC output")
                else:
                    query = _pooled_column(pooled, cand)  # (B, d_q)
                vectors[c.name] = self.poolings[c.name](padded[2 * i], padded[2 * i + 1], query)
        return _merge(pooled, self._names, [vectors[n] for n in self._names])


def build_sequence_arch(
    embedding_collection: Optional[EmbeddingCollection],
    sequence_features: Optional[Sequence[SequenceFeatureConfig]],
    pooled_feature_dims: Mapping[str, int],
    device: torch.device | str | None = None,
) -> Optional[SequenceArch]:
    """A :class:`SequenceArch`, or None when neither argument is given (raises if only one is).

    Example::

        >>> build_sequence_arch(None, None, {"f": 8}) is None
        True
    """
    if embedding_collection is None and not sequence_features:
        return None
    if embedding_collection is None:
        raise ValueError("sequence_features needs sequence_embedding_collection")
    if not sequence_features:
        raise ValueError("sequence_embedding_collection needs sequence_features (one per feature)")
    return SequenceArch(embedding_collection, sequence_features, pooled_feature_dims, device)


def truncate_kjt(
    features: KeyedJaggedTensor, sequence_features: Sequence[SequenceFeatureConfig]
) -> KeyedJaggedTensor:
    """Truncate sequence keys of a KJT by id (before lookup: less lookup and all-to-all).

    Keys without a config pass through unchanged; key order is kept. The model
    truncates again after lookup, so this is an optimisation, not a requirement.

    Example::

        >>> kjt = KeyedJaggedTensor.from_lengths_sync(keys=["f", "hist"],
        ...     values=torch.tensor([9, 1, 2, 3]), lengths=torch.tensor([1, 3]))
        >>> out = truncate_kjt(kjt, [SequenceFeatureConfig("hist", max_len=2)])
        >>> out.values().tolist(), out.lengths().tolist()
        ([9, 2, 3], [1, 2])
    """
    by_name = {c.name: c for c in sequence_features}
    jts = features.to_dict()
    values, lengths, weights = [], [], []
    for key in features.keys():
        jt = jts[key]
        v, n, w = jt.values(), jt.lengths(), jt.weights_or_none()
        if key in by_name:
            c = by_name[key]
            index, mask = jagged_index(n, v.shape[0], c.max_len, c.keep)
            keep_rows = index[mask]  # (N',) chronological, sample after sample
            v, n = v[keep_rows], mask.sum(dim=1).to(n.dtype)
            w = w[keep_rows] if w is not None else None
        values.append(v)
        lengths.append(n)
        weights.append(w)
    has_weights = features.weights_or_none() is not None
    return KeyedJaggedTensor.from_lengths_sync(
        keys=features.keys(),
        values=torch.cat(values),
        lengths=torch.cat(lengths),
        weights=torch.cat(weights) if has_weights else None,  # type: ignore[arg-type]
    )
