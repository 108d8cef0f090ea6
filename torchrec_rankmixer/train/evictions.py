"""Reset the embedding rows that managed collision gave to new ids.

When :class:`~torchrec_rankmixer.features.managed_collision.ManagedCollisionRemapper`
evicts an id, its row goes to a newcomer. Like TorchRec's sharded managed-collision EBC
(``reset_embedding_weight_momentum``, then the table's ``init_fn``), the trainer then
resets the row: the embedding row is re-drawn from the table's initialiser (or zeroed,
``data.managed_collision.evicted_row_init=zero``) and every per-row optimiser state
(row-wise Adagrad's accumulator, Adam's moments, RMSProp's average for data-parallel
tables) is set to zero, so the newcomer starts like a fresh id instead of inheriting the
evicted id's embedding and step size.

The re-drawn values depend only on (``seed``, table name): the trainer derives ``seed``
from ``train.seed`` and the global index of the batch that evicted the rows, so every rank
draws the same rows (data-parallel replicas stay identical) and a resumed run draws what
the uninterrupted run drew.

It works on the local shards of any sharding (table-wise, row-wise, column-wise: the
shard's row and column offsets are read from its metadata) and on data-parallel replicas,
through the model's and the optimiser's state dicts, whose tensors are views of the live
weights and states.
"""

import itertools
import zlib
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor


def _set_rows(value: Any, rows: torch.Tensor, fresh: Optional[torch.Tensor]) -> None:
    """Set ``rows`` (global row ids) of a tensor, or of this rank's shards of a ShardedTensor,
    to ``fresh`` [R, D] (the full-width new rows) or to zero when ``fresh`` is None."""
    if isinstance(value, ShardedTensor):
        for shard in value.local_shards():
            start, count = shard.metadata.shard_offsets[0], shard.metadata.shard_sizes[0]
            picked = (rows >= start) & (rows < start + count)
            mine = rows[picked] - start
            if mine.numel():
                target = shard.tensor
                if fresh is None or target.dim() < 2:
                    target[mine.to(target.device)] = 0
                else:
                    col, width = shard.metadata.shard_offsets[1], shard.metadata.shard_sizes[1]
                    target[mine.to(target.device)] = fresh[picked, col:col + width].to(target)
    elif isinstance(value, torch.Tensor) and value.dim() >= 1:
        index = rows.to(value.device)
        if fresh is None or value.dim() < 2:
            value[index] = 0
        else:
            value[index] = fresh.to(value)


