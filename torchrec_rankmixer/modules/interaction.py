"""The interactions beside the encoder: DLRM's dot products and DCN-V2's cross layers.

``DLRM_RankMixer(interaction=...)`` adds, to the pooled tokens the over-arch reads, a
Linear projection of

- ``"dot"``: the pairwise dot products of the feature embeddings (and the dense arch
  output), as TorchRec DLRM's ``InteractionArch`` feeds its over-arch;
- ``"cross"``: DCN-V2's low-rank cross layers on the concatenated [dense arch output,
  embeddings], as TorchRec DLRM_DCN's ``InteractionDCNArch`` (``dcn_num_layers``,
  ``dcn_low_rank_dim``);
- ``"dot_cross"``: both.

Why (docs/quality.md, decisions 5 and 6): the token encoder learns factorised user x item
affinity slowly from projected tokens; given the dot products the default swap gains on
every data set of the quality suite, and the cross layers beside them gain on sharp
feature conjunctions, as long as their rank stays a low rank of their input width. So the
default is ``"dot_cross"`` with the rank capped at a third of that width
(:func:`default_cross_rank`).

``dot_norm="batch"`` (the default with dot products, decision 9) feeds the projection the
raw dot products and their BatchNorm1d side by side (:class:`DotProductNorm`): products
of embeddings differ in scale by orders of magnitude across pairs and data sets (BARS's
L2 keeps Frappe's near zero), and the normalised copy lets one Linear weigh them all.
"""

from typing import Mapping, Optional, Tuple
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from torchrec_rankmixer.ops.dot_interaction import dot_interaction
from torchrec_rankmixer.ops.kernels import check_kernel
from torchrec_rankmixer.utils.checks import check_choice, check_positive_int

INTERACTIONS: Tuple[str, ...] = ("none", "dot", "cross", "dot_cross")
# TorchRec dlrm_main's DLRM_DCN sizes (--dcn_num_layers, --dcn_low_rank_dim): the cross
# layers' defaults here and for the dlrm_dcn baseline.
DCN_NUM_LAYERS = 3
DCN_LOW_RANK_DIM = 512
# The default interaction caps the cross rank at W // DEFAULT_CROSS_RANK_DIVISOR of the
# cross layers' input width W (docs/quality.md, decision 6): about dlrm_main's 512 at its
# W = 1728, 48-64 on the quality suite, where 512 (more than W) loses.
DEFAULT_CROSS_RANK_DIVISOR = 3
# How the dot products reach their projection: "batch", the raw products and their
# BatchNorm1d side by side (the default rule of resolve_dot_norm); "none", the raw ones.
DOT_NORMS: Tuple[str, ...] = ("none", "batch")


def uses_dot(interaction: str) -> bool:
    """Whether ``interaction`` includes DLRM's dot products."""
    return interaction in ("dot", "dot_cross")


def uses_cross(interaction: str) -> bool:
    """Whether ``interaction`` includes DCN-V2's cross layers."""
    return interaction in ("cross", "dot_cross")


def resolve_interaction(
    interaction: Optional[str], feature_dims: Mapping[str, int], dense_width: int
) -> str:
    """The interaction a model uses: ``interaction`` if given (checked), else the default
    rule: ``"dot_cross"`` when every feature and the dense arch output (if any) share one
    width, as in every TorchRec DLRM / DLRM_DCN, else ``"none"``. The default's cross rank
    is :func:`default_cross_rank`'s.

    Args:
        interaction: one of :data:`INTERACTIONS` or None (the default rule).
        feature_dims: feature name -> embedding width, in model order.
        dense_width: the dense arch output width (0: no dense input).

    Example::

        >>> resolve_interaction(None, {"u": 8, "i": 8}, dense_width=8)
        'dot_cross'
        >>> resolve_interaction(None, {"u": 8, "i": 16}, dense_width=0)
        'none'
        >>> resolve_interaction("dot", {"u": 8, "i": 16}, dense_width=0)
        Traceback (most recent call last):
        ...
        ValueError: interaction 'dot' needs one width for every vector it dots; got {'u': 8, 'i': 16}
    """
    widths = dict(feature_dims)
    if dense_width > 0:
        widths["dense arch output"] = dense_width
    equal = len(set(widths.values())) == 1 and len(widths) >= 2
    if interaction is None:
        return "dot_cross" if equal else "none"
    check_choice("interaction", interaction, INTERACTIONS)
    if uses_dot(interaction) and not equal:
        if len(widths) < 2:
            raise ValueError(f"interaction {interaction!r} needs at least 2 vectors to dot; got {widths}")
        raise ValueError(f"interaction {interaction!r} needs one width for every vector it dots; got {widths}")
    return interaction


