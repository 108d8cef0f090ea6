"""Feature preparation shared by the file readers: raw rows -> TorchRec ``Batch``.

* Raw 64-bit ids are hashed (splitmix64, stable across runs and machines) or taken
  modulo into each feature's table, or kept as they are (``none``: must be in range;
  ``managed_collision``: any int64, remapped later by the trainer's
  :class:`~torchrec_rankmixer.features.managed_collision.ManagedCollisionRemapper`).
* Dense features are normalised (``log1p`` of the value clamped at 0, as for Criteo) or,
  for features with a boundaries list, bucketised into ids and embedded as a sparse
  feature ``<name>_bucket`` with ``len(boundaries) + 1`` rows.

:class:`FeaturePrep` turns parsed :class:`Rows` into batches; the tensor transform itself
is :class:`RawFeaturePrep` (``FeaturePrep.module``), which export also builds into the
serving artifact, so training and serving run the same code.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

ID_TRANSFORMS = ("hash", "mod", "none", "managed_collision")

_MASK64 = (1 << 64) - 1


def _signed(x: int) -> int:
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


_C1, _C2, _C3 = _signed(0x9E3779B97F4A7C15), _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def _lshr(x: torch.Tensor, n: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> n) & ((1 << (64 - n)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """The splitmix64 finaliser on int64 [N] (wrapping arithmetic) -> int64 [N].

    Example::

        >>> splitmix64(torch.tensor([0, 1])).tolist() == splitmix64(torch.tensor([0, 1])).tolist()
        True
    """
    z = x.to(torch.int64) + _C1
    z = (z ^ _lshr(z, 30)) * _C2
    z = (z ^ _lshr(z, 27)) * _C3
    return z ^ _lshr(z, 31)


def hash_ids(raw: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Raw int64 ids [N] -> ids in [0, num_buckets) [N] (stable splitmix64 hash).

    Example::

        >>> ids = hash_ids(torch.tensor([7, 2**62, -5]), 100)
        >>> bool(((ids >= 0) & (ids < 100)).all())
        True
    """
    return torch.remainder(splitmix64(raw), num_buckets)


