"""Ranking metrics (utils/metrics.py) and the cross-rank accumulator (train/evaluation.py)."""

import itertools
import math

import pytest
import torch

from torchrec_rankmixer.train.evaluation import MetricAccumulator
from torchrec_rankmixer.utils.metrics import (
    binary_auc,
    group_auc,
    normalized_entropy,
    prob_logloss,
)


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


def test_accumulator_esmm_and_degenerate_eval():
    acc = MetricAccumulator("esmm")
    logits = torch.tensor([[2.0, 1.0], [-1.0, 0.0], [1.0, -2.0], [-2.0, 0.0]])
    labels = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    acc.update(logits, labels, torch.tensor([0, 0, 1, 1]))
    m = acc.compute()
    assert m["ctr_auc"] == 1.0 and m["cvr_auc"] == 1.0
    assert set(m) >= {"ctcvr_auc", "ctcvr_logloss", "ctcvr_ne", "ctr_gauc"}
    one_class = MetricAccumulator("ctr")
    one_class.update(torch.zeros(2, 1), torch.zeros(2), None)
    assert math.isnan(one_class.compute()["ctr_auc"])  # reported as NaN, not a crash
    assert MetricAccumulator("ctr").compute() == {}
