"""Shared settings and helpers for the training tests (tiny model, few steps)."""

import socket
from typing import List

import torch.distributed as dist

TINY = [
    "data.batch_size=32", "data.eval_batch_size=64", "data.eval_batches=4",
    "data.synthetic.num_sparse_features=4", "data.synthetic.num_embeddings=50",
    "model.embedding_dim=8", "model.d_model=16", "model.num_tokens=4",
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
