"""Deterministic synthetic click data with planted interactions, as TorchRec ``Batch``es.

The label model (all tables drawn once from ``seed``):

    logit = bias + sum_f a_f[id_f]                          (first order, weak)
          + sum_{(f, g) in pairs} <u_f[id_f], v_g[id_g]>    (planted sparse crosses)
          + w . x + x_0 * x_1                                (dense, with a dense cross)
          + x_2 * c[id_0]                                    (dense x sparse cross)
    label ~ Bernoulli(sigmoid(logit))

Ids follow a power law (popular ids recur, so crosses are learnable); each feature has
its own table of ``num_embeddings`` rows. Batch ``i`` is a pure function of
``(seed, i)``, so any worker can generate any batch.
"""

from dataclasses import dataclass
from typing import Iterator, List, Tuple

import torch
from torchrec.datasets.utils import Batch
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

# Held-out synthetic batches start at this index, disjoint from the training batches
# (every synthetic batch is a pure function of its index).
EVAL_OFFSET = 1_000_000
TEST_OFFSET = 2_000_000  # the test set (data.test_batches), disjoint from both


@dataclass(frozen=True)
class SyntheticClickData:
    """Synthetic CTR data.

    Args:
        num_sparse_features: F categorical features named ``f0..f{F-1}``.
        num_embeddings: ids per feature (table rows).
        dense_in_features: dense features (>= 3 keeps every planted dense term).
        num_interactions: planted feature pairs (f0,f1), (f2,f3), ... (wrapping).
        latent_dim: rank of each planted cross.
        ids_per_feature: ids per sample per feature (multi-hot bags; the first id
            drives the label).
        seed: fixes the label model and every batch.
        conversion_label: add a second label, conversion, for multi-task (ESMM)
            training: labels become [B, 2] = (click, click AND convert), where
            P(convert | click) = sigmoid(-0.5 + <u_0[id_0], v_2[id_2]> + x_1) (if the
            features exist). The click column is the same as without this option.

    Shapes:
        ``batch(B, i)``: dense [B, dense_in_features], KJT with F keys and stride B,
        labels [B] (or [B, 2] with ``conversion_label``).

    Example::

        >>> data = SyntheticClickData(num_sparse_features=4, num_embeddings=50)
        >>> b = data.batch(batch_size=8, index=0)
        >>> b.dense_features.shape, b.sparse_features.keys(), b.labels.shape
        (torch.Size([8, 4]), ['f0', 'f1', 'f2', 'f3'], torch.Size([8]))
        >>> torch.equal(b.labels, data.batch(8, 0).labels)
        True
    """

    num_sparse_features: int = 8
    num_embeddings: int = 200
    dense_in_features: int = 4
    num_interactions: int = 4
    latent_dim: int = 4
    ids_per_feature: int = 1
    seed: int = 0
    conversion_label: bool = False

    def __post_init__(self) -> None:
        for name in ("num_sparse_features", "num_embeddings", "latent_dim", "ids_per_feature"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} ({value!r}) must be a positive int")
        for name in ("dense_in_features", "num_interactions"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} ({value!r}) must be an int >= 0")
        if self.num_interactions > 0 and self.num_sparse_features < 2:
            raise ValueError(
                f"num_interactions ({self.num_interactions}) needs num_sparse_features >= 2"
            )
        object.__setattr__(self, "_tables", self._draw_tables())

    # ------------------------------------------------------------------ schema
    @property
    def feature_names(self) -> List[str]:
        return [f"f{i}" for i in range(self.num_sparse_features)]

    @property
    def pairs(self) -> List[Tuple[int, int]]:
        F = self.num_sparse_features
        return [((2 * k) % F, (2 * k + 1) % F) for k in range(self.num_interactions)]

    def table_configs(self, embedding_dim: int) -> List[EmbeddingBagConfig]:
        """One table per feature, ``t_<feature>``, of ``num_embeddings`` rows."""
        return [
            EmbeddingBagConfig(
                name=f"t_{f}", embedding_dim=embedding_dim,
                num_embeddings=self.num_embeddings, feature_names=[f],
            )
            for f in self.feature_names
        ]

    # ------------------------------------------------------------------ model
    def _draw_tables(self) -> dict:
        g = torch.Generator().manual_seed(10_007 * self.seed + 1)
        F, N, r = self.num_sparse_features, self.num_embeddings, self.latent_dim
        return {
            "first": 0.3 * torch.randn(F, N, generator=g),
            "u": torch.randn(F, N, r, generator=g) * (1.5 / r**0.5),
            "v": torch.randn(F, N, r, generator=g) * (1.5 / r**0.5),
            "w": 0.5 * torch.randn(max(self.dense_in_features, 1), generator=g),
            "c": torch.randn(N, generator=g),
            "perm": torch.stack([torch.randperm(N, generator=g) for _ in range(F)]),
        }

    def true_logits(self, dense: torch.Tensor, first_ids: torch.Tensor) -> torch.Tensor:
        """The planted logit for dense [B, dense] and first ids [B, F] -> [B]."""
        t = self._tables  # type: ignore[attr-defined]
        F = self.num_sparse_features
        logit = torch.full((first_ids.shape[0],), -1.0)
        logit += t["first"][torch.arange(F), first_ids].sum(dim=1)
        for f, g in self.pairs:
            logit += (t["u"][f, first_ids[:, f]] * t["v"][g, first_ids[:, g]]).sum(dim=1)
        if self.dense_in_features > 0:
            logit += dense @ t["w"][: self.dense_in_features]
        if self.dense_in_features >= 2:
            logit += dense[:, 0] * dense[:, 1]
        if self.dense_in_features >= 3:
            logit += dense[:, 2] * t["c"][first_ids[:, 0]]
        return logit

    # ------------------------------------------------------------------ batches
    def sample(self, batch_size: int, index: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw arrays for batch ``index``: dense [B, dense], ids [B, F, n], labels [B]."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size ({batch_size!r}) must be a positive int")
        if not isinstance(index, int) or index < 0:
            raise ValueError(f"index ({index!r}) must be an int >= 0")
        g = torch.Generator().manual_seed((self.seed + 1) * 1_000_003 + index)
        B, F, N, n = batch_size, self.num_sparse_features, self.num_embeddings, self.ids_per_feature
        ranks = (torch.rand(B, F, n, generator=g) ** 2 * N).long().clamp_(max=N - 1)  # power law
        perm = self._tables["perm"]  # type: ignore[attr-defined]
        ids = torch.stack([perm[f][ranks[:, f]] for f in range(F)], dim=1)  # (B, F, n)
        dense = torch.randn(B, self.dense_in_features, generator=g)
        p = torch.sigmoid(self.true_logits(dense, ids[:, :, 0]))
        labels = (torch.rand(B, generator=g) < p).float()
        if self.conversion_label:  # drawn after the click, so clicks are unchanged
            labels = torch.stack([labels, labels * self._conversion(dense, ids[:, :, 0], g)], 1)
        return dense, ids, labels

    def _conversion(self, dense: torch.Tensor, first_ids: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Conversion-given-click draws [B] (see ``conversion_label``)."""
        t, F = self._tables, self.num_sparse_features  # type: ignore[attr-defined]
        logit = torch.full((first_ids.shape[0],), -0.5)
        logit += (t["u"][0, first_ids[:, 0]] * t["v"][2 % F, first_ids[:, 2 % F]]).sum(dim=1)
        if self.dense_in_features >= 2:
            logit += dense[:, 1]
        return (torch.rand(first_ids.shape[0], generator=g) < torch.sigmoid(logit)).float()

    def batch(self, batch_size: int, index: int) -> Batch:
        """Batch ``index`` as a TorchRec ``Batch`` (dense, KJT, labels)."""
        dense, ids, labels = self.sample(batch_size, index)
        B, F, n = ids.shape
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=self.feature_names,
            values=ids.permute(1, 0, 2).reshape(-1),  # feature-major, as KJT stores values
            lengths=torch.full((F * B,), n, dtype=torch.int32),
        )
        return Batch(dense_features=dense, sparse_features=kjt, labels=labels)

    def batches(self, batch_size: int, num_batches: int, start: int = 0) -> Iterator[Batch]:
        """Batches ``start .. start + num_batches - 1``."""
        for i in range(start, start + num_batches):
            yield self.batch(batch_size, i)
