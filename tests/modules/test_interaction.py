"""DotInteraction, CrossNet and the interaction rules (modules/interaction.py)."""

import pytest
import torch

from torchrec_rankmixer.modules.interaction import (
    DCN_LOW_RANK_DIM,
    DCN_NUM_LAYERS,
    DotInteraction,
    DotProductNorm,
    LowRankCrossNet,
    cross_rank_of,
    default_cross_rank,
    resolve_cross,
    resolve_dot_norm,
    resolve_interaction,
)


def test_rule_defaults_to_dot_cross_only_for_one_width() -> None:
    assert resolve_interaction(None, {"a": 8, "b": 8}, dense_width=0) == "dot_cross"
    assert resolve_interaction(None, {"a": 8, "b": 8}, dense_width=8) == "dot_cross"
    assert resolve_interaction(None, {"a": 8, "b": 8}, dense_width=4) == "none"  # dense differs
    assert resolve_interaction(None, {"a": 8}, dense_width=0) == "none"  # nothing to pair
    assert resolve_interaction("none", {"a": 8, "b": 16}, dense_width=0) == "none"
    assert resolve_interaction("cross", {"a": 8, "b": 16}, dense_width=4) == "cross"  # any widths


def test_rule_errors_name_the_widths_and_choices() -> None:
    with pytest.raises(ValueError, match=r"one width.*'b': 16"):
        resolve_interaction("dot", {"a": 8, "b": 16}, dense_width=0)
    with pytest.raises(ValueError, match=r"dense arch output': 4"):
        resolve_interaction("dot", {"a": 8, "b": 8}, dense_width=4)
    with pytest.raises(ValueError, match="at least 2 vectors"):
        resolve_interaction("dot", {"a": 8}, dense_width=0)
    with pytest.raises(ValueError, match=r"interaction 'dot_cross' needs one width.*'b': 16"):
        resolve_interaction("dot_cross", {"a": 8, "b": 16}, dense_width=0)
    with pytest.raises(ValueError, match=r"interaction \('fm'\) must be one of \['none', 'dot', 'cross', 'dot_cross'\]"):
        resolve_interaction("fm", {"a": 8, "b": 8}, dense_width=0)


def test_cross_sizes_default_to_torchrec_dlrm_main_and_are_checked() -> None:
    assert (DCN_NUM_LAYERS, DCN_LOW_RANK_DIM) == (3, 512)
    assert resolve_cross("cross", None, None) == (3, 512)
    assert resolve_cross("dot_cross", 2, 16) == (2, 16)
    assert resolve_cross("none", None, None) == resolve_cross("dot", None, None) == (None, None)
    with pytest.raises(ValueError, match=r"dcn_num_layers \(2\) and dcn_low_rank_dim \(None\) size the cross "
                                         r"layers, which interaction 'dot' does not have"):
        resolve_cross("dot", 2, None)
    with pytest.warns(UserWarning, match="interaction 'none' does not have; they are ignored"):
        assert resolve_cross("none", 3, 512, strict=False) == (None, None)
    with pytest.raises(ValueError, match=r"dcn_num_layers \(0\) must be"):
        resolve_cross("cross", 0, None)
    with pytest.raises(ValueError, match=r"dcn_low_rank_dim \(-1\) must be"):
        resolve_cross("cross", None, -1)


