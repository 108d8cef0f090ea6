"""Feature preparation shared by the file readers: parsed rows -> TorchRec ``Batch``.

:class:`FeaturePrep` turns parsed :class:`Rows` into batches and describes the tables;
the tensor transform itself (id hash / mod, buckets, ``log1p``) is
:class:`~torchrec_rankmixer.features.prep.RawFeaturePrep` (``FeaturePrep.module``), which
export also builds into the serving artifact, so training and serving run the same code.
"""

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
from torchrec.datasets.utils import Batch
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_rankmixer.features.prep import RawFeaturePrep

PREP_ROWS = 16384  # rows prepared per call in FeaturePrep.batches (ids stay in cache)

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

    def _transform(self, dense: torch.Tensor, values: torch.Tensor,
                   lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # ``forward``, not ``__call__``: batches are prepared in a background thread, and
        # while the training pipeline fx-traces the model, ``nn.Module.__call__`` is patched
        # process-wide to record calls into the traced model.
        return self.module.forward(dense, values, lengths)

    def batches(self, rows: Rows, batch_size: int) -> List[Batch]:
        """``len(rows) // batch_size`` prepared batches of ``batch_size`` rows, equal to
        ``batch(rows.slice(i, i + batch_size))`` for each, but prepared in one pass over
        about ``PREP_ROWS`` rows at a time (column operations, not per-batch work).

        Example::

            >>> prep = FeaturePrep(["c"], ["x"], 10, {}, "mod", "none", {})
            >>> rows = Rows(torch.zeros(4, 1), torch.zeros(4, 1),
            ...             {"c": (torch.tensor([1, 0, 2, 1]), torch.tensor([11, 12, 13, 14]))})
            >>> [b.sparse_features["c"].values().tolist() for b in prep.batches(rows, 2)]
            [[1], [2, 3, 4]]
        """
        n = len(rows) // batch_size * batch_size
        step = max(1, PREP_ROWS // batch_size) * batch_size
        names = self.sparse_features
        ends = {f: torch.cumsum(rows.sparse[f][0], 0) for f in names}
        out: List[Batch] = []
        for s in range(0, n, step):
            e = min(s + step, n)
            lengths, values = [], []
            for f in names:
                lo = int(ends[f][s - 1]) if s else 0
                ln, raw = rows.sparse[f][0][s:e], rows.sparse[f][1][lo:int(ends[f][e - 1]) if e else 0]
                if self.id_transform == "none":
                    self._check_range(f, raw)
                lengths.append(ln.to(torch.int64))
                values.append(raw.to(torch.int64))
            raw_values = torch.cat(values) if values else torch.zeros(0, dtype=torch.int64)
            raw_lengths = torch.stack(lengths) if lengths else torch.zeros(0, e - s, dtype=torch.int64)
            dense, ids, id_lengths = self._transform(rows.dense[s:e], raw_values, raw_lengths)
            out.extend(self._split(rows.labels[s:e], dense, ids, id_lengths, batch_size))
        return out

    def _split(self, labels: torch.Tensor, dense: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor,
               size: int) -> List[Batch]:
        """Prepared rows (ids feature-major, lengths [F, n]) -> batches of ``size`` rows: one
        scatter puts each batch's ids together, feature-major within the batch."""
        nf, n = lengths.shape
        nb = n // size
        per = lengths.reshape(nf, nb, size)
        fb = per.sum(2)  # (F, nb): ids of feature f in batch b, a run of ids in ``ids``
        run_start = (torch.cumsum(fb.reshape(-1), 0) - fb.reshape(-1)).reshape(nf, nb)
        block = fb.t().reshape(-1)  # the same runs in batch-major order
        block_start = (torch.cumsum(block, 0) - block).reshape(nb, nf).t()
        shift = torch.repeat_interleave((block_start - run_start).reshape(-1), fb.reshape(-1), output_size=ids.numel())
        grouped = torch.empty_like(ids)
        grouped[torch.arange(ids.numel()) + shift] = ids
        per_batch_lengths = per.permute(1, 0, 2).reshape(nb, nf * size).to(torch.int32)
        counts = fb.t().tolist()  # (nb, F)
        bounds = [0] + torch.cumsum(fb.sum(0), 0).tolist()
        labels = labels[:, 0] if labels.shape[1] == 1 else labels
        keys = self.feature_names
        out = []
        for i in range(nb):
            offsets = [0]
            for c in counts[i]:
                offsets.append(offsets[-1] + c)
            kjt = KeyedJaggedTensor(keys=keys, values=grouped[bounds[i]:bounds[i + 1]], lengths=per_batch_lengths[i],
                                    stride=size, length_per_key=counts[i], offset_per_key=offsets)
            out.append(Batch(dense_features=dense[i * size:(i + 1) * size], sparse_features=kjt,
                             labels=labels[i * size:(i + 1) * size]))
        return out

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
        dense, ids, id_lengths = self._transform(rows.dense, raw_values, raw_lengths)
        labels = rows.labels[:, 0] if rows.labels.shape[1] == 1 else rows.labels
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=self.feature_names, values=ids, lengths=id_lengths.reshape(-1).to(torch.int32)
        )
        return Batch(dense_features=dense, sparse_features=kjt, labels=labels)
