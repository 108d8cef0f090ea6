"""The timed sections of the GPU run: bf16 training MFU of the presets (eager and
compiled), per-token FFN kernels, Sparse-MoE sparse vs all experts.

Timing: ``warmup`` calls, then ``rounds`` rounds of ``inner`` calls each, the device
synchronised around every round; the fastest round's mean per call is reported (extra
time is interference). FLOPs are matmul FLOPs (2 per multiply-add); a training step
counts 3x the forward's.
"""

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.bench_moe import calibrated_moe
from torchrec_rankmixer.config import RankMixerConfig
from torchrec_rankmixer.modules.block import RankMixerEncoder
from torchrec_rankmixer.ops.per_token_ffn import per_token_ffn

PRESETS = ("100M", "1B")


@dataclass
class Sizes:
    """Problem sizes of one run (``full`` on a GPU, ``tiny`` for the CPU smoke run)."""

    presets: Dict[str, RankMixerConfig]
    train_batch: Dict[str, int]
    ffn: Tuple[int, int, int]  # T, D, k
    ffn_batches: List[int]
    moe: Tuple[int, int, int, int, int]  # T, D, E, h, B
    ratios: List[float] = field(default_factory=lambda: [0.5, 0.25, 0.125])
    parity: Tuple[int, int, int] = (64, 8, 64)  # B, T, D of the parity checks
    warmup: int = 3
    rounds: int = 3
    inner: int = 5

    @classmethod
    def full(cls) -> "Sizes":
        return cls(presets={p: RankMixerConfig.preset(p) for p in PRESETS},
                   train_batch={"100M": 8192, "1B": 2048}, ffn=(16, 768, 4),
                   ffn_batches=[1024, 2048, 4096, 8192, 16384], moe=(16, 768, 8, 768, 4096))

    @classmethod
    def tiny(cls) -> "Sizes":
        """One tiny config under both preset names (the second compile hits inductor's cache)."""
        cfg = RankMixerConfig(d_model=32, num_tokens=4, num_layers=1)
        return cls(presets={p: cfg for p in PRESETS}, train_batch={p: 32 for p in PRESETS},
                   ffn=(4, 32, 4), ffn_batches=[16, 32], moe=(4, 32, 4, 32, 64), parity=(4, 4, 16),
                   warmup=1, rounds=1, inner=1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, sizes: Sizes) -> float:
    """Fastest round's seconds per call (see the module docstring)."""
    for _ in range(sizes.warmup):
        fn()
    best = float("inf")
    for _ in range(sizes.rounds):
        _sync(device)
        start = time.perf_counter()
        for _ in range(sizes.inner):
            fn()
        _sync(device)
        best = min(best, (time.perf_counter() - start) / sizes.inner)
    return best


