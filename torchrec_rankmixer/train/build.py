"""Build the pieces of a run from a :class:`TrainConfig`: the model recipe and the train module."""

from dataclasses import dataclass, replace
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn
from torchrec.datasets.utils import Batch

from torchrec_rankmixer.features.grouping import resolve_mode
from torchrec_rankmixer.features.sequence import SequenceFeatureConfig
from torchrec_rankmixer.models.baselines import BaselineConfig
from torchrec_rankmixer.models.defaults import default_config
from torchrec_rankmixer.models.heads import task_loss
from torchrec_rankmixer.models.spec import ModelSpec
from torchrec_rankmixer.models.table_spec import TableSpec
from torchrec_rankmixer.modules.deep import DeepConfig
from torchrec_rankmixer.modules.interaction import cross_rank_of, resolve_dot_norm, resolve_interaction
from torchrec_rankmixer.train.config import TrainConfig


def model_spec(cfg: TrainConfig, source: Any) -> ModelSpec:
    """The run's model recipe: ``model.*`` settings plus the tables and dense width that
    the data source defines (``source.table_configs``, ``source.dense_in_features``;
    sequences: ``source.sequence_table_configs`` and ``source.sequence_features``).

    Errors name the ``model.*`` setting at fault.

    Example::

        >>> from torchrec_rankmixer.data.sources import SyntheticSource
        >>> from torchrec_rankmixer.train.config import load_config
        >>> cfg = load_config(overrides=["model.rankmixer={ln_style: pre}"])
        >>> spec = model_spec(cfg, SyntheticSource(cfg.data))
        >>> spec.rankmixer_config.num_tokens, spec.rankmixer_config.ln_style, spec.task
        (8, 'pre', 'ctr')
    """
    m = cfg.model
    tables = tuple(replace(TableSpec.from_config(c), init_std=m.embedding_init_std)
                   for c in source.table_configs(m.embedding_dim))
    if m.arch != "rankmixer":  # a baseline over the same tables (models/baselines.py)
        try:
            torchrec_arch = m.arch in ("dlrm", "dlrm_dcn")  # they have a dense arch; dnn / dcnv2 do not
            return ModelSpec(tables=tables, dense_in_features=source.dense_in_features,
                             dense_arch_layer_sizes=tuple(m.dense_arch_layer_sizes) if torchrec_arch else (),
                             over_arch_layer_sizes=tuple(m.over_arch_layer_sizes), arch=m.arch,
                             baseline=BaselineConfig(**m.baseline), task=m.task)
        except (TypeError, ValueError) as e:
            raise ValueError(f"model.arch={m.arch!r} with model.baseline={m.baseline}: {e}") from e
    seq_tables: Tuple[TableSpec, ...] = ()
    seq_features: Tuple[SequenceFeatureConfig, ...] = ()
    if getattr(source, "has_sequences", False):
        seq_tables = tuple(replace(TableSpec.from_config(c), init_std=m.embedding_init_std)
                           for c in source.sequence_table_configs(m.embedding_dim))
        try:
            seq_features = tuple(SequenceFeatureConfig(**c) for c in m.sequence_features) or tuple(
                source.sequence_features())
        except (TypeError, ValueError) as e:
            raise ValueError(f"model.sequence_features ({m.sequence_features}): {e}") from e
    elif m.sequence_features:
        raise ValueError(
            f"model.sequence_features ({m.sequence_features}) needs data with behaviour sequences "
            f"(data.format='synthetic_sequences'); data.format is {cfg.data.format!r}"
        )
    dense_in = source.dense_in_features
    n_features = sum(len(t.feature_names) for t in tables) + len(seq_features)
    try:
        config = default_config(n_features, m.num_dense_tokens if dense_in > 0 else 0, m.feature_groups,
                                m.tokenization, overrides=m.rankmixer)
    except (TypeError, ValueError) as e:
        raise ValueError(f"model.rankmixer ({m.rankmixer}): {e}") from e
    esmm = m.task == "esmm"
    widths = {f: m.embedding_dim for t in tables + seq_tables for f in t.feature_names}
    dense_width = m.dense_arch_layer_sizes[-1] if dense_in > 0 else 0
    try:
        asked = None if m.interaction == "auto" else m.interaction
        interaction = resolve_interaction(asked, widths, dense_width)
    except ValueError as e:
        raise ValueError(f"model.interaction: {e}") from e
    cross_rank = cross_rank_of(asked, interaction, sum(widths.values()) + dense_width, m.dcn_low_rank_dim)
    try:
        dot_norm = resolve_dot_norm(None if m.dot_norm == "auto" else m.dot_norm, interaction)
    except ValueError as e:
        raise ValueError(f"model.dot_norm: {e}") from e
    try:
        return ModelSpec(
            tables=tables,
            dense_in_features=dense_in,
            dense_arch_layer_sizes=tuple(m.dense_arch_layer_sizes) if dense_in > 0 else (),
            rankmixer_config=config,
            task=m.task,
            over_arch_layer_sizes=None if esmm else tuple(m.over_arch_layer_sizes),
            tower_layer_sizes=tuple(m.tower_layer_sizes) if esmm else None,
            tokenization=resolve_mode(m.feature_groups, m.tokenization),
            feature_groups=m.feature_groups,
            num_dense_tokens=m.num_dense_tokens,
            interaction=interaction,
            dcn_num_layers=m.dcn_num_layers,  # ModelSpec resolves them (models.spec)
            dcn_low_rank_dim=cross_rank,
            deep=DeepConfig(**m.deep) if m.deep else None,
            sequence_tables=seq_tables,
            sequence_features=seq_features,
            over_arch_init=m.over_arch_init,
            dot_norm=dot_norm,
        )
    except ValueError as e:
        raise ValueError(f"model settings: {e}") from e


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
