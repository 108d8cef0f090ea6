"""DotInteraction and the interaction rule (modules/interaction.py)."""

import pytest
import torch

from torchrec_rankmixer.modules.interaction import DotInteraction, resolve_interaction


def test_rule_defaults_to_dot_only_for_one_width() -> None:
    assert resolve_interaction(None, {"a": 8, "b": 8}, dense_width=0) == "dot"
    assert resolve_interaction(None, {"a": 8, "b": 8}, dense_width=8) == "dot"
    assert resolve_interaction(None, {"a": 8, "b": 8}, dense_width=4) == "none"  # dense differs
    assert resolve_interaction(None, {"a": 8}, dense_width=0) == "none"  # nothing to pair
    assert resolve_interaction("none", {"a": 8, "b": 16}, dense_width=0) == "none"


def test_rule_errors_name_the_widths_and_choices() -> None:
    with pytest.raises(ValueError, match=r"one width.*'b': 16"):
        resolve_interaction("dot", {"a": 8, "b": 16}, dense_width=0)
    with pytest.raises(ValueError, match=r"dense arch output': 4"):
        resolve_interaction("dot", {"a": 8, "b": 8}, dense_width=4)
    with pytest.raises(ValueError, match="at least 2 vectors"):
        resolve_interaction("dot", {"a": 8}, dense_width=0)
    with pytest.raises(ValueError, match=r"interaction \('cross'\) must be one of"):
        resolve_interaction("cross", {"a": 8, "b": 8}, dense_width=0)


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

        def forward(self, embedded: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
            return self.inter(embedded, dense)

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
