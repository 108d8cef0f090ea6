"""Reference and fast kernels behind one dispatcher each (pure torch).

- :mod:`torchrec_rankmixer.ops.per_token_ffn`: ``per_token_ffn(..., kernel=)`` with the
  ``"loop"`` reference and the fused kernels.
- :mod:`torchrec_rankmixer.ops.token_mixing`: reference and fast multi-head mixing.
"""