class RawFeaturePrep(nn.Module):
    """Raw sparse ids and raw dense columns -> the model's inputs: the tensor half of
    :class:`FeaturePrep`, which training runs on every batch and export builds into the
    serving artifact (``FeaturePrep.module``), so serving cannot drift from training.
    Static-shape ops only: it goes through torch.export and TorchScript.

    Args:
        sparse_features: the raw id features, in ``lengths`` row order.
        table_rows: rows of each raw feature's table (hash / mod range).
        id_transform: ``"hash"`` (splitmix64 then modulo), ``"mod"``, ``"none"`` (ids
            pass through) or ``"managed_collision"`` (pass through; the artifact's
            :class:`~torchrec_rankmixer.inference.id_remap.RawIdRemap` maps them).
        dense_features: the raw dense columns, in ``dense``'s column order.
        dense_transform: ``"log1p"`` (of the value clamped at 0) or ``"none"``, for the
            dense columns that are not bucketised.
        bucket_boundaries: dense column -> increasing boundaries; each becomes the id
            feature ``<name>_bucket`` (``bucketize(x, boundaries, right=True)``),
            appended after the raw sparse features.

    Shapes:
        dense [B, Dd] (raw), values [N] int64 (raw ids, feature-major), lengths [Fs, B]
        -> dense [B, Dd - Fb], values [N + Fb*B], lengths [Fs + Fb, B] (Fb bucketised
        columns), the layout :class:`RankMixerInferenceModule` feeds the model.

    Example::

        >>> prep = RawFeaturePrep(["c"], [10], "mod", ["x", "y"], "log1p", {"y": [0.0, 1.0]})
        >>> dense, values, lengths = prep(torch.tensor([[3.0, -1.0], [0.0, 5.0]]),
        ...                               torch.tensor([11, 12, 13]), torch.tensor([[1, 2]]))
        >>> values.tolist(), lengths.tolist(), dense.shape
        ([1, 2, 3, 0, 2], [[1, 2], [1, 1]], torch.Size([2, 1]))
    """

    def __init__(
        self,
        sparse_features: Sequence[str],
        table_rows: Sequence[int],
        id_transform: str,
        dense_features: Sequence[str],
        dense_transform: str,
        bucket_boundaries: Dict[str, Sequence[float]],
    ) -> None:
        super().__init__()
        if id_transform not in ID_TRANSFORMS:
            raise ValueError(f"id_transform ({id_transform!r}) must be one of {list(ID_TRANSFORMS)}")
        if dense_transform not in ("log1p", "none"):
            raise ValueError(f"dense_transform ({dense_transform!r}) must be 'log1p' or 'none'")
        if len(table_rows) != len(sparse_features):
            raise ValueError(
                f"table_rows ({list(table_rows)}) must give one size per sparse feature {list(sparse_features)}"
            )
        unknown = sorted(set(bucket_boundaries) - set(dense_features))
        if unknown:
            raise ValueError(f"bucket_boundaries names {unknown}, which are not dense features {list(dense_features)}")
        self.sparse_features: List[str] = list(sparse_features)
        self.dense_features: List[str] = list(dense_features)
        self.id_transform, self.dense_transform = id_transform, dense_transform
        self.bucket_index: List[int] = [i for i, f in enumerate(dense_features) if f in bucket_boundaries]
        self.kept_index: List[int] = [i for i, f in enumerate(dense_features) if f not in bucket_boundaries]
        self.bucket_boundaries: Dict[str, List[float]] = {
            f: [float(b) for b in bucket_boundaries[f]] for f in self.dense_features if f in bucket_boundaries
        }
        self.register_buffer("rows", torch.tensor(list(table_rows), dtype=torch.int64))
        self.bucket_buffers: List[str] = []
        for i in self.bucket_index:
            name = f"bounds_{i}"
            self.register_buffer(name, torch.tensor(self.bucket_boundaries[dense_features[i]]))
            self.bucket_buffers.append(name)

    @property
    def model_feature_names(self) -> List[str]:
        """The model's id features: the raw ones, then ``<name>_bucket``."""
        return self.sparse_features + [f"{self.dense_features[i]}_bucket" for i in self.bucket_index]

    @property
    def raw_id_features(self) -> List[str]:
        """Input features that accept any int64 id (hashed, taken modulo or remapped)."""
        return [] if self.id_transform == "none" else list(self.sparse_features)

    def to_metadata(self) -> Dict[str, object]:
        """JSON description for the artifact's metadata (``"preprocessing"``)."""
        return {
            "id_transform": self.id_transform, "dense_transform": self.dense_transform,
            "bucket_boundaries": dict(self.bucket_boundaries),
            "model_feature_names": self.model_feature_names,
            "model_dense_features": [self.dense_features[i] for i in self.kept_index],
        }

    def forward(
        self, dense: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        values = values.to(torch.int64)
        if self.id_transform in ("hash", "mod"):
            per_feature = lengths.to(torch.int64).sum(dim=1)  # (Fs,)
            rows = torch.repeat_interleave(self.rows, per_feature, output_size=values.shape[0])  # (N,)
            values = hash_ids(values, rows) if self.id_transform == "hash" else torch.remainder(values, rows)
        bucket_ids: List[torch.Tensor] = []
        for i, name in zip(self.bucket_index, self.bucket_buffers):
            col = dense[:, i].contiguous()  # (B,)
            bucket_ids.append(torch.bucketize(col, getattr(self, name), right=True).to(torch.int64))
        if bucket_ids:
            values = torch.cat([values] + bucket_ids)  # (N + Fb*B,)
            ones = torch.ones(len(bucket_ids), dense.shape[0], dtype=lengths.dtype, device=lengths.device)
            lengths = torch.cat([lengths, ones])  # (Fs + Fb, B)
        kept = dense[:, self.kept_index]  # (B, Dd - Fb)
        if self.dense_transform == "log1p":
            kept = torch.log1p(kept.clamp(min=0.0))
        return kept, values, lengths


@dataclass
class Rows:
    """A block of parsed rows before feature preparation.

    Shapes: labels [N, L] float, dense [N, Dd] float (raw), sparse: feature ->
    (lengths [N] int64, values [sum(lengths)] int64 raw ids).
    """

    labels: torch.Tensor
    dense: torch.Tensor
    sparse: Dict[str, Tuple[torch.Tensor, torch.Tensor]]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def slice(self, start: int, stop: int) -> "Rows":
        """Rows ``start:stop``."""
        out = {}
        for name, (lengths, values) in self.sparse.items():
            offsets = torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)])
            out[name] = (lengths[start:stop], values[int(offsets[start]):int(offsets[stop])])
        return Rows(self.labels[start:stop], self.dense[start:stop], out)

    def take(self, index: torch.Tensor) -> "Rows":
        """Rows at ``index`` [K] (int64), in that order."""
        out = {}
        for name, (lengths, values) in self.sparse.items():
            starts = torch.cumsum(lengths, 0) - lengths
            ln = lengths[index]
            base = torch.repeat_interleave(starts[index], ln)
            within = torch.arange(int(ln.sum())) - torch.repeat_interleave(torch.cumsum(ln, 0) - ln, ln)
            out[name] = (ln, values[base + within])
        return Rows(self.labels[index], self.dense[index], out)

    @staticmethod
    def cat(blocks: Sequence["Rows"]) -> "Rows":
        """Concatenate blocks with the same features."""
        names = list(blocks[0].sparse)
        return Rows(
            torch.cat([b.labels for b in blocks]),
            torch.cat([b.dense for b in blocks]),
            {n: (torch.cat([b.sparse[n][0] for b in blocks]), torch.cat([b.sparse[n][1] for b in blocks]))
             for n in names},
        )


