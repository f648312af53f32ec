"""The learning-rate schedule: a multiplier of the peak rate at each step, read top to bottom.

* ``cosine``: linear warm-up over ``warmup`` steps, then a cosine from the peak to ``min_ratio`` at ``total``.
* ``wsd`` (warmup-stable-decay, Hägele et al. 2024): warm-up, the peak held, then over the last ``decay_frac``
  of the steps a 1 − sqrt cool-down to ``min_ratio``. An extension keeps the stable phase going and cools down
  at its own end; training keeps the weights where the cool-down began (``checkpoints/stable.ckpt``), so a
  finished run is extended from there, at the peak rate, not from its cooled-down end.
* ``constant``: the peak throughout.

A cosine run extended to a larger ``total`` continues from the multiplier it had (no jump) and decays from
there to ``min_ratio`` at the new end (``segments``); a finished cosine run is at its floor, so its extension
trains at the floor: use ``wsd`` for runs meant to be extended.

A run whose time limit (``trainer.max_time``) would cut it short of its steps has its schedule end moved to the
step the time allows (``steps_in_time``, ``fit_schedule_to_time``), so it still ends cooled down, not at a high rate.
"""

from __future__ import annotations

import math
from typing import Any

SCHEDULERS = ("cosine", "wsd", "constant")


class Schedule:
    def __init__(
        self,
        kind: str = "cosine",
        warmup: int = 0,
        total: int = 1,
        min_ratio: float = 0.1,
        decay_frac: float = 0.2,
        segments: list[list[float]] | None = None,
    ):
        self.kind, self.warmup, self.total = kind, int(warmup), int(total)
        self.min_ratio, self.decay_frac = float(min_ratio), float(decay_frac)
        self.segments = [list(seg) for seg in segments or []]  # cosine continuations: [start, ratio, end]

    @property
    def decay_start(self) -> int:
        """The first step of the cool-down (``wsd``); the end of warm-up for ``cosine``."""
        if self.kind == "wsd":
            return max(self.warmup, self.total - round(self.decay_frac * self.total))
        return self.warmup

    def __call__(self, step: int) -> float:
        if self.kind == "constant":
            return 1.0
        for start, ratio, end in reversed(self.segments):
            if step >= start:
                return self._cosine(step, int(start), ratio, int(end))
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "cosine":
            return self._cosine(step, self.warmup, 1.0, self.total)
        if step < self.decay_start:
            return 1.0
        progress = min(1.0, (step - self.decay_start) / max(1, self.total - self.decay_start))
        return self.min_ratio + (1 - self.min_ratio) * (1 - math.sqrt(progress))

    def _cosine(self, step: int, start: int, ratio: float, end: int) -> float:
        progress = min(1.0, (step - start) / max(1, end - start))
        return self.min_ratio + (ratio - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    @property
    def end(self) -> int:
        return int(self.segments[-1][2]) if self.segments else self.total

    def extended(self, step: int, total: int) -> Schedule:
        """This schedule resumed at ``step`` and run to ``total`` (more steps or fewer): a ``wsd`` schedule with the
        new end (its stable phase goes on; an end so near that the cool-down should have begun drops the rate into
        it), a cosine continued from the multiplier it has at ``step`` (within its warm-up, the same warm-up and a
        cosine to the new end)."""
        if total == self.end:
            return self
        if self.kind == "wsd" or (step <= self.warmup and not self.segments):  # no decay begun: a new end
            return Schedule(self.kind, self.warmup, total, self.min_ratio, self.decay_frac)
        segments = [*self.segments, [step, self(step), total]]
        return Schedule(self.kind, self.warmup, self.total, self.min_ratio, self.decay_frac, segments)

    def state(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "warmup": self.warmup,
            "total": self.total,
            "min_ratio": self.min_ratio,
            "decay_frac": self.decay_frac,
            "segments": self.segments,
        }


def steps_in_time(step: int, pace_s: float, elapsed_s: float, budget_s: float, cap: int, margin: float = 0.03) -> int:
    """The last step a run at ``step``, ``elapsed_s`` into ``budget_s`` seconds, reaches at ``pace_s`` seconds a
    step (validations included), less a ``margin`` of the budget for a slower stretch; at most ``cap`` (its
    configured steps) and at least the next step."""
    left = budget_s * (1 - margin) - elapsed_s
    return max(step + 1, min(cap, step + int(left / pace_s)))
