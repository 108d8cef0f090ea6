"""DTSI (dense-training / sparse-inference, RankMixer 3.4): the path draw and the
inference switch. The router calibration that serving needs is calibration.py.

Training computes every expert and routes each sample by one of two routers: h_train's
gates (``softplus`` or ``relu``, dense) with probability ``dense_path_prob``, h_infer's
ReLU gates otherwise, so both routers get the task gradient. Inference uses h_infer only
and runs only its active experts. With ``path_draw="sample"`` the draw is made once per
sample and shared by every MoE layer of the encoder (:func:`draw_dtsi_paths`), so each
training sample trains exactly one of the two models that are evaluated: all-h_train (the
"dense-gated" reference) or all-h_infer (the deployed model); docs/moe.md, "Path draw".
"""

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from torchrec_rankmixer.ops.kernels import check_kernel
from torchrec_rankmixer.utils.checks import check_choice

EXECUTIONS: Tuple[str, ...] = ("sparse", "dense")
EVAL_ROUTERS: Tuple[str, ...] = ("infer", "train")


def train_gates(logits: torch.Tensor, gate: str) -> torch.Tensor:
    """h_train's gates from its logits: ``"softplus"`` (every expert active) or ``"relu"``.

    Example::

        >>> bool((train_gates(torch.randn(2, 3, 4), "softplus") > 0).all())
        True
    """
    return F.relu(logits) if gate == "relu" else F.softplus(logits)


def path_pick(
    x: torch.Tensor, mask: Optional[torch.Tensor], path_draw: str, dense_path_prob: float
) -> torch.Tensor:
    """Which rows use h_train's gates in this training forward: [B, 1, 1] or [B, T, 1] bool.

    Args:
        x: the layer's input [B, T, D].
        mask: the encoder's shared per-sample draw [B] (see :func:`draw_dtsi_paths`), or
            None: draw here, once per sample (``path_draw="sample"``) or per (sample,
            token) (``"token"``).
        path_draw: ``"sample"`` or ``"token"``.
        dense_path_prob: probability of the h_train path.
    """
    B, T = x.shape[0], x.shape[1]
    if mask is not None:
        if mask.shape[0] != B:
            raise ValueError(f"path mask has {mask.shape[0]} rows, the batch has {B}")
        return mask.view(B, 1, 1)
    shape = (B, 1, 1) if path_draw == "sample" else (B, T, 1)
    return torch.rand(shape, device=x.device) < dense_path_prob


def check_path_mask(mask: Optional[torch.Tensor]) -> None:
    """A path mask is None or a [B] bool tensor (ValueError otherwise)."""
    if mask is not None and (mask.dim() != 1 or mask.dtype != torch.bool):
        raise ValueError(f"path mask must be a [B] bool tensor, got {mask.dtype} {tuple(mask.shape)}")


def draw_dtsi_paths(modules: Sequence[nn.Module], x: torch.Tensor) -> None:
    """Give every DTSI MoE in ``modules`` the same per-sample path draw for this forward.

    Args:
        modules: the MoE layers of one model (those with ``path_draw="sample"`` take part).
        x: the batch entering the first layer, [B, ...] (sets B and the device).
    """
    shared = [m for m in modules if m.draws_dtsi_paths and m.path_draw == "sample"]
    if shared:
        mask = torch.rand(x.shape[0], device=x.device) < shared[0].dense_path_prob  # (B,)
        for m in shared:
            m.set_path_mask(mask)


def clear_dtsi_paths(modules: Sequence[nn.Module]) -> None:
    """Undo :func:`draw_dtsi_paths`."""
    for m in modules:
        m.set_path_mask(None)


def check_inference_switch(execution: str, router: str, sparse_kernel: str, has_train_router: bool) -> None:
    """Validate :meth:`PerTokenSparseMoE.configure_inference`'s arguments."""
    check_choice("execution", execution, EXECUTIONS)
    check_choice("router", router, EVAL_ROUTERS)
    check_kernel("sparse_kernel", sparse_kernel)
    if router == "train" and not has_train_router:
        raise ValueError("router ('train') needs the 'dtsi' router (h_train)")


def moe_layers(model: nn.Module) -> List[nn.Module]:
    """Every :class:`~torchrec_rankmixer.modules.moe.layer.PerTokenSparseMoE` in ``model``."""
    from torchrec_rankmixer.modules.moe.layer import PerTokenSparseMoE

    return [m for m in model.modules() if isinstance(m, PerTokenSparseMoE)]


def configure_moe_inference(
    model: nn.Module, execution: str = "sparse", router: str = "infer", sparse_kernel: str = "auto"
) -> int:
    """The inference switch: apply :meth:`PerTokenSparseMoE.configure_inference` to every
    MoE in ``model``; returns the number of MoE layers configured.

    Example::

        >>> from torchrec_rankmixer import RankMixerConfig, RankMixerEncoder
        >>> cfg = RankMixerConfig(d_model=8, num_tokens=2, num_layers=2, use_moe=True)
        >>> configure_moe_inference(RankMixerEncoder(cfg), execution="dense")
        2
    """
    mods = moe_layers(model)
    for m in mods:
        m.configure_inference(execution, router, sparse_kernel)
    return len(mods)
