"""Tokenizer variants measured by the quality probe (kept out of the library: neither helped).

:class:`ProbeTokenizer` is :class:`SemanticTokenizer` plus two options:
``projection="mlp"`` (each token's projection becomes ``W2_g GELU(W1_g x_g + b1_g) + b2_g``,
hidden width D) and ``global_token=True`` (one more sparse token, a Linear of all embedding
columns, placed after the plan's tokens and before the dense ones). On the probe (seed 1,
400 x 512 steps) the MLP projection cost 0.036 test AUC on the affinity family and the
global token 0.004 (docs/quality.md).
"""

import math
from typing import Mapping, Optional, Sequence

import torch
from torch import nn

from torchrec_rankmixer.features.tokenizer import SemanticTokenizer

PROJECTIONS = ("linear", "mlp")


class ProbeTokenizer(SemanticTokenizer):
    """SemanticTokenizer with an optional per-token MLP projection and a global token.

    Args:
        feature_dims, d_model, num_sparse_tokens, groups, mode, dense_in_features,
        num_dense_tokens, kernel: as :class:`SemanticTokenizer` (``num_sparse_tokens``
            counts the plan's tokens, without the global one).
        projection: ``"linear"`` (library) or ``"mlp"``.
        global_token: append a token projected from all embedding columns.

    Shapes:
        values [B, sum(dims)] -> tokens [B, T_s (+1), D], then the dense tokens.

    Example::

        >>> tok = ProbeTokenizer({"u": 4, "i": 4}, d_model=8, groups={"u": ["u"], "i": ["i"]},
        ...                      projection="mlp", global_token=True)
        >>> tok.project_sparse(torch.randn(2, 8)).shape, tok.num_tokens
        (torch.Size([2, 3, 8]), 3)
    """

    def __init__(
        self,
        feature_dims: Mapping[str, int],
        d_model: int,
        num_sparse_tokens: Optional[int] = None,
        groups: Optional[Mapping[str, Sequence[str]]] = None,
        mode: Optional[str] = None,
        dense_in_features: int = 0,
        num_dense_tokens: int = 1,
        kernel: str = "batched",
        projection: str = "linear",
        global_token: bool = False,
    ) -> None:
        if projection not in PROJECTIONS:
            raise ValueError(f"projection ({projection!r}) must be one of {list(PROJECTIONS)}")
        if not isinstance(global_token, bool):
            raise ValueError(f"global_token ({global_token!r}) must be a bool")
        super().__init__(feature_dims, d_model, num_sparse_tokens, groups, mode,
                         dense_in_features, num_dense_tokens, kernel)
        self.projection = projection
        G, D = self.num_sparse_tokens, d_model
        self.weight2 = nn.Parameter(torch.empty(G, D, D)) if projection == "mlp" else None  # (G, D, D)
        self.bias2 = nn.Parameter(torch.empty(G, D)) if projection == "mlp" else None  # (G, D)
        self.global_proj = nn.Linear(self.total_width, D) if global_token else None
        self._reset_extras()

    @property
    def num_tokens(self) -> int:
        return super().num_tokens + (1 if self.global_proj is not None else 0)

    def _reset_extras(self) -> None:
        with torch.no_grad():
            if self.weight2 is not None and self.bias2 is not None:
                bound = 1.0 / math.sqrt(self.d_model)
                self.weight2.uniform_(-bound, bound)
                self.bias2.zero_()
            if self.global_proj is not None:
                self.global_proj.bias.zero_()  # zero, like the group biases

    def project_sparse(self, values: torch.Tensor) -> torch.Tensor:
        out = super().project_sparse(values)  # (B, G, D)
        if self.weight2 is not None and self.bias2 is not None:
            out = torch.einsum("bgd,gde->bge", nn.functional.gelu(out), self.weight2) + self.bias2
        if self.global_proj is None:
            return out
        return torch.cat([out, self.global_proj(values).unsqueeze(1)], dim=1)  # (B, G+1, D)
