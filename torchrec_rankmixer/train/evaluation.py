"""Evaluation metrics across ranks: every rank keeps its predictions, then all of them
are gathered and the metrics computed on the full set (exact, identical on every rank)."""

import math
from typing import Callable, Dict, List, Optional

import torch
import torch.distributed as dist

from torchrec_rankmixer.models.heads import task_scores
from torchrec_rankmixer.utils.metrics import binary_auc, group_auc, normalized_entropy, prob_logloss


def _safe(fn: Callable[[], float]) -> float:
    try:
        return fn()
    except ValueError:  # e.g. one class only in a tiny eval set
        return math.nan


def binary_metrics(prefix: str, probs: torch.Tensor, labels: torch.Tensor, users: Optional[torch.Tensor]) -> Dict[str, float]:
    """``{prefix}_auc``, ``_logloss``, ``_ne`` and (with users) ``_gauc`` of one task.

    Example::

        >>> m = binary_metrics("ctr", torch.tensor([0.2, 0.7, 0.6, 0.3]), torch.tensor([0., 1., 1., 0.]), None)
        >>> m["ctr_auc"]
        1.0
    """
    out = {
        f"{prefix}_auc": _safe(lambda: binary_auc(probs, labels)),
        f"{prefix}_logloss": _safe(lambda: prob_logloss(probs, labels)),
        f"{prefix}_ne": _safe(lambda: normalized_entropy(probs, labels)),
    }
    if users is not None:
        out[f"{prefix}_gauc"] = _safe(lambda: group_auc(probs, labels, users))
    return out


class MetricAccumulator:
    """Collects (probabilities, labels, users) per batch on this rank.

    Args:
        task: ``"ctr"`` or ``"esmm"``.

    Example::

        >>> acc = MetricAccumulator("ctr")
        >>> acc.update(torch.tensor([[-1.0], [2.0]]), torch.tensor([0.0, 1.0]), None)
        >>> acc.compute()["ctr_auc"]
        1.0
    """

    def __init__(self, task: str) -> None:
        self.task = task
        self.scores: List[Dict[str, torch.Tensor]] = []
        self.labels: List[torch.Tensor] = []
        self.users: List[torch.Tensor] = []

    def update(self, logits: torch.Tensor, labels: torch.Tensor, users: Optional[torch.Tensor]) -> None:
        """Add one batch: logits [B, tasks], labels [B] or [B, 2], users [B] or None.
        Rows labelled < 0 (eval padding) are skipped."""
        labels = labels.detach().float().cpu()
        keep = (labels if labels.dim() == 1 else labels[:, 0]) >= 0
        scores = task_scores(logits, self.task)
        self.scores.append({k: v.detach().cpu()[keep] for k, v in scores.items()})
        self.labels.append(labels[keep])
        if users is not None:
            self.users.append(users.detach().cpu()[keep])

    def _gathered(self) -> tuple:
        local = (self.scores, self.labels, self.users)
        if dist.is_initialized() and dist.get_world_size() > 1:
            parts: List = [None] * dist.get_world_size()
            dist.all_gather_object(parts, local)
        else:
            parts = [local]
        scores = [s for p in parts for s in p[0]]
        labels = [y for p in parts for y in p[1]]
        users = [u for p in parts for u in p[2]]
        return scores, labels, users

    def compute(self) -> Dict[str, float]:
        """Collective when distributed: metrics over the predictions of all ranks."""
        scores, labels, users = self._gathered()
        if not labels:
            return {}
        y = torch.cat(labels)
        u = torch.cat(users) if users and len(users) == len(labels) else None
        s = {k: torch.cat([b[k] for b in scores]) for k in scores[0]}
        if self.task == "ctr":
            click = y if y.dim() == 1 else y[:, 0]
            return binary_metrics("ctr", s["ctr"], click, u)
        click, conv = y[:, 0], y[:, 1]
        out = binary_metrics("ctr", s["ctr"], click, u)
        out.update(binary_metrics("ctcvr", s["ctcvr"], conv, u))
        clicked = click > 0.5
        out["cvr_auc"] = _safe(lambda: binary_auc(s["cvr"][clicked], conv[clicked]))
        return out