def gemm_peak(device: torch.device, n: int) -> float:
    """Measured bf16 FLOP/s of one n x n x n matmul (a same-run reference)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    seconds = timed(lambda: a @ a, device, Sizes.tiny() if device.type == "cpu" else Sizes.full())
    return 2 * n**3 / seconds


class _Model(nn.Module):
    """The encoder and a one-logit head on tokens [B, T, D]."""

    def __init__(self, config: RankMixerConfig, device: torch.device) -> None:
        super().__init__()
        self.encoder = RankMixerEncoder(config, device=device)
        self.head = nn.Linear(config.output_dim, 1, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))[:, 0]


def _train_step(config: RankMixerConfig, batch: int, device: torch.device, compiled: bool,
                sizes: Sizes) -> Dict[str, float]:
    torch.manual_seed(0)
    model = _Model(config, device)
    forward = torch.compile(model) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    x = torch.randn(batch, config.num_tokens, config.d_model, device=device)
    y = (torch.rand(batch, device=device) < 0.3).float()

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = forward(x)
        F.binary_cross_entropy_with_logits(logits.float(), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    _sync(device)
    start = time.perf_counter()
    step()  # the first step compiles
    _sync(device)
    first = time.perf_counter() - start
    seconds = timed(step, device, sizes)
    flops = 3 * config.flops_per_sample(exact=True) * batch
    out = {"batch": batch, "step_ms": 1e3 * seconds, "first_step_s": first,
           "samples_per_s": batch / seconds, "tflops": flops / seconds / 1e12,
           "params": sum(p.numel() for p in model.parameters())}
    if device.type == "cuda":
        out["max_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    return out


def train_mfu(device: torch.device, sizes: Sizes, peak: float) -> Dict[str, object]:
    """bf16 autocast training steps (AdamW) of each preset, eager then compiled."""
    out: Dict[str, object] = {}
    for name, config in sizes.presets.items():
        for mode in ("eager", "compiled"):
            try:
                r = _train_step(config, sizes.train_batch[name], device, mode == "compiled", sizes)
                r["mfu"] = r["tflops"] * 1e12 / peak
                out[f"{name}/{mode}"] = r
            except torch.cuda.OutOfMemoryError as e:  # recorded; the run goes on
                out[f"{name}/{mode}"] = {"error": f"OutOfMemoryError: {str(e)[:200]}"}
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return out


def ffn_kernels(device: torch.device, sizes: Sizes, peak: float) -> Dict[str, object]:
    """bf16 per-token FFN (GELU) kernels, forward and forward+backward, at each batch."""
    T, D, k = sizes.ffn
    out: Dict[str, object] = {"T": T, "D": D, "k": k, "cells": []}
    for B in sizes.ffn_batches:
        g = torch.Generator(device="cpu").manual_seed(0)
        shapes = ((B, T, D), (T, D, k * D), (T, k * D), (T, k * D, D), (T, D))
        tensors = [torch.randn(*s, generator=g).mul(0.05).to(device, torch.bfloat16) for s in shapes]
        dy = torch.randn(B, T, D, device=device, dtype=torch.bfloat16)
        for mode in ("fwd", "fwd+bwd"):
            args = [t.detach().requires_grad_(mode != "fwd") for t in tensors]
            for kernel in ("reference", "batched", "grouped_mm"):
                def call(kernel: str = kernel) -> None:
                    y = per_token_ffn(*args, kernel=kernel)
                    if mode != "fwd":
                        y.backward(dy)
                flops = 4 * B * T * D * k * D * (3 if mode != "fwd" else 1)
                cell: Dict[str, object] = {"B": B, "mode": mode, "kernel": kernel}
                try:
                    with torch.set_grad_enabled(mode != "fwd"):
                        seconds = timed(call, device, sizes)
                    cell.update(ms=1e3 * seconds, tflops=flops / seconds / 1e12,
                                fraction_of_peak=flops / seconds / peak)
                except Exception as e:  # noqa: BLE001 - e.g. grouped_mm unsupported here
                    cell["error"] = f"{type(e).__name__}: {str(e)[:200]}"
                out["cells"].append(cell)  # type: ignore[union-attr]
    return out


def moe(device: torch.device, sizes: Sizes, peak: float) -> Dict[str, object]:
    """bf16 eval-mode Sparse-MoE: sparse execution (each kernel) vs all experts."""
    T, D, E, h, B = sizes.moe
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(0)).to(device, torch.bfloat16)
    out: Dict[str, object] = {"T": T, "D": D, "E": E, "h": h, "B": B, "rows": []}
    for ratio in sizes.ratios:
        layer = calibrated_moe(T, D, E, h, ratio, "batched").to(device, torch.bfloat16)
        row: Dict[str, object] = {"target": ratio}
        with torch.inference_mode():
            row["measured_ratio"] = float((torch.relu(layer.router_infer(x)) > 0).float().mean())
            layer.configure_inference(execution="dense")
            row["all_experts_ms"] = 1e3 * timed(lambda: layer(x), device, sizes)
            for kernel in ("batched", "grouped_mm"):
                layer.configure_inference(execution="sparse", sparse_kernel=kernel)
                row[f"sparse_{kernel}_ms"] = 1e3 * timed(lambda: layer(x), device, sizes)
                row[f"speedup_{kernel}"] = row["all_experts_ms"] / row[f"sparse_{kernel}_ms"]  # type: ignore[operator]
        out["rows"].append(row)  # type: ignore[union-attr]
    return out
