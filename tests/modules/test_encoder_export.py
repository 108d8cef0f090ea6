"""torch.export and TorchScript round trips of the dense core."""

import pytest
import torch

from torchrec_rankmixer import RankMixerConfig, RankMixerEncoder
from torchrec_rankmixer.modules.moe import moe_layers
from torchrec_rankmixer.ops.moe_swiglu import swiglu_experts_sparse_resolved


TML = {"block": "tokenmixer_large"}
TML_CHANGES = [
    TML,
    dict(TML, num_layers=3, tml_global_token=True, final_norm=True, num_heads=2, strict_heads=False),
    dict(TML, use_moe=True, moe_router="topk", moe_num_experts=4, moe_target_active_ratio=0.5),
    dict(TML, use_moe=True, moe_num_experts=4),
]


@pytest.mark.parametrize("changes", [{}, {"ln_style": "pre", "final_norm": True}, {"pooling": "flatten"}] + TML_CHANGES)
def test_torch_export_encoder(changes: dict) -> None:
    torch.manual_seed(0)
    enc = RankMixerEncoder(RankMixerConfig(d_model=16, num_tokens=4, num_layers=2, kernel="batched").with_updates(**changes)).eval()
    x = torch.randn(3, 4, 16)
    ep = torch.export.export(enc, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
    for batch in (1, 3, 9):
        xb = torch.randn(batch, 4, 16)
        torch.testing.assert_close(ep.module()(xb), enc(xb))


def test_export_save_load(tmp_path) -> None:
    enc = RankMixerEncoder(RankMixerConfig(d_model=16, num_tokens=4, num_layers=1)).eval()
    x = torch.randn(2, 4, 16)
    path = tmp_path / "enc.pt2"
    torch.export.save(torch.export.export(enc, (x,)), str(path))
    loaded = torch.export.load(str(path)).module()
    torch.testing.assert_close(loaded(x), enc(x))


@pytest.mark.parametrize("changes", [{}] + TML_CHANGES[:2])
def test_torchscript_trace_encoder(changes: dict) -> None:
    enc = RankMixerEncoder(RankMixerConfig(d_model=16, num_tokens=4, num_layers=1, kernel="batched").with_updates(**changes)).eval()
    x = torch.randn(2, 4, 16)
    traced = torch.jit.trace(enc, (x,))
    torch.testing.assert_close(traced(torch.randn(5, 4, 16) * 0 + x[:1]), enc(x[:1]).expand(5, -1))


@pytest.mark.parametrize("changes", TML_CHANGES)
def test_fx_trace_and_script_tokenmixer_large(changes: dict) -> None:
    """The TorchScript export's path: FX trace (the sparse MoE kernel stays one leaf call
    with its kernel resolved), then torch.jit.script."""
    torch.manual_seed(0)
    enc = RankMixerEncoder(RankMixerConfig(d_model=16, num_tokens=4, num_layers=2, kernel="batched").with_updates(**changes)).eval()
    for m in moe_layers(enc):
        m.configure_inference(sparse_kernel="batched")
    graph = torch.fx.symbolic_trace(enc)
    leaves = [n for n in graph.graph.nodes if n.target is swiglu_experts_sparse_resolved]
    assert len(leaves) == (4 if changes.get("use_moe") else 0)  # 2 FFNs x 2 blocks
    scripted = torch.jit.script(graph)
    for batch in (1, 6):
        xb = torch.randn(batch, 4, 16)
        torch.testing.assert_close(scripted(xb), enc(xb))
