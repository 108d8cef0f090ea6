"""The deep branch: an MLP on the concatenated embeddings, in parallel with the encoder.

``DLRM_RankMixer(deep=DeepConfig(...))`` adds the logits of this MLP, on [dense arch
output, embeddings], to the over-arch's, as DCN-V2's parallel deep network, Wide&Deep
and AutoInt+ do beside their interaction networks. BARS's Frappe benchmark is where it
matters (docs/quality.md, decision 7): every interaction model there that reaches the
MLP's AUC has such a branch, and the RankMixer family with it passes DCN-V2.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from torchrec_rankmixer.utils.checks import check_bool, check_float, check_layer_sizes, check_positive_int


def mlp_block(width: int, hidden: Sequence[int], dropout: float, batch_norm: bool) -> nn.Sequential:
    """Linear -> (BatchNorm1d) -> ReLU -> (Dropout) per hidden layer: [B, width] -> [B, hidden[-1]].

    Example::

        >>> mlp_block(6, [4, 2], 0.1, True)(torch.randn(3, 6)).shape
        torch.Size([3, 2])
    """
    layers: List[nn.Module] = []
    for h in hidden:
        layers.append(nn.Linear(width, h))
        if batch_norm:
            layers.append(nn.BatchNorm1d(h))
        layers.append(nn.ReLU())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    return nn.Sequential(*layers)


INITS: Tuple[str, ...] = ("torch", "xavier")  # Linear inits: PyTorch's default, or xavier_init_


def xavier_init_(module: nn.Module) -> None:
    """FuxiCTR's init for every Linear in ``module``: xavier-normal weights, zero biases.

    Example::

        >>> layer = nn.Linear(3, 2)
        >>> xavier_init_(layer); int(layer.bias.abs().sum())
        0
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@dataclass(frozen=True)
class DeepConfig:
    """The deep branch's MLP (BARS's DNN layers).

    Args:
        layer_sizes: hidden sizes, e.g. (400, 400, 400); a last Linear gives the logits.
        dropout: dropout after each hidden layer, in [0, 1).
        batch_norm: BatchNorm1d after each hidden Linear.

    Example::

        >>> DeepConfig(layer_sizes=[400, 400], dropout=0.2)
        DeepConfig(layer_sizes=(400, 400), dropout=0.2, batch_norm=True)
    """

    layer_sizes: Tuple[int, ...]
    dropout: float = 0.0
    batch_norm: bool = True

    def __post_init__(self) -> None:
        check_layer_sizes("layer_sizes", self.layer_sizes)
        object.__setattr__(self, "layer_sizes", tuple(self.layer_sizes))
        check_float("dropout", self.dropout, 0.0, 1.0, "[)")
        check_bool("batch_norm", self.batch_norm)


class DeepBranch(nn.Module):
    """An MLP from [dense arch output, embeddings] to logits, xavier-normal weights and
    zero biases (FuxiCTR's init).

    Args:
        width: W, the concatenated input width.
        num_logits: n, the over-arch's logits (1 for CTR, 2 for ESMM).
        config: the :class:`DeepConfig`.
        device: parameter device.

    Shapes:
        x0 [B, W] -> logits [B, n].

    Example::

        >>> branch = DeepBranch(12, 1, DeepConfig(layer_sizes=(8, 4), dropout=0.1))
        >>> branch.eval()(torch.randn(5, 12)).shape
        torch.Size([5, 1])
    """

    def __init__(self, width: int, num_logits: int, config: DeepConfig,
                 device: Optional[torch.device] = None) -> None:
        super().__init__()
        check_positive_int("width", width)
        check_positive_int("num_logits", num_logits)
        self.mlp = mlp_block(width, config.layer_sizes, config.dropout, config.batch_norm)
        self.out = nn.Linear(config.layer_sizes[-1], num_logits)
        xavier_init_(self)
        if device is not None:
            self.to(device)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        return self.out(self.mlp(x0))  # (B, n)