def _fresh_rows(init_fn: Callable[[torch.Tensor], Any], num: int, dim: int, seed: int, table: str) -> torch.Tensor:
    """[num, dim] rows drawn by the table's ``init_fn`` from a seed fixed by (seed, table)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zlib.crc32(f"{seed}/{table}".encode()))
        out = torch.empty(num, dim)
        init_fn(out)
    return out


def reset_rows(
    model: nn.Module, optimizer: Any, evictions: Dict[str, torch.Tensor],
    init: Optional[Dict[str, Callable[[torch.Tensor], Any]]] = None, seed: int = 0,
) -> int:
    """Reset the evicted rows of the named tables in ``model`` and ``optimizer``.

    Args:
        model: the (DMP-wrapped) model holding EBC tables ``...embedding_bags.<table>.weight``.
        optimizer: a keyed optimiser (e.g. CombinedOptimizer) whose ``state_dict()["state"]``
            is keyed by parameter name.
        evictions: table name -> row ids [R] int64 to reset.
        init: table name -> initialiser (TorchRec's ``EmbeddingBagConfig.init_fn``) that
            re-draws the rows' weights; tables not in it (or ``None``) get zero rows.
            Optimiser states are always zeroed.
        seed: fixes the re-drawn values (with the table name).

    Returns:
        The number of rows reset on this rank's weights (local shards and replicas).

    Example::

        >>> from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
        >>> ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(
        ...     name="t", embedding_dim=2, num_embeddings=4, feature_names=["a"])])
        >>> reset_rows(ebc, torch.optim.SGD(ebc.parameters(), lr=0.1), {"t": torch.tensor([1, 3])})
        2
        >>> ebc.embedding_bags["t"].weight[[1, 3]].abs().sum().item()
        0.0
    """
    if not evictions:
        return 0
    suffixes = {f"embedding_bags.{table}.weight": table for table in evictions}
    reset = 0
    with torch.no_grad():
        for key, value in model.state_dict().items():
            for suffix, table in suffixes.items():
                if key.endswith(suffix):
                    rows, fresh = evictions[table], None
                    if init is not None and table in init:
                        fresh = _fresh_rows(init[table], rows.numel(), value.size(1), seed, table)
                    _set_rows(value, rows, fresh)
                    reset += _local_count(value, rows)
        state = optimizer.state_dict().get("state", {})
        for key, per_param in state.items():
            for suffix, table in suffixes.items():
                if isinstance(key, str) and key.endswith(suffix) and isinstance(per_param, dict):
                    for value in per_param.values():
                        _set_rows(value, evictions[table], None)
    return reset


def _local_count(value: Any, rows: torch.Tensor) -> int:
    if isinstance(value, ShardedTensor):
        total = 0
        for shard in value.local_shards():
            start, count = shard.metadata.shard_offsets[0], shard.metadata.shard_sizes[0]
            total += int(((rows >= start) & (rows < start + count)).sum())
        return total
    return int(rows.numel())


class RemapFeeder:
    """Feeds training batches through the managed-collision remapper and resets the rows
    each batch's remap evicted, just before that batch's forward (TorchRec's sharded
    MC-EBC resets them before the lookup of the batch that evicted them).

    Args:
        remapper: the run's :class:`ManagedCollisionRemapper` (None: batches pass through).
        reset_evicted_rows: re-initialise evicted rows (``data.managed_collision``).
        row_init: table -> its init_fn (``evicted_row_init=table_init``) or None (zeros).
        seed: ``train.seed`` (with the global batch index, it seeds the re-drawn rows).
    """

    def __init__(self, remapper: Optional[torch.nn.Module], reset_evicted_rows: bool,
                 row_init: Optional[Dict[str, Callable[[torch.Tensor], Any]]], seed: int) -> None:
        self.remapper, self.reset_evicted_rows, self.row_init, self.seed = remapper, reset_evicted_rows, row_init, seed
        self._evictions: List[Dict[str, torch.Tensor]] = []  # per remapped training batch
        self._done, self._base, self.evicted_rows = 0, 0, 0

    def remapped(self, batches: Iterator[Any], training: bool, step: int) -> Iterator[Any]:
        """``batches`` through the remapper (profiling/evicting when ``training``; all ranks
        consume the same number of batches, so its all-gathers stay in step). In training,
        each batch's evictions are queued in batch order (see :meth:`reset_before`)."""
        if self.remapper is None:
            return batches
        remapper = self.remapper.train(training)
        if not training:
            return map(remapper.remap_batch, batches)
        self._evictions, self._done, self._base = [], 0, step

        def remap_and_record() -> Iterator[Any]:
            for batch in batches:
                out = remapper.remap_batch(batch)
                self._evictions.append(remapper.last_evictions)
                yield out

        it = remap_and_record()
        first = next(it, None)  # remapped now, so its evictions are known before its forward
        return it if first is None else itertools.chain([first], it)

    def reset_before(self, upto: int, model: torch.nn.Module, optimizer: Any) -> None:
        """Before the forward of this segment's batch ``upto``: reset the rows that the remap
        of batches <= ``upto`` gave to new ids (the pipeline has remapped batch ``upto``
        already, one or two batches ahead of its forward)."""
        if self.remapper is None:
            return
        while self._done <= upto and self._done < len(self._evictions):
            evicted = self._evictions[self._done]
            batch_index = self._base + self._done  # global: the same on every rank
            self._done += 1
            self.evicted_rows += sum(int(r.numel()) for r in evicted.values())
            if evicted and self.reset_evicted_rows:
                reset_rows(model, optimizer, evicted, self.row_init, self.seed * 1_000_003 + batch_index)
