"""keep_freed_memory: large blocks are reused, not page-faulted anew (counted, not timed)."""

import json
import subprocess
import sys

import pytest

from torchrec_rankmixer.utils import malloc
from torchrec_rankmixer.utils.malloc import keep_freed_memory

from tests.train.helpers import ROOT

# A training-step-like loop in a fresh process: two 64 MiB activations made and freed per
# step (over glibc's 32 MiB mmap cap), minor page faults counted per step.
STEPS = """
import json, resource, sys, torch
from torchrec_rankmixer.utils.malloc import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
x = torch.ones(16, 1024, 1024)
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    y = torch.nn.functional.silu(x)
    z = y + x
    del y, z
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"kept": kept, "faults": faults}))
"""

GLIBC = malloc._glibc() is not None


def _steps(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", STEPS, mode], cwd=ROOT, capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc malloc only")
def test_large_blocks_are_reused_instead_of_faulted_in_every_step():
    system, kept = _steps("system"), _steps("keep")
    assert system["kept"] is False and kept["kept"] is True
    pages = 2 * 64 * 2**20 // 4096  # two fresh 64 MiB blocks a step, 4 KiB pages
    # glibc's default: every step faults every page of both blocks in again
    assert min(system["faults"][2:]) > 0.9 * pages
    # kept: after the heap has grown to the working set, steps reuse it
    assert sum(kept["faults"][5:]) < 0.05 * sum(system["faults"][5:])


def test_other_platforms_are_left_alone(monkeypatch):
    monkeypatch.setattr(malloc.sys, "platform", "darwin")
    assert malloc._glibc() is None
    assert keep_freed_memory() is False


def test_a_refused_setting_reports_false(monkeypatch):
    class Refusing:
        def mallopt(self, param: int, value: int) -> int:
            return 0  # glibc's answer to a parameter it does not take

    monkeypatch.setattr(malloc, "_glibc", lambda: Refusing())
    assert keep_freed_memory() is False
