"""Behaviour sequences, torch side: config, truncation + padding of jagged rows, pooling.

Conventions (see docs/sequences.md):

- **Order.** Each sample's jagged list is in chronological order: oldest item first,
  most recent item last (the order a behaviour log is appended in). ``keep="recent"``
  keeps the last ``max_len`` items, ``keep="oldest"`` the first ``max_len``.
- **Padding.** Rows are padded to exactly ``max_len`` (a static shape: FX-traceable and
  compile-friendly), left-aligned and in chronological order; ``mask`` marks real items.
  Padding never changes a result: every pooling zeroes padded positions before use.
- **Empty sequences** (length 0) pool to the zero vector, for every pooling type, with
  finite gradients.

Everything here is pure torch, so it runs without TorchRec; the EmbeddingCollection
wrapper is :mod:`torchrec_rankmixer.features.sequence_arch`.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import nn

KEEP_SIDES: Tuple[str, ...] = ("recent", "oldest")
POOLINGS: Tuple[str, ...] = ("mean", "max", "target")
ATTENTION_NORMALIZATIONS: Tuple[str, ...] = ("none", "softmax")


@dataclass(frozen=True)
class SequenceFeatureConfig:
    """How one sequence feature (a key of the EmbeddingCollection) becomes a vector.

    Args:
        name: the KJT key / EmbeddingCollection feature name.
        max_len: L, items kept per sample after truncation (also the padded length).
        keep: ``"recent"`` (last ``max_len`` items) or ``"oldest"`` (first ``max_len``).
        pooling: ``"mean"``, ``"max"`` or ``"target"`` (DIN-style target attention).
        candidate: for ``pooling="target"`` only: the feature whose embedding is the
            query (a feature of the EmbeddingBagCollection, or a non-target sequence
            feature of the EmbeddingCollection, e.g. the candidate item id with
            ``max_len=1``, sharing the history's table).
        attention_hidden: hidden width of the attention MLP (``"target"`` only).
        attention_normalization: ``"none"`` (default; DIN's raw scores, padded positions
            0: keeps "how much" matches) or ``"softmax"`` (weights over real items sum
            to 1). See docs/sequences.md for the measured difference.

    Example::

        >>> SequenceFeatureConfig("hist_item", max_len=20, pooling="target",
        ...                       candidate="item").keep
        'recent'
    """

    name: str
    max_len: int
    keep: str = "recent"
    pooling: str = "mean"
    candidate: Optional[str] = None
    attention_hidden: int = 32
    attention_normalization: str = "none"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"sequence feature name ({self.name!r}) must be a non-empty str")
        if not isinstance(self.max_len, int) or self.max_len < 1:
            raise ValueError(f"max_len ({self.max_len!r}) of {self.name!r} must be a positive int")
        if self.keep not in KEEP_SIDES:
            raise ValueError(f"keep ({self.keep!r}) of {self.name!r} must be one of {list(KEEP_SIDES)}")
        if self.pooling not in POOLINGS:
            raise ValueError(
                f"pooling ({self.pooling!r}) of {self.name!r} must be one of {list(POOLINGS)}"
            )
        if self.pooling == "target":
            if not isinstance(self.candidate, str) or not self.candidate:
                raise ValueError(
                    f"pooling='target' of {self.name!r} needs candidate (the query feature name), "
                    f"got {self.candidate!r}"
                )
            if self.candidate == self.name:
                raise ValueError(f"candidate ({self.candidate!r}) must differ from the sequence itself")
        elif self.candidate is not None:
            raise ValueError(
                f"candidate ({self.candidate!r}) of {self.name!r} is only used by pooling='target', "
                f"not {self.pooling!r}"
            )
        if not isinstance(self.attention_hidden, int) or self.attention_hidden < 1:
            raise ValueError(f"attention_hidden ({self.attention_hidden!r}) must be a positive int")
        if self.attention_normalization not in ATTENTION_NORMALIZATIONS:
            raise ValueError(
                f"attention_normalization ({self.attention_normalization!r}) must be one of "
                f"{list(ATTENTION_NORMALIZATIONS)}"
            )


def _check_jagged(lengths: torch.Tensor, max_len: int, keep: str) -> None:
    if keep not in KEEP_SIDES:
        raise ValueError(f"keep ({keep!r}) must be one of {list(KEEP_SIDES)}")
    if not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len ({max_len!r}) must be a positive int")
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be 1-D [B], got shape {tuple(lengths.shape)}")


@torch.fx.wrap
def jagged_index(
    lengths: torch.Tensor, num_values: int, max_len: int, keep: str
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Which value rows survive truncation, laid out as a padded [B, L] grid.

    Args:
        lengths: [B] items per sample (values are stored sample after sample).
        num_values: N, the number of value rows (``lengths.sum()``).
        max_len: L.
        keep: ``"recent"`` or ``"oldest"``.

    Returns:
        ``index`` [B, L] (long; padded slots point at row N, one past the end) and
        ``mask`` [B, L] (bool, True at real items).

    Example::

        >>> idx, mask = jagged_index(torch.tensor([3, 0, 1]), 4, max_len=2, keep="recent")
        >>> idx.tolist(), mask.tolist()
        ([[1, 2], [4, 4], [3, 4]], [[True, True], [False, False], [True, False]])
    """
    _check_jagged(lengths, max_len, keep)
    lengths = lengths.long()
    offsets = torch.cumsum(lengths, 0) - lengths  # (B,) start of each sample
    kept = lengths.clamp(max=max_len)  # (B,)
    start = offsets + (lengths - kept) if keep == "recent" else offsets  # (B,)
    pos = torch.arange(max_len, device=lengths.device)  # (L,)
    mask = pos.unsqueeze(0) < kept.unsqueeze(1)  # (B, L)
    index = torch.where(mask, start.unsqueeze(1) + pos, torch.full_like(mask, num_values, dtype=torch.long))
    return index, mask


def jagged_to_padded(
    values: torch.Tensor, lengths: torch.Tensor, max_len: int, keep: str = "recent"
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Truncate jagged embeddings and pad them to a dense [B, L, d] (fast path: one gather).

    Args:
        values: [N, d] embeddings of all items, sample after sample.
        lengths: [B] items per sample.
        max_len: L.
        keep: ``"recent"`` (last L items of a sample) or ``"oldest"`` (first L).

    Returns:
        ``padded`` [B, L, d] (padding is 0) and ``mask`` [B, L].

    Example::

        >>> v = torch.arange(4.0).unsqueeze(1)  # items 0, 1, 2 | 3
        >>> padded, mask = jagged_to_padded(v, torch.tensor([3, 1]), max_len=2)
        >>> padded.squeeze(-1).tolist(), mask.tolist()
        ([[1.0, 2.0], [3.0, 0.0]], [[True, True], [True, False]])
    """
    if values.dim() != 2:
        raise ValueError(f"values must be [N, d], got shape {tuple(values.shape)}")
    index, mask = jagged_index(lengths, values.shape[0], max_len, keep)
    rows = torch.cat([values, values.new_zeros(1, values.shape[1])], dim=0)  # (N+1, d), row N = 0
    padded = rows.index_select(0, index.reshape(-1)).reshape(*index.shape, values.shape[1])
    return padded, mask  # (B, L, d), (B, L)


def jagged_to_padded_reference(
    values: torch.Tensor, lengths: torch.Tensor, max_len: int, keep: str = "recent"
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Readable per-sample loop with the same contract as :func:`jagged_to_padded`.

    Example::

        >>> v = torch.arange(4.0).unsqueeze(1)
        >>> jagged_to_padded_reference(v, torch.tensor([3, 1]), 2, "oldest")[0].squeeze(-1).tolist()
        [[0.0, 1.0], [3.0, 0.0]]
    """
    _check_jagged(lengths, max_len, keep)
    batch, dim = lengths.shape[0], values.shape[1]
    padded = values.new_zeros(batch, max_len, dim)
    mask = torch.zeros(batch, max_len, dtype=torch.bool)
    start = 0
    for b, n in enumerate(lengths.tolist()):
        items = values[start : start + n]
        items = items[-max_len:] if keep == "recent" else items[:max_len]
        padded[b, : len(items)] = items
        mask[b, : len(items)] = True
        start += n
    return padded, mask


@torch.fx.wrap  # shape checks are Python control flow: opaque to FX tracing
def _zero_padding(seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if seq.dim() != 3 or mask.shape != seq.shape[:2]:
        raise ValueError(
            f"seq must be [B, L, d] and mask [B, L]; got {tuple(seq.shape)} and {tuple(mask.shape)}"
        )
    return seq.masked_fill(~mask.unsqueeze(-1), 0.0)  # where, not multiply: NaN padding stays out


@torch.fx.wrap
def _lowest(x: torch.Tensor) -> float:
    return torch.finfo(x.dtype).min


@torch.fx.wrap
def _expand_query(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    if query.shape != (keys.shape[0], keys.shape[2]):
        raise ValueError(
            f"query shape {tuple(query.shape)} does not fit seq {tuple(keys.shape)} "
            "(expected [B, d] after the query projection)"
        )
    return query.unsqueeze(1).expand_as(keys)  # (B, L, d)


class MeanSequencePooling(nn.Module):
    """Mean over real items; an empty sequence gives the zero vector.

    Shapes: seq [B, L, d], mask [B, L] -> [B, d].

    Example::

        >>> pool = MeanSequencePooling()
        >>> pool(torch.tensor([[[1.0], [3.0], [99.0]]]), torch.tensor([[True, True, False]]))
        tensor([[2.]])
    """

    def forward(self, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        total = _zero_padding(seq, mask).sum(dim=1)  # (B, d)
        count = mask.sum(dim=1, keepdim=True).clamp(min=1).to(seq.dtype)  # (B, 1)
        return total / count


class MaxSequencePooling(nn.Module):
    """Element-wise max over real items; an empty sequence gives the zero vector.

    Shapes: seq [B, L, d], mask [B, L] -> [B, d].

    Example::

        >>> pool = MaxSequencePooling()
        >>> pool(torch.tensor([[[1.0], [-3.0], [99.0]], [[5.0], [6.0], [7.0]]]),
        ...      torch.tensor([[True, True, False], [False, False, False]]))
        tensor([[1.],
                [0.]])
    """

    def forward(self, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        filled = _zero_padding(seq, mask).masked_fill(~mask.unsqueeze(-1), _lowest(seq))  # (B, L, d)
        best = filled.amax(dim=1)  # (B, d)
        return torch.where(mask.any(dim=1, keepdim=True), best, torch.zeros_like(best))


class TargetAttentionPooling(nn.Module):
    """DIN-style target attention: the candidate's embedding scores every real item.

    ``score_i = MLP([k_i, q, k_i - q, k_i * q])``; with ``normalization="none"`` (default,
    DIN's original choice, keeps "how much" interest) the weights are the raw scores,
    with ``"softmax"`` a softmax over real items. Padded positions get weight 0;
    an empty sequence gives the zero vector. When the query width differs from the
    item width, a Linear projects the query to the item width first.

    Args:
        dim: d, item embedding width.
        query_dim: candidate embedding width (default ``dim``: no projection).
        hidden: attention MLP hidden width.
        normalization: ``"none"`` or ``"softmax"``.
        device: parameter device.

    Shapes: seq [B, L, d], mask [B, L], query [B, query_dim] -> [B, d].

    Example::

        >>> pool = TargetAttentionPooling(dim=4, query_dim=6)
        >>> pool(torch.randn(2, 5, 4), torch.rand(2, 5) > 0.5, torch.randn(2, 6)).shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        dim: int,
        query_dim: Optional[int] = None,
        hidden: int = 32,
        normalization: str = "none",
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        query_dim = dim if query_dim is None else query_dim
        for name, value in (("dim", dim), ("query_dim", query_dim), ("hidden", hidden)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} ({value!r}) must be a positive int")
        if normalization not in ATTENTION_NORMALIZATIONS:
            raise ValueError(
                f"normalization ({normalization!r}) must be one of {list(ATTENTION_NORMALIZATIONS)}"
            )
        self.normalization = normalization
        self.query_proj: Optional[nn.Linear] = (
            nn.Linear(query_dim, dim, device=device) if query_dim != dim else None
        )
        self.mlp = nn.Sequential(
            nn.Linear(4 * dim, hidden, device=device),
            nn.SiLU(),
            nn.Linear(hidden, 1, device=device),
        )

    def forward(self, seq: torch.Tensor, mask: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        keys = _zero_padding(seq, mask)  # (B, L, d), padding = 0 so no NaN/garbage reaches the MLP
        q = self.query_proj(query) if self.query_proj is not None else query  # (B, d)
        q = _expand_query(q, keys)  # (B, L, d)
        scores = self.mlp(torch.cat([keys, q, keys - q, keys * q], dim=-1)).squeeze(-1)  # (B, L)
        if self.normalization == "softmax":
            scores = scores.masked_fill(~mask, _lowest(scores))
            weights = torch.softmax(scores, dim=-1).masked_fill(~mask, 0.0)  # empty row -> all 0
        else:
            weights = scores.masked_fill(~mask, 0.0)
        return torch.bmm(weights.unsqueeze(1), keys).squeeze(1)  # (B, d)