def resolve_dot_norm(dot_norm: Optional[str], interaction: str) -> str:
    """The ``dot_norm`` a model uses: ``dot_norm`` if given (checked), else the default
    rule: ``"batch"`` when the resolved ``interaction`` has dot products, else ``"none"``.

    Args:
        dot_norm: one of :data:`DOT_NORMS` or None (the default rule).
        interaction: a resolved interaction (:func:`resolve_interaction`).

    Example::

        >>> resolve_dot_norm(None, "dot_cross"), resolve_dot_norm(None, "cross"), resolve_dot_norm("none", "dot")
        ('batch', 'none', 'none')
        >>> resolve_dot_norm("batch", "cross")
        Traceback (most recent call last):
        ...
        ValueError: dot_norm 'batch' normalises the dot products, which interaction 'cross' does not have
    """
    if dot_norm is None:
        return "batch" if uses_dot(interaction) else "none"
    check_choice("dot_norm", dot_norm, DOT_NORMS)
    if dot_norm != "none" and not uses_dot(interaction):
        raise ValueError(f"dot_norm {dot_norm!r} normalises the dot products, which interaction "
                         f"{interaction!r} does not have")
    return dot_norm


def default_cross_rank(width: int, low_rank: Optional[int]) -> int:
    """The cross rank of the default interaction: ``low_rank`` (the swap's
    ``dcn_low_rank_dim``; None: :data:`DCN_LOW_RANK_DIM`) capped at ``width //``
    :data:`DEFAULT_CROSS_RANK_DIVISOR`, at least 1. A given rank that the cap lowers is a
    UserWarning; ``interaction="dot_cross"`` keeps any rank as given.

    Args:
        width: W, the cross layers' input width (dense arch output + embeddings).
        low_rank: the rank asked for, or None.

    Example::

        >>> default_cross_rank(192, None), default_cross_rank(1728, 512), default_cross_rank(2, None)
        (64, 512, 1)
    """
    check_positive_int("width", width)
    rank = DCN_LOW_RANK_DIM if low_rank is None else low_rank
    check_positive_int("dcn_low_rank_dim", rank)
    cap = max(1, width // DEFAULT_CROSS_RANK_DIVISOR)
    if low_rank is not None and low_rank > cap:
        warnings.warn(f"dcn_low_rank_dim ({low_rank}) is more than a third of the cross layers' input width "
                      f"({width}); the default interaction uses rank {cap} (interaction='dot_cross' keeps "
                      f"{low_rank})", UserWarning, stacklevel=4)
    return min(rank, cap)


def cross_rank_of(asked: Optional[str], interaction: str, width: int, low_rank: Optional[int]) -> Optional[int]:
    """The ``dcn_low_rank_dim`` to size the cross layers with (before :func:`resolve_cross`):
    :func:`default_cross_rank` when the interaction was left to the default rule
    (``asked`` None) and has cross layers, else ``low_rank`` as given. The one place the
    model and ``rankmixer-train`` apply the cap.

    Args:
        asked: the interaction the caller gave (None: the default rule).
        interaction: the resolved interaction (:func:`resolve_interaction`).
        width: W, the cross layers' input width (dense arch output + embeddings).
        low_rank: the rank the caller gave, or None.

    Example::

        >>> cross_rank_of(None, "dot_cross", 192, None), cross_rank_of("dot_cross", "dot_cross", 192, None)
        (64, None)
    """
    if asked is None and uses_cross(interaction):
        return default_cross_rank(width, low_rank)
    return low_rank


def resolve_cross(
    interaction: str, num_layers: Optional[int], low_rank: Optional[int], strict: bool = True
) -> Tuple[Optional[int], Optional[int]]:
    """The cross layers' (layers, rank) for a resolved ``interaction``.

    With the cross layers, None takes TorchRec dlrm_main's DLRM_DCN sizes
    (:data:`DCN_NUM_LAYERS`, :data:`DCN_LOW_RANK_DIM`). Without them the result is
    (None, None), and sizes given anyway are a ``ValueError`` (``strict``) or a
    UserWarning (``DLRM_RankMixer``, which takes ``DLRM_DCN``'s arguments in the swap).

    Args:
        interaction: a resolved interaction (:func:`resolve_interaction`).
        num_layers: cross layers (``dcn_num_layers``), >= 1, or None.
        low_rank: rank r of each layer's W = U V (``dcn_low_rank_dim``), >= 1, or None.
        strict: raise (True) or warn (False) on sizes the interaction does not use.

    Example::

        >>> resolve_cross("dot_cross", None, 64)
        (3, 64)
        >>> resolve_cross("dot", None, None)
        (None, None)
    """
    if not uses_cross(interaction):
        if num_layers is not None or low_rank is not None:
            message = (f"dcn_num_layers ({num_layers}) and dcn_low_rank_dim ({low_rank}) size the cross "
                       f"layers, which interaction {interaction!r} does not have")
            if strict:
                raise ValueError(message)
            warnings.warn(message + "; they are ignored", UserWarning, stacklevel=3)
        return None, None
    layers = DCN_NUM_LAYERS if num_layers is None else num_layers
    rank = DCN_LOW_RANK_DIM if low_rank is None else low_rank
    check_positive_int("dcn_num_layers", layers)
    check_positive_int("dcn_low_rank_dim", rank)
    return layers, rank


class LowRankCrossNet(nn.Module):
    """DCN-V2's low-rank cross layers, ``x_{l+1} = x_0 * (W_l (V_l x_l) + b_l) + x_l``:
    TorchRec's ``LowRankCrossNet`` (DLRM_DCN's interaction) with its parameters stacked
    per layer, so that it also scripts (TorchScript cannot index a ParameterList by a loop
    variable). Same init in the same order (every W_l xavier-normal, then every V_l, zero
    biases), so one seed gives TorchRec's values.

    Args:
        in_features: W, the input width.
        num_layers: L.
        low_rank: r.

    Shapes:
        x0 [B, W] -> [B, W]; parameters W_kernels [L, W, r], V_kernels [L, r, W], bias [L, W].

    Example::

        >>> LowRankCrossNet(6, num_layers=2, low_rank=3)(torch.randn(4, 6)).shape
        torch.Size([4, 6])
    """

    def __init__(self, in_features: int, num_layers: int, low_rank: int) -> None:
        super().__init__()
        check_positive_int("in_features", in_features)
        check_positive_int("num_layers", num_layers)
        check_positive_int("low_rank", low_rank)
        self.num_layers = num_layers
        self.W_kernels = nn.Parameter(torch.empty(num_layers, in_features, low_rank))
        self.V_kernels = nn.Parameter(torch.empty(num_layers, low_rank, in_features))
        self.bias = nn.Parameter(torch.zeros(num_layers, in_features))
        for kernels in (self.W_kernels, self.V_kernels):
            for layer in range(num_layers):
                nn.init.xavier_normal_(kernels[layer])

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in range(self.num_layers):
            xw = nn.functional.linear(nn.functional.linear(x, self.V_kernels[layer]), self.W_kernels[layer])  # (B, W)
            x = x0 * (xw + self.bias[layer]) + x  # (B, W)
        return x


class DotInteraction(nn.Module):
    """Pairwise dot products of the dense arch output and the F feature embeddings.

    No parameters. The vectors are ordered dense first, then the features in model order
    (TorchRec's ``InteractionArch`` order); the output has one column per pair i < j.

    Args:
        num_features: F, the embedded features (all of width d).
        width: d.
        has_dense: whether the dense arch output (width d) is dotted too.
        kernel: a kernel of ops/kernels.py (``"reference"``: a loop over pairs).

    Shapes:
        embedded [B, F*d], dense [B, d] or None -> [B, N*(N-1)/2], N = F + has_dense.

    Example::

        >>> inter = DotInteraction(num_features=3, width=4, has_dense=True)
        >>> inter.output_dim
        6
        >>> inter(torch.randn(2, 12), torch.randn(2, 4)).shape
        torch.Size([2, 6])
    """

    def __init__(self, num_features: int, width: int, has_dense: bool, kernel: str = "auto") -> None:
        super().__init__()
        self.num_features, self.width, self.has_dense = num_features, width, has_dense
        self.kernel = check_kernel("kernel", kernel)
        self.num_vectors = num_features + int(has_dense)
        if self.num_vectors < 2:
            raise ValueError(f"DotInteraction needs at least 2 vectors; got {self.num_vectors}")
        self.output_dim = self.num_vectors * (self.num_vectors - 1) // 2

    def forward(self, embedded: torch.Tensor, dense: Optional[torch.Tensor]) -> torch.Tensor:
        v = embedded.reshape(embedded.shape[0], self.num_features, self.width)  # (B, F, d)
        if self.has_dense:
            if dense is None:
                raise ValueError("DotInteraction was built with has_dense=True; dense is None")
            v = torch.cat([dense.unsqueeze(1), v], dim=1)  # (B, F+1, d)
        return dot_interaction(v, self.kernel, self.num_vectors)  # (B, N*(N-1)/2)


@torch.fx.wrap  # one call in FX graphs: TorchRec's pipeline traces the model in training mode
def batch_norm_side(
    products: torch.Tensor, training: bool, running_mean: torch.Tensor, running_var: torch.Tensor,
    num_batches_tracked: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, momentum: float, eps: float,
) -> torch.Tensor:
    """[raw, BatchNorm1d(raw)] of ``products [B, P]`` -> [B, 2P]; :class:`DotProductNorm`'s
    forward on its ``nn.BatchNorm1d``'s tensors. In training, batch statistics (and the
    running ones updated), except for a batch of one sample, which has no variance and is
    normalised with the running statistics."""
    batch_stats = training and products.shape[0] > 1
    if batch_stats:
        num_batches_tracked.add_(1)
    normed = F.batch_norm(products, running_mean, running_var, weight, bias, batch_stats, momentum, eps)
    return torch.cat([products, normed], dim=1)  # (B, 2P)


class DotProductNorm(nn.Module):
    """The raw dot products and their ``BatchNorm1d``, side by side (``dot_norm="batch"``).

    The normalised copy gives every pair unit scale, whatever the embeddings' scale; the
    raw copy keeps the magnitudes. In training, a batch of one sample is normalised with
    the running statistics (a batch of one has no variance to normalise by). Under
    data-parallel training each rank normalises with its own batch; ``rankmixer-train``
    copies rank 0's running statistics to every rank before evaluating and saving
    (:func:`~torchrec_rankmixer.train.distributed.sync_batch_norm_stats`).

    Args:
        num_products: P, the dot products' count (:attr:`DotInteraction.output_dim`).
        device: parameter device.

    Shapes:
        products [B, P] -> [B, 2P]: the raw products, then the normalised ones.

    Example::

        >>> norm = DotProductNorm(3)
        >>> norm.output_dim
        6
        >>> out = norm(torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 5.0]]))
        >>> out[:, 3:]  # each pair normalised over the batch (1e-5 eps)
        tensor([[-1.0000,  0.0000, -1.0000],
                [ 1.0000,  0.0000,  1.0000]], grad_fn=<SliceBackward0>)
    """

    def __init__(self, num_products: int, device: Optional[torch.device] = None) -> None:
        super().__init__()
        check_positive_int("num_products", num_products)
        self.norm = nn.BatchNorm1d(num_products, device=device)  # holds the parameters and statistics
        self.output_dim = 2 * num_products

    def forward(self, products: torch.Tensor) -> torch.Tensor:
        n = self.norm
        return batch_norm_side(products, self.training, n.running_mean, n.running_var, n.num_batches_tracked,
                               n.weight, n.bias, n.momentum, n.eps)  # (B, 2P)