def rows_from_lists(
    labels: List[List[float]], dense: List[List[float]], sparse: Dict[str, List[List[int]]],
    num_labels: int, num_dense: int,
) -> Rows:
    """Build :class:`Rows` from per-row python lists (the text readers' output)."""
    n = len(labels)
    out = {}
    for name, bags in sparse.items():
        lengths = torch.tensor([len(b) for b in bags], dtype=torch.int64)
        values = torch.tensor([v for b in bags for v in b], dtype=torch.int64)
        out[name] = (lengths, values)
    return Rows(
        torch.tensor(labels, dtype=torch.float32).reshape(n, num_labels),
        torch.tensor(dense, dtype=torch.float32).reshape(n, num_dense),
        out,
    )


class FeaturePrep:
    """Turns :class:`Rows` into a ``Batch`` and describes the embedding tables.

    Args:
        sparse_features: raw id features, in KJT key order.
        dense_features: raw dense columns, in the order of ``Rows.dense``.
        num_embeddings: default table rows.
        table_sizes: rows per feature (overrides ``num_embeddings``).
        id_transform: ``"hash"``, ``"mod"``, ``"none"`` or ``"managed_collision"`` (raw
            ids pass through; the table rows are the managed tables' zch sizes).
        dense_transform: ``"log1p"`` or ``"none"`` (for dense features not bucketised).
        bucket_boundaries: dense feature -> increasing boundaries (bucketised + embedded).

    Example::

        >>> prep = FeaturePrep(["c"], ["x", "y"], 10, {}, "hash", "log1p", {"y": [0.0, 1.0]})
        >>> rows = Rows(torch.ones(2, 1), torch.tensor([[3.0, -1.0], [0.0, 5.0]]),
        ...             {"c": (torch.tensor([1, 2]), torch.tensor([11, 12, 13]))})
        >>> b = prep.batch(rows)
        >>> b.sparse_features.keys(), b.dense_features.shape
        (['c', 'y_bucket'], torch.Size([2, 1]))
        >>> b.sparse_features["y_bucket"].values().tolist()
        [0, 2]
    """

    def __init__(
        self,
        sparse_features: List[str],
        dense_features: List[str],
        num_embeddings: int,
        table_sizes: Dict[str, int],
        id_transform: str,
        dense_transform: str,
        bucket_boundaries: Dict[str, List[float]],
    ) -> None:
        unknown = sorted(set(bucket_boundaries) - set(dense_features))
        if unknown:
            raise ValueError(
                f"data.bucket_boundaries names {unknown}, which are not dense columns {dense_features}"
            )
        unknown = sorted(set(table_sizes) - set(sparse_features))
        if unknown:
            raise ValueError(f"data.table_sizes names {unknown}, which are not sparse columns {sparse_features}")
        self.sparse_features, self.dense_features = list(sparse_features), list(dense_features)
        self.rows = {f: table_sizes.get(f, num_embeddings) for f in sparse_features}
        self.id_transform, self.dense_transform = id_transform, dense_transform
        self.kept_dense = [i for i, f in enumerate(dense_features) if f not in bucket_boundaries]
        # the tensor transform, shared with the serving artifact
        self.module = RawFeaturePrep(self.sparse_features, [self.rows[f] for f in self.sparse_features],
                                     id_transform, self.dense_features, dense_transform, bucket_boundaries)
        for f in dense_features:
            if f in bucket_boundaries:
                self.rows[f"{f}_bucket"] = len(bucket_boundaries[f]) + 1

    @property
    def feature_names(self) -> List[str]:
        """KJT keys: the sparse features, then ``<dense>_bucket`` features."""
        return list(self.rows)

    @property
    def dense_in_features(self) -> int:
        return len(self.kept_dense)

    def table_configs(self, embedding_dim: int) -> List[EmbeddingBagConfig]:
        """One table ``t_<feature>`` per KJT key."""
        return [
            EmbeddingBagConfig(name=f"t_{f}", embedding_dim=embedding_dim, num_embeddings=n, feature_names=[f])
            for f, n in self.rows.items()
        ]

    def _check_range(self, name: str, raw: torch.Tensor) -> None:
        """With ``id_transform="none"``, raw ids must already be table rows (ValueError)."""
        rows = self.rows[name]
        bad = (raw < 0) | (raw >= rows)
        if bool(bad.any()):
            raise ValueError(
                f"feature {name!r} has raw id {int(raw[bad][0])} outside [0, {rows}) with "
                "data.id_transform='none'; use 'hash' or 'mod', or a larger data.table_sizes"
            )

    def batch(self, rows: Rows) -> Batch:
        """Prepared ``Batch``: dense [B, dense_in_features], KJT over ``feature_names``,
        labels [B] (or [B, L] for L > 1 labels)."""
        lengths, values = [], []
        for name in self.sparse_features:
            ln, raw = rows.sparse[name]
            if self.id_transform == "none":
                self._check_range(name, raw)
            lengths.append(ln.to(torch.int64))
            values.append(raw.to(torch.int64))
        raw_values = torch.cat(values) if values else torch.zeros(0, dtype=torch.int64)
        raw_lengths = torch.stack(lengths) if lengths else torch.zeros(0, len(rows), dtype=torch.int64)  # (Fs, B)
        dense, ids, id_lengths = self.module(rows.dense, raw_values, raw_lengths)
        labels = rows.labels[:, 0] if rows.labels.shape[1] == 1 else rows.labels
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=self.feature_names, values=ids, lengths=id_lengths.reshape(-1).to(torch.int32)
        )
        return Batch(dense_features=dense, sparse_features=kjt, labels=labels)
