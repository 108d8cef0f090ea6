"""The paper's "Token2FFN routing" ablations (Table 3): All-Concat-MLP and All-Share.

In RankMixer the routing from tokens to FFNs is: multi-head token mixing (parameter-free),
then FFN t reads only mixed token t. Table 3 of the paper replaces that routing:

- **All-Concat-MLP** ("concatenate all tokens, pass them through one large MLP, split
  back into tokens"; AUC -0.18%, FLOPs unchanged). Here: [B, T*D] -> Linear(T*D, kD) ->
  GELU -> Linear(kD, T*D) -> [B, T, D]. With hidden width kD the matmul FLOPs equal the
  T per-token FFNs' (2 * T*D*kD per layer) and so do the weights.
- **All-Share** ("no token split: the whole input is shared with every per-token FFN,
  like an MoE"; AUC -0.25%). Here FFN t reads the whole concatenated input:
  ``y_t = GELU(concat(x) @ W1[t] + b1[t]) @ W2[t] + b2[t]`` with W1[t] [T*D, kD],
  W2[t] [kD, D]. Its first layer has T times the weights and FLOPs of a per-token FFN.

Both replace the (token mixer, FFN) pair of a block: with ``token_mixer`` set to one of
them, :func:`~torchrec_rankmixer.modules.ffn_factory.build_token_mixer` returns
:class:`~torchrec_rankmixer.modules.token_mixing.NoTokenMixing` (the first sub-layer is
then ``LN(x)``) and ``build_ffn`` returns the module below, so the cross-token work
happens only through the routing being ablated.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from torchrec_rankmixer.utils.checks import check_positive_ints


def _uniform(t: torch.Tensor, fan_in: int) -> None:
    bound = 1.0 / math.sqrt(fan_in)
    nn.init.uniform_(t, -bound, bound)


def _check_sizes(num_tokens: int, d_model: int, ffn_mult: int) -> None:
    check_positive_ints({"num_tokens": num_tokens, "d_model": d_model, "ffn_mult": ffn_mult})


class AllConcatMLP(nn.Module):
    """All-Concat-MLP routing: one MLP on all tokens concatenated, split back to tokens.

    Args:
        num_tokens: T.
        d_model: D.
        ffn_mult: k; the hidden width is kD, so FLOPs match T per-token FFNs.
        device: where to allocate the weights.

    Shapes:
        x: [B, T, D] -> [B, T, D]. Weights: w1 [T*D, kD], w2 [kD, T*D].

    Example::

        >>> m = AllConcatMLP(num_tokens=4, d_model=8, ffn_mult=2)
        >>> m(torch.randn(3, 4, 8)).shape
        torch.Size([3, 4, 8])
        >>> sum(p.numel() for p in m.parameters()) == 2 * 4 * 8 * 16 + 16 + 4 * 8
        True
    """

    def __init__(
        self, num_tokens: int, d_model: int, ffn_mult: int = 4,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        _check_sizes(num_tokens, d_model, ffn_mult)
        width, hidden = num_tokens * d_model, ffn_mult * d_model
        self.num_tokens, self.d_model = num_tokens, d_model
        self.fc1 = nn.Linear(width, hidden, device=device)
        self.fc2 = nn.Linear(hidden, width, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        if T != self.num_tokens or D != self.d_model:
            raise ValueError(f"expected [B, {self.num_tokens}, {self.d_model}] tokens, got {list(x.shape)}")
        h = F.gelu(self.fc1(x.reshape(B, T * D)))  # (B, kD)
        return self.fc2(h).reshape(B, T, D)  # (B, T, D)


class AllShareFFN(nn.Module):
    """All-Share routing: T FFNs, each reading the whole concatenated input.

    Args:
        num_tokens: T (number of FFNs and of output tokens).
        d_model: D.
        ffn_mult: k (hidden width kD per FFN).
        device: where to allocate the weights.

    Shapes:
        x: [B, T, D] -> [B, T, D]. Weights: w1 [T*D, T*kD] (FFN t owns columns
        t*kD:(t+1)*kD), b1 [T, kD], w2 [T, kD, D], b2 [T, D].

    Example::

        >>> m = AllShareFFN(num_tokens=4, d_model=8, ffn_mult=2)
        >>> m(torch.randn(3, 4, 8)).shape
        torch.Size([3, 4, 8])
    """

    def __init__(
        self, num_tokens: int, d_model: int, ffn_mult: int = 4,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        _check_sizes(num_tokens, d_model, ffn_mult)
        T, D, H = num_tokens, d_model, ffn_mult * d_model
        self.num_tokens, self.d_model, self.hidden_dim = T, D, H
        self.w1 = nn.Parameter(torch.empty(T * D, T * H, device=device))
        self.b1 = nn.Parameter(torch.empty(T, H, device=device))
        self.w2 = nn.Parameter(torch.empty(T, H, D, device=device))
        self.b2 = nn.Parameter(torch.empty(T, D, device=device))
        if not self.w1.is_meta:
            for p, fan_in in ((self.w1, T * D), (self.b1, T * D), (self.w2, H), (self.b2, H)):
                _uniform(p, fan_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        if T != self.num_tokens or D != self.d_model:
            raise ValueError(f"expected [B, {self.num_tokens}, {self.d_model}] tokens, got {list(x.shape)}")
        h = (x.reshape(B, T * D) @ self.w1).reshape(B, T, self.hidden_dim)  # (B, T, kD)
        h = F.gelu(h + self.b1)  # every FFN saw all T*D inputs
        y = torch.baddbmm(self.b2.unsqueeze(1), h.transpose(0, 1), self.w2)  # (T, B, D)
        return y.transpose(0, 1)  # (B, T, D)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The same computation as a readable loop over the T FFNs (for tests)."""
        B, T, D = x.shape
        flat, H = x.reshape(B, T * D), self.hidden_dim
        outs = []
        for t in range(T):
            h = F.gelu(flat @ self.w1[:, t * H : (t + 1) * H] + self.b1[t])  # (B, kD)
            outs.append(h @ self.w2[t] + self.b2[t])  # (B, D)
        return torch.stack(outs, dim=1)
