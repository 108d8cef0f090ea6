"""Task heads: single-task CTR and ESMM (CTR, CVR, CTCVR = CTR x CVR) with per-task towers.

ESMM (Ma et al., SIGIR 2018) trains CVR on all impressions through
``p(click & convert) = p(click) * p(convert | click)``: the loss is BCE(CTR, click) +
BCE(CTCVR, click*convert), optionally plus a conditional CVR loss on clicked rows only.
"""

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from torchrec_rankmixer.utils.checks import check_choice, check_layer_sizes, check_positive_int

TASKS: Tuple[str, ...] = ("ctr", "esmm")


class TaskTowers(nn.Module):
    """One MLP tower per task on the pooled encoder output; passed to DLRM_RankMixer as its
    ``over_arch`` (ESMM: ``num_tasks=2``, logits = (CTR, CVR)).

    Args:
        in_features: pooled width (D for mean pooling).
        tower_layer_sizes: hidden sizes of every tower (each ends in one logit).
        num_tasks: towers (2 for ESMM: CTR and CVR).
        device: parameter device.

    Shapes: pooled [B, in_features] -> logits [B, num_tasks].

    Example::

        >>> towers = TaskTowers(16, [8], num_tasks=2)
        >>> towers(torch.rand(4, 16)).shape
        torch.Size([4, 2])
    """

    def __init__(
        self,
        in_features: int,
        tower_layer_sizes: List[int],
        num_tasks: int,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__()
        check_positive_int("in_features", in_features)
        check_positive_int("num_tasks", num_tasks)
        check_layer_sizes("tower_layer_sizes", tower_layer_sizes, min_len=0)
        self.tower_layer_sizes: List[int] = list(tower_layer_sizes)
        towers = []
        for _ in range(num_tasks):
            layers: List[nn.Module] = []
            width = in_features
            for size in tower_layer_sizes:
                layers += [nn.Linear(width, size, device=device), nn.ReLU()]
                width = size
            layers.append(nn.Linear(width, 1, device=device))
            towers.append(nn.Sequential(*layers))
        self.towers = nn.ModuleList(towers)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return torch.cat([tower(pooled) for tower in self.towers], dim=1)  # (B, num_tasks)


def task_loss(
    logits: torch.Tensor, labels: torch.Tensor, task: str, cvr_loss_weight: float = 0.0
) -> Dict[str, torch.Tensor]:
    """Per-task losses and the total to minimise.

    Args:
        logits: [B, 1] (ctr) or [B, 2] (esmm: CTR logit, CVR logit).
        labels: [B] (ctr) or [B, 2] (esmm: click, click AND convert).
        task: ``"ctr"`` or ``"esmm"``.
        cvr_loss_weight: weight of the conditional CVR loss on clicked rows (esmm).

    Returns:
        ``{"loss": total, "ctr": ..., ["ctcvr": ..., "cvr": ...]}``; ESMM's CTCVR loss is
        BCE on ``sigmoid(ctr) * sigmoid(cvr)``, computed in log space for stability.

    Example::

        >>> out = task_loss(torch.zeros(4, 2), torch.tensor([[1., 1.], [1., 0.], [0., 0.], [0., 0.]]), "esmm")
        >>> sorted(out), round(out["ctr"].item(), 4)
        (['ctcvr', 'ctr', 'cvr', 'loss'], 0.6931)
    """
    check_choice("task", task, TASKS)
    logits = logits.float()
    if task == "ctr":
        y = labels if labels.dim() == 1 else labels[:, 0]
        ctr = F.binary_cross_entropy_with_logits(logits[:, 0], y)
        return {"loss": ctr, "ctr": ctr}
    if logits.shape[1] != 2 or labels.dim() != 2 or labels.shape[1] != 2:
        raise ValueError(
            f"esmm needs logits [B, 2] and labels [B, 2]; got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    click, conv = labels[:, 0], labels[:, 1]
    ctr = F.binary_cross_entropy_with_logits(logits[:, 0], click)
    log_p = F.logsigmoid(logits[:, 0]) + F.logsigmoid(logits[:, 1])  # log p(ctcvr)
    log_not_p = torch.log1p(-log_p.exp().clamp(max=1 - 1e-7))
    ctcvr = -(conv * log_p + (1 - conv) * log_not_p).mean()
    clicked = click > 0.5
    if bool(clicked.any()):
        cvr = F.binary_cross_entropy_with_logits(logits[clicked, 1], conv[clicked])
    else:
        cvr = logits.new_zeros(())
    total = ctr + ctcvr + (cvr_loss_weight * cvr if cvr_loss_weight > 0 else 0.0)
    return {"loss": total, "ctr": ctr, "ctcvr": ctcvr, "cvr": cvr}


def task_scores(logits: torch.Tensor, task: str) -> Dict[str, torch.Tensor]:
    """Probabilities per task: ``{"ctr"}`` or ``{"ctr", "cvr", "ctcvr"}`` each [B]."""
    p_ctr = torch.sigmoid(logits[:, 0].float())
    if task == "ctr":
        return {"ctr": p_ctr}
    p_cvr = torch.sigmoid(logits[:, 1].float())
    return {"ctr": p_ctr, "cvr": p_cvr, "ctcvr": p_ctr * p_cvr}


def num_logits_of(over_arch: Optional[nn.Module], over_arch_layer_sizes: Optional[List[int]]) -> int:
    """How many logits the heads give: the OverArch's last size, or one per task tower.

    Example::

        >>> num_logits_of(None, [8, 1]), num_logits_of(TaskTowers(4, [8], num_tasks=2), None)
        (1, 2)
    """
    if over_arch_layer_sizes is not None:
        return over_arch_layer_sizes[-1]
    if isinstance(over_arch, TaskTowers):
        return len(over_arch.towers)
    raise ValueError(f"deep needs to know the number of logits: give over_arch_layer_sizes or TaskTowers, "
                     f"not a custom {type(over_arch).__name__}")
