"""Process group, TorchRec planner + DistributedModelParallel, and the optimisers.

One process (no torchrun): a world of 1 over an in-memory store. Under ``torchrun``
(one node or many): ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``LOCAL_WORLD_SIZE`` and the
rendezvous come from the environment; gloo on CPU, NCCL on GPU.
"""

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.optim import _apply_optimizer_in_backward
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.optim.clipping import GradientClipping, GradientClippingOptimizer
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from torchrec_rankmixer.train.config import OptimSettings, ShardingSettings, TrainConfig

CPU_SHARDING_TYPES = ("table_wise", "data_parallel")

T = TypeVar("T")


@dataclass
class DistEnv:
    """Where this process sits: rank, world size, local rank, device, backend."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_setting: str) -> DistEnv:
    """Join (or create) the default process group.

    Args:
        device_setting: ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``.
    """
    if device_setting == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device ('cuda') but CUDA is not available; use 'cpu' or 'auto'")
    use_cuda = device_setting == "cuda" or (device_setting == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if use_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        if "MASTER_ADDR" in os.environ and world >= 1 and "RANK" in os.environ:
            dist.init_process_group(backend=backend)
        else:
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, local_world, device, backend)


def _embedding_optimizer(o: OptimSettings) -> tuple:
    if o.embedding == "row_wise_adagrad":
        return RowWiseAdagrad, {"lr": o.embedding_lr, "eps": o.embedding_eps}
    if o.embedding == "adagrad":
        return torch.optim.Adagrad, {"lr": o.embedding_lr, "eps": o.embedding_eps}
    if o.embedding == "adam":
        return torch.optim.Adam, {"lr": o.embedding_lr, "eps": o.embedding_eps}
    return torch.optim.SGD, {"lr": o.embedding_lr}


def _constraints(
    sharding: ShardingSettings, table_names: List[str], env: DistEnv, sequence_tables: List[str]
) -> Dict[str, ParameterConstraints]:
    unknown = sorted(set(sharding.constraints) - set(table_names))
    if unknown:
        raise ValueError(f"sharding.constraints names unknown table(s) {unknown}; tables: {table_names}")
    out = {}
    for name in table_names:
        types = list(sharding.constraints.get(name, sharding.sharding_types))
        if name in sequence_tables:
            # TorchRec 1.9.2's data-parallel EmbeddingCollection returns fewer rows than the
            # jagged lengths under the train pipeline (split_with_sizes error; docs/sequences.md)
            if name in sharding.constraints and "data_parallel" in types:
                raise ValueError(
                    f"sharding.constraints.{name} ({types}): sequence tables cannot be data_parallel "
                    "(TorchRec's data-parallel EmbeddingCollection mis-sizes jagged outputs); use table_wise"
                )
            types = [t for t in types if t != "data_parallel"] or ["table_wise"]
        if env.backend == "gloo":
            bad = [t for t in types if t not in CPU_SHARDING_TYPES]
            if bad:
                raise ValueError(
                    f"sharding type(s) {bad} for table {name!r} need NCCL (gloo lacks "
                    f"reduce-scatter); on CPU use {list(CPU_SHARDING_TYPES)}"
                )
        out[name] = ParameterConstraints(sharding_types=list(types))
    return out


def shard_model(module: nn.Module, cfg: TrainConfig, env: DistEnv) -> DistributedModelParallel:
    """Fuse the embedding optimiser into backward, plan with TorchRec's planner (topology of
    this run, constraints from ``sharding.*``) and wrap in DistributedModelParallel."""
    model = module.model  # type: ignore[union-attr]
    collections: List[nn.Module] = [model.sparse_arch.embedding_bag_collection]
    tables = [t.name for t in model.sparse_arch.embedding_bag_collection.embedding_bag_configs()]
    sequence_tables: List[str] = []
    if getattr(model, "sequence_arch", None) is not None:  # behaviour sequences: an EmbeddingCollection
        collections.append(model.sequence_arch.embedding_collection)
        sequence_tables = [t.name for t in model.sequence_arch.embedding_collection.embedding_configs()]
        tables += sequence_tables
    dense_tables = cfg.optim.embedding == "dense"
    if dense_tables:  # replicated tables with dense gradients, stepped by the dense optimiser
        if sequence_tables:
            raise ValueError("optim.embedding ('dense') keeps tables data-parallel, which sequence tables cannot be; "
                             "use a fused embedding optimiser")
        bad = {t: ts for t, ts in cfg.sharding.constraints.items() if list(ts) != ["data_parallel"]}
        if bad:
            raise ValueError(f"sharding.constraints ({bad}): optim.embedding ('dense') keeps every table data_parallel")
    else:
        opt_cls, opt_kwargs = _embedding_optimizer(cfg.optim)
        for collection in collections:
            _apply_optimizer_in_backward(opt_cls, collection.parameters(), opt_kwargs)
    hbm = None
    if cfg.sharding.hbm_gb is not None:
        hbm = int(cfg.sharding.hbm_gb * 1024**3)
    elif env.device.type == "cuda":
        hbm = torch.cuda.get_device_properties(env.device).total_memory
    topology = Topology(
        world_size=env.world_size, compute_device=env.device.type, hbm_cap=hbm,
        local_world_size=env.local_world_size,
    )
    planner = EmbeddingShardingPlanner(
        topology=topology,
        constraints=(
            {t: ParameterConstraints(sharding_types=["data_parallel"], compute_kernels=["dense"]) for t in tables}
            if dense_tables else _constraints(cfg.sharding, tables, env, sequence_tables)
        ),
    )
    plan = planner.collective_plan(module, pg=dist.GroupMember.WORLD)
    return DistributedModelParallel(module, device=env.device, plan=plan)


def lr_factor(step: int, o: OptimSettings, total_steps: int) -> float:
    """Multiplier of the dense LR at 0-based ``step``: linear warm-up over
    ``warmup_steps``, then ``decay`` (none / linear / cosine / exponential) over
    ``decay_steps`` (default: the rest of the run) down to ``min_lr_ratio``.

    Example::

        >>> o = OptimSettings(warmup_steps=10, decay="linear", decay_steps=10)
        >>> [round(lr_factor(s, o, 100), 2) for s in (0, 9, 10, 15, 20, 50)]
        [0.1, 1.0, 1.0, 0.5, 0.0, 0.0]
    """
    if step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.decay == "none":
        return 1.0
    span = o.decay_steps or max(total_steps - o.warmup_steps, 1)
    t = min((step - o.warmup_steps) / span, 1.0)
    if o.decay == "linear":
        shape = 1.0 - t
    elif o.decay == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * t))
    else:  # exponential: reaches min_lr_ratio (or 1%) at the end of the span
        shape = max(o.min_lr_ratio, 0.01) ** t
        return shape
    return o.min_lr_ratio + (1.0 - o.min_lr_ratio) * shape


def _is_table(name: str) -> bool:
    return "embedding_bag_collection." in name or "embedding_collection." in name


def dense_optimizer(model: nn.Module, o: OptimSettings) -> KeyedOptimizer:
    """Keyed dense optimiser (``optim.dense``) over the parameters not fused into backward,
    with gradient-norm clipping when ``optim.grad_clip_norm`` is set. With
    ``optim.embedding="dense"`` the tables are among them, in their own group
    (``optim.embedding_lr``; ``optim.embedding_l2`` as the coupled L2 weight decay: the
    gradient of ``(l2 / 2) * ||E||^2`` on every row, every step, as FuxiCTR's regulariser)."""
    params = dict(in_backward_optimizer_filter(model.named_parameters()))
    tables = {id(p) for n, p in params.items() if _is_table(n)}

    def factory(ps: List[torch.Tensor]) -> torch.optim.Optimizer:
        groups = [g for g in (  # "kind" tells set_dense_lr which schedule a group follows
            {"params": [p for p in ps if id(p) not in tables], "lr": o.lr, "weight_decay": o.weight_decay,
             "kind": "dense"},
            {"params": [p for p in ps if id(p) in tables], "lr": o.embedding_lr, "weight_decay": o.embedding_l2,
             "kind": "tables"},
        ) if g["params"]]
        if o.dense == "rmsprop":
            return torch.optim.RMSprop(groups, lr=o.lr, eps=o.eps, momentum=o.momentum)
        if o.dense == "adam":
            return torch.optim.Adam(groups, lr=o.lr, eps=o.eps)
        if o.dense == "adagrad":
            return torch.optim.Adagrad(groups, lr=o.lr, eps=o.eps)
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum)

    keyed = KeyedOptimizerWrapper(params, factory)
    if o.grad_clip_norm is None:
        return keyed
    return GradientClippingOptimizer(keyed, GradientClipping.NORM, max_gradient=o.grad_clip_norm)


