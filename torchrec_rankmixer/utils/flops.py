"""FLOP and parameter counting helpers."""

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_flops(fn: Any, *args: Any) -> int:
    """Total matmul FLOPs (2 per multiply-add) of ``fn(*args)`` per torch's flop counter.

    Example::

        >>> count_flops(torch.nn.Linear(4, 3, bias=False), torch.randn(2, 4))
        48
    """
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            fn(*args)
    return int(counter.get_total_flops())


def count_params(module: torch.nn.Module) -> int:
    """Number of parameter elements (meta parameters count too)."""
    return sum(p.numel() for p in module.parameters())
