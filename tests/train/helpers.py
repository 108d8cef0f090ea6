"""Shared settings and helpers for the training tests (tiny model, few steps)."""

import os
import socket
import subprocess
import sys
from typing import List

import torch.distributed as dist

TINY = [
    "data.batch_size=32", "data.eval_batch_size=64", "data.eval_batches=4",
    "data.synthetic.num_sparse_features=4", "data.synthetic.num_embeddings=50",
    "model.embedding_dim=8", "model.rankmixer.d_model=16", "model.rankmixer.num_tokens=4",
    "model.dense_arch_layer_sizes=[16, 8]", "model.over_arch_layer_sizes=[16, 1]",
    "model.tower_layer_sizes=[8]", "train.progress_bar=false", "train.log_every=2",
    "optim.warmup_steps=2", "run.tensorboard=false",
]


def tiny(tmp_path, *extra: str) -> List[str]:
    """TINY plus an output directory under ``tmp_path`` and ``extra`` overrides."""
    return TINY + [f"run.out_dir={tmp_path}"] + list(extra)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def destroy_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def torchrun_train(overrides: List[str], nproc: int = 2) -> str:
    """``rankmixer-train`` under torchrun with ``nproc`` CPU processes (gloo); returns stdout
    and fails the test with the tail of stderr if the run fails."""
    # --standalone: torchrun's agent binds a free port itself (a port picked here and
    # released could be taken before torchrun binds it)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone",
           "-m", "torchrec_rankmixer.train"] + [f"--set={o}" for o in overrides]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"torchrun rankmixer-train failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout
