"""torchrec_rankmixer.features.sequence: config, truncation/padding, masked pooling."""

from typing import List

import pytest
import torch

from torchrec_rankmixer.features.sequence import (
    MaxSequencePooling,
    MeanSequencePooling,
    SequenceFeatureConfig,
    TargetAttentionPooling,
    jagged_index,
    jagged_to_padded,
    jagged_to_padded_reference,
)

LENGTHS = torch.tensor([0, 1, 3, 5, 9, 2])  # empty, short, exactly L, longer than L


def _values(lengths: torch.Tensor, dim: int = 3) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(int(lengths.sum()), dim)


# ---------------------------------------------------------------- config
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="", max_len=2), "name"),
        (dict(name="h", max_len=0), "max_len (0)"),
        (dict(name="h", max_len=2.0), "max_len (2.0)"),
        (dict(name="h", max_len=2, keep="newest"), "keep ('newest')"),
        (dict(name="h", max_len=2, pooling="sum"), "pooling ('sum')"),
        (dict(name="h", max_len=2, pooling="target"), "needs candidate"),
        (dict(name="h", max_len=2, pooling="target", candidate="h"), "must differ"),
        (dict(name="h", max_len=2, pooling="mean", candidate="c"), "only used by pooling='target'"),
        (dict(name="h", max_len=2, attention_hidden=0), "attention_hidden (0)"),
        (dict(name="h", max_len=2, attention_normalization="l1"), "attention_normalization ('l1')"),
    ],
)
def test_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SequenceFeatureConfig(**kwargs)


def test_padding_errors() -> None:
    v = _values(LENGTHS)
    with pytest.raises(ValueError, match="keep"):
        jagged_to_padded(v, LENGTHS, 4, keep="latest")
    with pytest.raises(ValueError, match="max_len"):
        jagged_to_padded(v, LENGTHS, 0)
    with pytest.raises(ValueError, match=r"values must be \[N, d\]"):
        jagged_to_padded(v[:, 0], LENGTHS, 4)
    with pytest.raises(ValueError, match="lengths must be 1-D"):
        jagged_index(LENGTHS.reshape(2, 3), v.shape[0], 4, "recent")


# ---------------------------------------------------------------- truncation
def test_truncation_side() -> None:
    values = torch.arange(9.0).unsqueeze(1)  # one sample, items 0 (oldest) .. 8 (most recent)
    lengths = torch.tensor([9])
    recent, mask = jagged_to_padded(values, lengths, 4, keep="recent")
    oldest, _ = jagged_to_padded(values, lengths, 4, keep="oldest")
    assert recent.flatten().tolist() == [5.0, 6.0, 7.0, 8.0]  # last 4, still chronological
    assert oldest.flatten().tolist() == [0.0, 1.0, 2.0, 3.0]
    assert mask.all()


@pytest.mark.parametrize("keep", ["recent", "oldest"])
@pytest.mark.parametrize("max_len", [1, 3, 12])
def test_fast_padding_matches_reference(keep: str, max_len: int) -> None:
    v = _values(LENGTHS).requires_grad_()
    fast, mask = jagged_to_padded(v, LENGTHS, max_len, keep)
    ref, ref_mask = jagged_to_padded_reference(v, LENGTHS, max_len, keep)
    assert torch.equal(mask, ref_mask)
    assert torch.equal(fast, ref)
    assert torch.equal(mask.sum(1), LENGTHS.clamp(max=max_len))
    assert (fast[~mask] == 0).all()
    w = torch.randn_like(fast)
    (g_fast,) = torch.autograd.grad((fast * w).sum(), v)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), v)
    assert torch.equal(g_fast, g_ref)
    dropped = (g_fast == 0).all(dim=1).sum()  # truncated items get no gradient
    assert int(dropped) == int((LENGTHS - LENGTHS.clamp(max=max_len)).sum())


def test_all_empty_batch() -> None:
    padded, mask = jagged_to_padded(torch.empty(0, 4), torch.zeros(3, dtype=torch.long), 5)
    assert padded.shape == (3, 5, 4) and not mask.any() and (padded == 0).all()


# ---------------------------------------------------------------- pooling
def _poolers() -> List[torch.nn.Module]:
    torch.manual_seed(1)
    return [
        MeanSequencePooling(),
        MaxSequencePooling(),
        TargetAttentionPooling(3, query_dim=5, hidden=8, normalization="softmax"),
        TargetAttentionPooling(3, hidden=8),  # default: DIN's raw weights
    ]


