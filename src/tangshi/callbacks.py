"""Lightning callbacks that the default configs use."""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, TQDMProgressBar
from torch import Tensor

from tangshi import figures
from tangshi.atomic import write_json
from tangshi.errors import TangshiError, require_positive_int
from tangshi.gradflow import DISTANCES, decay_ratios, gradient_flow, probe_batch
from tangshi.model import IGNORE_INDEX
from tangshi.schedule import steps_in_time

log = logging.getLogger(__name__)


class TrainingClock(L.Callback):
    """Seconds and tokens of the training steps only (forward, backward, optimiser step, from each batch's start
    to its end), so validation, checkpoints and diagnostics never count as training. Logs ``train/tokens_per_s``
    every step and ``time/train_s`` at every validation (the time axis of comparisons); both totals travel in
    the checkpoint, so a resumed run's clock goes on. A run puts it first among its callbacks: its end-of-batch
    reading then comes before any other callback's work."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.tokens = 0
        self.first_step_at: float | None = None  # wall clock, for a run's start-up time
        self._started: float | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._started = time.perf_counter()
        if self.first_step_at is None:
            self.first_step_at = time.time()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._started is None:
            return
        seconds = time.perf_counter() - self._started
        tokens = int((batch["targets"] != IGNORE_INDEX).sum())
        self.seconds += seconds
        self.tokens += tokens
        pl_module.log("train/tokens_per_s", tokens * trainer.world_size / seconds, on_step=True)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            pl_module.log("time/train_s", self.seconds, reduce_fx="max")

    def tokens_per_s(self, world_size: int = 1) -> float | None:
        """Every rank trains on as many batches, so this rank's throughput stands for each rank's."""
        return self.tokens * world_size / self.seconds if self.seconds else None

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "tokens": self.tokens}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seconds, self.tokens = float(state_dict["seconds"]), int(state_dict["tokens"])

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        old = checkpoint.get("tangshi", {})  # checkpoints from before this callback kept the clock there
        if "train_seconds" in old:
            self.seconds, self.tokens = float(old["train_seconds"]), int(old.get("timed_tokens", 0))


class GradientNorms(L.Callback):
    """The global gradient norm before clipping, every step (after mixed-precision unscaling and DDP's
    all-reduce, before Lightning clips): logged as ``train/grad_norm``, spikes being exploding gradients, with
    the share of steps clipping changed (``train/clip_share``). Kept as tensors so a GPU never waits on them;
    the totals travel in the checkpoint."""

    def __init__(self) -> None:
        self.stats: dict[str, Tensor] = {}

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        norm = torch.nn.utils.get_total_norm(grads).float()
        clip = trainer.gradient_clip_val
        s = {k: self.stats.get(k, torch.zeros(())).to(norm.device) for k in ("steps", "clipped", "sum", "max")}
        s["steps"] += 1
        s["clipped"] += (norm > clip).float() if clip else 0.0
        s["sum"] += norm
        s["max"] = torch.maximum(s["max"], norm)
        self.stats = s
        pl_module.log("train/grad_norm", norm, on_step=True)
        pl_module.log("train/clip_share", s["clipped"] / s["steps"], on_step=True)

    def summary(self) -> dict[str, float]:
        """Mean and largest norm before clipping, and the share of steps that clipping changed."""
        s = {k: float(v) for k, v in self.stats.items()}
        if not s.get("steps"):
            return {}
        return {
            "grad_norm_mean": s["sum"] / s["steps"],
            "grad_norm_max": s["max"],
            "clip_share": s["clipped"] / s["steps"],
        }

    def state_dict(self) -> dict[str, Any]:
        return {k: float(v) for k, v in self.stats.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.stats = {k: torch.tensor(float(v)) for k, v in state_dict.items()}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        old = checkpoint.get("tangshi", {}).get("grad_stats")  # checkpoints from before this callback
        if old:
            self.stats = {k: torch.as_tensor(v).float() for k, v in old.items()}


class StepProgressBar(TQDMProgressBar):
    """One training bar over the whole run, ``global step / max_steps``, so its ETA is the run's.

    Lightning's bar restarts every epoch and its ETA is the epoch's; runs here are budgeted in steps.
    Without ``max_steps`` it falls back to the per-epoch bar.
    """

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.max_steps <= 0:
            return super().on_train_epoch_start(trainer, *args)
        bar = self.train_progress_bar
        if bar.total != trainer.max_steps:
            bar.reset(total=trainer.max_steps)
            bar.n = bar.initial = trainer.global_step  # a resumed run continues where it stopped
        bar.set_description(f"Epoch {trainer.current_epoch}")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.max_steps <= 0:
            return super().on_train_batch_end(trainer, pl_module, *args)
        bar = self.train_progress_bar
        if bar.total != trainer.max_steps:  # the time limit moved the run's end (StoppingRule)
            bar.total = trainer.max_steps
        if self._should_update(trainer.global_step, bar.total):
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # also refreshes the bar

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the run dir names the run; an empty version number says nothing
        return metrics


def parse_duration(value: str | None, name: str = "trainer.max_time") -> float | None:
    """Seconds in a Lightning-style ``DD:HH:MM:SS`` duration (``HH:MM:SS`` and ``MM:SS`` too); None for None."""
    if value is None:
        return None
    parts = str(value).split(":")
    try:
        numbers = [float(x) for x in parts]
    except ValueError:
        numbers = []
    if not 1 <= len(numbers) <= 4 or any(x < 0 for x in numbers):
        raise TangshiError(f"{name} must be DD:HH:MM:SS (e.g. 00:00:14:00) or null, got {value!r}")
    seconds = 0.0
    for unit, x in zip((86400, 3600, 60, 1)[-len(numbers) :], numbers, strict=True):
        seconds += unit * x
    return seconds


class StoppingRule(L.Callback):
    """Stops training at ``trainer.max_steps``, at the epoch cap, or after ``max_seconds`` of training in this
    process, whichever comes first, and always validates the step it stops at, so the best checkpoint can be
    the final weights and no trained steps go unscored.

    The time limit counts this process only: Lightning's own ``max_time`` restores the time spent before a
    resume, so a resumed run with a larger ``max_steps`` would stop at once.

    With ``fit_schedule``, a run the time limit would stop short of ``max_steps`` ends at the step its pace
    reaches in time instead (:func:`tangshi.schedule.steps_in_time`, measured after ``calibrate_after`` steps,
    every ``refit_every`` steps after and at every validation), its learning-rate schedule ending there too, so it
    stops cooled down rather than cut at a high rate; ``stopped_by`` is then ``max_time`` and ``fitted`` holds the
    pace and the steps. Fitting between validations lets a machine that speeds up late use the time it frees:
    fitted at validations only, a run whose end fell before the next one stopped with two of its 14 minutes unused.
    """

    def __init__(
        self,
        max_seconds: float | None = None,
        fit_schedule: bool = False,
        calibrate_after: int = 50,
        refit_every: int = 100,
    ):
        self.max_seconds = max_seconds
        self.fit_schedule, self.calibrate_after, self.refit_every = fit_schedule, calibrate_after, refit_every
        self.stopped_by: str | None = None
        self.fitted: dict[str, Any] | None = None  # {"steps", "of", "s_per_step"} once the schedule is moved
        self._start = 0.0
        self._first_step = 0
        self._steps = 0  # max_steps as configured, before any fitting

    def describe(self, trainer: L.Trainer) -> str:
        limits = []
        if trainer.max_steps > 0:
            limits.append(f"{trainer.max_steps} steps (trainer.max_steps)")
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            limits.append(f"{trainer.max_epochs} epochs (trainer.max_epochs)")
        if self.max_seconds:
            limits.append(f"{self.max_seconds / 60:g} min of training in this process (trainer.max_time)")
        for cb in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(cb, EarlyStopping):
                limits.append(f"no better {cb.monitor} for {cb.patience} validations (early stopping)")
        if not limits:
            return "none"
        rule = " or ".join(limits) + (", whichever comes first" if len(limits) > 1 else "")
        if self.fit_schedule and self.max_seconds and trainer.max_steps > 0:
            rule += "; if the time comes first, the schedule ends with it (fit_schedule_to_time)"
        return rule

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.monotonic()
        self._first_step, self._steps = trainer.global_step, trainer.max_steps

    def _fit(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (self.fit_schedule and self.max_seconds and self._steps > 0):
            return
        step, elapsed = trainer.global_step, time.monotonic() - self._start
        pace = elapsed / max(1, step - self._first_step)
        total = trainer.strategy.broadcast(steps_in_time(step, pace, elapsed, self.max_seconds, self._steps))
        if abs(total - trainer.max_steps) <= 0.01 * (trainer.max_steps - step):  # a move under 1 % of what is left
            return
        if not pl_module.end_schedule_at(step, total):  # type: ignore[operator]
            return
        trainer.fit_loop.epoch_loop.max_steps = total
        if self.fitted is None:
            log.info(
                "at %.2f s a step, %d steps do not fit %g min (trainer.max_time): the schedule now ends at step %d "
                "(moved again as the pace changes)",
                pace,
                self._steps,
                self.max_seconds / 60,
                total,
            )
        else:  # later moves, one every 100 steps or so, would crowd the log; the summary says where it ended
            log.debug("at %.2f s a step the schedule now ends at step %d", pace, total)
        self.fitted = {"steps": total, "of": self._steps, "s_per_step": round(pace, 4)}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking and not trainer.should_stop:
            self._fit(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        done = trainer.global_step - self._first_step
        if done == self.calibrate_after or (done > self.calibrate_after and done % self.refit_every == 0):
            self._fit(trainer, pl_module)
        epoch_loop = trainer.fit_loop.epoch_loop
        if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            self.stopped_by = "max_time" if trainer.max_steps < self._steps else "max_steps"
        elif (
            trainer.max_epochs is not None
            and trainer.max_epochs > 0
            and trainer.current_epoch + 1 >= trainer.max_epochs
            and epoch_loop.batch_progress.is_last_batch
        ):
            self.stopped_by = "max_epochs"
        elif self.max_seconds is not None:
            out_of_time = trainer.strategy.broadcast(time.monotonic() - self._start >= self.max_seconds)
            if out_of_time:
                self.stopped_by = "max_time"
        if self.stopped_by is not None:
            # Lightning validates when a callback asks to stop (its early-stopping path), not at max_steps
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stopped_by is None and trainer.should_stop:  # only early stopping asks to stop besides this rule
            self.stopped_by = "early_stopping"


class GradientFlow(L.Callback):
    """Gradient flow through time (:func:`tangshi.gradflow.gradient_flow`) at initialisation and every
    ``every_n_steps`` steps, on fixed validation poems. Logs ``gradflow/layer{l}_k{k}`` (the share of the
    gradient left after k characters) and a figure to TensorBoard, and keeps every curve in
    ``<dirpath>/gradient_flow.json``. One forward and backward pass of ``poems`` × ``length`` tokens each time.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        every_n_steps: int = 100,
        length: int = 48,
        poems: int = 64,
        distances: Sequence[int] = DISTANCES,
    ):
        require_positive_int("gradient_flow.every_n_steps", every_n_steps)
        self.path = Path(dirpath) / "gradient_flow.json" if dirpath else None
        self.every, self.length, self.poems, self.distances = every_n_steps, length, poems, tuple(distances)
        self.measurements: list[dict[str, Any]] = []
        self._tokens: Tensor | None = None
        self._start: tuple[int, Any] | None = None  # (step, copy of the weights) awaiting measurement

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # on_train_start, not on_fit_start: a resumed run's step is restored by now
        if not trainer.is_global_zero:
            return
        if not getattr(pl_module.model.core, "recurrent", False):  # type: ignore[union-attr]
            log.info("gradient flow not measured: a %s core has no h_t to carry it", pl_module.model.cell)
            return
        bodies = trainer.datamodule.prepared.splits["val"]  # type: ignore[attr-defined]
        try:
            self._tokens = probe_batch(bodies, pl_module.vocab, self.length, self.poems)  # type: ignore[arg-type]
        except TangshiError as e:  # a corpus of short poems: train anyway, say why there is no curve
            log.warning("gradient flow not measured: %s (callbacks.gradient_flow.length)", e)
            return
        if self.path is not None and self.path.exists():  # resumed: keep what was measured before this step
            saved = json.loads(self.path.read_text(encoding="utf-8"))["measurements"]
            self.measurements = [m for m in saved if m["step"] <= trainer.global_step]
        if not self.measurements or self.measurements[-1]["step"] < trainer.global_step:
            # Measured later, not now: a copy of these weights is cheap, while the measurement (and the first
            # figure's matplotlib import) would delay the first training step.
            self._start = (trainer.global_step, copy.deepcopy(pl_module.model))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step % self.every == 0:
            self._measure(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._measure(trainer, pl_module)  # the final weights, whatever step the run stopped at

    def _measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._tokens is None:
            return
        if self._start is not None:
            step, model = self._start
            self._start = None
            self._record(trainer, model, step, self._tokens)
        if not self.measurements or self.measurements[-1]["step"] != trainer.global_step:
            self._record(trainer, pl_module.model, trainer.global_step, self._tokens)  # type: ignore[arg-type]

    def _record(self, trainer: L.Trainer, model: Any, step: int, tokens: Tensor) -> None:
        norms = gradient_flow(model, tokens.to(next(model.parameters()).device))
        self.measurements.append({"step": step, "norms": norms.tolist()})
        if trainer.logger is not None:
            ratios = decay_ratios(norms, self.distances)
            trainer.logger.log_metrics({f"gradflow/{k}": v for k, v in ratios.items()}, step=step)
            experiment = getattr(trainer.logger, "experiment", None)
            if hasattr(experiment, "add_figure"):
                curves = {f"step {m['step']}": m["norms"] for m in (self.measurements[0], self.measurements[-1])}
                title = f"{model.cell}: gradient flow through time"
                experiment.add_figure("gradflow/curve", figures.gradient_flow(curves, title), step)  # closes it
        if self.path is not None:
            write_json(self.path, self.record(str(model.cell)))

    def record(self, cell: str) -> dict[str, Any]:
        return {"cell": cell, "length": self.length, "poems": self.poems, "measurements": self.measurements}

    def summary(self) -> dict[str, Any]:
        """For metrics.json: the decay ratios at initialisation and at the last measurement."""
        if not self.measurements:
            return {}
        first, last = self.measurements[0], self.measurements[-1]
        return {
            "length": self.length,
            "poems": self.poems,
            "first_step": first["step"],
            "first": decay_ratios(torch.tensor(first["norms"]), self.distances),
            "last_step": last["step"],
            "last": decay_ratios(torch.tensor(last["norms"]), self.distances),
        }


class StableCheckpoint(L.Callback):
    """Saves ``<dirpath>/stable.ckpt`` at the step where a ``wsd`` schedule starts its cool-down: the weights
    an extension of the run resumes from (:mod:`tangshi.schedule`). Does nothing under other schedules."""

    def __init__(self, dirpath: str):
        self.path = Path(dirpath) / "stable.ckpt"

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        schedule = getattr(pl_module, "schedule", None)
        if schedule is None or schedule.kind != "wsd" or trainer.global_step != schedule.decay_start:
            return
        partial = self.path.with_name(self.path.name + ".partial")
        trainer.save_checkpoint(partial)  # every rank takes part; rank zero writes
        if trainer.is_global_zero:
            partial.replace(self.path)  # atomic: an extension never reads half a checkpoint


class ValidationPoems(L.Callback):
    """After every validation: ``samples`` poems (the sampling settings of ``conf/sampling``) as TensorBoard
    text, and the form, rhyme and 平仄 shares of ``poetics`` freely sampled poems (fixed seed) as
    ``poetics/*`` scalars, whose curves show when a model learns form and rhyme on its own. Sampling has its own
    generator: the training run's random numbers are untouched."""

    def __init__(self, samples: dict[str, Any] | None = None, poetics: int = 32):
        from tangshi.config import to_plain
        from tangshi.decoding import SamplingConfig

        self.samples = SamplingConfig(**to_plain(samples or {"n": 4}))
        self.poetics = int(poetics)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.logger is None:
            return
        from tangshi.decoding import SamplingConfig, sample
        from tangshi.poetics import poetics_metrics

        model, vocab = pl_module.model, pl_module.vocab  # type: ignore[union-attr]
        experiment = getattr(trainer.logger, "experiment", None)
        if hasattr(experiment, "add_text"):
            # Markdown: two trailing spaces keep one poem per line in TensorBoard's text view.
            experiment.add_text("samples", "  \n".join(sample(model, vocab, self.samples)), trainer.global_step)
        if self.poetics:
            metrics = poetics_metrics(sample(model, vocab, SamplingConfig(n=self.poetics, seed=0)))
            trainer.logger.log_metrics(
                {f"poetics/{k}": v for k, v in metrics.items() if k != "poems"}, step=trainer.global_step
            )
