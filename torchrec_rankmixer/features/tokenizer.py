"""SemanticTokenizer: EmbeddingBagCollection output + dense features -> tokens [B, T, D]."""

import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedTensor

from torchrec_rankmixer.features.grouping import TokenPlan, plan_tokens
from torchrec_rankmixer.ops.kernels import check_kernel
from torchrec_rankmixer.ops.token_projection import slot_plan, token_projection


@torch.fx.wrap
def _ordered_values(sparse: KeyedTensor, expected_keys: List[str]) -> torch.Tensor:
    """KeyedTensor values with columns in ``expected_keys`` order (reordered if needed)."""
    keys = sparse.keys()
    if keys == expected_keys:
        return sparse.values()
    missing = [k for k in expected_keys if k not in keys]
    if missing:
        raise ValueError(f"embedding output lacks features {missing}; it has {keys}")
    as_dict = sparse.to_dict()
    return torch.cat([as_dict[k] for k in expected_keys], dim=1)


class SemanticTokenizer(nn.Module):
    """Turns embedded features into T tokens of width D.

    Sparse tokens come from a :class:`TokenPlan` (explicit semantic groups, automatic
    contiguous grouping, or the paper's Eq. 2 split); each token's concatenated
    embedding columns get their own Linear projection to D. All projections run as one
    batched matmul over the features (where the tokens are made of whole features of one
    width of at least ``MIN_SLOT_WIDTH`` columns and the plan is not already in column
    order; ops/token_projection.py), else as one gather + batched matmul (groups
    of unequal width zero-padded to the widest), or as the reference loop
    (``kernel="reference"``; ops/token_projection.py). Dense features (after the
    dense arch) become ``num_dense_tokens`` extra tokens appended after the sparse ones.

    Args:
        feature_dims: ordered feature name -> embedding dim, in KeyedTensor order.
        d_model: D.
        num_sparse_tokens: T_s (see :func:`plan_tokens`).
        groups: group name -> feature names, for ``mode="groups"``/``"split"``.
        mode: ``"groups"``, ``"auto"`` or ``"split"`` (default: groups if given, else auto).
        dense_in_features: width of the dense vector; 0 means no dense tokens.
        num_dense_tokens: tokens made from the dense vector (0 allowed).
        kernel: a kernel of ops/kernels.py (``"reference"``: one matmul per token).
        device: parameter device (``"meta"`` works).

    Shapes:
        sparse: KeyedTensor with values [B, sum(dims)]; dense: [B, dense_in_features]
        -> tokens [B, T, D], T = T_s + num_dense_tokens.

    Example::

        >>> from torchrec.sparse.jagged_tensor import KeyedTensor
        >>> tok = SemanticTokenizer({"u": 4, "i": 4, "c": 8}, d_model=16,
        ...                         groups={"user": ["u"], "item": ["i", "c"]},
        ...                         dense_in_features=3)
        >>> kt = KeyedTensor(keys=["u", "i", "c"], length_per_key=[4, 4, 8],
        ...                  values=torch.randn(2, 16))
        >>> tok(kt, torch.randn(2, 3)).shape
        torch.Size([2, 3, 16])
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
        kernel: str = "auto",
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(d_model, int) or d_model < 1:
            raise ValueError(f"d_model ({d_model!r}) must be a positive int")
        if not isinstance(dense_in_features, int) or dense_in_features < 0:
            raise ValueError(f"dense_in_features ({dense_in_features!r}) must be an int >= 0")
        if not isinstance(num_dense_tokens, int) or num_dense_tokens < 0:
            raise ValueError(f"num_dense_tokens ({num_dense_tokens!r}) must be an int >= 0")
        if dense_in_features > 0 and num_dense_tokens == 0:
            raise ValueError(
                f"dense_in_features ({dense_in_features}) > 0 needs num_dense_tokens >= 1"
            )
        self.plan: TokenPlan = plan_tokens(dict(feature_dims), num_sparse_tokens, groups, mode)
        self.feature_names: List[str] = list(feature_dims)
        self.d_model = d_model
        self.kernel = check_kernel("kernel", kernel)
        self.mode: str = self.plan.mode
        self.groups: Optional[Dict[str, Tuple[str, ...]]] = (
            {str(k): tuple(v) for k, v in groups.items()} if groups else None
        )
        self.num_sparse_tokens = len(self.plan.columns)
        self.num_dense_tokens = num_dense_tokens if dense_in_features > 0 else 0
        self.total_width = sum(feature_dims.values())
        widths = self.plan.widths
        self.max_width = max(widths)
        G, W, D = self.num_sparse_tokens, self.max_width, d_model

        pad = self.total_width  # index of an all-zero column appended at run time
        index = [c for cols in self.plan.columns for c in list(cols) + [pad] * (W - len(cols))]
        self._identity = index == list(range(self.total_width))
        self.register_buffer("gather_index", torch.tensor(index, dtype=torch.long, device=device), persistent=False)
        slots = None if self._identity else slot_plan(self.plan.columns, self.total_width)
        self._slot_width = slots.width if slots is not None else 0  # 0: the gather kernel
        self._slot_in_order = slots is not None and slots.in_order
        for name, values in (("slot_token", slots.token if slots else ()), ("slot_row", slots.row if slots else ()),
                             ("slot_chunk", slots.chunk if slots else ())):
            self.register_buffer(name, torch.tensor(values, dtype=torch.long, device=device), persistent=False)
        self.weight = nn.Parameter(torch.empty(G, W, D, device=device))  # (G, W_max, D)
        self.bias = nn.Parameter(torch.empty(G, D, device=device))  # (G, D)
        self.dense_proj: Optional[nn.Linear] = (
            nn.Linear(dense_in_features, self.num_dense_tokens * D, device=device)
            if self.num_dense_tokens > 0
            else None
        )
        self.reset_parameters()

    @property
    def num_tokens(self) -> int:
        """T = sparse tokens + dense tokens."""
        return self.num_sparse_tokens + self.num_dense_tokens

    def reset_parameters(self) -> None:
        """Weights: nn.Linear's uniform(+-1/sqrt(width)) per token; sparse biases: zero.

        Zero biases, not nn.Linear's uniform ones: TorchRec initialises a table of n rows
        at uniform(+-sqrt(1/n)), so large tables (users, items) start with embeddings of
        std ~0.01, and a random bias (~0.18 for width 10) would make each token nearly
        constant across samples; the LayerNorm right after then normalises the bias, not
        the feature. On Frappe this cost RankMixer its first epochs (valid AUC after
        epoch 1: 0.72 with uniform biases, 0.91 with zero; docs/benchmarks.md section 4).
        """
        if self.weight.is_meta:
            return
        with torch.no_grad():
            self.weight.zero_()
            self.bias.zero_()
            for g, width in enumerate(self.plan.widths):
                bound = 1.0 / math.sqrt(width)
                self.weight[g, :width].uniform_(-bound, bound)  # pad rows stay 0 (and get 0 grad)

    def effective_param_count(self) -> int:
        """Parameters excluding the zero padding rows of narrower groups."""
        sparse = sum(self.plan.widths) * self.d_model + self.bias.numel()
        dense = sum(p.numel() for p in self.dense_proj.parameters()) if self.dense_proj else 0
        return sparse + dense

    @classmethod
    def from_embedding_bag_collection(
        cls,
        ebc: EmbeddingBagCollection,
        d_model: int,
        num_sparse_tokens: Optional[int] = None,
        groups: Optional[Mapping[str, Sequence[str]]] = None,
        mode: Optional[str] = None,
        dense_in_features: int = 0,
        num_dense_tokens: int = 1,
        kernel: str = "auto",
        device: torch.device | str | None = None,
    ) -> "SemanticTokenizer":
        """Read ``feature_dims`` from the EBC's table configs (in KeyedTensor order); the
        other arguments are the constructor's."""
        return cls(
            feature_dims_of(ebc), d_model, num_sparse_tokens, groups, mode,
            dense_in_features, num_dense_tokens, kernel, device,
        )

    # ------------------------------------------------------------------ forward
    def project_sparse(self, values: torch.Tensor) -> torch.Tensor:
        """[B, sum(dims)] -> [B, T_s, D]."""
        index = None if self._identity else self.gather_index
        columns = [list(cols) for cols in self.plan.columns]
        chunk = None if self._slot_in_order else self.slot_chunk
        return token_projection(values, self.weight, self.bias, columns, index, self.kernel,
                                self._slot_width, self.slot_token, self.slot_row, chunk)  # (B, G, D)

    def ordered_values(self, sparse: KeyedTensor) -> torch.Tensor:
        """The embeddings as one matrix [B, sum(dims)], columns in ``feature_names`` order
        (a KeyedTensor in another key order is reordered)."""
        return _ordered_values(sparse, self.feature_names)

    def forward(
        self, sparse: KeyedTensor, dense_features: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        return self.tokenize(self.ordered_values(sparse), dense_features)

    def tokenize(self, values: torch.Tensor, dense_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:meth:`forward` on plain tensors: values [B, sum(dims)] (``ordered_values``),
        dense [B, dense_in_features] -> tokens [B, T, D]."""
        tokens = self.project_sparse(values)  # (B, T_s, D)
        if self.dense_proj is None:
            return tokens
        if dense_features is None:
            raise ValueError("this tokenizer has dense tokens; pass dense_features")
        dense = self.dense_proj(dense_features).reshape(-1, self.num_dense_tokens, self.d_model)
        return torch.cat([tokens, dense], dim=1)  # (B, T, D)


def feature_dims_of(ebc: EmbeddingBagCollection) -> dict:
    """Ordered feature name -> embedding dim, in the order the EBC's KeyedTensor uses."""
    dims = {}
    for cfg in ebc.embedding_bag_configs():
        for name in cfg.feature_names:
            dims[name] = cfg.embedding_dim
    return dims
