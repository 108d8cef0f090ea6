"""A minimal single-process trainer for DLRM-style models on ``Batch`` iterables.

Used by the demo, the DCN -> RankMixer example and tests. Not sharded; the distributed
pipeline lives in the training CLI.
"""

from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional

import torch
from torch import nn
from torchrec.datasets.utils import Batch

from torchrec_rankmixer.modules.moe.statistics import collect_statistics
from torchrec_rankmixer.utils.metrics import binary_auc, binary_logloss



@dataclass
class TrainResult:
    """Losses per logged step and the final held-out metrics."""

    steps: List[int] = field(default_factory=list)
    losses: List[float] = field(default_factory=list)
    stats: List[Dict[str, float]] = field(default_factory=list)  # collect_statistics per log
    eval_auc: float = float("nan")
    eval_logloss: float = float("nan")


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch]) -> tuple[float, float]:
    """(AUC, logloss) of the first logit over ``batches``."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for b in batches:
        logits.append(model(b.dense_features, b.sparse_features)[:, 0])
        labels.append(b.labels)
    model.train(was_training)
    all_logits, all_labels = torch.cat(logits), torch.cat(labels)
    return binary_auc(all_logits, all_labels), binary_logloss(all_logits, all_labels)


def train_simple(
    model: nn.Module,
    train_batches: Iterable[Batch],
    eval_batches: Optional[Callable[[], Iterable[Batch]]] = None,
    lr: float = 1e-3,
    log_every: int = 50,
    on_log: Optional[Callable[[int, float], None]] = None,
    on_stats: Optional[Callable[[int, Dict[str, float]], None]] = None,
) -> TrainResult:
    """Adam on every parameter, BCE on logit 0.

    Args:
        model: ``model(dense, kjt) -> logits [B, n]``.
        train_batches: iterable of ``Batch``.
        eval_batches: factory returning held-out batches (called once at the end).
        lr: Adam learning rate.
        log_every: record the mean loss every this many steps.
        on_log: callback ``(step, mean_loss)``.
        on_stats: callback ``(step, collect_statistics(model))`` at each log step (module
            statistics such as the Sparse-MoE's active ratio; also kept in ``stats``).
    """
    if lr <= 0:
        raise ValueError(f"lr ({lr}) must be > 0")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    result = TrainResult()
    running, count = 0.0, 0
    model.train()
    for step, b in enumerate(train_batches, start=1):
        logits = model(b.dense_features, b.sparse_features)[:, 0]
        loss = loss_fn(logits, b.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running, count = running + loss.item(), count + 1
        if step % log_every == 0:
            result.steps.append(step)
            result.losses.append(running / count)
            if on_log is not None:
                on_log(step, running / count)
            stats = collect_statistics(model)
            if stats:
                result.stats.append(stats)
                if on_stats is not None:
                    on_stats(step, stats)
            running, count = 0.0, 0
    if eval_batches is not None:
        result.eval_auc, result.eval_logloss = evaluate(model, eval_batches())
    return result
