"""The cross-rank metric accumulator (train/evaluation.py)."""

import math

import torch

from torchrec_rankmixer.train.evaluation import MetricAccumulator


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
