"""Test-session setup shared by every test.

- The checkout's package wins over any installed copy when pytest runs from here.
- One intra-op thread per process (also inherited by spawned worker processes through
  OMP_NUM_THREADS): the tests use small tensors and several tests start 2-process
  groups, and on a 2-core machine OpenMP threads that spin-wait on busy cores made a
  40-step training test take 168 s instead of 2.6 s (measured on the 2-core dev box
  under load). Set RANKMIXER_TEST_THREADS to override.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
_threads = os.environ.get("RANKMIXER_TEST_THREADS", "1")
os.environ["OMP_NUM_THREADS"] = _threads
os.environ.setdefault("MKL_NUM_THREADS", _threads)

import torch  # noqa: E402  (after the environment is set)

torch.set_num_threads(int(_threads))
