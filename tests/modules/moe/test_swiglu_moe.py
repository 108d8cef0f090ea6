"""TokenMixer-Large's Sparse-MoE (modules/moe/swiglu.py): pSwiGLU experts routed by
PerTokenSparseMoE, plus a shared expert; sparse inference against a written-out reference."""

import pytest
import torch

from torchrec_rankmixer import RankMixerConfig, RankMixerEncoder
from torchrec_rankmixer.modules.moe import (
    PerTokenSparseMoE,
    PerTokenSwiGLUMoE,
    SwiGLUTokenExperts,
    configure_moe_inference,
    moe_layers,
)
from torchrec_rankmixer.modules.per_token_swiglu import PerTokenSwiGLU
from torchrec_rankmixer.modules.tokenmixer_large import TokenMixerLargeBlock
from torchrec_rankmixer.ops.per_token_swiglu import swiglu
from torchrec_rankmixer.utils.flops import count_flops, count_params

T, D, E = 4, 8, 4


def _cfg(**kw: object) -> RankMixerConfig:
    base: dict = dict(d_model=D, num_tokens=T, num_layers=2, ffn_mult=2, block="tokenmixer_large",
                      use_moe=True, moe_router="topk", moe_num_experts=E, moe_target_active_ratio=0.5,
                      tml_down_init_scale=1.0)
    base.update(kw)
    return RankMixerConfig(**base)


def _moe(**kw: object) -> PerTokenSwiGLUMoE:
    torch.manual_seed(0)
    return PerTokenSwiGLUMoE.from_config(_cfg(**kw), num_tokens=T, width=D)


