"""TokenMixer-Large block and encoder (modules/tokenmixer_large.py) against a written-out
reference; shapes, meta device, exact parameter / FLOP counts and config errors (training and
dropout of the encoder, for both block types: test_block.py)."""

import pytest
import torch

from torchrec_rankmixer import RankMixerConfig, RankMixerEncoder
from torchrec_rankmixer.modules.per_token_swiglu import PerTokenSwiGLU
from torchrec_rankmixer.modules.tokenmixer_large import (
    GlobalToken,
    TokenMixerLargeBlock,
    inter_residual_sources,
)
from torchrec_rankmixer.ops.token_mixing import token_mixing, token_mixing_reference
from torchrec_rankmixer.utils.flops import count_flops, count_params

TML = "tokenmixer_large"


def _cfg(**kw: object) -> RankMixerConfig:
    base: dict = dict(d_model=16, num_tokens=4, num_layers=2, ffn_mult=2, block=TML, tml_down_init_scale=1.0)
    base.update(kw)
    return RankMixerConfig(**base)


# ---------------------------------------------------------------- written-out reference
def _rms(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * scale


def _pswiglu(ffn: PerTokenSwiGLU, x: torch.Tensor) -> torch.Tensor:
    h = ffn.hidden_dim
    out = []
    for t in range(x.shape[1]):
        gate, up = x[:, t] @ ffn.w_in[t, :, :h], x[:, t] @ ffn.w_in[t, :, h:]
        out.append((gate * torch.sigmoid(gate) * up) @ ffn.w_out[t])
    return torch.stack(out, 1)


def _revert(h: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Inverse of token mixing, element by element: head k of token t is chunk t of mixed token k."""
    B, H, W = h.shape
    d = W // num_tokens
    return torch.stack([torch.cat([h[:, k, t * d:(t + 1) * d] for k in range(H)], -1)
                        for t in range(num_tokens)], 1)


def _block_ref(block: TokenMixerLargeBlock, x: torch.Tensor) -> torch.Tensor:
    h = token_mixing_reference(x, block.num_heads)
    h = h + _pswiglu(block.ffn_mix, _rms(h, block.norm_mix.weight))
    r = _revert(h, block.num_tokens)
    return r + _pswiglu(block.ffn_tok, _rms(r, block.norm_tok.weight))


def _encoder_ref(enc: RankMixerEncoder, x: torch.Tensor, every: int) -> torch.Tensor:
    if enc.global_token is not None:
        g = x.flatten(1) @ enc.global_token.proj.weight.t() + enc.global_token.proj.bias
        x = torch.cat([x, g[:, None]], 1)
    stream = [x]
    L = len(enc.blocks)
    for l, block in enumerate(enc.blocks, start=1):
        x = _block_ref(block, x)
        if every and l % every == 0 and l < L:
            x = x + stream[l - every]
        stream.append(x)
    x = x[:, : enc.config.num_tokens]
    if enc.config.final_norm:
        x = _rms(x, enc.final_norm.weight)
    return x.mean(1)


# ---------------------------------------------------------------- block
@pytest.mark.parametrize("changes", [{}, {"num_heads": 2, "strict_heads": False},
                                     {"num_heads": 8, "strict_heads": False}, {"tml_global_token": True}])
def test_block_matches_written_out_equations(changes: dict) -> None:
    torch.manual_seed(0)
    cfg = _cfg(**changes)
    block = TokenMixerLargeBlock(cfg)
    T = cfg.num_tokens + int(cfg.tml_global_token)
    x = torch.randn(3, T, 16)
    torch.testing.assert_close(block(x), _block_ref(block, x), atol=1e-5, rtol=1e-5)
    assert block.ffn_mix.num_tokens == cfg.heads and block.ffn_mix.d_model == T * 16 // cfg.heads


@pytest.mark.parametrize("heads", [1, 2, 4, 8, 16])
def test_reverting_inverts_mixing(heads: int) -> None:
    x = torch.randn(2, 4, 16)
    mixed = token_mixing(x, heads)  # (B, H, 4*16/H)
    torch.testing.assert_close(_revert(mixed, 4), x)
    assert torch.equal(token_mixing(mixed, 4), x)  # the block's revert: mixing with T heads


def test_residual_stays_aligned_per_token() -> None:
    """With the FFN outputs zeroed the block is the identity (RankMixer's is not)."""
    block = TokenMixerLargeBlock(_cfg(num_heads=2, strict_heads=False))
    for ffn in (block.ffn_mix, block.ffn_tok):
        torch.nn.init.zeros_(ffn.w_out)
    x = torch.randn(3, 4, 16)
    assert torch.equal(block(x), x)


def test_small_init_down_projection_starts_near_identity() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 4, 16)
    deltas = {}
    for scale in (1.0, 0.01):
        block = TokenMixerLargeBlock(_cfg(tml_down_init_scale=scale))
        bound = scale / (2 * 16) ** 0.5  # hidden k*D = 32
        assert block.ffn_tok.w_out.abs().max() <= bound
        assert block.ffn_tok.w_in.abs().max() > 0.5 * 16 ** -0.5  # gate/up: default init
        deltas[scale] = (block(x) - x).norm() / x.norm()
    assert deltas[0.01] < 0.02 * deltas[1.0]


def test_ablation_switches() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 4, 16)
    base = TokenMixerLargeBlock(_cfg())
    no_norm = TokenMixerLargeBlock(_cfg(layer_norm=False))
    no_skip = TokenMixerLargeBlock(_cfg(residual=False))
    for variant in (no_norm, no_skip):
        variant.load_state_dict(base.state_dict(), strict=False)
        assert not torch.allclose(variant(x), base(x))
    assert isinstance(no_norm.norm_mix, torch.nn.Identity)
    expected = _pswiglu(no_skip.ffn_tok, _rms(token_mixing(_pswiglu(no_skip.ffn_mix, _rms(
        token_mixing(x, 4), base.norm_mix.weight)), 4), base.norm_tok.weight))
    torch.testing.assert_close(no_skip(x), expected, atol=1e-5, rtol=1e-5)


def test_mixing_reaches_every_token() -> None:
    block = TokenMixerLargeBlock(_cfg())
    x = torch.randn(2, 4, 16)
    x2 = x.clone()
    x2[:, 0] += 1
    assert not torch.allclose(block(x2)[:, 1:], block(x)[:, 1:])


# ---------------------------------------------------------------- encoder
@pytest.mark.parametrize("changes", [
    {}, {"num_layers": 5}, {"num_layers": 5, "tml_inter_residual_every": 0},
    {"num_layers": 4, "tml_inter_residual_every": 1, "final_norm": True},
    {"tml_global_token": True, "num_layers": 3, "num_heads": 2, "strict_heads": False},
])
def test_encoder_matches_written_out_reference(changes: dict) -> None:
    torch.manual_seed(0)
    cfg = _cfg(**changes)
    enc = RankMixerEncoder(cfg)
    x = torch.randn(3, 4, 16)
    expected = _encoder_ref(enc, x, cfg.tml_inter_residual_every)
    torch.testing.assert_close(enc(x), expected, atol=1e-5, rtol=1e-5)
    assert enc(x).shape == (3, cfg.output_dim)


def test_inter_residual_schedule() -> None:
    assert inter_residual_sources(_cfg(num_layers=2)) == {}  # the last block never gets one
    assert inter_residual_sources(_cfg(num_layers=3)) == {1: 0}
    assert inter_residual_sources(_cfg(num_layers=7, tml_inter_residual_every=3)) == {2: 0, 5: 3}
    assert inter_residual_sources(_cfg(num_layers=4, tml_inter_residual_every=0)) == {}
    assert inter_residual_sources(_cfg(num_layers=4, block="rankmixer", tml_down_init_scale=0.01)) == {}


def test_global_token_is_seen_and_dropped() -> None:
    torch.manual_seed(0)
    cfg = _cfg(tml_global_token=True, pooling="flatten", final_norm=True)
    enc = RankMixerEncoder(cfg)
    x = torch.randn(5, 4, 16)
    assert enc.encode(x).shape == (5, 4, 16) and enc(x).shape == (5, 64) == (5, cfg.output_dim)
    assert GlobalToken(4, 16)(x).shape == (5, 5, 16)
    y = enc(x)
    with torch.no_grad():
        enc.global_token.proj.bias.add_(1.0)  # only the global token changes
    assert not torch.allclose(enc(x), y)
    assert isinstance(enc.final_norm, torch.nn.RMSNorm)


# ---------------------------------------------------------------- sizes
@pytest.mark.parametrize("changes", [
    {}, {"final_norm": True, "num_layers": 3}, {"layer_norm": False}, {"tml_global_token": True},
    {"num_heads": 8, "strict_heads": False, "tml_global_token": True},
])
def test_exact_counts_match_real_module(changes: dict) -> None:
    cfg = _cfg(d_model=32, ffn_mult=3, **changes)
    enc = RankMixerEncoder(cfg)
    assert count_params(enc) == cfg.param_count(exact=True)
    assert count_flops(enc, torch.randn(1, 4, 32)) == cfg.flops_per_sample(exact=True)
    ffn_weights = sum(p.numel() for n, p in enc.named_parameters() if ".ffn_" in n)
    assert cfg.param_count() == ffn_weights and cfg.flops_per_sample() == 2 * ffn_weights
    if not changes:  # two pSwiGLU FFNs per block, 3 matrices of k*D*D per token each
        assert cfg.param_count() == 2 * 2 * 4 * 3 * 3 * 32 * 32


def test_meta_device_builds_without_memory() -> None:
    cfg = RankMixerConfig.preset("1B", block=TML, tml_global_token=True)
    enc = RankMixerEncoder(cfg, device="meta")
    assert all(p.is_meta for p in enc.parameters())
    assert count_params(enc) == cfg.param_count(exact=True)


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, message", [
    ({"block": "rankmixer2"}, r"block \('rankmixer2'\) must be one of"),
    ({"ffn_type": "shared"}, r"needs ffn_type='per_token' and token_mixer='multihead'"),
    ({"token_mixer": "none"}, r"got 'per_token', 'none'"),
    ({"tml_inter_residual_every": -1}, r"tml_inter_residual_every \(-1\)"),
    ({"tml_inter_residual_every": True}, r"tml_inter_residual_every \(True\)"),
    ({"tml_down_init_scale": -0.1}, r"tml_down_init_scale \(-0.1\)"),
    ({"tml_global_token": "yes"}, r"tml_global_token \('yes'\)"),
    ({"moe_gate_scale": 0.0}, r"moe_gate_scale \(0.0\)"),
    ({"block": "rankmixer", "tml_global_token": True}, r"tml_global_token=True needs block='tokenmixer_large'"),
    ({"num_heads": 2}, r"num_heads \(2\) must equal num_tokens \(4\)"),
])
def test_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _cfg(**kwargs)


def test_module_errors() -> None:
    with pytest.raises(ValueError, match=r"hidden_dim \(0\)"):
        PerTokenSwiGLU(2, 4, 0)
    with pytest.raises(ValueError, match=r"down_init_scale \(-1.0\)"):
        PerTokenSwiGLU(2, 4, 8, down_init_scale=-1.0)
    with pytest.raises(ValueError, match=r"kernel \('bmm'\)"):
        PerTokenSwiGLU(2, 4, 8, kernel="bmm")
