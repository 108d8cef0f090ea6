"""The on-disk format of a ``rankmixer-train`` run directory, shared by the trainer (which
writes it) and export (which reads it), so neither reaches into the other.

Layout of ``<run.out_dir>/<run.name>/``::

    config.yaml          the resolved training settings (defaults + file + overrides)
    spec.json            the model recipe (models/spec.py), written before the first step
    best.json            with train.restore_best: the best validation step, which the run
                         ended with and export takes by default
    metrics.jsonl        one JSON object per logged step / evaluation
    summary.json         written when the run finishes: steps, seconds, final validation and
                         test metrics, best step (what the CLI prints as a table)
    checkpoints/step_XXXXXXXX/
        *.distcp, .metadata   DCP files: {"model": the model's own state_dict,
                              "optim": optimiser state, "id_remap": managed-collision state}
        progress.json         step, data cursor, world size
        manifest.json         size and SHA-256 of every other file; written last

A checkpoint is written into ``checkpoints/.tmp_step_XXXXXXXX`` and renamed into place
once complete, so a crash at any point leaves either the previous checkpoints or the new
one, never a half-written one under a step name. It counts as complete when its
``manifest.json`` exists, and is trusted only when every file matches the manifest
(:func:`verify_checkpoint`); a checkpoint that does not is skipped with a warning by
``run.resume=latest`` and by export. A checkpoint's ``model`` entry holds the model's own
keys (``sparse_arch...``, ``encoder...``), whatever wrapper trained it. DCP files are read
with a restricted unpickler (utils/safe_load.py): a planted file cannot run code.
"""

import json
import os
import re
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Union

from torchrec_rankmixer.data.settings import DataSettings
from torchrec_rankmixer.models.spec import ModelSpec
from torchrec_rankmixer.utils.files import atomic_write_text, sha256_file
from torchrec_rankmixer.utils.settings import from_dict, load_file

CONFIG_FILE = "config.yaml"
SPEC_FILE = "spec.json"
BEST_FILE = "best.json"  # train.restore_best: the step whose weights the run ended with
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINTS_DIR = "checkpoints"
PROGRESS_FILE = "progress.json"
MANIFEST_FILE = "manifest.json"
TMP_PREFIX = ".tmp_"  # checkpoints/.tmp_step_XXXXXXXX while being written
LOCK_FILE = ".lock"
STEP_DIR = re.compile(r"^step_(\d+)$")
MODEL_KEY = "model"  # checkpoint entry: the model's state_dict
OPTIM_KEY = "optim"  # checkpoint entry: the optimiser's state_dict
ID_REMAP_KEY = "id_remap"  # checkpoint entry: the managed-collision remapper (replicated)

PathLike = Union[str, "os.PathLike[str]"]


class DamagedCheckpointWarning(UserWarning):
    """A checkpoint that does not match its manifest was skipped (the message names it)."""


def checkpoint_dir(root: str, step: int) -> str:
    """``<root>/step_<step, 8 digits>``.

    Example::

        >>> checkpoint_dir("runs/a/checkpoints", 40)
        'runs/a/checkpoints/step_00000040'
    """
    return os.path.join(root, f"step_{step:08d}")


def complete_checkpoints(root: str) -> Dict[int, str]:
    """step -> directory of every complete checkpoint under ``root`` (has its manifest).

    Example::

        >>> complete_checkpoints("/nonexistent")
        {}
    """
    steps: Dict[int, str] = {}
    if os.path.isdir(root):
        for name in os.listdir(root):
            m = STEP_DIR.match(name)
            if m and os.path.isfile(os.path.join(root, name, MANIFEST_FILE)):
                steps[int(m.group(1))] = os.path.join(root, name)
    return steps


def write_manifest(path: str) -> str:
    """Write ``<path>/manifest.json``: size and SHA-256 of every other file of checkpoint
    ``path`` (call it last: its presence marks the checkpoint complete)."""
    files = {}
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if name != MANIFEST_FILE and os.path.isfile(full):
            files[name] = {"size": os.path.getsize(full), "sha256": sha256_file(full)}
    out = os.path.join(path, MANIFEST_FILE)
    atomic_write_text(out, json.dumps({"files": files}, indent=1, sort_keys=True))
    return out


