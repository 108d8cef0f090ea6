"""Model builders for the quality probe: every model on the same EBC (tables, seed, init).

Names (``build``):

- ``dnn``: MLP on [dense, concatenated embeddings] (benchmarks/common.py's PlainDNN).
- ``dnn_bars``: the BARS/FuxiCTR DNN: Linear -> BatchNorm -> ReLU -> Dropout per hidden
  layer, xavier-normal weights and zero biases (FuxiCTR's ``reset_parameters``).
- ``dlrm``: TorchRec ``DLRM``; ``dcnv2``: TorchRec ``DLRM_DCN`` (stacked, low rank).
- ``dcnv2_bars``: FuxiCTR's DCNv2 as BARS tuned it for Frappe: a full-rank CrossNetV2 in
  parallel with a BN/dropout MLP, concatenated into one Linear.
- ``rankmixer``: ``DLRM_RankMixer`` exactly as the one-line swap builds it (same EBC,
  dense arch and over arch as ``dcnv2``, no ``rankmixer_config``).
- ``rm:<variant>``: RankMixer with one variant of benchmarks/probe_variants.py applied.
"""

import os
import sys
from dataclasses import dataclass, field
from typing import List, Sequence

import torch
from torch import nn
from torchrec.models.dlrm import DLRM, DLRM_DCN
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import PlainDNN, make_ebc  # noqa: E402
from benchmarks.probe_variants import build_rankmixer_variant  # noqa: E402

from torchrec_rankmixer import DLRM_RankMixer  # noqa: E402

BASE_MODELS = ("dnn", "dnn_bars", "dlrm", "dcnv2", "dcnv2_bars", "rankmixer")
EMB_INITS = ("torchrec", "normal")


@dataclass
class ProbeSizes:
    """Sizes shared by every model on one data set (the issue's user setup by default)."""

    over_hidden: List[int] = field(default_factory=lambda: [256, 128])
    dcn_layers: int = 3
    dcn_low_rank: int = 64
    bars_cross_layers: int = 4
    dropout: float = 0.2  # dnn_bars MLP dropout (BARS DNN on Frappe)
    dcn_dropout: float = 0.4  # dcnv2_bars MLP dropout (BARS DCNv2 on Frappe)


def _bars_mlp(width: int, hidden: Sequence[int], dropout: float) -> nn.Sequential:
    """FuxiCTR's MLP_Block: Linear -> BatchNorm1d -> ReLU -> Dropout per hidden layer."""
    layers: List[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    return nn.Sequential(*layers)


def _fuxictr_linear_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            nn.init.zeros_(m.bias)


class BarsDNN(nn.Module):
    """MLP with BatchNorm and dropout on [dense, embeddings] (BARS "DNN"). [B, 1] logits."""

    def __init__(self, ebc: EmbeddingBagCollection, dense_in: int, hidden: Sequence[int], dropout: float) -> None:
        super().__init__()
        self.embedding_bag_collection = ebc
        width = dense_in + sum(c.embedding_dim * len(c.feature_names) for c in ebc.embedding_bag_configs())
        self.mlp = _bars_mlp(width, hidden, dropout)
        self.out = nn.Linear(hidden[-1], 1)
        _fuxictr_linear_init(self)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        emb = self.embedding_bag_collection(sparse).values()  # (B, F*E)
        return self.out(self.mlp(torch.cat([dense, emb], dim=1)))  # (B, 1)


class CrossNetV2(nn.Module):
    """Full-rank DCNv2 cross layers: x_{l+1} = x_0 * (W_l x_l + b_l) + x_l. [B, W] -> [B, W]."""

    def __init__(self, width: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for lin in self.layers:
            x = x0 * lin(x) + x
        return x


class BarsDCNv2(nn.Module):
    """FuxiCTR DCNv2, ``model_structure="parallel"``: Linear([cross(x0), mlp(x0)]) -> [B, 1]."""

    def __init__(self, ebc: EmbeddingBagCollection, dense_in: int, hidden: Sequence[int],
                 cross_layers: int, dropout: float) -> None:
        super().__init__()
        self.embedding_bag_collection = ebc
        width = dense_in + sum(c.embedding_dim * len(c.feature_names) for c in ebc.embedding_bag_configs())
        self.cross = CrossNetV2(width, cross_layers)
        self.mlp = _bars_mlp(width, hidden, dropout)
        self.out = nn.Linear(width + hidden[-1], 1)
        _fuxictr_linear_init(self)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        x0 = torch.cat([dense, self.embedding_bag_collection(sparse).values()], dim=1)  # (B, W)
        return self.out(torch.cat([self.cross(x0), self.mlp(x0)], dim=1))  # (B, 1)


def init_embeddings(ebc: EmbeddingBagCollection, how: str, seed: int) -> None:
    """``"torchrec"`` keeps TorchRec's uniform(+-sqrt(1/rows)); ``"normal"`` is FuxiCTR's
    normal(std=1e-4) on every row."""
    if how not in EMB_INITS:
        raise ValueError(f"emb_init ({how!r}) must be one of {list(EMB_INITS)}")
    if how == "torchrec":
        return
    g = torch.Generator().manual_seed(seed + 17)
    with torch.no_grad():
        for p in ebc.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 1e-4)


def build(name: str, tables: List[EmbeddingBagConfig], dense_in: int, sizes: ProbeSizes,
          seed: int, emb_init: str = "torchrec") -> nn.Module:
    """One probe model on a fresh EBC seeded by ``seed``; dense modules seeded by seed + 1."""
    ebc = make_ebc(tables, seed)
    init_embeddings(ebc, emb_init, seed)
    torch.manual_seed(seed + 1)
    emb_dim = tables[0].embedding_dim
    over = list(sizes.over_hidden) + [1]
    if name == "dnn":
        return PlainDNN(ebc, dense_in, sizes.over_hidden)
    if name == "dnn_bars":
        return BarsDNN(ebc, dense_in, sizes.over_hidden, sizes.dropout)
    if name == "dlrm":
        return DLRM(ebc, dense_in, [emb_dim], over)
    if name == "dcnv2":
        return DLRM_DCN(ebc, dense_in, [emb_dim], over, sizes.dcn_layers, sizes.dcn_low_rank)
    if name == "dcnv2_bars":
        return BarsDCNv2(ebc, dense_in, sizes.over_hidden, sizes.bars_cross_layers, sizes.dcn_dropout)
    if name == "rankmixer":  # the one-line swap: DLRM_DCN's arguments, no rankmixer_config
        return DLRM_RankMixer(ebc, dense_in, [emb_dim], over, interaction="none", validate_inputs=False)
    if name.startswith("rm:"):
        return build_rankmixer_variant(name[3:], ebc, dense_in, [emb_dim], over)
    raise ValueError(f"model ({name!r}) must be one of {list(BASE_MODELS)} or rm:<variant>")


def dense_params(model: nn.Module) -> int:
    """Parameters outside the embedding tables."""
    return sum(p.numel() for n, p in model.named_parameters() if "embedding_bag_collection" not in n)


def embedding_params(model: nn.Module) -> List[nn.Parameter]:
    return [p for n, p in model.named_parameters() if "embedding_bag_collection" in n]


def lr_at(step: int, base_lr: float, warmup: int) -> float:
    """Linear warm-up from base_lr / warmup to base_lr over ``warmup`` steps, then flat."""
    return base_lr * min(1.0, (step + 1) / warmup) if warmup > 0 else base_lr


__all__ = ["BASE_MODELS", "ProbeSizes", "build", "dense_params", "embedding_params", "lr_at"]
