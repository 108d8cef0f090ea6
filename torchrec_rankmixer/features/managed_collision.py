"""Ids without a fixed vocabulary: a replicated managed-collision (ZCH) id remapper.

:class:`ManagedCollisionRemapper` wraps TorchRec's :class:`ManagedCollisionCollection` of
:class:`MCHManagedCollisionModule` s (one per table, ``zch_size`` = the table's
``num_embeddings``) and turns a KJT of raw 64-bit ids into ids in ``[0, zch_size)``
*before* the ordinary (sharded) EmbeddingBagCollection. Each table keeps the
``zch_size - 1`` ids with the best eviction score (DistanceLFU, LFU or LRU) in its own
slot; every other id goes to the shared last slot ``zch_size - 1`` (TorchRec's miss slot).

Distributed: in training, the raw ids of every rank are all-gathered (in rank order, i.e.
the global batch) and every rank profiles and remaps that same global batch, so the
mapping state stays bit-identical on all ranks; each rank then keeps its own part. In eval
mode the remap is read-only (no profiling, no eviction, no collective).

It runs on CPU in the data path (a gloo group; on NCCL runs the trainer makes a gloo side
group), so the sharded EBC and TrainPipelineSparseDist see ordinary ids.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.mc_modules import (
    DistanceLFU_EvictionPolicy,
    LFU_EvictionPolicy,
    LRU_EvictionPolicy,
    ManagedCollisionCollection,
    MCHEvictionPolicy,
    MCHManagedCollisionModule,
)
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from torchrec_rankmixer.features.prep import hash_ids

EVICTION_POLICIES = ("distance_lfu", "lfu", "lru")


def make_eviction_policy(name: str, decay_exponent: float) -> MCHEvictionPolicy:
    """TorchRec's eviction policy ``name`` (``distance_lfu``, ``lfu``, ``lru``).

    Args:
        name: policy name.
        decay_exponent: distance decay of ``distance_lfu`` and ``lru`` (ignored by ``lfu``).

    Example::

        >>> type(make_eviction_policy("lru", 1.0)).__name__
        'LRU_EvictionPolicy'
    """
    if name == "distance_lfu":
        return DistanceLFU_EvictionPolicy(decay_exponent=decay_exponent)
    if name == "lfu":
        return LFU_EvictionPolicy()
    if name == "lru":
        return LRU_EvictionPolicy(decay_exponent=decay_exponent)
    raise ValueError(f"eviction_policy ({name!r}) must be one of {list(EVICTION_POLICIES)}")


def gather_kjt(kjt: KeyedJaggedTensor, group: Optional[dist.ProcessGroup]) -> Tuple[KeyedJaggedTensor, torch.Tensor]:
    """All-gather a KJT along the batch (rank 0's samples first) on every rank.

    Args:
        kjt: this rank's KJT, K keys, stride B_r (CPU).
        group: the (gloo) process group.

    Returns:
        (the global KJT with stride sum_r B_r, value counts [K, W] per key and rank).

    Example (a world of one process)::

        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(["a", "b"], torch.tensor([5, 6, 7]),
        ...                                           torch.tensor([1, 0, 2, 0]))
        >>> glob, counts = gather_kjt(kjt, None)
        >>> glob.values().tolist(), glob.stride(), counts.tolist()
        ([5, 6, 7], 2, [[1], [2]])
        >>> dist.destroy_process_group()
    """
    world = dist.get_world_size(group)
    keys, stride = kjt.keys(), kjt.stride()
    lengths = kjt.lengths().to(torch.int64).view(len(keys), stride)  # (K, B_r)
    values = kjt.values().to(torch.int64)
    sizes = torch.tensor([stride, values.numel()], dtype=torch.int64)
    all_sizes = [torch.empty_like(sizes) for _ in range(world)]
    dist.all_gather(all_sizes, sizes, group=group)
    max_b = max(int(s[0]) for s in all_sizes)
    max_n = max(int(s[1]) for s in all_sizes)
    pad_len = torch.zeros(len(keys), max_b, dtype=torch.int64)
    pad_len[:, :stride] = lengths
    pad_val = torch.zeros(max_n, dtype=torch.int64)
    pad_val[: values.numel()] = values
    all_len = [torch.empty_like(pad_len) for _ in range(world)]
    all_val = [torch.empty_like(pad_val) for _ in range(world)]
    dist.all_gather(all_len, pad_len, group=group)
    dist.all_gather(all_val, pad_val, group=group)
    per_rank_len = [all_len[r][:, : int(all_sizes[r][0])] for r in range(world)]  # (K, B_r)
    counts = torch.stack([ln.sum(1) for ln in per_rank_len], dim=1)  # (K, W)
    per_rank_vals = [list(torch.split(all_val[r][: int(all_sizes[r][1])], counts[:, r].tolist()))
                     for r in range(world)]
    out_len = torch.cat([per_rank_len[r][k] for k in range(len(keys)) for r in range(world)])
    out_val = torch.cat([per_rank_vals[r][k] for k in range(len(keys)) for r in range(world)])
    total_b = sum(int(s[0]) for s in all_sizes)
    glob = KeyedJaggedTensor(keys=keys, values=out_val, lengths=out_len.to(kjt.lengths().dtype), stride=total_b)
    return glob, counts


def local_values(global_values: torch.Tensor, counts: torch.Tensor, rank: int) -> torch.Tensor:
    """This rank's values out of values laid out as :func:`gather_kjt` lays them out
    (key-major, then rank): ``global_values`` [sum(counts)], ``counts`` [K, W].

    Example::

        >>> local_values(torch.arange(6), torch.tensor([[1, 2], [2, 1]]), rank=1).tolist()
        [1, 2, 5]
    """
    flat = counts.reshape(-1)  # key-major: (k, r) at k * W + r
    starts = torch.cumsum(flat, 0) - flat
    world = counts.shape[1]
    parts = [global_values[int(starts[k * world + rank]): int(starts[k * world + rank] + counts[k, rank])]
             for k in range(counts.shape[0])]
    return torch.cat(parts) if parts else global_values[:0]


class ManagedCollisionRemapper(nn.Module):
    """Raw 64-bit ids -> ids in ``[0, num_embeddings)`` per table, replicated on every rank.

    Args:
        tables: the managed tables (each table's ``num_embeddings`` is its ``zch_size``,
            >= 2; the last row is the shared slot of ids not (yet) admitted).
        eviction_policy: ``distance_lfu`` (count / distance^decay), ``lfu`` or ``lru``.
        eviction_interval: profile this many training calls, then admit/evict (>= 1).
        decay_exponent: distance decay for ``distance_lfu`` and ``lru`` (> 0).
        input_hash_size: if set, raw ids are first hashed into ``[0, input_hash_size)``
            (splitmix64); None keeps raw ids as they are.
        process_group: group whose ranks share one mapping (None: the default group when
            distributed is initialised, else this process alone). Must support CPU
            tensors (gloo).

    Shapes:
        KJT with keys K (managed and other features, any order), stride B -> the same KJT
        with the managed features' values remapped (lengths unchanged).

    After each training call, ``last_evictions`` maps each table to the rows whose id was
    evicted and given to a newcomer (the trainer resets those rows, see
    :func:`torchrec_rankmixer.train.evictions.reset_rows`).

    Example::

        >>> t = EmbeddingBagConfig(name="t_a", embedding_dim=4, num_embeddings=4, feature_names=["a"])
        >>> remap = ManagedCollisionRemapper([t])
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(["a"], torch.tensor([10**15, 7, 7]),
        ...                                           torch.tensor([1, 2]))
        >>> remap(kjt).values().tolist()  # training: profile, admit (7 first: seen twice), remap
        [2, 1, 1]
        >>> _ = remap.eval()  # read-only: unseen ids go to the shared last slot (3)
        >>> remap(KeyedJaggedTensor.from_lengths_sync(["a"], torch.tensor([7, 99]), torch.tensor([1, 1]))).values().tolist()
        [1, 3]
    """

    def __init__(
        self,
        tables: Sequence[EmbeddingBagConfig],
        eviction_policy: str = "distance_lfu",
        eviction_interval: int = 1,
        decay_exponent: float = 1.0,
        input_hash_size: Optional[int] = None,
        process_group: Optional[dist.ProcessGroup] = None,
    ) -> None:
        super().__init__()
        if not tables:
            raise ValueError("ManagedCollisionRemapper needs at least one table (tables is empty)")
        if eviction_policy not in EVICTION_POLICIES:
            raise ValueError(f"eviction_policy ({eviction_policy!r}) must be one of {list(EVICTION_POLICIES)}")
        if isinstance(eviction_interval, bool) or not isinstance(eviction_interval, int) or eviction_interval < 1:
            raise ValueError(f"eviction_interval ({eviction_interval!r}) must be an int >= 1")
        if not decay_exponent > 0:
            raise ValueError(f"decay_exponent ({decay_exponent!r}) must be > 0")
        if input_hash_size is not None and (isinstance(input_hash_size, bool) or not isinstance(input_hash_size, int)
                                            or input_hash_size < 2):
            raise ValueError(f"input_hash_size ({input_hash_size!r}) must be an int >= 2 or None")
        for t in tables:
            if t.num_embeddings < 2:
                raise ValueError(
                    f"table {t.name!r} has num_embeddings ({t.num_embeddings}) < 2; a managed-collision "
                    "table needs at least one id slot plus the shared slot of unadmitted ids"
                )
        modules: Dict[str, MCHManagedCollisionModule] = {}
        for t in tables:
            modules[t.name] = MCHManagedCollisionModule(
                zch_size=t.num_embeddings,
                device=torch.device("cpu"),
                eviction_policy=make_eviction_policy(eviction_policy, decay_exponent),
                eviction_interval=eviction_interval,
                input_hash_size=input_hash_size if input_hash_size is not None else (2**63) - 1,
                input_hash_func=hash_ids if input_hash_size is not None else None,
                name=t.name,
            )
        self.collection = ManagedCollisionCollection(modules, list(tables))
        self.feature_names: List[str] = [f for t in tables for f in t.feature_names]
        self.settings = {"eviction_policy": eviction_policy, "eviction_interval": eviction_interval,
                         "decay_exponent": decay_exponent, "input_hash_size": input_hash_size}
        self.process_group = process_group
        # rows whose id the last training call evicted, per table (identical on every rank)
        self.last_evictions: Dict[str, torch.Tensor] = {}
        self.register_load_state_dict_post_hook(_restart_profiling)

    @property
    def mch_modules(self) -> Dict[str, MCHManagedCollisionModule]:
        """Table name -> its TorchRec MCH module (the mapping state)."""
        return dict(self.collection._managed_collision_modules.items())  # type: ignore[arg-type]

    def _world(self) -> Tuple[int, int]:
        if not dist.is_initialized():
            return 0, 1
        return dist.get_rank(self.process_group), dist.get_world_size(self.process_group)

    def forward(self, kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
        """Remap the managed features of ``kjt`` (see class docstring). Collective in
        training mode when the group has more than one rank."""
        keys = kjt.keys()
        missing = [f for f in self.feature_names if f not in keys]
        if missing:
            raise ValueError(f"KJT keys {keys} lack the managed feature(s) {missing}")
        if kjt.variable_stride_per_key():
            raise ValueError("ManagedCollisionRemapper does not support variable batch size per feature")
        device = kjt.device()
        # a copy: to_dict() may return the KJT's cached dict, which must not be changed
        jts = dict((kjt.to("cpu") if device.type != "cpu" else kjt).to_dict())
        managed = KeyedJaggedTensor.from_jt_dict({f: jts[f] for f in self.feature_names})
        rank, world = self._world()
        if self.training:
            occupied = {name: _occupied_rows(m) for name, m in self.mch_modules.items()}
            if world > 1:
                glob, counts = gather_kjt(managed, self.process_group)
                self._reserve_history(glob)
                remapped = local_values(self.collection(glob).values(), counts, rank)
            else:
                self._reserve_history(managed)
                remapped = self.collection(managed).values()
            self.last_evictions = _evicted_rows(self.collection.evict(), occupied)
        else:
            self.last_evictions = {}
            remapped = self.collection(managed).values()
        offset = 0
        for f in self.feature_names:  # managed KJT order: feature by feature
            n = jts[f].values().numel()
            jts[f] = JaggedTensor(values=remapped[offset: offset + n], lengths=jts[f].lengths())
            offset += n
        out = KeyedJaggedTensor.from_jt_dict({k: jts[k] for k in keys})
        return out.to(device) if device.type != "cpu" else out

    def remap_batch(self, batch: Batch) -> Batch:
        """``batch`` with its sparse features remapped (dense features and labels as they are)."""
        return Batch(dense_features=batch.dense_features, sparse_features=self(batch.sparse_features),
                     labels=batch.labels)

    def _reserve_history(self, kjt: KeyedJaggedTensor) -> None:
        """TorchRec sizes each table's eviction history from its first batch (x
        ``eviction_interval`` x 1.25) and silently drops the ids of a later, larger batch
        beyond it; grow it first (pending ids are kept)."""
        per_key = dict(zip(kjt.keys(), kjt.length_per_key()))
        for t in self.collection.embedding_configs():
            _grow_history(self.mch_modules[t.name], sum(per_key[f] for f in t.feature_names))


def _grow_history(mch: MCHManagedCollisionModule, incoming: int) -> None:
    """Make ``mch``'s eviction history hold ``incoming`` more ids (keeps pending ones)."""
    first = mch._input_history_buffer_size == -1
    kept = 0 if first else mch._current_history_buffer_offset
    need = kept + incoming
    if not first and need <= mch._input_history_buffer_size:
        return
    size = int(need * mch._eviction_interval * 1.25) + 1 if first else max(int(need * 1.25) + 1,
                                                                           2 * mch._input_history_buffer_size)
    acc = torch.empty(size, dtype=torch.int64, device=mch.device)
    if kept:
        acc[:kept] = mch._history_accumulator[:kept]
    mch._history_accumulator = acc
    for name, _, is_history in mch._eviction_policy.metadata_info:
        if is_history:
            buf = torch.zeros(size, dtype=torch.int64, device=mch.device)
            if kept:
                buf[:kept] = mch._history_metadata[name][:kept]
            mch.register_buffer("_history_" + name, buf, persistent=False)
            mch._history_metadata[name] = buf
    mch._input_history_buffer_size = size


def _occupied_rows(mch: MCHManagedCollisionModule) -> torch.Tensor:
    """Rows that hold an id (TorchRec marks free ones with the int64-max sentinel)."""
    taken = mch._mch_sorted_raw_ids != torch.iinfo(torch.int64).max
    return mch._mch_remapped_ids_mapping[taken]


def _evicted_rows(evictions: Dict[str, Optional[torch.Tensor]], occupied: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Per table, the rows TorchRec reassigned that held an id before (free rows filled
    for the first time are not evictions)."""
    out = {}
    for table, rows in evictions.items():
        if rows is not None and rows.numel():
            rows = rows[torch.isin(rows, occupied[table])]
            if rows.numel():
                out[table] = rows.to(torch.int64)
    return out


def _restart_profiling(module: nn.Module, incompatible_keys: object) -> None:
    """After loading a state dict: continue the iteration count from the loaded
    ``_current_iter_tensor`` and start an empty eviction history (checkpoints are written
    with no ids pending when their step is a multiple of ``eviction_interval``)."""
    for mch in module.collection._managed_collision_modules.values():  # type: ignore[union-attr]
        mch._current_iter = -1
        mch._last_eviction_iter = -1
        mch._current_history_buffer_offset = 0
        mch._evicted = False
