"""``data.format=criteo_binary``: TorchRec's preprocessed Criteo layout, the ``.npy`` day
files that ``torchrec.datasets.criteo.BinaryCriteoUtils`` writes and
``InMemoryBinaryCriteoIterDataPipe`` reads (``dlrm_main.py --in_memory_binary_criteo_path``).

Each entry of ``data.train_files`` / ``data.eval_files`` names one day by its prefix:
``<prefix>_dense.npy`` (float32 [N, 13], already ``log``-transformed by TorchRec's
preprocessing), ``<prefix>_sparse.npy`` (int [N, 26]) and ``<prefix>_labels.npy``
(int [N, 1]).

Sharding is dlrm_main's: the days form one row sequence cut into global batches, and rank
``r`` of ``W`` takes global batches ``r, r + W, ...`` (``InMemoryBinaryCriteoIterDataPipe``'s
rule); training cycles over epochs, so global batch ``g`` is rows ``g*B .. g*B + B - 1``
modulo the row count and the cursor alone fixes the position (exact resume, on any number
of ranks). Evaluation gives each rank one contiguous row range
(``BinaryCriteoUtils.get_file_row_ranges_and_remainder``). Files are memory-mapped
(``load_npy_range``'s ``mmap_mode`` path, ``allow_pickle=False``): a rank reads only the
rows of its own batches. (TorchRec's loaders open files through iopath, which is not a
dependency here.)
"""

import os
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torchrec.datasets.criteo import CAT_FEATURE_COUNT, INT_FEATURE_COUNT, BinaryCriteoUtils
from torchrec.datasets.utils import Batch
from torchrec.modules.embedding_configs import EmbeddingBagConfig

from torchrec_rankmixer.data.features import Rows
from torchrec_rankmixer.data.settings import DataSettings
from torchrec_rankmixer.data.stream import CursorStream
from torchrec_rankmixer.data.text import CRITEO_DENSE, CRITEO_SPARSE
from torchrec_rankmixer.utils.checks import check_choice

PARTS = {"dense": (np.floating, INT_FEATURE_COUNT), "sparse": (np.integer, CAT_FEATURE_COUNT),
         "labels": (np.integer, 1)}


