"""RankMixer variants for the quality probe, each one factor changed from the default swap.

A variant name is one or more atoms joined by ``+`` (``rm:pre+flatten``). Each atom
changes one thing relative to the paper's block as ``DLRM_RankMixer`` built it with no
config when the probe ran (``default_config`` with ``block="rankmixer"``,
``ln_style="post"``: T = min(F, 7) auto tokens + 1 dense token, D = 64, H = T, L = 2,
k = 4, post-LN, mean pooling):

- encoder (RankMixerConfig fields): ``pre`` (pre-LN + final norm), ``prenf`` (pre-LN,
  no final norm), ``noln`` (no LayerNorm at all), ``flatten``,
  ``h<n>`` (n heads, general mode), ``d<n>`` (D = n), ``l<n>`` (L = n), ``k<n>``,
  ``drop`` (dropout 0.1), ``tml`` (the TokenMixer-Large block);
- tokens: ``perfeat`` (one token per feature), ``split`` (paper Eq. 2 split),
  ``tokmlp`` (per-token 2-layer MLP projection), ``global`` (one extra token from all
  embeddings), ``glu`` (per-token SwiGLU FFN instead of GELU, probe only);
- optimisation (read by the probe loop): ``lr<x>`` (e.g. ``lr1e-3``), ``wu<n>`` (linear
  warm-up over n steps).
"""

import math
import re
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from torchrec.models.dlrm import OverArch

from benchmarks.probe_tokenizer import ProbeTokenizer
from torchrec_rankmixer import DLRM_RankMixer, RankMixerEncoder
from torchrec_rankmixer.features.tokenizer import feature_dims_of
from torchrec_rankmixer.models.defaults import DEFAULT_MAX_SPARSE_TOKENS, default_config

CONFIG_ATOMS: Dict[str, Dict[str, object]] = {
    "paper": {},
    "pre": {"ln_style": "pre", "final_norm": True},
    "prenf": {"ln_style": "pre"},
    "noln": {"layer_norm": False},
    "flatten": {"pooling": "flatten"},
    "drop": {"dropout": 0.1},
    "tml": {"block": "tokenmixer_large"},  # TokenMixer-Large block (main only; not measured yet)
}
TOKEN_ATOMS = ("perfeat", "split", "tokmlp", "global")