def verify_checkpoint(path: str) -> None:
    """Every file of checkpoint ``path`` matches its manifest (ValueError naming the first
    that does not: missing, truncated, overwritten).

    Example::

        >>> verify_checkpoint("/nonexistent/step_00000001")
        Traceback (most recent call last):
        ...
        ValueError: checkpoint '/nonexistent/step_00000001' is incomplete: it has no manifest.json
    """
    manifest = os.path.join(path, MANIFEST_FILE)
    if not os.path.isfile(manifest):
        raise ValueError(f"checkpoint {path!r} is incomplete: it has no {MANIFEST_FILE}")
    try:
        files = json.load(open(manifest))["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"checkpoint {path!r} is damaged: its {MANIFEST_FILE} is unreadable ({e})") from e
    for name, want in sorted(files.items()):
        full = os.path.join(path, name)
        if not os.path.isfile(full):
            raise ValueError(f"checkpoint {path!r} is damaged: {name} is missing")
        if os.path.getsize(full) != want["size"]:
            raise ValueError(f"checkpoint {path!r} is damaged: {name} has {os.path.getsize(full)} bytes, "
                             f"the manifest says {want['size']}")
        if sha256_file(full) != want["sha256"]:
            raise ValueError(f"checkpoint {path!r} is damaged: {name} does not match its checksum")


def good_checkpoints(root: str) -> List[str]:
    """Complete checkpoints under ``root`` that verify, newest first; each one that does not
    is skipped with a warning that names it and says why."""
    good = []
    for step, path in sorted(complete_checkpoints(root).items(), reverse=True):
        try:
            verify_checkpoint(path)
        except ValueError as e:
            warnings.warn(f"skipping a damaged checkpoint: {e}", DamagedCheckpointWarning, stacklevel=2)
            continue
        good.append(path)
    return good


def latest_checkpoint(root: str) -> Optional[str]:
    """The newest complete checkpoint under ``root`` that verifies (None if none; damaged
    ones are skipped with a warning)."""
    good = good_checkpoints(root)
    return good[0] if good else None


@dataclass(frozen=True)
class RunCheckpoint:
    """One complete checkpoint of a training run.

    Attributes:
        run_dir: the run directory (holds ``config.yaml`` and ``spec.json``).
        path: the checkpoint directory (``<run_dir>/checkpoints/step_XXXXXXXX``).
        step: the training step it was written at.
    """

    run_dir: str
    path: str
    step: int


def find_run_checkpoint(run_dir: PathLike, step: Optional[int] = None) -> RunCheckpoint:
    """The checkpoint to read: step ``step``, or the latest complete one.

    Args:
        run_dir: a run directory, or one of its ``checkpoints/step_XXXXXXXX`` directories
            (then ``step`` must be None or that step).
        step: the training step; None: the highest complete checkpoint.

    Example::

        >>> find_run_checkpoint("/nonexistent/run")
        Traceback (most recent call last):
        ...
        ValueError: run directory '/nonexistent/run' does not exist
    """
    path = os.path.normpath(os.fspath(run_dir))
    if not os.path.isdir(path):
        raise ValueError(f"run directory {os.fspath(run_dir)!r} does not exist")
    m = STEP_DIR.match(os.path.basename(path))
    if m and os.path.isdir(os.path.join(os.path.dirname(os.path.dirname(path)), CHECKPOINTS_DIR)):
        own = int(m.group(1))  # a checkpoint directory
        if step is not None and step != own:
            raise ValueError(f"step ({step}) does not match checkpoint directory {path!r} (step {own})")
        root = os.path.dirname(os.path.dirname(path))
        if not os.path.isfile(os.path.join(root, CONFIG_FILE)):
            raise ValueError(f"checkpoint {path!r} is not inside a run directory (no {CONFIG_FILE} in {root!r})")
        _check_not_legacy(root)
        verify_checkpoint(path)
        return RunCheckpoint(root, path, own)
    if not os.path.isfile(os.path.join(path, CONFIG_FILE)):
        raise ValueError(f"{os.fspath(run_dir)!r} is not a rankmixer-train run directory (no {CONFIG_FILE})")
    _check_not_legacy(path)
    root = os.path.join(path, CHECKPOINTS_DIR)
    steps = complete_checkpoints(root)
    best = read_best(path)
    if step is None and best is not None and best in steps:
        step = best  # the run ended with these weights (train.restore_best)
    if step is None:
        good = good_checkpoints(root)
        if not good:
            raise ValueError(
                f"run directory {os.fspath(run_dir)!r} has no complete, undamaged checkpoint under {root!r} "
                "(train with run.save_final=true or run.checkpoint_every > 0)"
            )
        newest = good[0]
        return RunCheckpoint(path, newest, int(STEP_DIR.match(os.path.basename(newest)).group(1)))  # type: ignore[union-attr]
    if isinstance(step, bool) or not isinstance(step, int) or step not in steps:
        raise ValueError(f"step ({step!r}) has no complete checkpoint in {root!r}; steps: {sorted(steps)}")
    verify_checkpoint(steps[step])
    return RunCheckpoint(path, steps[step], step)


def write_best(run_dir: PathLike, step: int, metric: str, value: float) -> str:
    """Write ``<run_dir>/best.json`` (atomically): the step the run ended with."""
    path = os.path.join(os.fspath(run_dir), BEST_FILE)
    atomic_write_text(path, json.dumps({"step": step, "metric": metric, "value": value}, indent=1))
    return path


def read_best(run_dir: PathLike) -> Optional[int]:
    """The step ``best.json`` names, or None (no file: the run ended with its last step)."""
    path = os.path.join(os.fspath(run_dir), BEST_FILE)
    if not os.path.isfile(path):
        return None
    try:
        return int(json.load(open(path))["step"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path!r} is not a readable best-step file: {e}") from e


def write_summary(run_dir: PathLike, summary: Dict[str, object]) -> str:
    """Write ``<run_dir>/summary.json`` (atomically): what a finished run produced."""
    path = os.path.join(os.fspath(run_dir), SUMMARY_FILE)
    atomic_write_text(path, json.dumps(summary, indent=1, sort_keys=True))
    return path


def read_summary(run_dir: PathLike) -> Dict[str, object]:
    """The ``summary.json`` of a finished run (``ValueError`` naming the file if it is
    missing, i.e. the run did not finish, or unreadable)."""
    path = os.path.join(os.fspath(run_dir), SUMMARY_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"{path!r} does not exist: the run has not finished")
    try:
        data = json.load(open(path))
    except ValueError as e:
        raise ValueError(f"{path!r} is not a readable run summary: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path!r} is not a readable run summary: not a JSON object")
    return data


def _check_not_legacy(run_dir: str) -> None:
    """A 0.1 run directory (config.yaml, no spec.json) gets the upgrade message."""
    if not os.path.isfile(os.path.join(run_dir, SPEC_FILE)):
        read_spec(run_dir)  # raises the message that says how to upgrade


def write_spec(run_dir: PathLike, spec: ModelSpec) -> str:
    """Write ``<run_dir>/spec.json`` atomically; returns its path."""
    path = os.path.join(os.fspath(run_dir), SPEC_FILE)
    atomic_write_text(path, spec.to_json() + "\n")
    return path


def read_spec(run_dir: PathLike) -> ModelSpec:
    """The model recipe of a run (``<run_dir>/spec.json``).

    A run directory written before runs recorded their recipe (torchrec-rankmixer 0.1)
    has no spec.json: the error says how to upgrade it.
    """
    path = os.path.join(os.fspath(run_dir), SPEC_FILE)
    if not os.path.isfile(path):
        if os.path.isfile(os.path.join(os.fspath(run_dir), CONFIG_FILE)):
            raise ValueError(
                f"run directory {os.fspath(run_dir)!r} has no {SPEC_FILE}: it was written by "
                "torchrec-rankmixer 0.1, before runs recorded their model recipe; upgrade it "
                f"once with: rankmixer-train --upgrade-run {os.fspath(run_dir)}"
            )
        raise ValueError(f"{path!r} does not exist")
    with open(path) as f:
        text = f.read()
    try:
        return ModelSpec.from_json(text)
    except ValueError as e:
        raise ValueError(f"{path!r}: {e}") from e


def read_data_settings(run_dir: PathLike) -> DataSettings:
    """The ``data`` section of a run's ``config.yaml`` (validated), without the trainer's
    other sections: export needs to know where the run's batches came from (feature
    preparation, managed-collision tables, calibration batches), nothing else."""
    path = os.path.join(os.fspath(run_dir), CONFIG_FILE)
    raw = load_file(path).get("data", {})
    try:
        data = from_dict(DataSettings, raw, prefix="data")
        data.validate()
    except ValueError as e:
        raise ValueError(f"{path!r}: {e}") from e
    return data
