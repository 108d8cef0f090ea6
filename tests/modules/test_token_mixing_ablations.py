"""All-Concat-MLP and All-Share routing ablations (modules/token_mixing_ablations.py)."""

import pytest
import torch

from torchrec_rankmixer import RankMixerConfig
from torchrec_rankmixer.modules.block import RankMixerEncoder
from torchrec_rankmixer.modules.token_mixing import NoTokenMixing
from torchrec_rankmixer.modules.token_mixing_ablations import AllConcatMLP, AllShareFFN
from torchrec_rankmixer.utils.flops import count_flops


def test_all_concat_mlp_mixes_every_token_into_every_output() -> None:
    torch.manual_seed(0)
    m = AllConcatMLP(num_tokens=4, d_model=8, ffn_mult=2)
    x = torch.randn(2, 4, 8, requires_grad=True)
    m(x)[:, 0].sum().backward()  # output token 0 depends on every input token
    assert (x.grad.abs().sum(dim=(0, 2)) > 0).all()


def test_all_share_fast_path_matches_reference_forward_and_backward() -> None:
    torch.manual_seed(0)
    m = AllShareFFN(num_tokens=3, d_model=4, ffn_mult=2)
    x = torch.randn(5, 3, 4, requires_grad=True)
    y_fast, y_ref = m(x), m.reference(x)
    torch.testing.assert_close(y_fast, y_ref)
    g = torch.randn_like(y_fast)
    grads_fast = torch.autograd.grad(y_fast, [x, *m.parameters()], g)
    grads_ref = torch.autograd.grad(y_ref, [x, *m.parameters()], g)
    for a, b in zip(grads_fast, grads_ref):
        torch.testing.assert_close(a, b)
    # every output token reads every input token
    gx = torch.autograd.grad(m(x)[:, 1].sum(), x)[0]
    assert (gx.abs().sum(dim=(0, 2)) > 0).all()


@pytest.mark.parametrize("mixer", ["all_concat_mlp", "all_share"])
def test_encoder_uses_routing_module_and_counts_match(mixer: str) -> None:
    cfg = RankMixerConfig(d_model=8, num_tokens=4, num_layers=2, ffn_mult=2, token_mixer=mixer)
    enc = RankMixerEncoder(cfg)
    block = enc.blocks[0]
    assert isinstance(block.mixer, NoTokenMixing)
    assert isinstance(block.ffn, AllConcatMLP if mixer == "all_concat_mlp" else AllShareFFN)
    assert sum(p.numel() for p in enc.parameters()) == cfg.param_count(exact=True)
    assert count_flops(enc, torch.randn(3, 4, 8)) == 3 * cfg.flops_per_sample(exact=True)
    assert enc(torch.randn(3, 4, 8)).shape == (3, 8)


def test_all_concat_flops_equal_per_token_ffn() -> None:
    base = RankMixerConfig(d_model=8, num_tokens=4, num_layers=1, ffn_mult=2)
    concat = base.with_updates(token_mixer="all_concat_mlp")
    share = base.with_updates(token_mixer="all_share")
    assert concat.flops_per_sample(exact=True) == base.flops_per_sample(exact=True)
    assert share.flops_per_sample(exact=True) > base.flops_per_sample(exact=True)


@pytest.mark.parametrize("cls", [AllConcatMLP, AllShareFFN])
def test_bad_sizes_and_inputs_raise(cls: type) -> None:
    with pytest.raises(ValueError, match=r"d_model \(0\)"):
        cls(num_tokens=4, d_model=0)
    with pytest.raises(ValueError, match=r"num_tokens \(True\)"):
        cls(num_tokens=True, d_model=4)
    with pytest.raises(ValueError, match="expected"):
        cls(num_tokens=4, d_model=8)(torch.randn(2, 3, 8))


def test_unknown_token_mixer_names_choices() -> None:
    with pytest.raises(ValueError, match="all_share"):
        RankMixerConfig(d_model=8, num_tokens=4, num_layers=1, token_mixer="all_mlp")
