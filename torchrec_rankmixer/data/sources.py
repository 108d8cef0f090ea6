"""Batch sources for ``rankmixer-train``: the synthetic data (data/synthetic_sources.py), files (CSV,
libsvm, Criteo TSV, Parquet, ORC) and TorchRec's binary Criteo days
(``data/binary_criteo.py``). :func:`make_source` picks one from the ``data`` settings
(:class:`~torchrec_rankmixer.data.settings.DataSettings`).

All read batches addressed by a global cursor (batches consumed by all ranks) and hold
the same interface: ``table_configs(embedding_dim)``, ``dense_in_features``,
``user_feature``, ``train_batches(cursor, rank, world_size, num)``,
``eval_batch_iter(rank, world_size)``, ``malformed_report()``, ``close()``.

Files: how ranks share them is ``data/files.py``'s :func:`~torchrec_rankmixer.data.files.shard`.
Training streams over epochs without end (the run length is ``train.steps``), so every
rank always has a full batch and the sharded collectives stay in step; reading runs ahead
in a background thread. Evaluation reads each rank's part of the eval files once and pads
every rank to the same number of full batches with rows labelled -1, which the metrics skip.

Malformed rows are counted per reason (with the first few locations) and reported in the
final table; beyond ``data.max_malformed_fraction`` of the rows read the run fails.
"""

import os
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch
import torch.distributed as dist
from torchrec.datasets.utils import Batch
from torchrec.modules.embedding_configs import EmbeddingBagConfig

from torchrec_rankmixer.data.features import FeaturePrep, Rows
from torchrec_rankmixer.data.files import FileReader, read_header, shard
from torchrec_rankmixer.data.settings import SYNTHETIC_FORMATS, DataSettings
from torchrec_rankmixer.data.stream import CursorStream, batch_stream
from torchrec_rankmixer.data.synthetic_sources import SPLITS, FamilySource, SyntheticSequenceSource, SyntheticSource
from torchrec_rankmixer.data.text import CRITEO_DENSE, CRITEO_SPARSE
from torchrec_rankmixer.features.managed_collision import ManagedCollisionRemapper
from torchrec_rankmixer.utils.checks import check_choice

if TYPE_CHECKING:  # imported when used: it reads TorchRec's binary day files
    from torchrec_rankmixer.data.binary_criteo import BinaryCriteoSource
MIN_ROWS_BEFORE_FAILING = 1000
MAX_EXAMPLES = 5
PADDING_LABEL = -1.0


class MalformedCounter:
    """Counts rows read and malformed rows per reason; enforces the allowed fraction.

    Example::

        >>> c = MalformedCounter(max_fraction=0.5)
        >>> c.add_rows(4); c.malformed("bad_label", "f.csv:3"); c.report()
        {'rows': 4, 'malformed': 1, 'bad_label': 1}
    """

    def __init__(self, max_fraction: float) -> None:
        self.max_fraction = max_fraction
        self.counts: Dict[str, int] = {"rows": 0}
        self.examples: List[str] = []

    def add_rows(self, n: int) -> None:
        self.counts["rows"] += n

    def malformed(self, reason: str, where: Union[str, Callable[[], str]], n: int = 1, detail: str = "") -> None:
        """Count ``n`` malformed rows of kind ``reason``; the first of them is at ``where``
        (``file:line``, or a function computing it, called only while examples are kept)
        and ``detail`` says what was wrong (column and value)."""
        self.counts[reason] = self.counts.get(reason, 0) + n
        if len(self.examples) < MAX_EXAMPLES:
            place = where() if callable(where) else where
            self.examples.append(f"{place}: {reason}" + (f" ({detail})" if detail else ""))
        self.check(final=False)

    @property
    def num_malformed(self) -> int:
        return sum(v for k, v in self.counts.items() if k != "rows")

    def check(self, final: bool) -> None:
        """Raise ValueError when the malformed fraction exceeds the limit (early checks wait
        for 1000 rows unless the limit is 0)."""
        rows, bad = self.counts["rows"], self.num_malformed
        if bad == 0 or rows == 0:
            return
        if not final and self.max_fraction > 0 and rows < MIN_ROWS_BEFORE_FAILING:
            return
        if bad / rows > self.max_fraction:
            raise ValueError(
                f"{bad} of {rows} rows are malformed ({self.report()}), more than "
                f"data.max_malformed_fraction ({self.max_fraction}); first: {self.examples}"
            )

    def report(self) -> Dict[str, int]:
        out = {"rows": self.counts["rows"], "malformed": self.num_malformed}
        out.update({k: v for k, v in sorted(self.counts.items()) if k != "rows"})
        return out