def build_optimizer(model: DistributedModelParallel, o: OptimSettings) -> CombinedOptimizer:
    """``sparse`` (DMP's fused embedding optimiser) + ``dense``, one keyed optimiser."""
    return CombinedOptimizer([("sparse", model.fused_optimizer), ("dense", dense_optimizer(model, o))])


def set_dense_lr(optimizer: CombinedOptimizer, o: OptimSettings, step: int, total_steps: int,
                 scale: float = 1.0) -> float:
    """Set the learning rates for ``step``: the dense LR follows :func:`lr_factor` (a pure
    function of the step: exact on resume) times ``scale`` (the plateau decay so far); the
    embedding LR is ``optim.embedding_lr * scale``. Returns the dense LR.

    Example::

        >>> from torchrec.optim.keyed import KeyedOptimizerWrapper
        >>> w = torch.nn.Parameter(torch.zeros(1))
        >>> opt = CombinedOptimizer([("dense", KeyedOptimizerWrapper({"w": w}, lambda ps: torch.optim.SGD(
        ...     [{"params": ps, "lr": 0.1, "kind": "dense"}])))])
        >>> set_dense_lr(opt, OptimSettings(lr=0.1, warmup_steps=0), 5, 10, scale=0.5)
        0.05
    """
    factor = lr_factor(step, o, total_steps) * scale
    for name, opt in optimizer.optimizers:
        for group in opt.param_groups:  # fused embedding optimisers apply theirs on the next step
            tables = name == "sparse" or group.get("kind") == "tables"
            group["lr"] = o.embedding_lr * scale if tables else o.lr * factor
    return o.lr * factor


