import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from torchrec_rankmixer.utils.metrics import binary_auc, binary_logloss


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
