import pytest
import torch

from torchrec_rankmixer import RankMixerConfig, RankMixerEncoder
from torchrec_rankmixer.utils.flops import count_flops, count_params


def test_defaults_and_derived() -> None:
    cfg = RankMixerConfig(d_model=64, num_tokens=8, num_layers=2)
    assert cfg.heads == 8 and cfg.hidden_dim == 256 and cfg.output_dim == 64
    assert cfg.with_updates(pooling="flatten").output_dim == 8 * 64


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(d_model=100, num_tokens=16, num_layers=1), r"d_model \(100\) must be divisible by num_heads \(16\)"),
        (dict(d_model=64, num_tokens=8, num_layers=1, num_heads=4), r"num_heads \(4\) must equal num_tokens \(8\)"),
        (dict(d_model=0, num_tokens=8, num_layers=1), r"d_model \(0\)"),
        (dict(d_model=64, num_tokens=-1, num_layers=1), r"num_tokens \(-1\)"),
        (dict(d_model=64, num_tokens=8, num_layers=0), r"num_layers \(0\)"),
        (dict(d_model=64, num_tokens=8, num_layers=1, num_heads=0), r"num_heads \(0\)"),
        (dict(d_model=64, num_tokens=8, num_layers=1, ffn_mult=0), r"ffn_mult \(0\)"),
        (dict(d_model=64, num_tokens=8, num_layers=1, ffn_mult=2.5), r"ffn_mult \(2.5\)"),
        (dict(d_model=64, num_tokens=8, num_layers=1, ln_style="mid"), r"ln_style \('mid'\)"),
        (dict(d_model=64, num_tokens=8, num_layers=1, dropout=1.0), r"dropout \(1.0\)"),
        (dict(d_model=64, num_tokens=8, num_layers=1, dropout="x"), r"dropout \('x'\)"),
        (dict(d_model=64, num_tokens=8, num_layers=1, final_norm=1), r"final_norm \(1\)"),
        (dict(d_model=64, num_tokens=8, num_layers=1, pooling="max"), r"pooling \('max'\)"),
        (dict(d_model=64, num_tokens=8, num_layers=1, strict_heads="yes"), r"strict_heads \('yes'\)"),
        (dict(d_model=64, num_tokens=8, num_layers=1, ffn_type="moe?"), r"ffn_type \('moe\?'\)"),
        (dict(d_model=64, num_tokens=8, num_layers=1, token_mixer="attn"), r"token_mixer \('attn'\)"),
        (dict(d_model=64, num_tokens=8, num_layers=1, residual=None), r"residual \(None\)"),
        (dict(d_model=64, num_tokens=8, num_layers=1, layer_norm=0), r"layer_norm \(0\)"),
        (dict(d_model=64, num_tokens=8, num_layers=1, kernel="cuda"), r"kernel \('cuda'\)"),
        (dict(d_model=True, num_tokens=8, num_layers=1), r"d_model \(True\)"),
        (dict(d_model=64, num_tokens=8, num_layers=1, use_moe=True, token_mixer="all_share"), r"use_moe=True cannot be combined with token_mixer='all_share'"),
    ],
)
def test_every_field_is_validated(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RankMixerConfig(**kwargs)


def test_general_heads_allowed_when_not_strict() -> None:
    cfg = RankMixerConfig(d_model=64, num_tokens=8, num_layers=1, num_heads=4, strict_heads=False)
    assert cfg.heads == 4


def test_with_updates_rejects_unknown_and_revalidates() -> None:
    cfg = RankMixerConfig(d_model=64, num_tokens=8, num_layers=1)
    with pytest.raises(ValueError, match=r"unknown RankMixerConfig field\(s\) \['d_modle'\]"):
        cfg.with_updates(d_modle=32)
    with pytest.raises(ValueError, match=r"d_model \(60\)"):
        cfg.with_updates(d_model=60)


def test_presets() -> None:
    small, big = RankMixerConfig.preset("100M"), RankMixerConfig.preset("1B")
    assert (small.d_model, small.num_tokens, small.num_layers) == (768, 16, 2)
    assert (big.d_model, big.num_tokens, big.num_layers) == (1536, 32, 2)
    assert small.param_count() == 2 * 4 * 2 * 16 * 768**2
    assert RankMixerConfig.preset("100M", ffn_mult=2).ffn_mult == 2
    with pytest.raises(ValueError, match=r"preset \('10B'\)"):
        RankMixerConfig.preset("10B")


def test_preset_param_count_matches_meta_module() -> None:
    cfg = RankMixerConfig.preset("1B")
    enc = RankMixerEncoder(cfg, device="meta")  # no memory for 1.2B params
    assert count_params(enc) == cfg.param_count(exact=True)
    # approximation is within 0.1% of the exact count at this size
    assert abs(cfg.param_count() - cfg.param_count(exact=True)) / cfg.param_count() < 1e-3


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"ffn_type": "shared"},
        {"final_norm": True, "ln_style": "pre"},
        {"layer_norm": False},
        {"token_mixer": "self_attention"},
        {"token_mixer": "none"},
    ],
)
def test_exact_counts_match_real_module(changes: dict) -> None:
    cfg = RankMixerConfig(d_model=32, num_tokens=4, num_layers=2, ffn_mult=3).with_updates(**changes)
    enc = RankMixerEncoder(cfg)
    assert count_params(enc) == cfg.param_count(exact=True)
    flops = count_flops(enc, torch.randn(1, 4, 32))
    if cfg.token_mixer == "self_attention":
        # torch's flop counter has no formula for CPU flash attention (QK^T, AV): add them
        flops += cfg.num_layers * 2 * 2 * 4 * 4 * 32
    assert flops == cfg.flops_per_sample(exact=True)
    if cfg.token_mixer != "self_attention":
        assert flops == cfg.flops_per_sample() == 4 * 3 * 2 * 4 * 32**2
