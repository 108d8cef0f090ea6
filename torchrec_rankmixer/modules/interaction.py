"""DotInteraction: DLRM's pairwise dot products of the feature embeddings, beside the encoder.

``DLRM_RankMixer(interaction="dot")`` adds a Linear projection of these dot products to
the pooled tokens the over-arch reads, as TorchRec DLRM's ``InteractionArch`` feeds its
over-arch the dot products. Why (docs/quality.md, decision 5): the token encoder learns
factorised user x item affinity slowly from projected tokens; given the products, the
default swap gains on every data set of the quality suite, about 0.01 test AUC on the
interaction-heavy ones.
"""

from typing import Mapping, Optional, Tuple

import torch
from torch import nn

from torchrec_rankmixer.ops.dot_interaction import dot_interaction
from torchrec_rankmixer.ops.kernels import check_kernel
from torchrec_rankmixer.utils.checks import check_choice

INTERACTIONS: Tuple[str, ...] = ("none", "dot")


def resolve_interaction(
    interaction: Optional[str], feature_dims: Mapping[str, int], dense_width: int
) -> str:
    """The interaction a model uses: ``interaction`` if given (checked), else the default
    rule: ``"dot"`` when every feature and the dense arch output (if any) share one width,
    as in every TorchRec DLRM / DLRM_DCN, else ``"none"``.

    Args:
        interaction: ``"none"``, ``"dot"`` or None (the default rule).
        feature_dims: feature name -> embedding width, in model order.
        dense_width: the dense arch output width (0: no dense input).

    Example::

        >>> resolve_interaction(None, {"u": 8, "i": 8}, dense_width=8)
        'dot'
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
        return "dot" if equal else "none"
    check_choice("interaction", interaction, INTERACTIONS)
    if interaction == "dot" and not equal:
        if len(widths) < 2:
            raise ValueError(f"interaction 'dot' needs at least 2 vectors to dot; got {widths}")
        raise ValueError(f"interaction 'dot' needs one width for every vector it dots; got {widths}")
    return interaction


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
