"""Sparse-MoE end to end: DLRM_RankMixer + SyntheticClickData + train_simple, and DLRMTrain."""


import pytest
import torch
from torchrec import EmbeddingBagCollection
from torchrec.models.dlrm import DLRMTrain

from torchrec_rankmixer import DLRM_RankMixer, PerTokenSparseMoE, RankMixerConfig, SyntheticClickData
from torchrec_rankmixer.modules.moe import configure_moe_inference, reset_statistics
from torchrec_rankmixer.data.synthetic import EVAL_OFFSET
from torchrec_rankmixer.train.simple import train_simple
from torchrec_rankmixer.utils.metrics import binary_auc

TARGET = 0.5


def _model(data: SyntheticClickData, router: str = "dtsi") -> DLRM_RankMixer:
    torch.manual_seed(0)
    cfg = RankMixerConfig(d_model=16, num_tokens=4, num_layers=1, use_moe=True, moe_router=router,
                          moe_num_experts=4, moe_expert_hidden=16, moe_target_active_ratio=TARGET)
    return DLRM_RankMixer(
        embedding_bag_collection=EmbeddingBagCollection(tables=data.table_configs(8)),
        dense_in_features=data.dense_in_features, dense_arch_layer_sizes=[16, 8],
        over_arch_layer_sizes=[16, 1], rankmixer_config=cfg,
    )


def _logits(model: torch.nn.Module, batches: list) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(b.dense_features, b.sparse_features)[:, 0] for b in batches])


@pytest.fixture(scope="module")
def trained() -> tuple:
    torch.set_num_threads(1)
    data = SyntheticClickData(num_sparse_features=4, num_embeddings=50)
    model = _model(data)
    result = train_simple(model, data.batches(128, 300), log_every=60, lr=1e-3)
    return data, model, result


def test_training_logs_moe_statistics(trained: tuple) -> None:
    _, _, result = trained
    assert len(result.stats) == 5
    keys = set(result.stats[-1])
    assert "encoder.blocks.0.ffn.active_ratio" in keys and "encoder.blocks.0.ffn.l1_coef" in keys
    assert "encoder.blocks.0.ffn.train_router_active_ratio" in keys


def test_inference_active_ratio_within_20_percent_of_target(trained: tuple) -> None:
    data, model, _ = trained
    moe = model.encoder.blocks[0].ffn
    reset_statistics(model)
    _logits(model, list(data.batches(512, 4, start=EVAL_OFFSET)))
    ratio = float(moe.expert_utilisation().mean())
    assert abs(ratio - TARGET) <= 0.2 * TARGET, ratio


def test_sparse_inference_equals_dense_computation_after_training(trained: tuple) -> None:
    data, model, _ = trained
    evals = list(data.batches(512, 4, start=EVAL_OFFSET))
    labels = torch.cat([b.labels for b in evals])
    configure_moe_inference(model, execution="sparse")
    sparse = _logits(model, evals)
    configure_moe_inference(model, execution="dense")
    dense = _logits(model, evals)
    configure_moe_inference(model, execution="sparse")
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)
    assert abs(binary_auc(sparse, labels) - binary_auc(dense, labels)) < 1e-4
    assert binary_auc(sparse, labels) > 0.6  # it learned something


def test_eval_outputs_depend_on_trained_h_infer_only(trained: tuple) -> None:
    data, model, _ = trained
    moe: PerTokenSparseMoE = model.encoder.blocks[0].ffn
    evals = list(data.batches(256, 1, start=EVAL_OFFSET))
    base = _logits(model, evals)
    for router, should_change in ((moe.router_train, False), (moe.router_infer, True)):
        saved = router.weight.detach().clone()
        with torch.no_grad():
            router.weight.add_(torch.randn_like(saved) * saved.std())
        changed = _logits(model, evals)
        with torch.no_grad():
            router.weight.copy_(saved)
        assert (not torch.allclose(changed, base, atol=1e-4)) == should_change
    # h_infer learned from the task: it is alive (not collapsed to all-inactive).
    assert (moe.expert_utilisation() > 0).float().mean() > 0.5


def test_penalty_reaches_the_loss_through_dlrm_train() -> None:
    """TorchRec's DLRMTrain computes only BCE; the injected L1 still trains h_infer."""
    data = SyntheticClickData(num_sparse_features=4, num_embeddings=50)
    batch = data.batch(64, 0)
    grads = []
    for coef in (0.0, 1.0):
        model = _model(data)
        moe = model.encoder.blocks[0].ffn
        moe.l1.coef.fill_(coef)
        torch.manual_seed(1)  # same DTSI path choices
        loss, _ = DLRMTrain(model)(batch)
        loss.backward()
        grads.append(moe.router_infer.weight.grad.clone())
        assert moe.router_train.weight.grad.abs().sum() > 0
    assert not torch.allclose(grads[0], grads[1])
    assert grads[0].abs().sum() > 0  # task gradient alone reaches h_infer
