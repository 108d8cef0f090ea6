"""DTSI's serving step: calibrate the h_infer router bias to the target active ratio.

The adaptive L1 controller holds the active ratio of *training* batches only on
average: on DLRM_RankMixer with Adam the per-layer ratio oscillates, and the eval
ratio is a snapshot of that oscillation (docs/moe.md, "Calibration"). This serving
step fixes the deployed ratio: on a few held-out training batches, in eval mode, it
shifts each token's h_infer router bias so that exactly the target fraction of that
token's gates is non-zero. Layers are calibrated in forward order, each with the
earlier layers already calibrated, so every layer sees the inputs it will see at
inference.
"""

from typing import Callable, Dict, Iterable, List, Optional

import torch
import torch.distributed as dist
from torch import nn

from torchrec_rankmixer.modules.moe.dtsi import moe_layers

# training batches the h_infer routers are calibrated on at the end of a run and at export
DEFAULT_CALIBRATION_BATCHES = 16
from torchrec_rankmixer.utils.checks import check_float


def bias_shift_for_ratio(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Per-token shift ``s[t]`` so that ``mean(logits[:, t, :] + s[t] > 0) ~= target``.

    ``s[t] = -q_t``, with ``q_t`` the ``(1 - target)`` order statistic of token t's
    logits: adding it leaves ``round(target * N)`` of the N = B*E logits of token t
    strictly positive (ties aside).

    Args:
        logits: [B, T, E] router logits.
        target: fraction of active gates wanted, in (0, 1].

    Returns:
        [T] shifts (same dtype as logits).

    Example::

        >>> logits = torch.arange(8.0).view(8, 1, 1) - 6.0  # -6 .. 1: 1 of 8 positive
        >>> s = bias_shift_for_ratio(logits, 0.5)
        >>> ((logits + s.view(1, -1, 1)) > 0).float().mean().item()
        0.5
    """
    check_float("target", target, 0.0, 1.0, "(]")
    B, T, E = logits.shape
    flat = logits.detach().transpose(0, 1).reshape(T, B * E).float()  # (T, N)
    n_active = round(target * B * E)
    if n_active >= B * E:  # everything active: put the smallest logit just above 0
        low = flat.min(dim=1).values
        return (-low + 1e-5 * low.abs().clamp(min=1.0)).to(logits.dtype)
    ordered = flat.sort(dim=1, descending=True).values  # (T, N)
    # threshold halfway between the last kept and the first dropped logit
    cut = 0.5 * (ordered[:, n_active - 1] + ordered[:, n_active]) if n_active > 0 else ordered[:, 0]
    return (-cut).to(logits.dtype)


def all_gather_rows(local: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``local`` [N_r, ...] along dim 0 (rank order), on all ranks.

    Ranks may hold different N_r (rows are padded for the collective and trimmed after).
    Without an initialised process group (or with one process) it returns ``local``.

    Args:
        local: this rank's rows, [N_r, ...]; the trailing dims must agree across ranks.

    Returns:
        [sum_r N_r, ...], identical on every rank.

    Example::

        >>> all_gather_rows(torch.ones(2, 3)).shape  # single process: unchanged
        torch.Size([2, 3])
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    world = dist.get_world_size()
    n = torch.tensor([local.shape[0]], device=local.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    most = int(max(int(s) for s in sizes))
    padded = local.new_zeros((most,) + tuple(local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[: int(s)] for p, s in zip(parts, sizes)])


@torch.no_grad()
def calibrate_moe_routers(
    model: nn.Module,
    run_batches: Callable[[], None],
    target: Optional[float] = None,
    gather: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> List[Dict[str, float]]:
    """Shift every ReLU-routed MoE's h_infer bias so its eval active ratio hits the target.

    For each :class:`PerTokenSparseMoE` with a ReLU router (``"dtsi"``, ``"relu"``), in
    forward order: run the calibration batches in eval mode, collect that layer's
    h_infer logits [B, T, E], and add :func:`bias_shift_for_ratio` to its router bias.
    Top-k MoEs are skipped (their ratio is exact by construction). The model is left in
    eval mode. Router weights, experts and h_train are untouched.

    Args:
        model: a model containing :class:`PerTokenSparseMoE` modules.
        run_batches: runs the model's forward on the calibration batches (held-out
            training data, not eval data), e.g.
            ``lambda: [model(b.dense_features, b.sparse_features) for b in batches]``.
        target: ratio to calibrate to; ``None`` uses each module's
            ``target_active_ratio``.
        gather: maps this process's logits [N, T, E] to the logits the shift is
            computed on. Data-parallel training passes :func:`all_gather_rows`, so every
            rank computes the same shift from all ranks' batches and the replicas of the
            router bias stay equal. ``None``: this process's logits only.

    Returns:
        One dict per calibrated module: ``ratio_before``, ``ratio_after`` (on the
        calibration batches), ``max_abs_shift``.

    Example::

        >>> from torchrec_rankmixer import RankMixerConfig, RankMixerEncoder
        >>> cfg = RankMixerConfig(d_model=8, num_tokens=2, num_layers=2, use_moe=True,
        ...                       moe_target_active_ratio=0.25)
        >>> enc = RankMixerEncoder(cfg)
        >>> x = torch.randn(64, 2, 8)
        >>> report = calibrate_moe_routers(enc, lambda: enc(x))
        >>> [round(r["ratio_after"], 2) for r in report]
        [0.25, 0.25]
    """
    if target is not None:
        check_float("target", target, 0.0, 1.0, "(]")
    moes = [m for m in moe_layers(model) if m.router != "topk"]
    model.eval()
    report = []
    for moe in moes:
        captured: List[torch.Tensor] = []
        hook = moe.router_infer.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
        try:
            run_batches()
        finally:
            hook.remove()
        if not captured:
            raise ValueError("run_batches did not run the model's MoE layers (no logits captured)")
        logits = torch.cat(captured)  # (N_rows, T, E)
        if gather is not None:
            logits = gather(logits)
        goal = moe.target_active_ratio if target is None else target
        shift = bias_shift_for_ratio(logits, goal)  # (T,)
        moe.router_infer.bias.add_(shift.unsqueeze(-1).to(moe.router_infer.bias.dtype))
        report.append({
            "ratio_before": float((logits > 0).float().mean()),
            "ratio_after": float((logits + shift.view(1, -1, 1) > 0).float().mean()),
            "max_abs_shift": float(shift.abs().max()),
        })
    return report


def calibrate_on_batches(model: nn.Module, batches: Iterable, target: Optional[float] = None) -> List[Dict[str, float]]:
    """:func:`calibrate_moe_routers` on DLRM-style batches (``dense_features``, ``sparse_features``).

    Args:
        model: e.g. a ``DLRM_RankMixer`` with MoE FFNs.
        batches: objects with ``dense_features`` and ``sparse_features`` (materialised once).
        target: see :func:`calibrate_moe_routers`.

    Example::

        >>> from types import SimpleNamespace
        >>> from torchrec_rankmixer import RankMixerConfig, RankMixerEncoder
        >>> enc = RankMixerEncoder(RankMixerConfig(d_model=8, num_tokens=2, num_layers=1, use_moe=True))
        >>> class Wrap(torch.nn.Module):
        ...     def __init__(self): super().__init__(); self.enc = enc
        ...     def forward(self, dense, sparse): return self.enc(dense)
        >>> b = SimpleNamespace(dense_features=torch.randn(32, 2, 8), sparse_features=None)
        >>> round(calibrate_on_batches(Wrap(), [b])[0]["ratio_after"], 2)
        0.25
    """
    batches = list(batches)

    def run() -> None:
        for b in batches:
            model(b.dense_features, b.sparse_features)

    return calibrate_moe_routers(model, run, target)
