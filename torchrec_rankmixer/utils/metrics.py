"""Ranking metrics computed in one place (pure torch)."""

import torch


def binary_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties counted as 1/2.

    Args:
        scores: [N] predictions (logits or probabilities).
        labels: [N] in {0, 1}.

    Example::

        >>> binary_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        0.75
    """
    s = scores.detach().flatten().double().cpu()
    y = labels.detach().flatten().cpu() > 0.5
    if s.shape != y.shape:
        raise ValueError(f"scores {tuple(s.shape)} and labels {tuple(y.shape)} differ in size")
    n_pos = int(y.sum())
    n_neg = y.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes; got {n_pos} positives and {n_neg} negatives")
    _, inverse, counts = torch.unique(s, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    avg_rank = ends - (counts.double() - 1) / 2  # 1-based mean rank of each tied value
    rank_sum = avg_rank[inverse][y].sum().item()
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def binary_logloss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean binary cross-entropy of logits [N] against labels [N]."""
    return float(
        torch.nn.functional.binary_cross_entropy_with_logits(
            logits.detach().flatten().double(), labels.detach().flatten().double()
        )
    )
