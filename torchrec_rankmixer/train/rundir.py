"""The run directory: resolved config, metrics JSON lines, checkpoints, TensorBoard, plots.

Layout of ``<run.out_dir>/<run.name>/``::

    config.yaml          the resolved settings (defaults + file + overrides)
    metrics.jsonl        one JSON object per logged step / evaluation
    checkpoints/step_*/  DCP checkpoints (see checkpoint.py)
    tensorboard/         event files (only when tensorboard is importable)
    loss.png, auc.png    curves drawn at the end (matplotlib, Agg backend)

Only rank 0 writes files here (DCP checkpoints are written by every rank).
"""

import json
import math
import os
import time
from typing import Any, Dict, List, Optional

import yaml

from torchrec_rankmixer.train.config import TrainConfig
from torchrec_rankmixer.utils.settings import to_dict


def default_run_name() -> str:
    """``run-YYYYmmdd-HHMMSS`` (UTC)."""
    return time.strftime("run-%Y%m%d-%H%M%S", time.gmtime())


class RunDir:
    """Writer for one run's directory (no-op for ranks other than 0, except paths).

    Args:
        path: the run directory.
        cfg: resolved config (written to config.yaml).
        is_main: whether this process writes files.

    Example::

        >>> import tempfile
        >>> from torchrec_rankmixer.train.config import load_config
        >>> d = RunDir(tempfile.mkdtemp(), load_config(overrides=["run.tensorboard=false"]), True)
        >>> d.log({"step": 1, "train_loss": 0.5}); d.close()
        >>> open(d.metrics_path).read().strip()
        '{"step": 1, "train_loss": 0.5}'
    """

    def __init__(self, path: str, cfg: TrainConfig, is_main: bool) -> None:
        self.path, self.is_main = path, is_main
        self.checkpoints = os.path.join(path, "checkpoints")
        self.metrics_path = os.path.join(path, "metrics.jsonl")
        self.records: List[Dict[str, Any]] = []
        self._tb: Optional[Any] = None
        if not is_main:
            return
        os.makedirs(self.checkpoints, exist_ok=True)
        with open(os.path.join(path, "config.yaml"), "w") as f:
            yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
        if cfg.run.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

                self._tb = SummaryWriter(os.path.join(path, "tensorboard"))
            except ImportError:
                self._tb = None

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
