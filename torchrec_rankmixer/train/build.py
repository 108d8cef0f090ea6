"""Build the pieces of a run from a :class:`TrainConfig`: data source, model, train module."""

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torchrec import EmbeddingBagCollection
from torchrec.datasets.utils import Batch
from torchrec.modules.embedding_configs import EmbeddingBagConfig

from torchrec_rankmixer.config import RankMixerConfig
from torchrec_rankmixer.features.managed_collision import ManagedCollisionRemapper
from torchrec_rankmixer.models.dlrm_rankmixer import (
    DEFAULT_MAX_SPARSE_TOKENS,
    DEFAULT_MIN_D_MODEL,
    DLRM_RankMixer,
)
from torchrec_rankmixer.models.heads import attach_esmm_towers, task_loss
from torchrec_rankmixer.train.config import TrainConfig


def rankmixer_config_of(cfg: TrainConfig, num_features: int, has_dense: bool) -> RankMixerConfig:
    """The encoder config from ``model.*``; with ``d_model`` unset, T follows
    DLRM_RankMixer's automatic rule and D is the smallest multiple of T that is >= 64."""
    m = cfg.model
    if m.d_model is not None and m.num_tokens is not None:
        d_model, n_tokens = m.d_model, m.num_tokens
    else:
        if m.feature_groups:
            n_sparse = len(m.feature_groups)
        elif m.tokenization == "split":
            n_sparse = DEFAULT_MAX_SPARSE_TOKENS
        else:
            n_sparse = min(num_features, DEFAULT_MAX_SPARSE_TOKENS)
        n_tokens = n_sparse + (1 if has_dense else 0)
        d_model = n_tokens * math.ceil(DEFAULT_MIN_D_MODEL / n_tokens)
    base = RankMixerConfig(
        d_model=d_model, num_tokens=n_tokens, num_layers=m.num_layers,
        ffn_mult=m.ffn_mult, dropout=m.dropout,
    )
    if not m.rankmixer:
        return base
    try:
        return base.with_updates(**m.rankmixer)
    except (TypeError, ValueError) as e:
        raise ValueError(f"model.rankmixer ({m.rankmixer}): {e}") from e


def build_model(cfg: TrainConfig, tables: List[EmbeddingBagConfig], dense_in: int, device: torch.device) -> nn.Module:
    """DLRM_RankMixer with its EBC on the meta device (DMP materialises it), plus ESMM
    towers when ``model.task == "esmm"``."""
    m = cfg.model
    ebc = EmbeddingBagCollection(tables=tables, device=torch.device("meta"))
    n_features = sum(len(t.feature_names) for t in tables)
    dense_sizes = list(m.dense_arch_layer_sizes)
    model = DLRM_RankMixer(
        embedding_bag_collection=ebc,
        dense_in_features=dense_in,
        dense_arch_layer_sizes=dense_sizes,
        over_arch_layer_sizes=list(m.over_arch_layer_sizes),
        dense_device=device,
        rankmixer_config=rankmixer_config_of(cfg, n_features, dense_in > 0),
        feature_groups=m.feature_groups,
        tokenization=m.tokenization,
        validate_inputs=cfg.train.validate_inputs,
    )
    if m.task == "esmm":
        attach_esmm_towers(model, list(m.tower_layer_sizes))
    return model


