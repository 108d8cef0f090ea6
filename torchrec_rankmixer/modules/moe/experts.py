"""The experts of a per-token Sparse-MoE: E small GELU FFNs for each of the T tokens."""

from typing import Tuple

import torch

from torchrec_rankmixer.modules.per_token_ffn import GELUFFNStack
from torchrec_rankmixer.ops.kernels import check_kernel
from torchrec_rankmixer.ops.moe import moe_experts, moe_experts_sparse
from torchrec_rankmixer.utils.checks import check_positive_ints

# A leaf for FX symbolic tracing (data-dependent shapes cannot be traced symbolically);
# the TorchScript export points these calls at the scriptable moe_experts_sparse_resolved.
torch.fx.wrap("moe_experts_sparse")


class TokenExperts(GELUFFNStack):
    """Expert (t, e) is ``f_te(x) = GELU(x W1[t,e] + b1[t,e]) W2[t,e] + b2[t,e]``; the
    forward returns the gated sum ``y[b, t] = sum_e g[b, t, e] * f_te(x[b, t])``.

    Args:
        num_tokens: T.
        d_model: D.
        num_experts: E.
        expert_hidden: h, each expert's hidden width.
        device: where to allocate (``"meta"`` works).

    Shapes:
        x [B, T, D], gates [B, T, E] -> [B, T, D]. w1 [T, E, D, h], b1 [T, E, h],
        w2 [T, E, h, D], b2 [T, E, D].

    Example::

        >>> ex = TokenExperts(num_tokens=3, d_model=8, num_experts=4, expert_hidden=16)
        >>> x, g = torch.randn(2, 3, 8), torch.relu(torch.randn(2, 3, 4))
        >>> torch.allclose(ex(x, g, sparse=True), ex(x, g, sparse=False), atol=1e-5)
        True
    """

    def __init__(
        self, num_tokens: int, d_model: int, num_experts: int, expert_hidden: int,
        device: torch.device | str | None = None,
    ) -> None:
        check_positive_ints({"num_tokens": num_tokens, "d_model": d_model,
                             "num_experts": num_experts, "expert_hidden": expert_hidden})
        super().__init__((num_tokens, num_experts), d_model, expert_hidden, device)
        self.expert_hidden = expert_hidden

    @property
    def weights(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(w1, b1, w2, b2)."""
        return self.w1, self.b1, self.w2, self.b2

    def forward(self, x: torch.Tensor, gates: torch.Tensor, sparse: bool, kernel: str = "auto") -> torch.Tensor:
        """Gated sum of the experts; ``sparse`` computes only the active triples (ops/moe.py)."""
        return moe_experts(x, gates, *self.weights, sparse=sparse, kernel=check_kernel("kernel", kernel))  # (B, T, D)

    def sparse(self, x: torch.Tensor, gates: torch.Tensor, kernel: str) -> torch.Tensor:
        """The sparse inference path: only the active triples, as one FX leaf call."""
        return moe_experts_sparse(x, gates, *self.weights, kernel=kernel)  # (B, T, D)
