"""kill -9 during checkpoint saves: the run directory stays resumable (issue 14).

A training process saving a checkpoint at every step is killed with SIGKILL while a save
is in flight (its checkpoints/.tmp_step_* directory exists), once into a fresh run
directory and once while re-saving a step that already exists. Afterwards every
checkpoint under a step name verifies against its manifest, and run.resume=latest
continues from the newest one.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from torchrec_rankmixer.run_format import complete_checkpoints, verify_checkpoint
from torchrec_rankmixer.train.config import load_config
from torchrec_rankmixer.train.loop import Trainer

from tests.train.helpers import ROOT, TINY, destroy_group


def _train_until_killed(out: str, name: str, extra: list, min_step: int) -> None:
    """Start a training process; SIGKILL it while a checkpoint save past ``min_step`` is
    in flight (the temporary checkpoint directory exists)."""
    overrides = TINY + [f"run.out_dir={out}", f"run.name={name}", "train.steps=100000", "train.eval_every=0",
                        "run.checkpoint_every=1", "run.plots=false", *extra]
    cmd = [sys.executable, "-m", "torchrec_rankmixer.train", *[a for o in overrides for a in ("--set", o)]]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = os.path.join(out, name, "checkpoints")
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"training stopped by itself: {proc.stderr.read().decode()[-2000:]}")
            names = os.listdir(root) if os.path.isdir(root) else []
            tmp = [n for n in names if n.startswith(".tmp_step_")]
            if tmp and len(complete_checkpoints(root)) >= min_step:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return
            time.sleep(0.002)
        raise AssertionError("no checkpoint save was caught in flight")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _assert_resumable(out: str, name: str) -> int:
    root = os.path.join(out, name, "checkpoints")
    steps = complete_checkpoints(root)
    assert steps, "no checkpoint survived"
    for path in steps.values():
        verify_checkpoint(path)  # nothing half-written under a step name
    destroy_group()
    cfg = load_config(overrides=TINY + [f"run.out_dir={out}", f"run.name={name}", "run.resume=latest",
                                        f"train.steps={max(steps) + 2}", "train.eval_every=0", "run.plots=false"])
    trainer = Trainer(cfg)
    assert trainer.step == max(steps)
    summary = trainer.fit()
    destroy_group()
    assert summary.step == max(steps) + 2 and summary.train_loss == summary.train_loss
    return max(steps)


@pytest.mark.parametrize("scenario", ["fresh", "existing"])
def test_kill_during_a_checkpoint_save_leaves_a_resumable_run(tmp_path, scenario) -> None:
    out = str(tmp_path)
    if scenario == "fresh":  # the run's early saves
        _train_until_killed(out, "run", [], min_step=1)
    else:  # re-saving steps that exist: resume from step 2 over a run that reached further
        _train_until_killed(out, "run", [], min_step=4)
        step2 = os.path.join(out, "run", "checkpoints", "step_00000002")
        _train_until_killed(out, "run", [f"run.resume={step2}"], min_step=4)
    _assert_resumable(out, "run")