def test_default_cross_rank_is_the_asked_rank_capped_at_a_third_of_the_width() -> None:
    """None asks for dlrm_main's 512; the cap is W // 3 (at least 1); lowering a rank the
    caller gave is a warning, lowering the default is not."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert default_cross_rank(144, None) == 48 and default_cross_rank(192, None) == 64
        assert default_cross_rank(100, None) == 33 and default_cross_rank(2, None) == 1
        assert default_cross_rank(1728, 512) == 512 and default_cross_rank(1728, None) == 512
        assert default_cross_rank(192, 16) == 16
    with pytest.warns(UserWarning, match=r"dcn_low_rank_dim \(512\) is more than a third of the cross layers' "
                                         r"input width \(192\); the default interaction uses rank 64"):
        assert default_cross_rank(192, 512) == 64
    with pytest.raises(ValueError, match=r"dcn_low_rank_dim \(0\) must be"):
        default_cross_rank(192, 0)
    with pytest.raises(ValueError, match=r"width \(0\) must be"):
        default_cross_rank(0, None)
    # the cap applies only to the default rule's cross layers; an asked interaction keeps the rank
    assert cross_rank_of(None, "dot_cross", 192, None) == 64 and cross_rank_of(None, "none", 192, 512) == 512
    assert cross_rank_of("dot_cross", "dot_cross", 192, 512) == 512 and cross_rank_of("cross", "cross", 192, None) is None


def test_low_rank_cross_net_is_torchrecs_forward_backward_and_init() -> None:
    """Seeded alike, LowRankCrossNet starts with TorchRec's values (DLRM_DCN's
    interaction) and computes what it does, forward and backward."""
    from torchrec.modules.crossnet import LowRankCrossNet as TorchRecLowRankCrossNet

    torch.manual_seed(3)
    theirs = TorchRecLowRankCrossNet(6, 2, 3)
    torch.manual_seed(3)
    ours = LowRankCrossNet(6, 2, 3)
    for k in range(2):
        torch.testing.assert_close(ours.W_kernels[k], theirs.W_kernels[k].detach())
        torch.testing.assert_close(ours.V_kernels[k], theirs.V_kernels[k].detach())
    with torch.no_grad():  # non-zero biases, so they are exercised
        ours.bias.copy_(torch.randn(2, 6))
        for k in range(2):
            theirs.bias[k].copy_(ours.bias[k])
    x = torch.randn(4, 6, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    a, b = ours(x), theirs(x2)
    torch.testing.assert_close(a, b)
    (a ** 2).sum().backward()
    (b ** 2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(ours.W_kernels.grad[1], theirs.W_kernels[1].grad)
    torch.testing.assert_close(ours.bias.grad[0], theirs.bias[0].grad)
    with pytest.raises(ValueError, match=r"low_rank \(0\) must be a positive int"):
        LowRankCrossNet(6, 2, 0)


def test_module_dots_dense_first_then_features() -> None:
    F, d = 3, 4
    embedded, dense = torch.randn(5, F * d), torch.randn(5, d)
    out = DotInteraction(F, d, has_dense=True)(embedded, dense)
    v = [dense] + list(embedded.split(d, dim=1))
    expected = torch.stack([(v[i] * v[j]).sum(-1) for i in range(F + 1) for j in range(i + 1, F + 1)], dim=1)
    torch.testing.assert_close(out, expected)
    no_dense = DotInteraction(F, d, has_dense=False)
    assert no_dense.output_dim == 3
    torch.testing.assert_close(no_dense(embedded, None), expected[:, F:])  # pairs among features


def test_reference_kernel_matches_and_gradients_agree() -> None:
    embedded = torch.randn(4, 12, dtype=torch.float64, requires_grad=True)
    e2 = embedded.detach().clone().requires_grad_()
    a = DotInteraction(3, 4, False, kernel="reference")(embedded, None)
    b = DotInteraction(3, 4, False, kernel="batched")(e2, None)
    torch.testing.assert_close(a, b)
    a.sum().backward()
    b.sum().backward()
    torch.testing.assert_close(embedded.grad, e2.grad)


def test_traces_with_fx_and_torchscript() -> None:
    """TorchRec's pipeline traces the dense path with FX; the int8 artifact scripts it."""
    class Model(torch.nn.Module):  # the dense path passes a Tensor, as DLRM_RankMixer does
        def __init__(self) -> None:
            super().__init__()
            self.inter = DotInteraction(3, 4, has_dense=True)
            self.cross = LowRankCrossNet(16, 2, 3)

        def forward(self, embedded: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.inter(embedded, dense), self.cross(torch.cat([dense, embedded], 1))], 1)

    module = Model()
    embedded, dense = torch.randn(2, 12), torch.randn(2, 4)
    traced = torch.fx.symbolic_trace(module)
    torch.testing.assert_close(traced(embedded, dense), module(embedded, dense))
    scripted = torch.jit.script(traced)
    torch.testing.assert_close(scripted(embedded, dense), module(embedded, dense))


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match="at least 2 vectors"):
        DotInteraction(1, 4, has_dense=False)
    with pytest.raises(ValueError, match="has_dense=True; dense is None"):
        DotInteraction(2, 4, has_dense=True)(torch.randn(1, 8), None)


