"""Reference and fast kernels behind one dispatcher each (pure torch)."""

from torchrec_rankmixer.ops.per_token_ffn import (
    choose_kernel,
    per_token_ffn,
    per_token_ffn_bmm,
    per_token_ffn_grouped_mm,
    per_token_ffn_loop,
)
from torchrec_rankmixer.ops.token_mixing import token_mixing_fast, token_mixing_reference

__all__ = [
    "choose_kernel",
    "per_token_ffn",
    "per_token_ffn_bmm",
    "per_token_ffn_grouped_mm",
    "per_token_ffn_loop",
    "token_mixing_fast",
    "token_mixing_reference",
]
