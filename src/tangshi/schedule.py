"""The learning-rate schedule: a multiplier of the peak rate at each step, read top to bottom.

* ``cosine``: linear warm-up over ``warmup`` steps, then a cosine from the peak to ``min_ratio`` at ``total``.
* ``wsd`` (warmup-stable-decay, Hägele et al. 2024): warm-up, the peak held, then over the last ``decay_frac``
  of the steps a 1 − sqrt cool-down to ``min_ratio``. An extension keeps the stable phase going and cools down
  at its own end; training keeps the weights where the cool-down began (``checkpoints/stable.ckpt``), so a
  finished run is extended from there, at the peak rate, not from its cooled-down end.
* ``constant``: the peak throughout.

A cosine run moved to another ``total`` keeps its place on the curve: the rest of its cosine, from where it is
to ``min_ratio``, is stretched or squeezed to the new end (``segments``), so the rate never jumps, and many small
moves (a time limit refitted as the pace changes) still give one cosine's shape, not a rate held high and then
crammed into a late cool-down. A finished cosine run is at its floor, so its extension trains at the floor: use
``wsd`` for runs meant to be extended.

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
        """The cosine between the peak (1) and ``min_ratio`` that reads ``ratio`` at ``start``, the rest of it
        run over ``start``..``end``. Where on the curve it starts follows from ``ratio`` (the curve falls
        monotonically), so a segment stores only [start, ratio, end]."""
        span = 1 - self.min_ratio
        if span <= 0:
            return ratio
        begun = math.acos(max(-1.0, min(1.0, 2 * (ratio - self.min_ratio) / span - 1))) / math.pi
        phase = begun + (1 - begun) * min(1.0, (step - start) / max(1, end - start))
        return self.min_ratio + span * 0.5 * (1 + math.cos(math.pi * phase))

    @property
    def end(self) -> int:
        return int(self.segments[-1][2]) if self.segments else self.total

    def extended(self, step: int, total: int) -> Schedule:
        """This schedule resumed at ``step`` and run to ``total`` (more steps or fewer): a ``wsd`` schedule with the
        new end (its stable phase goes on; an end so near that the cool-down should have begun drops the rate into
        it), a cosine that keeps its place on the curve and runs the rest of it to the new end (within its warm-up,
        the same warm-up and a cosine to the new end)."""
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
