"""Reference and fast kernels of the dense core, behind one ``kernel=`` vocabulary (pure torch).

- :mod:`~torchrec_rankmixer.ops.kernels`: the vocabulary (``auto``, ``reference``,
  ``batched``, ``grouped_mm``).
- :mod:`~torchrec_rankmixer.ops.token_mixing`: multi-head token mixing.
- :mod:`~torchrec_rankmixer.ops.token_projection`: the tokenizer's per-token projections.
- :mod:`~torchrec_rankmixer.ops.per_token_ffn`: T independent GELU FFNs.
- :mod:`~torchrec_rankmixer.ops.moe`: per-token mixture-of-experts (dense and sparse).
"""

from torchrec_rankmixer.ops.kernels import KERNELS, Kernel, check_kernel

__all__ = ["KERNELS", "Kernel", "check_kernel"]