class BinaryDays:
    """Memory-mapped day files, addressed as one sequence of rows (see
    :class:`BinaryCriteoSource` for an example).

    Args:
        prefixes: one ``<prefix>`` per day (``<prefix>_{dense,sparse,labels}.npy``).
        dense_index / sparse_index: the columns kept (of 13 / 26).
    """

    def __init__(self, prefixes: List[str], dense_index: List[int], sparse_index: List[int]) -> None:
        self.arrays: List[Dict[str, np.ndarray]] = []
        for prefix in prefixes:
            day = {}
            for part, (kind, width) in PARTS.items():
                path = f"{prefix}_{part}.npy"
                if not os.path.isfile(path):
                    raise ValueError(f"data file {path!r} does not exist (criteo_binary day {prefix!r})")
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
                if arr.ndim != 2 or arr.shape[1] != width or not np.issubdtype(arr.dtype, kind):
                    raise ValueError(f"{path}: expected a {kind.__name__} array of shape [N, {width}], "
                                     f"got {arr.dtype} {tuple(arr.shape)}")
                day[part] = arr
            n = {len(a) for a in day.values()}
            if len(n) != 1:
                raise ValueError(f"criteo_binary day {prefix!r}: dense, sparse and labels have different row counts {sorted(n)}")
            self.arrays.append(day)
        self.prefixes = list(prefixes)
        self.lengths = [len(d["labels"]) for d in self.arrays]
        self.starts = np.cumsum([0] + self.lengths)
        self.total = int(self.starts[-1])
        self.dense_index, self.sparse_index = dense_index, sparse_index

    def _day_rows(self, day: int, lo: int, hi: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = self.arrays[day]
        y = np.asarray(d["labels"][lo:hi], dtype=np.float32)
        bad = (y != 0) & (y != 1)
        if bad.any():
            r = int(np.flatnonzero(bad.any(1))[0])
            raise ValueError(f"{self.prefixes[day]}_labels.npy: row {lo + r}, column 0 has label {y[r, 0]:g}; "
                             "labels must be 0 or 1 (an unlabelled test day cannot be trained on)")
        x = np.asarray(d["dense"][lo:hi][:, self.dense_index], dtype=np.float32)
        if not np.isfinite(x).all():
            r, c = (int(v[0]) for v in np.nonzero(~np.isfinite(x)))
            raise ValueError(f"{self.prefixes[day]}_dense.npy: row {lo + r}, column {self.dense_index[c]} "
                             f"has the non-finite value {x[r, c]}")
        return y, x, np.asarray(d["sparse"][lo:hi][:, self.sparse_index], dtype=np.int64)

    def rows(self, start: int, stop: int) -> Rows:
        """Rows ``start .. stop - 1`` of the day sequence, wrapping around at the end."""
        parts = []
        while start < stop:
            g = start % self.total
            day = int(np.searchsorted(self.starts, g, side="right")) - 1
            lo = g - int(self.starts[day])
            take = min(stop - start, self.lengths[day] - lo)
            parts.append(self._day_rows(day, lo, lo + take))
            start += take
        y, x, s = (np.concatenate(p) for p in zip(*parts))
        ones = torch.ones(len(y), dtype=torch.int64)
        sparse = {CRITEO_SPARSE[j]: (ones, torch.from_numpy(np.ascontiguousarray(s[:, k])))
                  for k, j in enumerate(self.sparse_index)}
        return Rows(torch.from_numpy(y), torch.from_numpy(x), sparse)

    def rank_range_rows(self, rank: int, world_size: int) -> Optional[Rows]:
        """This rank's contiguous share of all rows (TorchRec's evaluation split)."""
        ranges, _ = BinaryCriteoUtils.get_file_row_ranges_and_remainder(self.lengths, rank, world_size)
        blocks = [self.rows(int(self.starts[i]) + lo, int(self.starts[i]) + hi + 1) for i, (lo, hi) in sorted(ranges.items())]
        return Rows.cat(blocks) if blocks else None


class BinaryCriteoSource:
    """Batches from TorchRec's binary Criteo days (interface of
    :class:`~torchrec_rankmixer.data.sources.SyntheticSource`).

    Args:
        data: the ``data`` settings (``format='criteo_binary'``).
        rank / world_size: this process and the number of processes.

    Example::

        >>> import tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> np.save(os.path.join(d, "day_0_dense.npy"), np.zeros((8, 13), np.float32))
        >>> np.save(os.path.join(d, "day_0_sparse.npy"), np.arange(8 * 26).reshape(8, 26))
        >>> np.save(os.path.join(d, "day_0_labels.npy"), np.ones((8, 1), np.int32))
        >>> data = DataSettings(format="criteo_binary", train_files=[os.path.join(d, "day_0")],
        ...                     batch_size=2, dense_transform="none", id_transform="none", num_embeddings=1000)
        >>> src = BinaryCriteoSource(data, rank=1, world_size=2)
        >>> [b.sparse_features["C1"].values().tolist() for b in src.train_batches(0, 1, 2, 2)]
        [[52, 78], [156, 182]]
        >>> src.close()
    """

    def __init__(self, data: DataSettings, rank: int, world_size: int) -> None:
        from torchrec_rankmixer.data.sources import MalformedCounter, file_schema

        self.sparse, self.dense, self.prep = file_schema(data)
        unknown = [c for c in [*self.sparse, *self.dense] if c not in CRITEO_SPARSE + CRITEO_DENSE]
        if unknown:
            raise ValueError(f"data.sparse_columns / data.dense_columns name {unknown}; criteo_binary has "
                             f"{CRITEO_SPARSE[0]}..{CRITEO_SPARSE[-1]} and {CRITEO_DENSE[0]}..{CRITEO_DENSE[-1]}")
        index = ([CRITEO_DENSE.index(c) for c in self.dense], [CRITEO_SPARSE.index(c) for c in self.sparse])
        self.train = BinaryDays(list(data.train_files), *index)
        self.eval = BinaryDays(list(data.eval_files), *index) if data.eval_files else None
        self.test = BinaryDays(list(data.test_files), *index) if data.test_files else None
        self.batch_size, self.eval_batch_size = data.batch_size, data.eval_batch_size
        self.user_feature: Optional[str] = data.user_column
        self.rank, self.world = rank, world_size
        self.counter = MalformedCounter(data.max_malformed_fraction)
        self._stream: CursorStream[Batch] = CursorStream(self._batches, data.prefetch_batches)
        self._eval_cache: Dict[Tuple[str, int, int], List[Batch]] = {}

    @property
    def dense_in_features(self) -> int:
        return self.prep.dense_in_features

    def table_configs(self, embedding_dim: int) -> List[EmbeddingBagConfig]:
        return self.prep.table_configs(embedding_dim)

    def malformed_report(self) -> Dict[str, int]:
        return {}

    def _batches(self, start: int) -> Iterator[Batch]:
        """This rank's batches from its ``start``-th on: global batches ``start*W + rank``, +W, ..."""
        g, size = start * self.world + self.rank, self.batch_size
        while True:
            yield self.prep.batch(self.train.rows(g * size, (g + 1) * size))
            g += self.world

    def train_batches(self, cursor: int, rank: int, world_size: int, num: int) -> Iterator[Batch]:
        """``num`` batches: global batches ``cursor + rank, cursor + rank + W, ...``."""
        return self._stream.take(cursor // world_size, num)

    def eval_batch_iter(self, rank: int, world_size: int, split: str = "valid") -> Iterator[Batch]:
        """This rank's contiguous share of the ``split`` days (``"valid"``: data.eval_files,
        ``"test"``: data.test_files) as full batches, padded (labels -1) so every rank
        yields the same number. Collective when distributed."""
        from torchrec_rankmixer.data.sources import SPLITS, padded_eval_batches

        check_choice("split", split, SPLITS)
        days = self.eval if split == "valid" else self.test
        if days is None:
            return iter(())
        key = (split, rank, world_size)
        if key not in self._eval_cache:
            rows = days.rank_range_rows(rank, world_size)
            self._eval_cache[key] = padded_eval_batches(rows, self.prep, self.eval_batch_size, rank, days.prefixes)
        return iter(self._eval_cache[key])

    def close(self) -> None:
        """Stop the background reader."""
        self._stream.close()