# ---------------------------------------------------------------------- collectives
def agreed(fn: Callable[[], T]) -> T:
    """Run ``fn`` on every rank; a ValueError raised on rank 0 (which owns the run
    directory) is raised on every rank, so no rank waits for a collective that never comes.

    Example::

        >>> agreed(lambda: 3)  # one process (or no group): just the call
        3
    """
    error: List[Optional[str]] = [None]
    result: Optional[T] = None
    try:
        result = fn()
    except ValueError as e:
        if _rank() != 0:
            raise
        error = [str(e)]
    if _world() > 1:
        dist.broadcast_object_list(error, src=0)
    if error[0] is not None:
        raise ValueError(error[0])
    return result  # type: ignore[return-value]


def broadcast_value(value: T) -> T:
    """Rank 0's ``value`` on every rank (any picklable value)."""
    box = [value]
    if _world() > 1:
        dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_over_ranks(value: float, device: torch.device) -> float:
    """The mean of ``value`` over the ranks."""
    t = torch.tensor([value], dtype=torch.float64, device=device)
    if _world() > 1:
        dist.all_reduce(t)
        t /= _world()
    return float(t.item())


def sum_counts_over_ranks(local: Dict[str, int]) -> Dict[str, int]:
    """Per-key sums of every rank's counts (e.g. rows read, malformed rows by reason)."""
    if _world() == 1:
        return dict(local)
    parts: List[Any] = [None] * _world()
    dist.all_gather_object(parts, local)
    total: Dict[str, int] = {}
    for part in parts:
        for k, v in part.items():
            total[k] = total.get(k, 0) + v
    return total


def sync_batch_norm_stats(model: nn.Module) -> int:
    """Copy rank 0's BatchNorm running statistics to every rank; returns how many modules.

    TorchRec's DistributedModelParallel replicates the dense part with
    ``broadcast_buffers=False``, so each rank's running mean and variance follow its own
    batches (the dot products' :class:`~torchrec_rankmixer.modules.interaction.DotProductNorm`,
    the deep branch). Called before evaluating and before saving, so that every rank
    evaluates the model the checkpoint and the export hold: rank 0's. A no-op on one
    process. Training steps are unaffected (they normalise with batch statistics).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats]
    if _world() > 1:
        for m in norms:
            for buf in (m.running_mean, m.running_var, m.num_batches_tracked):
                if buf is not None:
                    dist.broadcast(buf, src=0)
    return len(norms)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1
