"""Post-training calibration of the h_infer router bias (modules/moe_calibration.py)."""

import os
import socket
from types import SimpleNamespace
from typing import List

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from torchrec_rankmixer import PerTokenSparseMoE, RankMixerConfig, RankMixerEncoder
from torchrec_rankmixer.modules.moe import configure_moe_inference, reset_statistics
from torchrec_rankmixer.modules.moe.calibration import (
    all_gather_rows,
    bias_shift_for_ratio,
    calibrate_moe_routers,
    calibrate_on_batches,
)


def _encoder(router: str = "dtsi", target: float = 0.25, layers: int = 2) -> RankMixerEncoder:
    torch.manual_seed(0)
    cfg = RankMixerConfig(d_model=8, num_tokens=4, num_layers=layers, use_moe=True, moe_router=router,
                          moe_num_experts=8, moe_expert_hidden=8, moe_target_active_ratio=target)
    return RankMixerEncoder(cfg)


def _moes(model: torch.nn.Module) -> List[PerTokenSparseMoE]:
    return [m for m in model.modules() if isinstance(m, PerTokenSparseMoE)]


def _eval_ratios(model: torch.nn.Module, x: torch.Tensor) -> List[float]:
    reset_statistics(model)
    model.eval()
    with torch.no_grad():
        model(x)
    return [float(m.expert_utilisation().mean()) for m in _moes(model)]


@pytest.mark.parametrize("target", [1.0, 0.5, 0.25, 0.125])
def test_bias_shift_hits_the_ratio_per_token(target: float) -> None:
    torch.manual_seed(0)
    logits = torch.randn(64, 3, 8) * torch.tensor([0.1, 1.0, 10.0]).view(1, 3, 1) - 2.0
    shift = bias_shift_for_ratio(logits, target)
    per_token = ((logits + shift.view(1, 3, 1)) > 0).float().mean(dim=(0, 2))
    torch.testing.assert_close(per_token, torch.full((3,), target))


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, "half"])
def test_bad_target_raises(bad: object) -> None:
    with pytest.raises(ValueError, match="target"):
        bias_shift_for_ratio(torch.randn(4, 2, 3), bad)  # type: ignore[arg-type]
    enc = _encoder()
    with pytest.raises(ValueError, match="target"):
        calibrate_moe_routers(enc, lambda: enc(torch.randn(4, 4, 8)), target=bad)  # type: ignore[arg-type]


def test_run_without_forward_raises() -> None:
    with pytest.raises(ValueError, match="no logits captured"):
        calibrate_moe_routers(_encoder(), lambda: None)


@pytest.mark.parametrize("target", [0.5, 0.125])
def test_calibration_moves_a_far_off_ratio_to_target_on_held_out_inputs(target: float) -> None:
    enc = _encoder(target=target)
    with torch.no_grad():  # a model whose routers are almost all off (as after a controller undershoot)
        for m in _moes(enc):
            m.router_infer.bias.fill_(-2.0)
    held_out = torch.randn(512, 4, 8)
    assert max(_eval_ratios(enc, held_out)) < 0.5 * target
    before = {n: p.detach().clone() for n, p in enc.named_parameters()}
    calib = torch.randn(512, 4, 8)
    report = calibrate_moe_routers(enc, lambda: enc(calib))
    # exact on the calibration inputs, layer by layer, with earlier layers already shifted
    assert [round(r["ratio_after"], 3) for r in report] == [target, target]
    assert _eval_ratios(enc, calib) == pytest.approx([target, target], abs=1e-3)
    # and within 20 % on inputs it never saw
    for ratio in _eval_ratios(enc, held_out):
        assert abs(ratio - target) <= 0.2 * target, ratio
    changed = {n for n, p in enc.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {f"blocks.{i}.ffn.router_infer.bias" for i in range(2)}


def test_sparse_equals_dense_after_calibration_and_h_infer_drives_outputs() -> None:
    enc = _encoder(target=0.5)
    x = torch.randn(128, 4, 8)
    report = calibrate_on_batches(_Wrap(enc), [SimpleNamespace(dense_features=x, sparse_features=None)])
    assert [round(r["ratio_after"], 3) for r in report] == [0.5, 0.5]
    enc.eval()
    with torch.no_grad():
        sparse = enc(x)
        configure_moe_inference(enc, execution="dense")
        dense = enc(x)
        configure_moe_inference(enc, execution="sparse")
        torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)
        moe = _moes(enc)[0]
        moe.router_infer.bias.add_(1.0)
        assert not torch.allclose(enc(x), sparse, atol=1e-4)


