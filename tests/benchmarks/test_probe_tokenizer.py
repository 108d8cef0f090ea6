"""benchmarks/probe_tokenizer.py: the per-token MLP projection and the global token."""

import pytest
import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedTensor

from benchmarks.probe_tokenizer import ProbeTokenizer as SemanticTokenizer

DIMS = {"u": 4, "a": 2, "i": 4, "c": 6}
GROUPS = {"user": ["u", "a"], "item": ["i"], "cat": ["c"]}


def _kt(batch: int = 5) -> KeyedTensor:
    return KeyedTensor(keys=list(DIMS), length_per_key=list(DIMS.values()), values=torch.randn(batch, 16))


def _reference(tok: SemanticTokenizer, values: torch.Tensor) -> torch.Tensor:
    """The options written out per group from the plan: [B, T_s, D]."""
    cols = [list(c) for c in tok.plan.columns]
    out = []
    for g, c in enumerate(cols):
        y = values[:, c] @ tok.weight[g, : len(c)] + tok.bias[g]
        if tok.projection == "mlp":
            y = nn.functional.gelu(y) @ tok.weight2[g] + tok.bias2[g]
        out.append(y)
    if tok.global_proj is not None:
        out.append(values @ tok.global_proj.weight.t() + tok.global_proj.bias)
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("kernel", ["batched", "reference"])
@pytest.mark.parametrize("options", [dict(projection="mlp"), dict(global_token=True),
                                     dict(projection="mlp", global_token=True)])
@pytest.mark.parametrize("plan", [dict(groups=GROUPS), dict(num_sparse_tokens=2)])
def test_options_match_the_written_out_reference(kernel: str, options: dict, plan: dict) -> None:
    torch.manual_seed(0)
    tok = SemanticTokenizer(DIMS, 8, kernel=kernel, **plan, **options)
    for p in (tok.bias, tok.bias2, tok.global_proj.bias if tok.global_proj else None):
        if p is not None:
            nn.init.normal_(p)  # biases start at zero; cover them in the check
    kt = _kt()
    expected = _reference(tok, kt.values())
    torch.testing.assert_close(tok(kt), expected, atol=1e-5, rtol=1e-5)
    extra = 1 if options.get("global_token") else 0
    assert tok.num_tokens == len(tok.plan.columns) + extra == tok(kt).shape[1]


@pytest.mark.parametrize("options", [dict(projection="mlp"), dict(global_token=True)])
def test_batched_and_loop_agree_in_gradients(options: dict) -> None:
    torch.manual_seed(1)
    fast = SemanticTokenizer(DIMS, 8, groups=GROUPS, dense_in_features=3, **options)
    ref = SemanticTokenizer(DIMS, 8, groups=GROUPS, dense_in_features=3, kernel="reference", **options)
    ref.load_state_dict(fast.state_dict())
    kt, dense = _kt(), torch.randn(5, 3)
    g = torch.randn(5, fast.num_tokens, 8)
    fast(kt, dense).backward(g)
    ref(kt, dense).backward(g)
    for (n, p), (_, q) in zip(fast.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-5, msg=n)


def test_global_token_sees_every_feature_and_group_tokens_do_not() -> None:
    tok = SemanticTokenizer(DIMS, 8, groups=GROUPS, global_token=True)
    kt = _kt()
    values = kt.values().clone()
    values[:, 6:10] += 1.0  # feature "i" -> token "item" (1) and the global token (3)
    moved = tok(KeyedTensor(kt.keys(), kt.length_per_key(), values))
    changed = (moved - tok(kt)).abs().amax(dim=(0, 2)) > 0
    assert changed.tolist() == [False, True, False, True]


def test_new_biases_start_at_zero_and_params_are_counted() -> None:
    tok = SemanticTokenizer(DIMS, 8, groups=GROUPS, projection="mlp", global_token=True)
    assert torch.count_nonzero(tok.bias2) == 0 and torch.count_nonzero(tok.global_proj.bias) == 0
    from torchrec_rankmixer import SemanticTokenizer as Plain

    plain = Plain(DIMS, 8, groups=GROUPS)
    extra = sum(p.numel() for p in tok.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == 3 * (8 * 8 + 8) + 16 * 8 + 8


@pytest.mark.parametrize("kwargs, message", [(dict(projection="deep"), r"projection \('deep'\)"),
                                             (dict(global_token=1), r"global_token \(1\)")])
def test_option_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SemanticTokenizer(DIMS, 8, groups=GROUPS, **kwargs)
