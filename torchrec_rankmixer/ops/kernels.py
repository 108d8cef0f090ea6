"""The one kernel vocabulary of every op that has a reference path and fast paths.

Each op in ``ops/`` takes ``kernel=`` with one of these values and dispatches here, as
generative-recommenders' ``HammerKernel`` does:

- ``"reference"``: the readable definition (Python loops over tokens, experts or heads);
  slow, for tests and for reading.
- ``"batched"``: all tokens (or experts) in one reshape / batched matmul
  (``baddbmm``, padded bmm for sparse experts).
- ``"grouped_mm"``: ``torch._grouped_mm`` (bf16 on CUDA Hopper+); an op without such a
  kernel, or an input the op rejects, runs ``"batched"``.
- ``"auto"``: the kernel measured fastest for the input's device, dtype, batch size and
  grad mode (each op documents its rule; docs/benchmarks.md has the measurements).

Every kernel of an op gives the same result up to float rounding; the parity tests in
tests/ops/ check it forward and backward.

Example::

    >>> Kernel("batched") is Kernel.BATCHED
    True
    >>> check_kernel("kernel", "bmm")
    Traceback (most recent call last):
    ...
    ValueError: kernel ('bmm') must be one of ['auto', 'reference', 'batched', 'grouped_mm']
"""

import enum
from typing import Tuple

from torchrec_rankmixer.utils.checks import check_choice


class Kernel(str, enum.Enum):
    """How an op runs (see the module docstring)."""

    AUTO = "auto"
    REFERENCE = "reference"
    BATCHED = "batched"
    GROUPED_MM = "grouped_mm"


KERNELS: Tuple[str, ...] = tuple(k.value for k in Kernel)


def check_kernel(name: str, value: object) -> str:
    """``value`` as a kernel name (a :class:`Kernel` or its string), else ValueError."""
    if isinstance(value, Kernel):
        return value.value
    check_choice(name, value, KERNELS)
    return str(value)
