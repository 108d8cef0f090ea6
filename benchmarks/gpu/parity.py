"""Dense-core parity on a device: every op and block, each kernel, against CPU fp32.

Each check runs a module on CPU in fp32 (the reference) and on the device in fp32 and
in bf16, forward and (where the op trains) backward with the same upstream gradient,
and reports ``max |device - reference| / max |reference|`` over the output, the input
gradient and every parameter gradient. fp32 runs with TF32 off and must agree to
``FP32_TOL``; bf16 to ``BF16_TOL`` (8 mantissa bits, sums over up to kD terms).
"""

import copy
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from torchrec_rankmixer.config import RankMixerConfig
from torchrec_rankmixer.modules.block import RankMixerEncoder
from torchrec_rankmixer.modules.moe import PerTokenSparseMoE
from torchrec_rankmixer.modules.per_token_ffn import PerTokenFFN
from torchrec_rankmixer.modules.per_token_swiglu import PerTokenSwiGLU
from torchrec_rankmixer.ops.token_mixing import token_mixing

FP32_TOL = 1e-4
BF16_TOL = 4e-2
KERNELS = ("reference", "batched", "grouped_mm")


class _Mixing(nn.Module):
    def __init__(self, heads: int, kernel: str) -> None:
        super().__init__()
        self.heads, self.kernel = heads, kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return token_mixing(x, self.heads, self.kernel)


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.detach().float().cpu() - want).abs().max() / want.abs().max().clamp(min=1e-12))


def _run(module: nn.Module, x: torch.Tensor, dy: Optional[torch.Tensor]) -> List[torch.Tensor]:
    """[output, input grad, parameter grads...] (just [output] without ``dy``)."""
    x = x.detach().requires_grad_(dy is not None)
    out = module(x)
    if dy is None:
        return [out.detach()]
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out, [x] + params, dy.to(out.dtype), allow_unused=True)
    return [out.detach()] + [torch.zeros(()) if g is None else g for g in grads]


def check(name: str, build: Callable[[], nn.Module], x: torch.Tensor, device: torch.device,
          train: bool = True) -> List[Dict[str, object]]:
    """fp32 and bf16 records of one module against CPU fp32."""
    torch.manual_seed(0)
    base = build()  # every run starts from a copy: training forwards move router buffers
    dy = torch.randn_like(copy.deepcopy(base)(x)) if train else None
    want = _run(copy.deepcopy(base), x, dy)
    records = []
    for dtype, tol in ((torch.float32, FP32_TOL), (torch.bfloat16, BF16_TOL)):
        module = copy.deepcopy(base).to(device=device, dtype=dtype)
        got = _run(module, x.to(device=device, dtype=dtype), None if dy is None else dy.to(device))
        errors = [_rel(g, w) for g, w in zip(got, want)]
        records.append({"check": name, "dtype": str(dtype).replace("torch.", ""), "backward": train,
                        "max_rel_err": max(errors), "tolerance": tol, "ok": max(errors) <= tol})
    return records


def run(device: torch.device, batch: int, tokens: int = 8, d_model: int = 64) -> Dict[str, object]:
    """Every check on [batch, tokens, d_model] inputs; ``ok`` when all pass."""
    prev = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        records = _checks(device, batch, tokens, d_model)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev
    return {"checks": records, "ok": all(r["ok"] for r in records),
            "failed": [f"{r['check']} {r['dtype']}" for r in records if not r["ok"]]}


def _checks(device: torch.device, batch: int, T: int, D: int) -> List[Dict[str, object]]:
    k = 4
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, T, D, generator=g)
    out: List[Dict[str, object]] = []
    for kernel in KERNELS:
        out += check(f"token_mixing[{kernel}]", lambda: _Mixing(T // 2, kernel), x, device)
        out += check(f"per_token_ffn[{kernel}]", lambda: PerTokenFFN(T, D, k, kernel=kernel), x, device)
        out += check(f"per_token_swiglu[{kernel}]",
                     lambda: PerTokenSwiGLU(T, D, k * D, down_init_scale=1.0, kernel=kernel), x, device)
        for block in ("rankmixer", "tokenmixer_large"):
            cfg = RankMixerConfig(d_model=D, num_tokens=T, num_layers=2, block=block, kernel=kernel)
            out += check(f"encoder[{block}, {kernel}]", lambda: RankMixerEncoder(cfg), x, device)
        out += check(f"sparse_moe_eval[{kernel}]", lambda: _moe(T, D, kernel), x, device, train=False)
        # ReLU routing: gates move continuously with the inputs (top-k's discrete choice flips in bf16)
        out += check(f"sparse_moe_train[{kernel}]",
                     lambda: PerTokenSparseMoE(T, D, 4, 32, router="relu", kernel=kernel).train(), x, device)
    return out


def _moe(T: int, D: int, kernel: str) -> nn.Module:
    """A Sparse-MoE in eval mode running only the active experts (about half of them)."""
    moe = PerTokenSparseMoE(T, D, num_experts=4, expert_hidden=32, router="relu").eval()
    return moe.configure_inference(execution="sparse", sparse_kernel=kernel)
