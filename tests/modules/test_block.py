import pytest
import torch
import torch.nn.functional as F

from torchrec_rankmixer import RankMixerBlock, RankMixerConfig, RankMixerEncoder
from torchrec_rankmixer.ops.token_mixing import token_mixing_reference


def _cfg(**kw) -> RankMixerConfig:
    base = dict(d_model=16, num_tokens=4, num_layers=2, ffn_mult=2)
    base.update(kw)
    return RankMixerConfig(**base)


def _ffn_ref(ffn, s):
    return torch.stack(
        [F.gelu(s[:, t] @ ffn.w1[t] + ffn.b1[t]) @ ffn.w2[t] + ffn.b2[t] for t in range(s.shape[1])], 1
    )


def test_post_ln_block_matches_paper_equations() -> None:
    torch.manual_seed(0)
    block = RankMixerBlock(_cfg())
    x = torch.randn(3, 4, 16)
    s = F.layer_norm(token_mixing_reference(x, 4) + x, (16,), block.norm1.weight, block.norm1.bias)
    expected = F.layer_norm(_ffn_ref(block.ffn, s) + s, (16,), block.norm2.weight, block.norm2.bias)
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def test_pre_ln_block_equations() -> None:
    torch.manual_seed(0)
    block = RankMixerBlock(_cfg(ln_style="pre"))
    x = torch.randn(3, 4, 16)
    s = x + token_mixing_reference(F.layer_norm(x, (16,), block.norm1.weight, block.norm1.bias), 4)
    expected = s + _ffn_ref(block.ffn, F.layer_norm(s, (16,), block.norm2.weight, block.norm2.bias))
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def test_general_heads_block_reshapes_for_residual() -> None:
    cfg = _cfg(num_heads=2, strict_heads=False)
    block = RankMixerBlock(cfg)
    assert block(torch.randn(2, 4, 16)).shape == (2, 4, 16)


def test_ablation_switches_change_the_computation() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 4, 16)
    base = RankMixerBlock(_cfg())
    for change in ({"residual": False}, {"layer_norm": False}, {"token_mixer": "none"}):
        variant = RankMixerBlock(_cfg(**change))
        variant.load_state_dict(base.state_dict(), strict=False)
        assert not torch.allclose(variant(x), base(x)), change
    no_mix = RankMixerBlock(_cfg(token_mixer="none"))
    # without mixing, token t's output depends only on token t
    y = no_mix(x)
    x2 = x.clone()
    x2[:, 0] += 1
    assert torch.allclose(no_mix(x2)[:, 1:], y[:, 1:])
    # with mixing, changing token 0 reaches every token
    assert not torch.allclose(base(x2)[:, 1:], base(x)[:, 1:])


def test_encoder_pooling_and_final_norm() -> None:
    x = torch.randn(5, 4, 16)
    enc = RankMixerEncoder(_cfg())
    assert enc(x).shape == (5, 16)
    torch.testing.assert_close(enc(x), enc.encode(x).mean(1))
    flat = RankMixerEncoder(_cfg(pooling="flatten", final_norm=True))
    assert flat(x).shape == (5, 64) and flat.output_dim == 64
    assert isinstance(flat.final_norm, torch.nn.LayerNorm)


# the encoder with each block type (TokenMixer-Large's own tests: test_tokenmixer_large.py)
TML = {"block": "tokenmixer_large", "tml_down_init_scale": 1.0}


@pytest.mark.parametrize("changes", [
    {}, {**TML, "num_layers": 3, "tml_down_init_scale": 0.01, "tml_global_token": True},
])
def test_encoder_trains(changes: dict) -> None:
    torch.manual_seed(0)
    enc = RankMixerEncoder(_cfg(**changes))
    head = torch.nn.Linear(16, 1)
    x, y = torch.randn(64, 4, 16), torch.randn(64, 1)
    opt = torch.optim.Adam(list(enc.parameters()) + list(head.parameters()), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = F.mse_loss(head(enc(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("changes", [{}, TML])
def test_dropout_only_in_training(changes: dict) -> None:
    enc = RankMixerEncoder(_cfg(dropout=0.5, **changes))
    x = torch.randn(4, 4, 16)
    enc.eval()
    torch.testing.assert_close(enc(x), enc(x))
    enc.train()
    assert not torch.allclose(enc(x), enc(x))
