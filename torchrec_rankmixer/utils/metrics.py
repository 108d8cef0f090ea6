"""Ranking metrics computed in one place (pure torch). Labels must be 0 or 1: any other
value (2, -1, NaN) is a ValueError that names it, never scored as if valid."""

import torch


def check_binary_labels(labels: torch.Tensor) -> None:
    """ValueError naming the first label that is not 0 or 1.

    Example::

        >>> check_binary_labels(torch.tensor([0.0, 1.0, 2.0]))
        Traceback (most recent call last):
        ...
        ValueError: labels must be 0 or 1; position 2 holds 2.0
    """
    y = labels.detach().flatten().cpu()
    bad = ~((y == 0) | (y == 1))
    if bool(bad.any()):
        pos = int(bad.nonzero()[0, 0])
        raise ValueError(f"labels must be 0 or 1; position {pos} holds {y[pos].item()!r}")


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
    check_binary_labels(labels)
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
    """Mean binary cross-entropy of logits [N] against labels [N] in {0, 1}."""
    check_binary_labels(labels)
    return float(
        torch.nn.functional.binary_cross_entropy_with_logits(
            logits.detach().flatten().double(), labels.detach().flatten().double()
        )
    )


def _check_probs(probs: torch.Tensor, labels: torch.Tensor) -> tuple:
    p = probs.detach().flatten().double().cpu()
    y = labels.detach().flatten().double().cpu()
    if p.shape != y.shape:
        raise ValueError(f"probabilities {tuple(p.shape)} and labels {tuple(y.shape)} differ in size")
    if p.numel() == 0:
        raise ValueError("metrics need at least one prediction; got 0")
    check_binary_labels(y)
    return p, y


def prob_logloss(probs: torch.Tensor, labels: torch.Tensor, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities [N] (clipped to [eps, 1-eps]) vs labels [N].

    Example::

        >>> round(prob_logloss(torch.tensor([0.5, 0.5]), torch.tensor([0, 1])), 4)
        0.6931
    """
    p, y = _check_probs(probs, labels)
    p = p.clamp(eps, 1 - eps)
    return float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())


def normalized_entropy(probs: torch.Tensor, labels: torch.Tensor, eps: float = 1e-7) -> float:
    """Logloss divided by the entropy of the base rate (He et al., 2014): 1.0 means no better
    than predicting the average CTR, lower is better.

    Example::

        >>> normalized_entropy(torch.tensor([0.25] * 4), torch.tensor([0, 0, 0, 1]))
        1.0
    """
    p, y = _check_probs(probs, labels)
    base = float(y.mean())
    if base <= 0.0 or base >= 1.0:
        raise ValueError(f"normalized entropy needs both classes; the positive rate is {base}")
    return prob_logloss(p, y, eps) / prob_logloss(torch.full_like(y, base), y, eps)


def group_auc(scores: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> float:
    """GAUC / UAUC: AUC per group (user), averaged with impression weights.

    Groups whose labels are all 0 or all 1 have no AUC and are skipped (their
    impressions are left out of the weights too), as in the usual definition.

    Args:
        scores: [N] predictions.
        labels: [N] in {0, 1}.
        groups: [N] integer group (user) ids.

    Example::

        >>> s = torch.tensor([0.1, 0.9, 0.2, 0.8, 0.3, 0.5, 0.4])
        >>> y = torch.tensor([0, 1, 1, 0, 0, 1, 1])
        >>> u = torch.tensor([0, 0, 1, 1, 2, 2, 2])
        >>> round(group_auc(s, y, u), 4)  # (2*1.0 + 2*0.0 + 3*1.0) / 7
        0.7143
    """
    s = scores.detach().flatten().double().cpu()
    check_binary_labels(labels)
    y = labels.detach().flatten().cpu()
    g = groups.detach().flatten().cpu()
    if not (s.shape == y.shape == g.shape):
        raise ValueError(
            f"scores {tuple(s.shape)}, labels {tuple(y.shape)} and groups {tuple(g.shape)} "
            "differ in size"
        )
    # Vectorised: sort by (group, score), tie-averaged ranks within each group.
    order = torch.argsort(s, stable=True)
    order = order[torch.argsort(g[order], stable=True)]
    s, y, g = s[order], (y[order] > 0.5).double(), g[order]
    n = s.numel()
    new_group = torch.ones(n, dtype=torch.bool)
    new_group[1:] = g[1:] != g[:-1]
    new_run = new_group.clone()
    new_run[1:] |= s[1:] != s[:-1]  # a run = equal scores inside one group
    group_id = torch.cumsum(new_group, 0) - 1
    run_id = torch.cumsum(new_run, 0) - 1
    idx = torch.arange(n)
    pos = (idx - idx[new_group][group_id] + 1).double()  # 1-based rank inside the group
    n_runs = int(run_id[-1]) + 1
    first = torch.full((n_runs,), float("inf"), dtype=torch.float64).scatter_reduce(0, run_id, pos, "amin")
    last = torch.zeros(n_runs, dtype=torch.float64).scatter_reduce(0, run_id, pos, "amax")
    avg_rank = ((first + last) / 2)[run_id]
    size = torch.bincount(group_id).double()
    n_pos = torch.bincount(group_id, weights=y)
    rank_sum = torch.bincount(group_id, weights=avg_rank * y)
    valid = (n_pos > 0) & (n_pos < size)
    if not bool(valid.any()):
        raise ValueError("GAUC needs at least one group with both positive and negative labels")
    auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * (size - n_pos))
    return float((auc * size)[valid].sum() / size[valid].sum())
