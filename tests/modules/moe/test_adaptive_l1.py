"""The adaptive L1 penalty and its controller (modules/moe/adaptive_l1.py)."""

import torch

from torchrec_rankmixer.modules.moe.adaptive_l1 import INTEGRAL_MAX, AdaptiveL1
from torchrec_rankmixer.modules.moe.router import TokenRouter, update_ratio_offset


def test_l1_gradient_is_coef_times_task_rms_on_active_gates() -> None:
    l1 = AdaptiveL1(target=0.5, kp=2.0, ki=0.1)
    l1.coef.fill_(0.5)
    logits = torch.tensor([[[1.0, -1.0, 2.0, 3.0]]], requires_grad=True)  # ratio 0.75
    gates = l1(logits)
    assert torch.equal(gates, torch.relu(logits.detach()))
    (gates * torch.tensor([3.0, 7.0, -3.0, 3.0])).sum().backward()
    # task grad on active gates: [3, 0, -3, 3], RMS 3; L1 adds 0.5 * 3 to active ones only
    torch.testing.assert_close(logits.grad, torch.tensor([[[4.5, 0.0, -1.5, 4.5]]]))
    # PI: e = (0.75 - 0.5) / 0.5 = 0.5; I = 0.05; coef = 2 * 0.5 + 0.05
    assert abs(l1.coef.item() - 1.05) < 1e-6 and abs(l1.integral.item() - 0.05) < 1e-6


def test_l1_matches_a_real_penalty_in_the_loss() -> None:
    """coef * s * sum(g) added to the loss gives the same gradient as the injection."""
    torch.manual_seed(0)
    w = torch.randn(6, 5, requires_grad=True)
    x = torch.randn(7, 1, 6)
    l1 = AdaptiveL1(target=0.5, kp=2.0, ki=0.1)
    l1.coef.fill_(0.7)
    g = l1(x @ w)
    (g ** 2).sum().backward()
    injected = w.grad.clone()
    w.grad = None
    h = x @ w
    task_grad = 2 * torch.relu(h.detach())
    s = (task_grad.pow(2).sum() / (task_grad != 0).sum()).sqrt()
    gates = torch.relu(h)
    ((gates ** 2).sum() + 0.7 * s * gates.sum()).backward()
    torch.testing.assert_close(injected, w.grad)


def test_negative_coef_revives_dead_logits() -> None:
    l1 = AdaptiveL1(target=0.5, kp=2.0, ki=0.1)
    dead = torch.full((2, 1, 4), -1.0, requires_grad=True)  # ratio 0 < target
    l1(dead)
    assert l1.coef.item() < 0
    l1.coef.fill_(-1.0)
    x = dead.detach().clone().requires_grad_(True)
    live = torch.cat([x, torch.ones(2, 1, 4)], 1)  # something carries a task gradient
    (l1(live) * 2.0).sum().backward()
    assert (x.grad < 0).all()  # bonus on every logit: descent raises the dead ones


def test_integral_is_clamped() -> None:
    l1 = AdaptiveL1(target=0.1, kp=0.0, ki=1000.0)
    l1(torch.ones(2, 1, 4, requires_grad=True))
    assert l1.integral.item() == INTEGRAL_MAX == l1.coef.item()


def _toy_router_tail_ratio(router: TokenRouter, l1: AdaptiveL1, offset_rate: float = 0.0) -> float:
    """Train ``router`` for 200 steps on a regression that wants some gate mass, with the
    adaptive L1 (and the ratio offset when ``offset_rate`` > 0); mean active ratio of the
    last 50 steps."""
    opt = torch.optim.Adam(router.parameters(), lr=0.02)
    tw = torch.randn(8)
    ratios = []
    for _ in range(200):
        x = torch.randn(64, 2, 8)
        gates = l1(router(x))
        if offset_rate:
            update_ratio_offset(router.offset, gates, l1.target, rate=offset_rate)
        loss = ((gates.sum(-1) - (x @ tw).abs()) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ratios.append((gates > 0).float().mean().item())
    return sum(ratios[-50:]) / 50


def test_controller_holds_ratio_near_target_on_a_toy_router() -> None:
    """A router trained by a regression that wants some gate mass, plus the adaptive L1."""
    for target in (0.5, 0.125):
        torch.manual_seed(0)
        router = TokenRouter(num_tokens=2, d_model=8, num_experts=8)
        tail = _toy_router_tail_ratio(router, AdaptiveL1(target=target, kp=2.0, ki=0.1))
        assert abs(tail - target) <= 0.1 * target, (target, tail)


def test_l1_is_inert_in_eval_and_without_grad() -> None:
    l1 = AdaptiveL1(target=0.5, kp=2.0, ki=0.1)
    with torch.no_grad():
        l1(torch.ones(2, 1, 2, requires_grad=True))
    l1.eval()
    l1(torch.ones(2, 1, 2, requires_grad=True))
    assert l1.coef.item() == 0.0 and l1.integral.item() == 0.0


def test_offset_and_l1_hold_ratio_on_a_toy_router() -> None:
    """The ratio offset plus the adaptive L1 on the toy router of the test above."""
    for target in (0.5, 0.125):
        torch.manual_seed(0)
        router = TokenRouter(num_tokens=2, d_model=8, num_experts=8, offset=True)
        tail = _toy_router_tail_ratio(router, AdaptiveL1(target=target, kp=0.5, ki=0.01), offset_rate=0.05)
        assert abs(tail - target) <= 0.1 * target, (target, tail)
        assert router.offset.abs().max() > 0  # the offset took part
