"""Decisions taken on the validation set: early stopping, the learning-rate decay on a
plateau, and which step was best (to end the run with its weights).

The rule is FuxiCTR's (the BARS benchmark's), so its published baselines reproduce in
``rankmixer-train``: after each evaluation, a validation AUC at least ``min_delta`` above
the best so far is an improvement (the stall count resets); anything else is a stall:
after ``early_stop_patience`` stalls in a row the run stops, and otherwise the learning
rates are multiplied by ``plateau_decay`` (floored at ``plateau_min_lr``).
"""

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Tuple

from torchrec_rankmixer.train.config import OptimSettings, TrainSettings


@dataclass
class ValidationState:
    """The best validation metric, its step, the current stall count and the learning-rate
    scale the plateau decay has reached; checkpointed in ``progress.json`` (exact resume).

    Example::

        >>> t = TrainSettings(early_stop_patience=2)
        >>> o = OptimSettings(lr=1e-3, plateau_decay=0.1)
        >>> s = ValidationState()
        >>> [s.update(auc, step, t, o) for step, auc in ((10, 0.70), (20, 0.69), (30, 0.71), (40, 0.70), (50, 0.70))]
        [(True, False), (False, False), (True, False), (False, False), (False, True)]
        >>> s.best_step, round(s.lr_scale, 4)
        (30, 0.01)
    """

    best: float = -math.inf
    best_step: int = -1
    stalls: int = 0
    lr_scale: float = 1.0

    def update(self, metric: float, step: int, t: TrainSettings, o: OptimSettings) -> Tuple[bool, bool]:
        """Record the evaluation at ``step``; returns ``(improved, stop)``. A NaN metric (an
        evaluation set with one class) is a stall."""
        if not math.isnan(metric) and metric >= self.best + t.early_stop_min_delta:
            self.best, self.best_step, self.stalls = metric, step, 0
            return True, False
        self.stalls += 1
        if t.early_stop_patience and self.stalls >= t.early_stop_patience:
            return False, True
        if o.plateau_decay < 1:
            self.lr_scale = max(self.lr_scale * o.plateau_decay, o.plateau_min_lr / o.lr)
        return False, False

    def to_dict(self) -> Dict[str, Any]:
        out = asdict(self)
        out["best"] = None if math.isinf(self.best) else self.best  # JSON has no -inf
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ValidationState":
        best = data.get("best")
        return cls(best=-math.inf if best is None else float(best), best_step=int(data.get("best_step", -1)),
                   stalls=int(data.get("stalls", 0)), lr_scale=float(data.get("lr_scale", 1.0)))
