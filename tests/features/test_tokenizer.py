import pytest
import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
from torchrec.sparse.jagged_tensor import KeyedTensor

from torchrec_rankmixer import SemanticTokenizer

DIMS = {"u": 4, "a": 2, "i": 4, "c": 6}
GROUPS = {"user": ["u", "a"], "item": ["i"], "cat": ["c"]}


def _kt(batch: int = 3, keys=None) -> KeyedTensor:
    keys = keys or list(DIMS)
    return KeyedTensor(keys=keys, length_per_key=[DIMS[k] for k in keys], values=torch.randn(batch, sum(DIMS[k] for k in keys)))


@pytest.mark.parametrize(
    "kwargs",
    [dict(groups=GROUPS), dict(num_sparse_tokens=2), dict(num_sparse_tokens=4, mode="split"), dict(num_sparse_tokens=4)],
)
def test_batched_matches_loop_forward_and_grad(kwargs: dict) -> None:
    torch.manual_seed(0)
    fast = SemanticTokenizer(DIMS, 8, dense_in_features=5, num_dense_tokens=2, **kwargs)
    ref = SemanticTokenizer(DIMS, 8, dense_in_features=5, num_dense_tokens=2, kernel="reference", **kwargs)
    torch.nn.init.normal_(fast.bias)  # biases start at 0; make the forward check cover them
    ref.load_state_dict(fast.state_dict())
    kt, dense = _kt(), torch.randn(3, 5)
    kt_values = kt.values().clone().requires_grad_()
    kt_ref = KeyedTensor(kt.keys(), kt.length_per_key(), kt_values)
    values2 = kt.values().clone().requires_grad_()
    kt_fast = KeyedTensor(kt.keys(), kt.length_per_key(), values2)
    y_ref, y_fast = ref(kt_ref, dense), fast(kt_fast, dense)
    assert y_fast.shape == (3, fast.num_tokens, 8)
    torch.testing.assert_close(y_fast, y_ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(y_ref)
    y_ref.backward(g)
    y_fast.backward(g)
    torch.testing.assert_close(values2.grad, kt_values.grad, atol=1e-5, rtol=1e-5)
    for (n, p), (_, q) in zip(fast.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-5, msg=n)


@pytest.mark.parametrize(
    "kwargs, in_order",
    [(dict(num_sparse_tokens=3), True), (dict(groups={"x": ["c", "u", "a"], "y": ["i"]}), False)],
)
def test_slot_kernel_runs_for_whole_features_and_matches_reference(kwargs: dict, in_order: bool) -> None:
    torch.manual_seed(0)
    dims = {k: 32 for k in DIMS}
    fast = SemanticTokenizer(dims, 6, **kwargs)
    ref = SemanticTokenizer(dims, 6, kernel="reference", **kwargs)
    assert fast._slot_width == 32 and fast._slot_in_order == in_order  # the slot kernel, not the gather
    torch.nn.init.normal_(fast.bias)
    ref.load_state_dict(fast.state_dict())
    kt = KeyedTensor(list(dims), [32] * 4, torch.randn(5, 128))
    values = [kt.values().clone().requires_grad_() for _ in range(2)]
    y_fast, y_ref = (t(KeyedTensor(list(dims), [32] * 4, v)) for t, v in zip((fast, ref), values))
    torch.testing.assert_close(y_fast, y_ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(y_ref)
    y_fast.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(values[0].grad, values[1].grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad, atol=1e-5, rtol=1e-5)


def test_sparse_biases_start_at_zero_so_small_embeddings_still_vary_after_layernorm() -> None:
    # TorchRec starts a large table's rows at ~uniform(+-sqrt(1/n)): std ~0.01. A random
    # bias would make each token almost constant across samples, and the LayerNorm after
    # it would normalise the bias instead of the feature (docs/benchmarks.md, section 4).
    torch.manual_seed(0)
    tok = SemanticTokenizer(DIMS, 8, groups=GROUPS)
    assert torch.count_nonzero(tok.bias) == 0
    tok.bias.data.normal_()
    tok.reset_parameters()
    assert torch.count_nonzero(tok.bias) == 0  # reset_parameters restores the zero init
    kt = _kt(batch=256)
    small = KeyedTensor(kt.keys(), kt.length_per_key(), 0.01 * kt.values())
    normed = torch.nn.functional.layer_norm(tok(small), (8,))  # (B, T, D)
    assert normed.std(dim=0).mean() > 0.5  # per-sample signal survives the norm


def test_group_token_depends_only_on_its_features() -> None:
    tok = SemanticTokenizer(DIMS, 8, groups=GROUPS)
    kt = _kt()
    base = tok(kt)
    values = kt.values().clone()
    values[:, 6:10] += 1.0  # feature "i" -> token "item" (index 1)
    moved = tok(KeyedTensor(kt.keys(), kt.length_per_key(), values))
    changed = (moved - base).abs().amax(dim=(0, 2)) > 0
    assert changed.tolist() == [False, True, False]


def test_padding_rows_stay_zero_and_params_counted() -> None:
    tok = SemanticTokenizer(DIMS, 8, groups=GROUPS)  # widths 6, 4, 6 -> padded to 6
    assert torch.count_nonzero(tok.weight[1, 4:]) == 0
    assert tok.effective_param_count() == (6 + 4 + 6) * 8 + 3 * 8


def test_reorders_keys_to_match_feature_order() -> None:
    tok = SemanticTokenizer(DIMS, 8, groups=GROUPS)
    kt = _kt()
    d = kt.to_dict()
    shuffled = KeyedTensor.from_tensor_list(["c", "u", "i", "a"], [d[k] for k in ["c", "u", "i", "a"]])
    torch.testing.assert_close(tok(shuffled), tok(kt))


def test_from_ebc_mixed_dims() -> None:
    ebc = EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(name="t1", embedding_dim=4, num_embeddings=10, feature_names=["x", "y"]),
            EmbeddingBagConfig(name="t2", embedding_dim=16, num_embeddings=10, feature_names=["z"]),
        ],
        device=torch.device("meta"),
    )
    tok = SemanticTokenizer.from_embedding_bag_collection(ebc, 8, num_sparse_tokens=2)
    assert tok.plan.features == (("x", "y"), ("z",))
    assert tok.plan.widths == (8, 16)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(d_model=0, groups=GROUPS), r"d_model \(0\)"),
        (dict(d_model=8, groups=GROUPS, kernel="fast"), r"kernel \('fast'\)"),
        (dict(d_model=8, groups=GROUPS, dense_in_features=-1), r"dense_in_features \(-1\)"),
        (dict(d_model=8, groups=GROUPS, dense_in_features=3, num_dense_tokens=0), r"needs num_dense_tokens >= 1"),
        (dict(d_model=8, groups={"g": ["u", "zz"]}), r"unknown feature 'zz'"),
    ],
)
def test_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SemanticTokenizer(DIMS, **kwargs)


def test_missing_dense_and_missing_keys() -> None:
    tok = SemanticTokenizer(DIMS, 8, groups=GROUPS, dense_in_features=2)
    with pytest.raises(ValueError, match="pass dense_features"):
        tok(_kt())
    with pytest.raises(ValueError, match=r"lacks features \['c'\]"):
        tok(_kt(keys=["u", "a", "i"]), torch.randn(3, 2))