def build_remapper(
    cfg: TrainConfig, tables: List[EmbeddingBagConfig], process_group: Optional[torch.distributed.ProcessGroup] = None
) -> Optional[ManagedCollisionRemapper]:
    """The managed-collision remapper of a run (None unless ``data.id_transform`` is
    ``managed_collision``). It manages the tables of raw-id features: every table for
    synthetic data, the ``data.sparse_columns`` tables for files (not ``<dense>_bucket``).

    Example::

        >>> from torchrec_rankmixer.data.sources import SyntheticSource
        >>> from torchrec_rankmixer.train.config import load_config
        >>> cfg = load_config(overrides=["data.id_transform=managed_collision"])
        >>> remap = build_remapper(cfg, SyntheticSource(cfg.data).table_configs(8))
        >>> remap.feature_names[:2], remap.settings["eviction_policy"]
        (['f0', 'f1'], 'distance_lfu')
    """
    d = cfg.data
    if d.id_transform != "managed_collision":
        return None
    if d.format == "synthetic":
        managed = list(tables)
    else:
        from torchrec_rankmixer.data.sources import file_schema

        raw = set(file_schema(d)[0])
        managed = [t for t in tables if all(f in raw for f in t.feature_names)]
    mc = d.managed_collision
    return ManagedCollisionRemapper(managed, mc.eviction_policy, mc.eviction_interval, mc.decay_exponent,
                                    mc.input_hash_size, process_group)


@dataclass
class StepOutput:
    """What the train module returns per batch (all detached)."""

    losses: Dict[str, torch.Tensor]
    logits: torch.Tensor  # (B, num_tasks)
    labels: torch.Tensor  # (B,) or (B, 2)
    users: Optional[torch.Tensor]  # (B,) first id of the user feature, or None


def first_ids(batch: Batch, feature: Optional[str]) -> Optional[torch.Tensor]:
    """First id per sample of ``feature`` [B] (-1 where the bag is empty), or None.

    Example::

        >>> from torchrec import KeyedJaggedTensor
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(["u"], torch.tensor([7, 8, 9]), torch.tensor([2, 0, 1]))
        >>> first_ids(Batch(torch.zeros(3, 0), kjt, torch.zeros(3)), "u").tolist()
        [7, -1, 9]
    """
    if feature is None or feature not in batch.sparse_features.keys():
        return None
    jt = batch.sparse_features[feature]
    offsets, values = jt.offsets(), jt.values()
    lengths = offsets[1:] - offsets[:-1]
    out = torch.full_like(lengths, -1, dtype=values.dtype)
    has = lengths > 0
    out[has] = values[offsets[:-1][has]]
    return out


class LossHead(nn.Module):
    """Task loss and the detached outputs for metrics (the Sparse-MoE penalties train
    by gradient injection, so there is no auxiliary term to add; docs/moe.md).

    It holds no sharded module, so TorchRec's pipeline tracer treats it as a leaf and
    runs its (data-dependent) forward eagerly.
    """

    def __init__(self, task: str, cvr_loss_weight: float, user_feature: Optional[str]) -> None:
        super().__init__()
        self.task, self.cvr_loss_weight, self.user_feature = task, cvr_loss_weight, user_feature

    def forward(self, logits: torch.Tensor, batch: Batch) -> Tuple[torch.Tensor, StepOutput]:
        losses = task_loss(logits, batch.labels, self.task, self.cvr_loss_weight)
        detached = {k: v.detach() for k, v in losses.items()}
        out = StepOutput(detached, logits.detach().float(), batch.labels, first_ids(batch, self.user_feature))
        return losses["loss"], out


class TrainModule(nn.Module):
    """``batch -> (loss, StepOutput)``: the model and the task loss.

    This is the module DistributedModelParallel wraps and TrainPipelineSparseDist drives
    (as DLRMTrain in TorchRec's dlrm_main). bf16 autocast is applied around the pipeline
    step by the loop (FX tracing would drop a context manager here).

    Args:
        model: DLRM_RankMixer (optionally with ESMM towers).
        task: ``"ctr"`` or ``"esmm"``.
        cvr_loss_weight: conditional CVR loss weight (esmm).
        user_feature: sparse feature whose first id is the user (for GAUC), or None.
    """

    def __init__(self, model: nn.Module, task: str, cvr_loss_weight: float, user_feature: Optional[str]) -> None:
        super().__init__()
        self.model = model
        self.loss_head = LossHead(task, cvr_loss_weight, user_feature)

    def forward(self, batch: Batch) -> Tuple[torch.Tensor, StepOutput]:
        logits = self.model(batch.dense_features, batch.sparse_features)  # (B, num_tasks)
        return self.loss_head(logits, batch)