class _Wrap(torch.nn.Module):
    def __init__(self, enc: RankMixerEncoder) -> None:
        super().__init__()
        self.enc = enc

    def forward(self, dense: torch.Tensor, sparse: None) -> torch.Tensor:
        return self.enc(dense)


def test_topk_modules_are_left_alone() -> None:
    enc = _encoder(router="topk")
    saved = [m.router_infer.bias.detach().clone() for m in _moes(enc)]
    assert calibrate_moe_routers(enc, lambda: enc(torch.randn(16, 4, 8))) == []
    for m, b in zip(_moes(enc), saved):
        assert torch.equal(m.router_infer.bias, b)


def test_calibrate_on_dlrm_batches_hits_target_on_eval_batches() -> None:
    from torchrec import EmbeddingBagCollection

    from torchrec_rankmixer import DLRM_RankMixer, SyntheticClickData
    from torchrec_rankmixer.data.synthetic import EVAL_OFFSET

    data = SyntheticClickData(num_sparse_features=4, num_embeddings=50)
    torch.manual_seed(0)
    cfg = RankMixerConfig(d_model=16, num_tokens=4, num_layers=2, use_moe=True, moe_num_experts=8,
                          moe_expert_hidden=8, moe_target_active_ratio=0.125)
    model = DLRM_RankMixer(
        embedding_bag_collection=EmbeddingBagCollection(tables=data.table_configs(8)),
        dense_in_features=data.dense_in_features, dense_arch_layer_sizes=[16, 8],
        over_arch_layer_sizes=[16, 1], rankmixer_config=cfg,
    )
    report = calibrate_on_batches(model, data.batches(256, 2, start=0))
    assert len(report) == 2 and all(r["max_abs_shift"] > 0 for r in report)
    reset_statistics(model)
    with torch.no_grad():
        for b in data.batches(256, 2, start=EVAL_OFFSET):
            model(b.dense_features, b.sparse_features)
    for moe in _moes(model):
        ratio = float(moe.expert_utilisation().mean())
        assert abs(ratio - 0.125) <= 0.2 * 0.125, ratio


def _gather_worker(rank: int, port: int, path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        enc = _encoder(target=0.5)  # same weights on both ranks (seeded)
        x = torch.randn(24 + 8 * rank, 4, 8, generator=torch.Generator().manual_seed(rank))
        calibrate_moe_routers(enc, lambda: enc(x), gather=all_gather_rows)
        torch.save([m.router_infer.bias.detach() for m in _moes(enc)], f"{path}.{rank}")
        dist.barrier()  # neither rank tears gloo down while the other still uses it
    finally:
        dist.destroy_process_group()


def test_data_parallel_calibration_gives_every_rank_the_shift_of_all_rows(tmp_path) -> None:
    """Two gloo processes with different (and differently sized) calibration batches: the
    all-gathered logits give both ranks the same biases, equal to calibrating on the
    concatenation of both ranks' rows in one process."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = str(tmp_path / "bias")
    mp.start_processes(_gather_worker, args=(port, path), nprocs=2, start_method="spawn")
    rank0, rank1 = torch.load(f"{path}.0"), torch.load(f"{path}.1")
    enc = _encoder(target=0.5)
    x = torch.cat([torch.randn(24 + 8 * r, 4, 8, generator=torch.Generator().manual_seed(r)) for r in range(2)])
    calibrate_moe_routers(enc, lambda: enc(x))
    for b0, b1, m in zip(rank0, rank1, _moes(enc)):
        assert torch.equal(b0, b1)
        torch.testing.assert_close(b0, m.router_infer.bias.detach())
    assert all_gather_rows(torch.ones(2, 3)).shape == (2, 3)  # no process group: identity
