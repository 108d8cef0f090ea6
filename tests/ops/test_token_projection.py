import pytest
import torch

from torchrec_rankmixer.features.grouping import plan_tokens
from torchrec_rankmixer.ops.token_projection import (
    slot_plan,
    token_projection,
    token_projection_reference,
)

WIDTH = 8


def _gather_index(columns, total):
    W = max(len(c) for c in columns)
    return torch.tensor([c for cols in columns for c in list(cols) + [total] * (W - len(cols))])


def _run(values, weight, bias, columns, kernel, slots=None):
    total = values.shape[1]
    if slots is None:
        return token_projection(values, weight, bias, columns, _gather_index(columns, total), kernel)
    chunk = None if slots.in_order else torch.tensor(slots.chunk)
    return token_projection(values, weight, bias, columns, None, kernel, slots.width,
                            torch.tensor(slots.token), torch.tensor(slots.row), chunk)


PLANS = {
    # auto grouping, 5 features of width 8 into 3 tokens: 2 + 2 + 1 features (padding)
    "auto": [list(range(0, 16)), list(range(16, 32)), list(range(32, 40))],
    # named groups out of column order, one feature unused
    "groups": [list(range(24, 32)) + list(range(0, 8)), list(range(16, 24))],
    # a feature of width 16 in one token, two of width 8 in another
    "mixed": [list(range(0, 16)), list(range(16, 24)) + list(range(24, 32)), list(range(32, 40))],
}


@pytest.mark.parametrize("name", sorted(PLANS))
def test_slots_match_reference_and_gather_forward_and_backward(name: str) -> None:
    torch.manual_seed(0)
    columns = PLANS[name]
    slots = slot_plan(columns, total_width=40, min_width=WIDTH)
    assert slots is not None and slots.width == WIDTH
    assert slots.in_order == (name != "groups")  # "groups" reorders and skips a feature
    G, W, D = len(columns), max(len(c) for c in columns), 6
    outs, grads = [], []
    for kernel, plan in (("reference", None), ("batched", None), ("auto", slots)):
        torch.manual_seed(1)
        values = torch.randn(5, 40, requires_grad=True)
        weight = torch.randn(G, W, D, requires_grad=True)
        bias = torch.randn(G, D, requires_grad=True)
        out = _run(values, weight, bias, columns, kernel, plan)
        out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
        outs.append(out.detach())
        grads.append((values.grad, weight.grad, bias.grad))
    for out, grad in zip(outs[1:], grads[1:]):
        torch.testing.assert_close(out, outs[0], atol=1e-5, rtol=1e-5)
        for got, want in zip(grad, grads[0]):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # padding rows of narrower tokens get no gradient through the slots either
    for g, cols in enumerate(columns):
        assert torch.all(grads[2][1][g, len(cols):] == 0)


def test_slot_plan_of_the_tokenizers_plans() -> None:
    dims = {f"f{i}": 32 for i in range(11)}
    slots = slot_plan(plan_tokens(dims, 7, None, None).columns, total_width=352)
    assert slots is not None and slots.width == 32
    assert slots.chunk == tuple(range(11)) and slots.in_order  # every feature once, in column order
    assert slots.token == (0, 0, 1, 1, 2, 2, 3, 3, 4, 5, 6)
    assert slots.row == (0, 1, 0, 1, 0, 1, 0, 1, 0, 0, 0)


@pytest.mark.parametrize(
    "columns, total, min_width, why",
    [
        ([[0, 1, 2, 3], [4, 5, 6, 7]], 8, 8, "blocks of 4 columns are below the minimum"),
        ([list(range(0, 16)), list(range(16, 24))], 24, 32, "blocks of 8 columns are below MIN_SLOT_WIDTH"),
        ([list(range(4, 12)), list(range(12, 20))], 20, 8, "blocks not aligned to a multiple of 8"),
        ([list(range(0, 8)), list(range(15, 7, -1))], 16, 8, "columns of a block reversed"),
        ([list(range(0, 16))], 20, 8, "total width not a multiple of the block width"),
    ],
)
def test_slot_plan_refuses_plans_it_cannot_run(columns, total, min_width, why) -> None:
    assert slot_plan(columns, total_width=total, min_width=min_width) is None, why


def test_split_mode_chunks_of_unequal_width_keep_the_gather_kernel() -> None:
    # the paper's split: 3 features of width 16 into 5 chunks of 10 or 9 columns
    plan = plan_tokens({"a": 16, "b": 16, "c": 16}, 5, None, "split")
    assert plan.widths == (10, 10, 10, 9, 9)
    assert slot_plan(plan.columns, total_width=48, min_width=8) is None
