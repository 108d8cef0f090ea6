"""Task heads: towers, ESMM loss against a direct formula, scores."""

import pytest
import torch
from torch.nn import functional as F

from torchrec_rankmixer.models.heads import TaskTowers, task_loss, task_scores


def test_esmm_loss_matches_direct_formula():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 2, generator=g, requires_grad=True)
    click = (torch.rand(64, generator=g) < 0.5).float()
    conv = click * (torch.rand(64, generator=g) < 0.5).float()
    labels = torch.stack([click, conv], 1)
    out = task_loss(logits, labels, "esmm", cvr_loss_weight=0.5)
    p_ctcvr = torch.sigmoid(logits[:, 0]) * torch.sigmoid(logits[:, 1])
    ctr = F.binary_cross_entropy_with_logits(logits[:, 0], click)
    ctcvr = F.binary_cross_entropy(p_ctcvr, conv)
    m = click > 0
    cvr = F.binary_cross_entropy_with_logits(logits[m, 1], conv[m])
    torch.testing.assert_close(out["ctcvr"], ctcvr)
    torch.testing.assert_close(out["loss"], ctr + ctcvr + 0.5 * cvr)
    out["loss"].backward()
    assert torch.isfinite(logits.grad).all()
    scores = task_scores(logits.detach(), "esmm")
    torch.testing.assert_close(scores["ctcvr"], p_ctcvr.detach())


def test_ctr_loss_and_errors():
    logits, y = torch.zeros(4, 1), torch.tensor([0.0, 1.0, 1.0, 0.0])
    assert task_loss(logits, y, "ctr")["loss"].item() == pytest.approx(0.6931, abs=1e-4)
    with pytest.raises(ValueError, match="task \\('mmoe'\\)"):
        task_loss(logits, y, "mmoe")
    with pytest.raises(ValueError, match="esmm needs logits"):
        task_loss(logits, y, "esmm")
    with pytest.raises(ValueError, match="num_tasks \\(0\\)"):
        TaskTowers(4, [4], 0)
    with pytest.raises(ValueError, match="tower_layer_sizes"):
        TaskTowers(4, [0], 2)
    with pytest.raises(ValueError, match="in_features \\(0\\)"):
        TaskTowers(0, [4], 2)


def test_esmm_towers_are_injected_as_the_over_arch():
    """ESMM: the towers are passed in as DLRM_RankMixer's over_arch (no patching); the
    model then returns [B, 2] and its spec records the task and the tower sizes."""
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor

    from torchrec_rankmixer import DLRM_RankMixer, RankMixerConfig
    from torchrec_rankmixer.models.spec import ModelSpec

    cfg = RankMixerConfig(d_model=8, num_tokens=2, num_layers=1)
    ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(name="t", embedding_dim=4, num_embeddings=10,
                                                            feature_names=["a"])])
    model = DLRM_RankMixer(ebc, 3, [4], None, rankmixer_config=cfg,
                           over_arch=TaskTowers(cfg.output_dim, [6], num_tasks=2))
    kjt = KeyedJaggedTensor.from_lengths_sync(["a"], torch.tensor([1, 2]), torch.tensor([1, 1]))
    assert model(torch.rand(2, 3), kjt).shape == (2, 2)
    spec = ModelSpec.from_model(model)
    assert (spec.task, spec.tower_layer_sizes, spec.over_arch_layer_sizes) == ("esmm", (6,), None)
    rebuilt = spec.build()
    assert isinstance(rebuilt.over_arch, TaskTowers)
    assert [k for k in rebuilt.state_dict()] == [k for k in model.state_dict()]
    with pytest.raises(ValueError, match="exactly one of over_arch_layer_sizes and over_arch"):
        DLRM_RankMixer(ebc, 3, [4], [4, 1], rankmixer_config=cfg, over_arch=TaskTowers(8, [6], 2))