def _reference(moe: PerTokenSwiGLUMoE, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """gate_scale * sum_e g_e f_e(x) + f_shared(x), one (token, expert) at a time."""
    ex, sh = moe.routed.experts, moe.shared
    out = torch.zeros_like(x)
    for t in range(T):
        for e in range(E):
            f = swiglu(x[:, t] @ ex.w_in[t, e]) @ ex.w_out[t, e]
            out[:, t] += moe.gate_scale * gates[:, t, e : e + 1] * f
        out[:, t] += swiglu(x[:, t] @ sh.w_in[t]) @ sh.w_out[t]
    return out


def _topk_gates(logits: torch.Tensor, k: int) -> torch.Tensor:
    top = logits.topk(k, -1)
    p = torch.softmax(logits, -1).gather(-1, top.indices)
    return torch.zeros_like(logits).scatter(-1, top.indices, p / p.sum(-1, keepdim=True))


@pytest.mark.parametrize("router", ["topk", "relu", "dtsi"])
@pytest.mark.parametrize("gate_scale", [1.0, 2.0])
def test_eval_sparse_equals_reference(router: str, gate_scale: float) -> None:
    moe = _moe(moe_router=router, moe_gate_scale=gate_scale).eval()
    x = torch.randn(10, T, D)
    logits = moe.routed.router_infer(x)
    gates = _topk_gates(logits, 2) if router == "topk" else torch.relu(logits)
    expected = _reference(moe, x, gates)
    torch.testing.assert_close(moe(x), expected, rtol=1e-5, atol=1e-5)
    for kernel in ("reference", "batched"):
        moe.routed.configure_inference(sparse_kernel=kernel)
        torch.testing.assert_close(moe(x), expected, rtol=1e-5, atol=1e-5)
    moe.routed.configure_inference(execution="dense")
    torch.testing.assert_close(moe(x), expected, rtol=1e-5, atol=1e-5)


def test_sparse_inference_runs_only_routed_experts_and_the_shared_one() -> None:
    """Poison every expert top-k does not pick for a row: the output stays finite."""
    moe = _moe().eval()
    x = torch.randn(1, T, D)
    picked = moe.routed.router_infer(x).topk(2, -1).indices[0]  # (T, 2)
    with torch.no_grad():
        for t in range(T):
            for e in set(range(E)) - set(picked[t].tolist()):
                moe.routed.experts.w_in[t, e] = float("nan")
    assert torch.isfinite(moe(x)).all()
    moe.routed.configure_inference(execution="dense")
    assert torch.isnan(moe(x)).any()  # the dense path computes them


def test_training_trains_routers_experts_and_shared_expert() -> None:
    moe = _moe().train()
    moe(torch.randn(64, T, D)).square().mean().backward()
    assert moe.routed.router_infer.weight.grad.abs().sum() > 0
    assert moe.routed.experts.w_in.grad.abs().amax(dim=(2, 3)).gt(0).all()  # top-2 of 4, 64 rows
    assert moe.shared.w_in.grad.abs().sum() > 0
    stats = moe.routed.statistics()
    assert stats["active_ratio"] == pytest.approx(0.5) and "balance_loss" in stats


def test_block_uses_moe_in_both_spaces_and_encoder_shares_dtsi_draw() -> None:
    cfg = _cfg(moe_router="dtsi", num_heads=2, strict_heads=False, tml_global_token=True)
    block = TokenMixerLargeBlock(cfg)
    assert isinstance(block.ffn_mix, PerTokenSwiGLUMoE) and isinstance(block.ffn_tok, PerTokenSwiGLUMoE)
    width = (T + 1) * D // 2
    assert block.ffn_mix.routed.experts.w_in.shape == (2, E, width, 2 * cfg.moe_hidden_for(width))
    enc = RankMixerEncoder(cfg.with_updates(num_layers=3))
    moes = moe_layers(enc)
    assert len(moes) == 6
    seen = []
    for m in moes:
        m.register_forward_pre_hook(lambda mod, _: seen.append(mod._path_mask))
    enc.train()
    enc(torch.randn(16, T, D)).sum().backward()
    assert len(seen) == 6 and all(s is seen[0] for s in seen) and seen[0] is not None


def test_default_expert_width_matches_dense_active_flops() -> None:
    cfg = _cfg(moe_expert_hidden=None, moe_num_experts=6, moe_target_active_ratio=0.5)
    # 3 routed + 1 shared expert of width kD/4 = the dense pSwiGLU's kD hidden units
    assert cfg.moe_hidden == 2 * D // 4
    assert cfg.flops_per_sample() == cfg.with_updates(use_moe=False).flops_per_sample()


@pytest.mark.parametrize("changes", [{}, {"moe_router": "dtsi"}, {"moe_router": "relu", "tml_global_token": True},
                                     {"num_heads": 8, "strict_heads": False}])
def test_exact_counts_match_real_module(changes: dict) -> None:
    cfg = _cfg(**changes)
    enc = RankMixerEncoder(cfg)
    assert count_params(enc) == cfg.param_count(exact=True)
    enc.train()  # dense training: every expert, every router
    assert count_flops(enc, torch.randn(1, T, D)) == cfg.flops_per_sample(exact=True, training=True)
    if cfg.moe_router == "topk":  # exactly k experts per token at inference
        enc.eval()
        configure_moe_inference(enc, sparse_kernel="reference")
        assert count_flops(enc, torch.randn(8, T, D)) == 8 * cfg.flops_per_sample(exact=True)
    routers = 2 if cfg.moe_router == "dtsi" else 1
    active = cfg.param_count(exact=True, active=True)
    assert cfg.param_count(exact=True) - active == cfg.param_count() - cfg.param_count(active=True) + (
        (routers - 1) * cfg.num_layers * sum(n * (w * E + E) for n, w in ((cfg.heads, T * D // cfg.heads), (T, D))))


def test_meta_device() -> None:
    moe = PerTokenSwiGLUMoE.from_config(_cfg(), T, D, device="meta")
    assert all(p.is_meta for p in moe.parameters())


def test_errors() -> None:
    experts = SwiGLUTokenExperts(T, D, E, 6)
    with pytest.raises(ValueError, match=r"this MoE needs \[T, E, D, ...\] = \(4, 3, 8\)"):
        PerTokenSparseMoE(T, D, num_experts=3, expert_hidden=6, experts=experts)
    routed = PerTokenSparseMoE(T, D, num_experts=E, expert_hidden=6, experts=experts)
    with pytest.raises(ValueError, match=r"shared expert's \(T, D\) \(3, 8\)"):
        PerTokenSwiGLUMoE(routed, PerTokenSwiGLU(3, D, 6))
    with pytest.raises(ValueError, match=r"gate_scale \(0.0\)"):
        PerTokenSwiGLUMoE(routed, PerTokenSwiGLU(T, D, 6), gate_scale=0.0)
    with pytest.raises(ValueError, match=r"expert_hidden \(0\)"):
        SwiGLUTokenExperts(T, D, E, 0)
    with pytest.raises(ValueError, match=r"sparse_kernel \('cuda'\)"):
        routed.configure_inference(sparse_kernel="cuda")