def test_dot_norm_rule_and_errors() -> None:
    assert [resolve_dot_norm(None, i) for i in ("none", "dot", "cross", "dot_cross")] == ["none", "batch", "none", "batch"]
    assert resolve_dot_norm("none", "dot_cross") == "none"
    assert resolve_dot_norm("batch", "dot") == "batch"
    with pytest.raises(ValueError, match="interaction 'none' does not have"):
        resolve_dot_norm("batch", "none")
    with pytest.raises(ValueError, match="dot_norm"):
        resolve_dot_norm("layer", "dot")
    with pytest.raises(ValueError, match="num_products"):
        DotProductNorm(0)


def _written_out_batch_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    mean = x.mean(0)
    var = ((x - mean) ** 2).mean(0)  # biased, as BatchNorm normalises
    return torch.cat([x, (x - mean) / torch.sqrt(var + 1e-5) * weight + bias], dim=1)


def test_dot_product_norm_is_raw_and_batch_normalised_forward_backward() -> None:
    torch.manual_seed(0)
    norm = DotProductNorm(5)
    with torch.no_grad():
        norm.norm.weight.uniform_(0.5, 2.0)
        norm.norm.bias.uniform_(-1.0, 1.0)
    x = (torch.randn(16, 5) * torch.tensor([1e-4, 1e-2, 1.0, 10.0, 1e3])).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    w_ref = norm.norm.weight.detach().clone().requires_grad_()
    b_ref = norm.norm.bias.detach().clone().requires_grad_()
    out, want = norm(x), _written_out_batch_norm(x_ref, w_ref, b_ref)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    scale = out[:, 7:].std(0, unbiased=False) / norm.norm.weight[2:]
    torch.testing.assert_close(scale, torch.ones(3), rtol=1e-3, atol=1e-3)  # scales 1 to 1e3 -> the same
    g = torch.randn_like(out)
    (out * g).sum().backward()
    (want * g).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(norm.norm.weight.grad, w_ref.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(norm.norm.bias.grad, b_ref.grad, rtol=1e-4, atol=1e-4)
    # running statistics: momentum 0.1 from (0, 1), the variance unbiased
    x0 = x.detach()
    torch.testing.assert_close(norm.norm.running_mean, 0.1 * x0.mean(0))
    torch.testing.assert_close(norm.norm.running_var, 0.9 + 0.1 * x0.var(0, unbiased=True))
    assert int(norm.norm.num_batches_tracked) == 1


def test_dot_product_norm_eval_and_one_sample_batches_use_running_statistics() -> None:
    norm = DotProductNorm(3)
    with torch.no_grad():
        norm.norm.running_mean.copy_(torch.tensor([1.0, 2.0, 3.0]))
        norm.norm.running_var.copy_(torch.tensor([4.0, 1.0, 0.25]))
    x = torch.tensor([[3.0, 2.0, 2.0]])
    want = torch.tensor([[3.0, 2.0, 2.0, 1.0, 0.0, -2.0]])
    torch.testing.assert_close(norm.eval()(x), want, rtol=1e-4, atol=1e-4)
    before = norm.norm.running_mean.clone()
    torch.testing.assert_close(norm.train()(x), want, rtol=1e-4, atol=1e-4)  # no error, nothing updated
    assert torch.equal(norm.norm.running_mean, before) and int(norm.norm.num_batches_tracked) == 0


def test_dot_product_norm_traces_in_training_mode_and_scripts() -> None:
    """TorchRec's TrainPipelineSparseDist traces the model with FX in training mode."""
    norm, eager = DotProductNorm(4), DotProductNorm(4)
    x = torch.randn(8, 4)
    traced = torch.fx.symbolic_trace(norm)
    assert any(n.op == "call_function" and "batch_norm_side" in str(n.target) for n in traced.graph.nodes)
    for batch in (x, x[:1], x[2:]):  # batch statistics, the running ones, batch statistics
        torch.testing.assert_close(traced(batch), eager(batch))
    torch.testing.assert_close(norm.norm.running_var, eager.norm.running_var)
    scripted = torch.jit.script(torch.fx.symbolic_trace(norm.eval()))  # as the int8 artifact is made
    torch.testing.assert_close(scripted(x), eager.eval()(x))
