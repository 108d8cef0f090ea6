"""Synthetic click data with behaviour sequences: the label depends on recent history.

Wraps :class:`~torchrec_rankmixer.data.synthetic.SyntheticClickData` (composition: its
features, dense inputs and planted logit are reused unchanged) and adds two id features
that share one item table:

- ``item``: the candidate item (one id per sample);
- ``hist_item``: the user's behaviour sequence, oldest first, most recent last,
  0..``max_history`` items.

Items belong to ``num_categories`` categories (a random, seeded partition). The label:

    logit = base_logit + effect * (hit - 1/2)
    hit   = 1 if the candidate's category occurs among the last ``recent_window`` items

With probability ``match_rate`` the candidate is a *different* item of the same category
as a random recent item (so "relates to" needs the learned category structure, not id
equality); otherwise it is uniform. Mean pooling dilutes the one relevant item among
many; target attention can pick it out.
"""

from dataclasses import dataclass, field
from typing import Dict, Iterator, List

import torch
from torchrec.datasets.utils import Batch
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_rankmixer.data.synthetic import SyntheticClickData
from torchrec_rankmixer.features.sequence import SequenceFeatureConfig

CANDIDATE = "item"
HISTORY = "hist_item"


@dataclass(frozen=True)
class SyntheticSequenceData:
    """Synthetic CTR data with a candidate item and a behaviour sequence.

    Args:
        base: the underlying :class:`SyntheticClickData` (features ``f0..``, dense).
        num_items: rows of the shared item table (a multiple of ``num_categories``).
        num_categories: item categories.
        max_history: longest generated history (lengths are uniform in [0, max_history]).
        recent_window: how many most recent items decide ``hit``.
        match_rate: probability that the candidate is drawn to match a recent item.
        effect: logit weight of ``hit``.
        seed: fixes the categories and every batch (the base has its own seed).

    Shapes:
        ``batch(B, i)``: dense [B, dense], KJT with keys ``base.feature_names + ["item",
        "hist_item"]`` (stride B), labels [B].

    Example::

        >>> data = SyntheticSequenceData(base=SyntheticClickData(num_sparse_features=2))
        >>> b = data.batch(batch_size=4, index=0)
        >>> b.sparse_features.keys(), b.labels.shape
        (['f0', 'f1', 'item', 'hist_item'], torch.Size([4]))
        >>> torch.equal(b.sparse_features.values(), data.batch(4, 0).sparse_features.values())
        True
    """

    base: SyntheticClickData = field(default_factory=SyntheticClickData)
    num_items: int = 500
    num_categories: int = 50
    max_history: int = 40
    recent_window: int = 10
    match_rate: float = 0.5
    effect: float = 3.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_items", "num_categories", "max_history", "recent_window"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} ({value!r}) must be a positive int")
        if self.num_items % self.num_categories != 0:
            raise ValueError(
                f"num_items ({self.num_items}) must be a multiple of num_categories "
                f"({self.num_categories})"
            )
        if not 0.0 <= self.match_rate <= 1.0:
            raise ValueError(f"match_rate ({self.match_rate!r}) must be in [0, 1]")
        g = torch.Generator().manual_seed(7_919 * self.seed + 3)
        by_category = torch.randperm(self.num_items, generator=g).reshape(self.num_categories, -1)
        category = torch.empty(self.num_items, dtype=torch.long)
        category[by_category] = torch.arange(self.num_categories).unsqueeze(1)
        object.__setattr__(self, "_by_category", by_category)  # (C, items per category)
        object.__setattr__(self, "category", category)  # (num_items,)

    # ------------------------------------------------------------------ schema
    @property
    def feature_names(self) -> List[str]:
        return self.base.feature_names + [CANDIDATE, HISTORY]

    def embedding_bag_configs(self, embedding_dim: int) -> List[EmbeddingBagConfig]:
        """The base features' tables (for the EmbeddingBagCollection)."""
        return self.base.table_configs(embedding_dim)

    def sequence_table_configs(self, embedding_dim: int) -> List[EmbeddingConfig]:
        """One item table ``t_item`` shared by the candidate and the history (for the EC)."""
        return [
            EmbeddingConfig(
                name="t_item", embedding_dim=embedding_dim, num_embeddings=self.num_items,
                feature_names=[CANDIDATE, HISTORY],
            )
        ]

    def sequence_feature_configs(
        self, max_len: int, pooling: str = "target", keep: str = "recent"
    ) -> List[SequenceFeatureConfig]:
        """Candidate as a length-1 sequence (mean) + the history pooled as asked."""
        return [
            SequenceFeatureConfig(CANDIDATE, max_len=1),
            SequenceFeatureConfig(
                HISTORY, max_len=max_len, keep=keep, pooling=pooling,
                candidate=CANDIDATE if pooling == "target" else None,
            ),
        ]

    # ------------------------------------------------------------------ batches
    def sample(self, batch_size: int, index: int) -> Dict[str, torch.Tensor]:
        """Raw arrays: dense, ids [B, F, n] (base), candidate [B], history values/lengths,
        hit [B] and labels [B]."""
        dense, ids, _ = self.base.sample(batch_size, index)  # validates batch_size / index
        g = torch.Generator().manual_seed((self.seed + 7) * 998_244_353 + index)
        B, H, W = batch_size, self.max_history, self.recent_window
        lengths = torch.randint(0, H + 1, (B,), generator=g)  # (B,)
        history = torch.randint(0, self.num_items, (B, H), generator=g)  # (B, H), oldest first
        pos = torch.arange(H)
        valid = pos < lengths.unsqueeze(1)  # (B, H)
        recent = valid & (pos >= (lengths - W).unsqueeze(1))  # (B, H) the last W real items
        # candidate: same category as a random recent item (with prob match_rate), else uniform
        pick = torch.multinomial(recent.float() + 1e-9 * (~recent).float(), 1, generator=g)[:, 0]
        anchor_cat = self.category[history[torch.arange(B), pick]]  # (B,)
        k = self._by_category.shape[1]  # type: ignore[attr-defined]
        related = self._by_category[anchor_cat, torch.randint(0, k, (B,), generator=g)]  # type: ignore[attr-defined]
        uniform = torch.randint(0, self.num_items, (B,), generator=g)
        use_related = (torch.rand(B, generator=g) < self.match_rate) & (lengths > 0)
        candidate = torch.where(use_related, related, uniform)  # (B,)
        same = self.category[history] == self.category[candidate].unsqueeze(1)  # (B, H)
        hit = (same & recent).any(dim=1).float()  # (B,)
        logit = self.base.true_logits(dense, ids[:, :, 0]) + self.effect * (hit - 0.5)
        labels = (torch.rand(B, generator=g) < torch.sigmoid(logit)).float()
        return {
            "dense": dense, "ids": ids, "candidate": candidate,
            "history_values": history[valid], "history_lengths": lengths,
            "hit": hit, "labels": labels,
        }

    def batch(self, batch_size: int, index: int) -> Batch:
        """Batch ``index`` as a TorchRec ``Batch``."""
        s = self.sample(batch_size, index)
        B, F, n = s["ids"].shape
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=self.feature_names,
            values=torch.cat([
                s["ids"].permute(1, 0, 2).reshape(-1), s["candidate"], s["history_values"],
            ]),
            lengths=torch.cat([
                torch.full((F * B,), n, dtype=torch.long), torch.ones(B, dtype=torch.long),
                s["history_lengths"],
            ]).int(),
        )
        return Batch(dense_features=s["dense"], sparse_features=kjt, labels=s["labels"])

    def batches(self, batch_size: int, num_batches: int, start: int = 0) -> Iterator[Batch]:
        """Batches ``start .. start + num_batches - 1``."""
        for i in range(start, start + num_batches):
            yield self.batch(batch_size, i)
