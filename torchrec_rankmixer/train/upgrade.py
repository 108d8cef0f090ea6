"""Upgrade a run directory written by torchrec-rankmixer 0.1 to the current layout.

0.1 runs have no ``spec.json``, keep ``model.d_model`` & co. in ``config.yaml`` and store
the model under the trainer's wrapper keys (``model.model.<key>``). The upgrade, run once
by ``rankmixer-train --upgrade-run RUN_DIR``:

1. moves the model-shape settings into ``model.rankmixer``, pins the block 0.1 trained
   (``V0_1_BLOCK``: the paper's post-LN RankMixer block; today's default is another) and
   its interaction (``V0_1_INTERACTION``: none; today's default is "dot"), and rewrites
   ``config.yaml`` (the original is kept as ``config.v0_1.yaml``);
2. writes ``spec.json`` from those settings with the trainer's own spec builder;
3. rewrites every checkpoint with the model's own keys (``model.<key>``), optimiser and
   id-remap state unchanged, into a temporary directory that then replaces the old one.

Afterwards the run exports (``rankmixer-export --run-dir``) and resumes as a new run would.
"""

import os
import shutil
import tempfile
from typing import Any, Dict, List

import torch
import torch.distributed.checkpoint as dcp
import yaml
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from torchrec_rankmixer.config import RANKMIXER
from torchrec_rankmixer.data.sources import make_source
from torchrec_rankmixer.run_format import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    MODEL_KEY,
    PROGRESS_FILE,
    SPEC_FILE,
    STEP_DIR,
    write_manifest,
    write_spec,
)
from torchrec_rankmixer.train.build import model_spec
from torchrec_rankmixer.train.config import MOVED_SETTINGS, TrainConfig
from torchrec_rankmixer.utils.files import atomic_write_text
from torchrec_rankmixer.utils.safe_load import dcp_metadata
from torchrec_rankmixer.utils.settings import from_dict, load_file, to_dict

LEGACY_CONFIG_FILE = "config.v0_1.yaml"
LEGACY_MODEL_PREFIX = "model."  # 0.1 kept DMP(TrainModule) keys: model.<key> inside "model"
# The block every 0.1 run trained, where its settings do not say: the settings default for
# a model without a config has changed since (DEFAULT_BLOCK in models/defaults.py), and
# a pre-LN block loads a post-LN checkpoint without an error, so the upgrade writes them out.
V0_1_BLOCK: Dict[str, Any] = {"block": RANKMIXER, "ln_style": "post", "final_norm": False}
# Likewise the interaction: 0.1 had none; the default is now "dot" (modules/interaction.py).
V0_1_INTERACTION = "none"


def upgrade_config(raw: Dict[str, Any]) -> Dict[str, Any]:
    """A 0.1 settings dict with the model-shape keys moved into ``model.rankmixer`` and
    the block settings it left out set to 0.1's (``V0_1_BLOCK``, ``V0_1_INTERACTION``).

    Example::

        >>> upgrade_config({"model": {"d_model": 64, "rankmixer": {"ln_style": "pre"}}})
        {'model': {'rankmixer': {'ln_style': 'pre', 'd_model': 64, 'block': 'rankmixer', 'final_norm': False}, 'interaction': 'none'}}
    """
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    model = out.get("model")
    if isinstance(model, dict):
        rankmixer = dict(model.get("rankmixer") or {})
        for old in MOVED_SETTINGS:
            key = old.split(".", 1)[1]
            if key in model:
                value = model.pop(key)
                if value is not None:
                    rankmixer[key] = value
        model["rankmixer"] = {**rankmixer, **{k: v for k, v in V0_1_BLOCK.items() if k not in rankmixer}}
        model.setdefault("interaction", V0_1_INTERACTION)
    return out


def _upgrade_checkpoint(path: str) -> None:
    """Rewrite one DCP checkpoint with the model's own keys (in a temporary directory
    that then replaces ``path``; progress.json is copied last)."""
    with tempfile.TemporaryDirectory(dir=os.path.dirname(path)) as tmp:
        flat = os.path.join(tmp, "all.pt")
        # the restricted unpickler first: a planted .metadata cannot run code; 0.1 wrote
        # tensors only, so a non-tensor entry (unpickled by DCP's own loader) is refused
        entries = dcp_metadata(path)
        if any(type(m).__name__ == "BytesStorageMetadata" for m in entries.values()):
            raise ValueError(f"checkpoint {path!r} holds non-tensor entries, which 0.1 never wrote; not upgrading it")
        dcp_to_torch_save(path, flat)
        state = torch.load(flat, map_location="cpu", weights_only=True)
        os.remove(flat)
        model = state.get(MODEL_KEY, {})
        if not model or not all(k.startswith(LEGACY_MODEL_PREFIX) for k in model):
            return  # already upgraded (an interrupted earlier upgrade)
        state[MODEL_KEY] = {k[len(LEGACY_MODEL_PREFIX):]: v for k, v in model.items()}
        fresh = os.path.join(tmp, "ckpt")
        dcp.save(state, checkpoint_id=fresh, no_dist=True)
        shutil.copy2(os.path.join(path, PROGRESS_FILE), os.path.join(fresh, PROGRESS_FILE))
        write_manifest(fresh)
        old = path + ".v0_1"
        os.replace(path, old)
        os.replace(fresh, path)
        shutil.rmtree(old)


def upgrade_run_dir(run_dir: str) -> List[str]:
    """Upgrade a 0.1 run directory in place (see the module docstring).

    Args:
        run_dir: the run directory (holds ``config.yaml``, no ``spec.json``).

    Returns:
        The files written.

    Example::

        >>> upgrade_run_dir("/nonexistent")
        Traceback (most recent call last):
        ...
        ValueError: '/nonexistent' is not a rankmixer-train run directory (no config.yaml)
    """
    config_path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise ValueError(f"{run_dir!r} is not a rankmixer-train run directory (no {CONFIG_FILE})")
    if os.path.isfile(os.path.join(run_dir, SPEC_FILE)):
        raise ValueError(f"run directory {run_dir!r} already has {SPEC_FILE}: nothing to upgrade")
    legacy_copy = os.path.join(run_dir, LEGACY_CONFIG_FILE)
    raw = load_file(legacy_copy if os.path.isfile(legacy_copy) else config_path)
    cfg = from_dict(TrainConfig, upgrade_config(raw)).validate()
    source = make_source(cfg.data, cfg.model.task == "esmm", rank=0, world_size=1)
    spec = model_spec(cfg, source)
    written = []
    root = os.path.join(run_dir, CHECKPOINTS_DIR)
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        path = os.path.join(root, name)
        if STEP_DIR.match(name) and os.path.isfile(os.path.join(path, PROGRESS_FILE)):  # 0.1: complete
            _upgrade_checkpoint(path)
            written.append(path)
    legacy = os.path.join(run_dir, LEGACY_CONFIG_FILE)
    if not os.path.isfile(legacy):
        shutil.copy2(config_path, legacy)
    atomic_write_text(config_path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
    written += [legacy, config_path, write_spec(run_dir, spec)]  # spec.json last: marks it done
    return written
