"""Ranking metrics (utils/metrics.py)."""

import itertools
import math

import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from torchrec_rankmixer.utils.metrics import (
    binary_auc,
    binary_logloss,
    group_auc,
    normalized_entropy,
    prob_logloss,
)



def test_auc_matches_pairwise_definition_with_ties() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 20, (500,), generator=g).double()  # many ties
    labels = (torch.rand(500, generator=g) < 0.3).long()
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    exact = ((diff > 0).double() + 0.5 * (diff == 0).double()).mean().item()
    assert binary_auc(scores, labels) == pytest.approx(exact, abs=1e-12)
    # torchmetrics agrees up to its float32 arithmetic
    assert binary_auc(scores, labels) == pytest.approx(float(binary_auroc(scores, labels)), abs=1e-4)


def test_auc_extremes_and_errors() -> None:
    y = torch.tensor([0, 0, 1, 1])
    assert binary_auc(torch.tensor([0.1, 0.2, 0.8, 0.9]), y) == 1.0
    assert binary_auc(torch.tensor([0.9, 0.8, 0.2, 0.1]), y) == 0.0
    assert binary_auc(torch.ones(4), y) == 0.5
    with pytest.raises(ValueError, match="needs both classes"):
        binary_auc(torch.rand(3), torch.zeros(3))
    with pytest.raises(ValueError, match="differ in size"):
        binary_auc(torch.rand(3), torch.zeros(4))


def test_logloss() -> None:
    assert binary_logloss(torch.zeros(4), torch.tensor([0, 1, 0, 1])) == pytest.approx(0.693147, abs=1e-5)



def _pairwise_auc(s, y):
    pos = [a for a, b in zip(s, y) if b == 1]
    neg = [a for a, b in zip(s, y) if b == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_group_auc_matches_bruteforce():
    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 10, (300,), generator=g).float()  # ties on purpose
    y = (torch.rand(300, generator=g) < 0.4).long()
    u = torch.randint(0, 12, (300,), generator=g)
    num, den = 0.0, 0
    for user in u.unique().tolist():
        m = u == user
        if 0 < int(y[m].sum()) < int(m.sum()):
            num += _pairwise_auc(s[m].tolist(), y[m].tolist()) * int(m.sum())
            den += int(m.sum())
    assert group_auc(s, y, u) == pytest.approx(num / den, abs=1e-12)
    assert binary_auc(s, y) == pytest.approx(_pairwise_auc(s.tolist(), y.tolist()), abs=1e-12)


def test_logloss_and_normalized_entropy():
    p = torch.tensor([0.9, 0.2, 0.6, 0.1])
    y = torch.tensor([1.0, 0.0, 1.0, 0.0])
    ll = -(math.log(0.9) + math.log(0.8) + math.log(0.6) + math.log(0.9)) / 4
    assert prob_logloss(p, y) == pytest.approx(ll)
    assert normalized_entropy(p, y) == pytest.approx(ll / math.log(2))


@pytest.mark.parametrize("fn,args,message", [
    (group_auc, (torch.rand(3), torch.tensor([0, 1, 1]), torch.tensor([0, 1])), "differ in size"),
    (group_auc, (torch.rand(2), torch.tensor([0, 1]), torch.tensor([0, 1])), "at least one group"),
    (prob_logloss, (torch.rand(2), torch.rand(3)), "differ in size"),
    (prob_logloss, (torch.rand(0), torch.rand(0)), "at least one prediction"),
    (normalized_entropy, (torch.rand(2), torch.ones(2)), "needs both classes"),
])
def test_metric_errors(fn, args, message):
    with pytest.raises(ValueError, match=message):
        fn(*args)