def _pool(pooler: torch.nn.Module, seq: torch.Tensor, mask: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    if isinstance(pooler, TargetAttentionPooling):
        q = query if pooler.query_proj is not None else query[:, :3]
        return pooler(seq, mask, q)
    return pooler(seq, mask)


@pytest.mark.parametrize("index", range(4))
def test_padding_never_changes_the_result(index: int) -> None:
    pooler = _poolers()[index]
    v = _values(LENGTHS)
    query = torch.randn(len(LENGTHS), 5)
    seq, mask = jagged_to_padded(v, LENGTHS, 4)
    garbage = seq.clone()
    garbage[~mask] = torch.tensor([1e6, float("nan"), -float("inf")])  # junk in every padded slot
    longer = torch.cat([seq, torch.full((len(LENGTHS), 3, 3), 7.0)], dim=1)  # 3 extra pad slots
    longer_mask = torch.cat([mask, torch.zeros(len(LENGTHS), 3, dtype=torch.bool)], dim=1)
    outs, grads = [], []
    for s, m in ((seq, mask), (garbage, mask), (longer, longer_mask)):
        s = s.clone().requires_grad_()
        out = _pool(pooler, s, m, query)
        params = [p for p in pooler.parameters()]
        g = torch.autograd.grad(out.square().sum(), [s] + params)
        outs.append(out)
        grads.append([g[0][:, :4][mask]] + list(g[1:]))
        assert torch.isfinite(out).all()
        assert all(torch.isfinite(x).all() for x in g)
        assert (g[0][~m] == 0).all()  # padded slots get zero gradient
    for other, other_g in zip(outs[1:], grads[1:]):
        torch.testing.assert_close(other, outs[0], rtol=0, atol=1e-6)
        for a, b in zip(other_g, grads[0]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("index", range(4))
def test_empty_sequence_pools_to_zero(index: int) -> None:
    pooler = _poolers()[index]
    seq = torch.randn(2, 4, 3, requires_grad=True)
    mask = torch.tensor([[False] * 4, [True, True, False, False]])
    out = _pool(pooler, seq, mask, torch.randn(2, 5))
    assert torch.equal(out[0], torch.zeros(3))
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(seq.grad).all() and (seq.grad[0] == 0).all()


def test_pooling_matches_per_sample_reference() -> None:
    v = _values(LENGTHS)
    seq, mask = jagged_to_padded(v, LENGTHS, 4)
    mean, mx = MeanSequencePooling()(seq, mask), MaxSequencePooling()(seq, mask)
    torch.manual_seed(2)
    att = TargetAttentionPooling(3, hidden=8, normalization="softmax")
    raw = TargetAttentionPooling(3, hidden=8)
    raw.load_state_dict(att.state_dict())
    query = torch.randn(len(LENGTHS), 3)
    target, target_raw = att(seq, mask, query), raw(seq, mask, query)
    for b in range(len(LENGTHS)):
        items = seq[b, mask[b]]  # (n, 3)
        if items.shape[0] == 0:
            for out in (mean, mx, target, target_raw):
                assert torch.equal(out[b], torch.zeros(3))
            continue
        torch.testing.assert_close(mean[b], items.mean(0))
        torch.testing.assert_close(mx[b], items.max(0).values)
        q = query[b].expand_as(items)
        scores = att.mlp(torch.cat([items, q, items - q, items * q], -1)).squeeze(-1)
        torch.testing.assert_close(target[b], torch.softmax(scores, 0) @ items)
        torch.testing.assert_close(target_raw[b], scores @ items)


def test_target_attention_follows_the_query() -> None:
    """With a score that rewards similarity, the output moves to the matching item."""
    att = TargetAttentionPooling(2, hidden=1, normalization="softmax")
    with torch.no_grad():  # score = 10 * sum(k * q): hidden unit reads the k*q block
        att.mlp[0].weight.zero_()
        att.mlp[0].weight[0, 6:8] = 1.0
        att.mlp[0].bias.zero_()
        att.mlp[2].weight.fill_(10.0)
        att.mlp[2].bias.zero_()
    seq = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    assert att(seq, mask, torch.tensor([[1.0, 0.0]]))[0, 0] > 0.95
    assert att(seq, mask, torch.tensor([[0.0, 1.0]]))[0, 1] > 0.95


def test_target_attention_errors() -> None:
    with pytest.raises(ValueError, match=r"dim \(0\)"):
        TargetAttentionPooling(0)
    with pytest.raises(ValueError, match=r"normalization \('l2'\)"):
        TargetAttentionPooling(4, normalization="l2")
    att = TargetAttentionPooling(4)
    with pytest.raises(ValueError, match="query shape"):
        att(torch.randn(2, 3, 4), torch.ones(2, 3, dtype=torch.bool), torch.randn(2, 5))
    with pytest.raises(ValueError, match="mask"):
        MeanSequencePooling()(torch.randn(2, 3, 4), torch.ones(2, 4, dtype=torch.bool))
    assert att.query_proj is None and TargetAttentionPooling(4, 6).query_proj is not None
