"""The run directory's writer: resolved config, model spec, metrics, TensorBoard, plots.

The layout (what export reads) is run_format.py's; beside it this writes
``tensorboard/`` (event files, when tensorboard is importable) and ``loss.png`` /
``auc.png`` (curves drawn at the end). Only rank 0 writes files here (DCP checkpoints
are written by every rank).
"""

import json
import math
import os
import shutil
import time
from typing import Any, Dict, List, Optional

import yaml

from torchrec_rankmixer.models.spec import ModelSpec
from torchrec_rankmixer.run_format import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    METRICS_FILE,
    SPEC_FILE,
    read_spec,
    write_spec,
)
from torchrec_rankmixer.train.config import TrainConfig
from torchrec_rankmixer.utils.files import DirectoryLock, atomic_write_text
from torchrec_rankmixer.utils.settings import to_dict


def default_run_name() -> str:
    """``run-YYYYmmdd-HHMMSS`` (UTC)."""
    return time.strftime("run-%Y%m%d-%H%M%S", time.gmtime())


class RunDir:
    """Writer for one run's directory (no-op for ranks other than 0, except paths).

    Args:
        path: the run directory.
        tensorboard: write TensorBoard event files (when tensorboard is importable).
        is_main: whether this process writes files.

    Example::

        >>> import tempfile
        >>> d = RunDir(tempfile.mkdtemp(), tensorboard=False, is_main=True)
        >>> d.log({"step": 1, "train_loss": 0.5}); d.close()
        >>> open(d.metrics_path).read().strip()
        '{"step": 1, "train_loss": 0.5}'
    """

    def __init__(self, path: str, tensorboard: bool, is_main: bool) -> None:
        self.path, self.is_main = path, is_main
        self.checkpoints = os.path.join(path, CHECKPOINTS_DIR)
        self.metrics_path = os.path.join(path, METRICS_FILE)
        self.records: List[Dict[str, Any]] = []
        self._tb: Optional[Any] = None
        self._lock: Optional[DirectoryLock] = None
        if not is_main:
            return
        if os.path.exists(path) and not os.path.isdir(path):
            raise ValueError(f"run directory {path!r} is a file")
        os.makedirs(self.checkpoints, exist_ok=True)
        self._lock = DirectoryLock(path, "run directory")  # one process per run directory
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

                self._tb = SummaryWriter(os.path.join(path, "tensorboard"))
            except ImportError:
                self._tb = None

    def claim(self, resume: bool, overwrite: bool) -> None:
        """A new run never overwrites another (rank 0): refuse a directory that holds a
        run unless ``resume`` (continue it) or ``overwrite`` (its files are removed)."""
        if not self.is_main:
            return
        previous = [n for n in (SPEC_FILE, CONFIG_FILE, METRICS_FILE) if os.path.exists(os.path.join(self.path, n))]
        previous += [CHECKPOINTS_DIR] if os.listdir(self.checkpoints) else []
        if resume or not previous:
            return
        if not overwrite:
            raise ValueError(
                f"run directory {self.path!r} already holds a run ({', '.join(previous)}); continue it with "
                "run.resume=latest, replace it with run.overwrite=true, or choose another run.name"
            )
        for name in previous:
            target = os.path.join(self.path, name)
            shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
        os.makedirs(self.checkpoints, exist_ok=True)

    def write_settings(self, cfg: TrainConfig, spec: ModelSpec) -> None:
        """Write ``config.yaml`` and ``spec.json`` (atomically; rank 0). Called before the
        first step, and on resume only once the checkpoint has loaded."""
        if self.is_main:
            atomic_write_text(os.path.join(self.path, CONFIG_FILE), yaml.safe_dump(to_dict(cfg), sort_keys=False))
            write_spec(self.path, spec)

    def check_spec(self, spec: ModelSpec) -> None:
        """On resume: ``spec`` must describe the model ``spec.json`` recorded (ValueError
        naming the fields that differ; the kernel, an execution choice, may change)."""
        if not os.path.isfile(os.path.join(self.path, SPEC_FILE)):
            return
        saved = read_spec(self.path).to_dict()
        now = spec.to_dict()
        for d in (saved, now):
            d["rankmixer_config"] = {k: v for k, v in d["rankmixer_config"].items() if k != "kernel"}
        diff = [k for k in now if now[k] != saved.get(k)]
        if "rankmixer_config" in diff:
            diff.remove("rankmixer_config")
            diff += [f"rankmixer_config.{k}" for k, v in now["rankmixer_config"].items()
                     if v != saved["rankmixer_config"].get(k)]
        if diff:
            field = diff[0]
            head, _, sub = field.partition(".")
            old, new = (saved[head], now[head]) if not sub else (saved[head].get(sub), now[head][sub])
            raise ValueError(
                f"run.resume: the settings describe another model than {os.path.join(self.path, SPEC_FILE)!r}: "
                f"{', '.join(diff)} differ (e.g. {field}: {old!r} in the run, {new!r} now); resume with "
                "the run's model settings, or start a new run (run.name)"
            )

    @property
    def has_tensorboard(self) -> bool:
        return self._tb is not None

    def log(self, record: Dict[str, Any]) -> None:
        """Append ``record`` (must hold ``step``) to metrics.jsonl and TensorBoard."""
        self.records.append(record)
        if not self.is_main:
            return
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(clean) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not math.isnan(float(v)):
                    self._tb.add_scalar(k, v, record["step"])

    def plot(self) -> List[str]:
        """Draw loss.png (train loss) and auc.png (eval AUCs); returns the files written."""
        if not self.is_main:
            return []
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        written = []
        for name, keys in (("loss", ["train_loss"]), ("auc", None)):
            fig, ax = plt.subplots(figsize=(6, 4))
            drawn = False
            series = keys or sorted({k for r in self.records for k in r if k.endswith("auc")})
            for key in series:
                pts = [(r["step"], r[key]) for r in self.records if r.get(key) is not None]
                pts = [(s, v) for s, v in pts if not math.isnan(v)]
                if pts:
                    ax.plot(*zip(*pts), marker="o" if name == "auc" else None, label=key)
                    drawn = True
            if drawn:
                ax.set_xlabel("step")
                ax.set_ylabel(name)
                ax.legend()
                ax.grid(alpha=0.3)
                out = os.path.join(self.path, f"{name}.png")
                fig.savefig(out, dpi=100, bbox_inches="tight")
                written.append(out)
            plt.close(fig)
        return written

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None
