"""Checkpoints with torch.distributed.checkpoint (DCP): sharded model, optimisers, progress.

A checkpoint is a directory (its layout: run_format.py): DCP's files (every rank writes
its own shards of the model, of the fused embedding optimiser state and of the dense
optimiser state) plus ``progress.json`` (step, data cursor, world size), written by rank 0
after DCP finished. The ``model`` entry holds the model's own state_dict keys (the
trainer's wrapper is stripped), so export reads it without knowing how it was trained.
DCP reshards on load, so a checkpoint written by W ranks loads on any number of ranks
(table-wise and data-parallel shards included). Every rank must see the directory
(a shared filesystem when training on several nodes).
"""

import json
import os
from typing import Any, Dict, Optional

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torchrec.optim.keyed import CombinedOptimizer

from torchrec_rankmixer.run_format import MODEL_KEY, OPTIM_KEY, PROGRESS_FILE
from torchrec_rankmixer.utils.files import atomic_write_text

# DMP(TrainModule).state_dict() keys start with TrainModule's attribute holding the model
TRAIN_MODULE_PREFIX = "model."


def _init_dense_state(optimizer: CombinedOptimizer) -> None:
    """Materialise the lazy dense optimiser state so DCP can load into it in place."""
    for name, opt in optimizer.optimizers:
        if name == "dense" and len(opt.state) == 0:
            opt.init_state()


def model_state(train_module: nn.Module) -> Dict[str, Any]:
    """The model's own state_dict from the DMP-wrapped TrainModule's (references to the
    same, possibly sharded, tensors: DCP saves from and loads into them in place)."""
    out: Dict[str, Any] = {}
    for key, value in train_module.state_dict().items():
        if not key.startswith(TRAIN_MODULE_PREFIX):
            raise RuntimeError(f"unexpected state_dict key {key!r} outside TrainModule.model")
        out[key[len(TRAIN_MODULE_PREFIX):]] = value
    return out


def _state(model: nn.Module, optimizer: CombinedOptimizer, extra: Optional[Dict[str, nn.Module]]) -> Dict[str, Any]:
    state = {MODEL_KEY: model_state(model), OPTIM_KEY: optimizer.state_dict()}
    for name, module in (extra or {}).items():
        if name in state:
            raise ValueError(f"extra checkpoint entry {name!r} clashes with {list(state)}")
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
    if dist.get_rank() == 0:  # progress.json marks the checkpoint complete
        atomic_write_text(os.path.join(path, PROGRESS_FILE),
                          json.dumps(dict(progress, world_size=dist.get_world_size()), indent=1))
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
    model.load_state_dict({TRAIN_MODULE_PREFIX + k: v for k, v in state[MODEL_KEY].items()})
    optimizer.load_state_dict(state[OPTIM_KEY])
    for name, module in (extra or {}).items():
        module.load_state_dict(state[name])
    with open(progress_path) as f:
        return json.load(f)
