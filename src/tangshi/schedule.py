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
        """This schedule resumed at ``step`` and run to ``total``: a ``wsd`` schedule with the new end (its
        stable phase goes on), a cosine continued from the multiplier it has at ``step``."""
        if total == self.end:
            return self
        if self.kind == "wsd":
            return Schedule("wsd", self.warmup, total, self.min_ratio, self.decay_frac)
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
