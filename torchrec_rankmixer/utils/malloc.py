"""Keep freed memory in the process: glibc malloc settings for CPU training.

glibc's malloc serves a block over its mmap threshold (dynamic, at most 32 MiB on 64-bit)
with a fresh ``mmap`` and hands it back to the kernel on ``free``. A training step that
allocates such blocks (RankMixer's per-token FFN activations, [T, B, kD] floats: 134 MB at
B = 4096, T = 16, kD = 512) then page-faults every page of every one of them again on
every step; the kernel zero-fills each page, and the elementwise passes over those
tensors (GELU, SiLU, the residual adds) run at the page-fault rate instead of the memory
bandwidth. :func:`keep_freed_memory` turns the mmap path off and the heap trimming too, so
freed blocks stay in the process and the next step reuses them. The price is a resident
set that stays at its peak (docs/benchmarks.md, section 2, measures both).

``rankmixer-train`` calls it on CPU (``train.keep_freed_memory``, on by default); an own
training loop calls it once at start-up. Other C libraries (musl, macOS, Windows) are left
as they are. jemalloc or tcmalloc preloaded (``LD_PRELOAD``) do the same job and are what
PyTorch's CPU tuning guide recommends where they are installed; with one of them preloaded
the glibc settings here are inert.
"""

import ctypes
import ctypes.util
import sys
from typing import Optional

# mallopt parameters (glibc <malloc.h>)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
NEVER_TRIM = 2**31 - 1  # bytes of free heap top before glibc trims it: mallopt's int maximum


def _glibc() -> Optional[ctypes.CDLL]:
    """The process's glibc, or None on other C libraries and platforms."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only; musl has no such symbol
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]  # int mallopt(int param, int value)
    libc.mallopt.restype = ctypes.c_int
    return libc


def keep_freed_memory() -> bool:
    """Make glibc malloc keep freed blocks for reuse instead of returning them to the kernel.

    Sets ``M_MMAP_MAX = 0`` (every block from the heap, none from a fresh ``mmap``) and
    ``M_TRIM_THRESHOLD`` to 2 GiB (a free heap top under that is not given back). Process-wide, for the
    rest of the process; call it once, early. Blocks under the mmap threshold (32 MiB at
    most) were reused already, so small models see no change; large activations stop
    page-faulting on every step.

    Returns:
        True where glibc took both settings, False elsewhere (a no-op: other C libraries
        and platforms, or a glibc that refused them).

    Example::

        >>> import sys
        >>> keep_freed_memory() if sys.platform.startswith("linux") else True
        True
    """
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