class ProbeGLU(nn.Module):
    """Per-token SwiGLU FFN, probe only: ``(silu(x W1_t) * (x W3_t)) W2_t``, hidden 2kD/3
    so its weights match the GELU FFN's. [B, T, D] -> [B, T, D]."""

    def __init__(self, num_tokens: int, d_model: int, ffn_mult: int) -> None:
        super().__init__()
        h = round(2 * ffn_mult * d_model / 3)
        b1, b2 = 1 / math.sqrt(d_model), 1 / math.sqrt(h)
        self.w1 = nn.Parameter(torch.empty(num_tokens, d_model, h).uniform_(-b1, b1))
        self.w3 = nn.Parameter(torch.empty(num_tokens, d_model, h).uniform_(-b1, b1))
        self.w2 = nn.Parameter(torch.empty(num_tokens, h, d_model).uniform_(-b2, b2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xt = x.transpose(0, 1)  # (T, B, D)
        hidden = nn.functional.silu(torch.bmm(xt, self.w1)) * torch.bmm(xt, self.w3)  # (T, B, h)
        return torch.bmm(hidden, self.w2).transpose(0, 1)  # (B, T, D)


def parse(variant: str) -> Dict[str, object]:
    """Variant name -> {"config": overrides, "tokens": mode, "tokenizer": kwargs, "lr", "warmup"}."""
    out: Dict[str, object] = {"config": {}, "tokens": "auto", "tokenizer": {}, "lr": None, "warmup": 0}
    config: Dict[str, object] = out["config"]  # type: ignore[assignment]
    tokenizer: Dict[str, object] = out["tokenizer"]  # type: ignore[assignment]
    for atom in variant.split("+"):
        if atom in CONFIG_ATOMS:
            config.update(CONFIG_ATOMS[atom])
        elif atom in ("perfeat", "split"):
            out["tokens"] = atom
        elif atom == "tokmlp":
            tokenizer["projection"] = "mlp"
        elif atom == "global":
            tokenizer["global_token"] = True
        elif atom == "glu":
            out["glu"] = True
        elif re.fullmatch(r"h\d+", atom):
            config.update(num_heads=int(atom[1:]), strict_heads=False)
        elif re.fullmatch(r"d\d+", atom):
            config["d_model"] = int(atom[1:])
        elif re.fullmatch(r"l\d+", atom):
            config["num_layers"] = int(atom[1:])
        elif re.fullmatch(r"k\d+", atom):
            config["ffn_mult"] = int(atom[1:])
        elif re.fullmatch(r"lr[0-9.e-]+", atom):
            out["lr"] = float(atom[2:])
        elif re.fullmatch(r"wu\d+", atom):
            out["warmup"] = int(atom[2:])
        else:
            raise ValueError(f"unknown variant atom {atom!r} in {variant!r}")
    return out


def _token_counts(num_features: int, dense_in: int, tokens: str, extra: int) -> Tuple[int, int]:
    """(plan tokens, total T) as DLRM_RankMixer counts them, plus ``extra`` tokens."""
    n_dense = 1 if dense_in > 0 else 0
    n_sparse = num_features if tokens == "perfeat" else min(num_features, DEFAULT_MAX_SPARSE_TOKENS)
    return n_sparse, n_sparse + extra + n_dense


def build_rankmixer_variant(
    variant: str, ebc: EmbeddingBagCollection, dense_in: int, dense_arch: List[int], over: List[int]
) -> nn.Module:
    """DLRM_RankMixer with ``variant`` applied; the probe loop reads ``probe_lr``/``probe_warmup``."""
    spec = parse(variant)
    dims = feature_dims_of(ebc)
    tok_kwargs: Dict[str, object] = dict(spec["tokenizer"])  # type: ignore[arg-type]
    extra = 1 if tok_kwargs.get("global_token") else 0
    n_plan, T = _token_counts(len(dims), dense_in, str(spec["tokens"]), extra)
    # the paper's block, as the swap built it when the probe ran (docs/quality.md)
    base = default_config(len(dims), T - n_plan - extra,
                          overrides={"num_tokens": T, "block": "rankmixer", "ln_style": "post"})
    overrides = dict(spec["config"])  # type: ignore[arg-type]
    if "d_model" not in overrides and base.d_model % base.heads:  # keep D a multiple of H
        overrides["d_model"] = base.heads * math.ceil(base.d_model / base.heads)
    heads = overrides.get("num_heads", T)
    d = int(overrides.get("d_model", base.d_model))
    if d % int(heads):  # type: ignore[arg-type]
        overrides["d_model"] = int(heads) * math.ceil(d / int(heads))  # type: ignore[arg-type]
    config = base.with_updates(**overrides)
    groups: Optional[Dict[str, List[str]]] = {f: [f] for f in dims} if spec["tokens"] == "perfeat" else None
    mode = "split" if spec["tokens"] == "split" else None
    # a global token is one more than the plan: build without it, then swap the encoder
    built = config.with_updates(num_tokens=T - 1, num_heads=config.heads, strict_heads=False) if extra else config
    model = DLRM_RankMixer(ebc, dense_in, dense_arch, over, rankmixer_config=built,
                           feature_groups=groups, tokenization=mode, interaction="none",
                           validate_inputs=False)
    if extra:
        model.config, model.encoder = config, RankMixerEncoder(config)
        model.over_arch = OverArch(config.output_dim, over)
    if tok_kwargs:
        old = model.tokenizer
        model.tokenizer = ProbeTokenizer(
            dims, config.d_model, num_sparse_tokens=n_plan, groups=groups, mode=mode,
            dense_in_features=dense_arch[-1] if dense_in > 0 else 0,
            num_dense_tokens=old.num_dense_tokens, **tok_kwargs,  # type: ignore[arg-type]
        )
    if spec.get("glu"):
        for block in model.encoder.blocks:
            block.ffn = ProbeGLU(config.num_tokens, config.d_model, config.ffn_mult)
    model.probe_lr = spec["lr"]  # type: ignore[assignment]
    model.probe_warmup = spec["warmup"]  # type: ignore[assignment]
    return model