def file_schema(data: DataSettings) -> Tuple[List[str], List[str], FeaturePrep]:
    """(sparse columns, dense columns, FeaturePrep) that a file run's ``data.*`` settings
    define, without reading any file. Training (:class:`FileSource`) and export
    (``inference/from_run.py``) both derive their table layout here, so they cannot drift.

    Args:
        data: the run's ``data`` settings (``format``, ``sparse_columns``,
            ``dense_columns``, ``num_embeddings``, ``table_sizes``, ``id_transform``,
            ``dense_transform``, ``bucket_boundaries``).

    Returns:
        The column lists (Criteo's 26 + 13 columns when ``format == "criteo"`` and none are
        given) and the feature preparation built from them.
    """
    criteo = data.format in ("criteo", "criteo_binary")
    sparse = list(data.sparse_columns) or (CRITEO_SPARSE if criteo else [])
    dense = list(data.dense_columns) or (CRITEO_DENSE if criteo else [])
    prep = FeaturePrep(sparse, dense, data.num_embeddings, data.table_sizes,
                       data.id_transform, data.dense_transform, data.bucket_boundaries)
    return sparse, dense, prep


class FileSource:
    """Batches from files for one rank (same interface as :class:`SyntheticSource`).

    Files are read (``data/files.py``) and prepared in a background thread
    (``data.prefetch_batches`` ahead, :class:`~torchrec_rankmixer.data.stream.CursorStream`).

    Args:
        data: the ``data`` settings.
        two_labels: read ``data.label2_column`` too (ESMM: labels [B, 2]).
        rank: this rank.
        world_size: number of ranks.
    """

    def __init__(self, data: DataSettings, two_labels: bool, rank: int, world_size: int) -> None:
        d = data
        self.fmt = d.format
        self.batch_size, self.eval_batch_size = d.batch_size, d.eval_batch_size
        self.labels = [d.label_column] + ([d.label2_column] if two_labels else [])
        for f in [*d.train_files, *d.eval_files]:
            if not os.path.isfile(f):
                raise ValueError(f"data file {f!r} does not exist")
        self.sparse, self.dense, self.prep = file_schema(d)
        self.user_feature: Optional[str] = d.user_column
        if self.user_feature is not None and self.user_feature not in self.prep.feature_names:
            raise ValueError(
                f"data.user_column ({self.user_feature!r}) must be one of the sparse columns "
                f"{self.prep.feature_names}"
            )
        self.train_files, self.eval_files, self.test_files = list(d.train_files), list(d.eval_files), list(d.test_files)
        self.rank, self.world = rank, world_size
        self.counter = MalformedCounter(d.max_malformed_fraction)
        self._eval_cache: Dict[Tuple[str, int, int], List[Batch]] = {}
        header = read_header(self.train_files[0], d.delimiter) if self.fmt == "csv" else None
        self.reader = FileReader(self.fmt, self.labels, self.sparse, self.dense, d.delimiter, header,
                                 self.counter, d.text_reader, d.read_block_kb * 1024)
        self._stream: CursorStream[Batch] = CursorStream(self._batches, d.prefetch_batches)

    # ------------------------------------------------------------------ schema
    @property
    def dense_in_features(self) -> int:
        return self.prep.dense_in_features

    def table_configs(self, embedding_dim: int) -> List[EmbeddingBagConfig]:
        return self.prep.table_configs(embedding_dim)

    def malformed_report(self) -> Dict[str, int]:
        return self.counter.report()

    # ------------------------------------------------------------------ reading
    def _endless(self) -> Iterator[Rows]:
        parts = shard(self.train_files, self.rank, self.world)
        while True:
            produced = False
            for rows in self.reader.epoch(parts):
                produced = True
                yield rows
            if not produced:
                raise ValueError(f"rank {self.rank} has no valid training rows in {[p[0] for p in parts]}")

    def _batches(self, start: int) -> Iterator[Batch]:
        return batch_stream(self._endless(), self.prep, self.batch_size, skip=start)

    def train_batches(self, cursor: int, rank: int, world_size: int, num: int) -> Iterator[Batch]:
        """``num`` batches from this rank's ``cursor // world_size``-th on (exact on resume
        with the same number of ranks); a call that continues where the last one stopped
        continues the running, prefetched stream."""
        return self._stream.take(cursor // world_size, num)

    def close(self) -> None:
        """Stop the background reader."""
        self._stream.close()

    def eval_batch_iter(self, rank: int, world_size: int, split: str = "valid") -> Iterator[Batch]:
        """This rank's share of the ``split`` files (``"valid"``: ``data.eval_files``,
        ``"test"``: ``data.test_files``) as full batches, padded (labels -1) so every rank
        yields the same number of batches. Collective when distributed."""
        check_choice("split", split, SPLITS)
        files = self.eval_files if split == "valid" else self.test_files
        if not files:
            return iter(())
        key = (split, rank, world_size)
        if key not in self._eval_cache:  # a held-out set is fixed: read it once
            blocks = list(self.reader.epoch([(f, rank, world_size) for f in files]))
            rows = Rows.cat(blocks) if blocks else None
            self._eval_cache[key] = padded_eval_batches(rows, self.prep, self.eval_batch_size, rank, files)
        return iter(self._eval_cache[key])


def padded_eval_batches(rows: Optional[Rows], prep: FeaturePrep, batch_size: int, rank: int,
                        files: List[str]) -> List[Batch]:
    """``rows`` as full batches, padded with rows labelled -1 to the largest batch count of
    any rank (an all-reduce when distributed), so the sharded collectives stay in step."""
    n_rows = len(rows) if rows is not None else 0
    count = torch.tensor([-(-n_rows // batch_size)])
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
    total = int(count) * batch_size
    if total == 0:
        return []
    if rows is None:
        raise ValueError(f"rank {rank} has no valid eval rows in {files}")
    pad = rows.slice(0, 1)
    pad.labels = torch.full_like(pad.labels, PADDING_LABEL)
    rows = Rows.cat([rows] + [pad] * (total - n_rows))
    return [prep.batch(rows.slice(i, i + batch_size)) for i in range(0, total, batch_size)]


def make_source(data: DataSettings, two_labels: bool, rank: int,
                world_size: int) -> "SyntheticSource | FileSource | BinaryCriteoSource":
    """The batch source ``data.format`` names.

    Args:
        data: validated ``data`` settings.
        two_labels: the model has two tasks (ESMM): batches carry labels [B, 2].
        rank: this process's rank.
        world_size: number of processes.
    """
    if data.format == "synthetic":
        return SyntheticSource(data, two_labels)
    if data.format == "synthetic_sequences":
        return SyntheticSequenceSource(data, two_labels)
    if data.format in ("synthetic_affinity", "synthetic_context_rules"):
        return FamilySource(data, two_labels)
    if data.format == "criteo_binary":
        if two_labels:
            raise ValueError("data.format='criteo_binary' has one label; model.task='esmm' needs two")
        from torchrec_rankmixer.data.binary_criteo import BinaryCriteoSource

        return BinaryCriteoSource(data, rank, world_size)
    return FileSource(data, two_labels, rank, world_size)


def build_remapper(
    data: DataSettings, tables: List[EmbeddingBagConfig],
    process_group: Optional[dist.ProcessGroup] = None,
) -> Optional[ManagedCollisionRemapper]:
    """The managed-collision remapper of a run (None unless ``data.id_transform`` is
    ``managed_collision``). It manages the tables of raw-id features: every table for
    synthetic data, the ``data.sparse_columns`` tables for files (not ``<dense>_bucket``).

    Example::

        >>> data = DataSettings(id_transform="managed_collision")
        >>> remap = build_remapper(data, SyntheticSource(data).table_configs(8))
        >>> remap.feature_names[:2], remap.settings["eviction_policy"]
        (['f0', 'f1'], 'distance_lfu')
    """
    if data.id_transform != "managed_collision":
        return None
    if data.format in SYNTHETIC_FORMATS:
        managed = list(tables)
    else:
        raw = set(file_schema(data)[0])
        managed = [t for t in tables if all(f in raw for f in t.feature_names)]
    mc = data.managed_collision
    return ManagedCollisionRemapper(managed, mc.eviction_policy, mc.eviction_interval, mc.decay_exponent,
                                    mc.input_hash_size, process_group)
