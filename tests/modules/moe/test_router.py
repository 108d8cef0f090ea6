"""Routers, top-k routing, the ratio offset and gradient injection (modules/moe/router.py)."""

import pytest
import torch

from torchrec_rankmixer.modules.moe.router import (
    TokenRouter,
    inject_gradient,
    topk_softmax_gates,
    update_ratio_offset,
)

def test_inject_gradient_equals_adding_the_penalty_to_the_loss() -> None:
    torch.manual_seed(0)
    w = torch.randn(4, 3, requires_grad=True)
    x = torch.randn(5, 4)
    target = torch.randn(5, 3)

    def task(g: torch.Tensor) -> torch.Tensor:
        return ((g - target) ** 2).mean()

    g = torch.relu(x @ w)
    (task(g) + 0.3 * g.sum() / 5).backward()
    expected = w.grad.clone()
    w.grad = None
    g = torch.relu(inject_gradient(x @ w, 0.3 / 5 * ((x @ w) > 0).float()))
    task(g).backward()
    torch.testing.assert_close(w.grad, expected)


def test_topk_gates_and_load_balance_gradient() -> None:
    torch.manual_seed(0)
    logits = torch.randn(16, 3, 8, requires_grad=True)
    gates, balance = topk_softmax_gates(logits, k=2, balance_coef=0.5)
    assert ((gates > 0).sum(-1) == 2).all()
    torch.testing.assert_close(gates.sum(-1), torch.ones(16, 3))
    assert balance.item() >= 1.0 - 1e-6  # E * sum f P >= 1, equality iff balanced
    gates.sum().backward()  # gates sum to 1, so the task gradient is 0: only LB remains
    lb_only = logits.grad.clone()
    probs = torch.softmax(logits.detach(), -1).requires_grad_(True)
    top = probs.topk(2, -1).indices
    frac = torch.zeros_like(probs).scatter_(-1, top, 1.0).mean(0) / 2
    (0.5 * 8 * (frac * probs.mean(0)).sum(-1).mean()).backward()
    expected = torch.autograd.grad(torch.softmax(logits, -1), logits, probs.grad)[0]
    torch.testing.assert_close(lb_only, expected, rtol=1e-4, atol=1e-6)


def test_ratio_offset_steps_by_sign_per_expert_and_per_token() -> None:
    # token 0: expert 0 on in 3 of 4 rows, expert 1 in 1 of 4, expert 2 in 2 of 4 (= target)
    on = torch.tensor([[1.0, 0, 1], [1, 0, 0], [1, 1, 1], [0, 0, 0]]).view(4, 1, 3)
    offset = torch.zeros(1, 3)
    update_ratio_offset(offset, on, target=0.5, rate=0.25, per="expert")
    assert offset.tolist() == [[-0.25, 0.25, 0.0]]
    offset = torch.zeros(1, 3)
    update_ratio_offset(offset, on, target=0.25, rate=0.25, per="token")  # token ratio 0.5
    assert offset.tolist() == [[-0.25, -0.25, -0.25]]
    with pytest.raises(ValueError, match="per"):
        update_ratio_offset(offset, on, target=0.5, rate=0.1, per="layer")


def test_router_offset_is_a_buffer_added_to_the_logits() -> None:
    torch.manual_seed(0)
    router = TokenRouter(num_tokens=2, d_model=4, num_experts=3, offset=True)
    assert "offset" in dict(router.named_buffers()) and "offset" not in dict(router.named_parameters())
    x = torch.randn(5, 2, 4)
    before = router(x)
    with torch.no_grad():
        router.offset[1, 2] = 0.5
    delta = router(x) - before
    assert torch.allclose(delta[:, 1, 2], torch.full((5,), 0.5)) and delta[:, 0].abs().max() == 0
    assert TokenRouter(2, 4, 3).offset is None
