"""Checkpoints with torch.distributed.checkpoint (DCP): sharded model, optimisers, progress.

A checkpoint is a directory: DCP's files (every rank writes its own shards of the model,
of the fused embedding optimiser state and of the dense optimiser state) plus
``progress.json`` (step, data cursor, world size), written by rank 0 after DCP finished.
DCP reshards on load, so a checkpoint written by W ranks loads on any number of ranks
(table-wise and data-parallel shards included). Every rank must see the directory
(a shared filesystem when training on several nodes).
"""

import json
import os
import re
from typing import Any, Dict, Optional

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torchrec.optim.keyed import CombinedOptimizer

PROGRESS_FILE = "progress.json"
ID_REMAP_KEY = "id_remap"  # checkpoint entry of the managed-collision remapper (replicated)
STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_dir(root: str, step: int) -> str:
    """``<root>/step_<step, 8 digits>``.

    Example::

        >>> checkpoint_dir("runs/a/checkpoints", 40)
        'runs/a/checkpoints/step_00000040'
    """
    return os.path.join(root, f"step_{step:08d}")


def latest_checkpoint(root: str) -> Optional[str]:
    """The complete checkpoint with the highest step under ``root`` (None if none).

    Example::

        >>> latest_checkpoint("/nonexistent") is None
        True
    """
    if not os.path.isdir(root):
        return None
    best = None
    for name in os.listdir(root):
        m = STEP_DIR.match(name)
        if m and os.path.isfile(os.path.join(root, name, PROGRESS_FILE)):
            if best is None or int(m.group(1)) > best[0]:
                best = (int(m.group(1)), os.path.join(root, name))
    return None if best is None else best[1]


def _init_dense_state(optimizer: CombinedOptimizer) -> None:
    """Materialise the lazy dense optimiser state so DCP can load into it in place."""
    for name, opt in optimizer.optimizers:
        if name == "dense" and len(opt.state) == 0:
            opt.init_state()


def _state(model: nn.Module, optimizer: CombinedOptimizer, extra: Optional[Dict[str, nn.Module]]) -> Dict[str, Any]:
    state = {"model": model.state_dict(), "optim": optimizer.state_dict()}
    for name, module in (extra or {}).items():
        if name in state:
            raise ValueError(f"extra checkpoint entry {name!r} clashes with 'model'/'optim'")
        state[name] = module.state_dict()
    return state


def save_checkpoint(
    path: str, model: nn.Module, optimizer: CombinedOptimizer, progress: Dict[str, Any],
    extra: Optional[Dict[str, nn.Module]] = None,
) -> None:
    """Collective: every rank calls it. ``progress`` must be JSON-serialisable. ``extra``:
    more modules saved under their own key (replicated state, e.g. ``{"id_remap": ...}``;
    DCP writes one copy)."""
    _init_dense_state(optimizer)
    state = _state(model, optimizer, extra)
    dcp.save(state, checkpoint_id=path)
    dist.barrier()
    if dist.get_rank() == 0:
        tmp = os.path.join(path, PROGRESS_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(dict(progress, world_size=dist.get_world_size()), f, indent=1)
        os.replace(tmp, os.path.join(path, PROGRESS_FILE))  # marks the checkpoint complete
    dist.barrier()


def load_checkpoint(
    path: str, model: nn.Module, optimizer: CombinedOptimizer, extra: Optional[Dict[str, nn.Module]] = None
) -> Dict[str, Any]:
    """Collective: load model and optimiser state in place (resharding if needed), and the
    ``extra`` modules saved with :func:`save_checkpoint`; return the saved progress dict."""
    progress_path = os.path.join(path, PROGRESS_FILE)
    if not os.path.isfile(progress_path):
        raise ValueError(f"run.resume ({path!r}) is not a complete checkpoint (no {PROGRESS_FILE})")
    _init_dense_state(optimizer)
    state = _state(model, optimizer, extra)
    dcp.load(state, checkpoint_id=path)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optim"])
    for name, module in (extra or {}).items():
        module.load_state_dict(state[name])
    with open(progress_path) as f:
        return json.load(f)
