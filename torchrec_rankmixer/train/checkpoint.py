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
import shutil
from typing import Any, Dict, Optional

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch import nn
from torchrec.optim.keyed import CombinedOptimizer

from torchrec_rankmixer.run_format import MODEL_KEY, OPTIM_KEY, PROGRESS_FILE, TMP_PREFIX, write_manifest
from torchrec_rankmixer.utils.files import atomic_write_text, fsync_dir
from torchrec_rankmixer.utils.safe_load import dcp_load

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
    DCP writes one copy).

    The checkpoint is written into ``<root>/.tmp_<name>``; rank 0 then writes
    ``progress.json`` and, last, ``manifest.json`` (checksums), and renames the directory
    to ``path``. A checkpoint already at ``path`` (a re-save of that step) is replaced only
    after the new one is complete, so a crash at any point leaves a resumable run.
    """
    root, name = os.path.dirname(path), os.path.basename(path)
    tmp = os.path.join(root, TMP_PREFIX + name)
    if dist.get_rank() == 0:
        os.makedirs(root, exist_ok=True)
        if os.path.exists(tmp):  # left by a crash during an earlier save
            shutil.rmtree(tmp)
    dist.barrier()
    _init_dense_state(optimizer)
    dcp.save(_state(model, optimizer, extra), checkpoint_id=tmp)
    dist.barrier()
    if dist.get_rank() == 0:
        atomic_write_text(os.path.join(tmp, PROGRESS_FILE),
                          json.dumps(dict(progress, world_size=dist.get_world_size()), indent=1))
        write_manifest(tmp)  # last: marks the checkpoint complete
        replaced = os.path.join(root, TMP_PREFIX + "replaced_" + name)
        if os.path.exists(path):
            os.replace(path, replaced)
        os.replace(tmp, path)
        fsync_dir(root)
        if os.path.exists(replaced):
            shutil.rmtree(replaced)
    dist.barrier()


def load_checkpoint(
    path: str, model: nn.Module, optimizer: CombinedOptimizer, extra: Optional[Dict[str, nn.Module]] = None
) -> Dict[str, Any]:
    """Collective: load model and optimiser state in place (resharding if needed), and the
    ``extra`` modules saved with :func:`save_checkpoint`; return the saved progress dict.

    The caller verifies the checkpoint against its manifest first
    (:func:`~torchrec_rankmixer.run_format.verify_checkpoint`). DCP's files are read with the
    restricted unpickler of utils/safe_load.py. Any failure is a ValueError naming ``path``.
    """
    _init_dense_state(optimizer)
    state = _state(model, optimizer, extra)
    try:
        dcp_load(state, path)
        model.load_state_dict({TRAIN_MODULE_PREFIX + k: v for k, v in state[MODEL_KEY].items()})
        optimizer.load_state_dict(state[OPTIM_KEY])
        for name, module in (extra or {}).items():
            module.load_state_dict(state[name])
    except ValueError:
        raise
    except (Exception, CheckpointException) as e:  # noqa: BLE001 - DCP's errors, with the path
        first = (str(e).strip().splitlines() or [""])[-1][:300]
        raise ValueError(f"cannot load checkpoint {path!r} into this run's model: {type(e).__name__}: {first}") from e
    with open(os.path.join(path, PROGRESS_FILE)) as f:
        return json.load(f)
