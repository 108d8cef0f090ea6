"""The auxiliary-loss / statistics protocol shared by modules and training loops.

A module that adds a term to the training objective (e.g. the Sparse-MoE's router
penalty) implements ``auxiliary_loss() -> Tensor`` (the term from its last forward) and
may implement ``statistics() -> Dict[str, float]``. Training loops add
:func:`collect_auxiliary_loss` to the task loss and log :func:`collect_statistics`.
"""

from typing import Dict

import torch
from torch import nn


def collect_auxiliary_loss(model: nn.Module) -> torch.Tensor:
    """Sum of ``auxiliary_loss()`` over every submodule that defines it (0 if none).

    Example::

        >>> collect_auxiliary_loss(nn.Linear(2, 2)).item()
        0.0
    """
    total = torch.zeros(())
    for module in model.modules():
        fn = getattr(module, "auxiliary_loss", None)
        if module is not model and callable(fn):
            total = total + fn()
    return total


def collect_statistics(model: nn.Module) -> Dict[str, float]:
    """Merged ``statistics()`` of every submodule that defines it, keys prefixed by the
    submodule's qualified name."""
    stats: Dict[str, float] = {}
    for name, module in model.named_modules():
        fn = getattr(module, "statistics", None)
        if name and callable(fn):
            for key, value in fn().items():
                stats[f"{name}.{key}"] = float(value)
    return stats
