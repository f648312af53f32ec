"""PoemLM: the LightningModule that trains a CharLM and logs what a researcher compares cells by.

Losses are means over real (non-pad) tokens, aggregated over an epoch as total NLL / total tokens, so a
batch of short poems does not count as much as a batch of long ones. Logged: ``{train,val,test}/loss``
(nats/char), ``/bpc`` (bits/char), ``/ppl``; ``train/grad_norm`` (before clipping), ``train/tokens_per_s``,
the learning rate, and a few sampled poems as text after each validation.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torchmetrics.aggregation import MeanMetric

from tangshi.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_KEY, read_checkpoint
from tangshi.errors import TangshiError
from tangshi.model import build_model
from tangshi.optimizer import OPTIMIZERS, build_optimizer
from tangshi.schedule import SCHEDULERS, Schedule
from tangshi.vocab import Vocab

log = logging.getLogger(__name__)


def check_optim(optim: dict[str, Any]) -> None:
    """One clear error for an optimiser setting that cannot work (cheap: call before heavy work)."""
    if optim.get("scheduler", "cosine") not in SCHEDULERS:
        raise TangshiError(f"unknown optim.scheduler {optim['scheduler']!r}; allowed: {', '.join(SCHEDULERS)}")
    if optim.get("optimizer", "adamw") not in OPTIMIZERS:
        raise TangshiError(f"unknown optim.optimizer {optim['optimizer']!r}; allowed: {', '.join(OPTIMIZERS)}")
    lr = optim.get("lr")
    if not isinstance(lr, int | float) or isinstance(lr, bool) or not lr > 0:
        raise TangshiError(f"optim.lr must be a positive number, got {lr!r}")


def resolve_lr(optim: dict[str, Any], cell: str, param_budget: int | None = None) -> dict[str, Any]:
    """The optimiser settings with ``lr`` scaled by ``(lr_reference_budget / param_budget) **
    lr_by_size_exponent`` when those are set (experiment=scaling: the cells' rates at one core size, carried to
    others by a rule). The exponent is a number, or a mapping from cell to number: the gated cells and the RNN
    follow different rules (docs/convergence.md)."""
    optim = dict(optim)
    exponent = optim.pop("lr_by_size_exponent", None)
    reference = optim.pop("lr_reference_budget", None)
    if isinstance(exponent, Mapping):
        if cell not in exponent:
            raise TangshiError(
                f"optim.lr_by_size_exponent has no exponent for cell {cell!r}; it has: {', '.join(exponent)}"
            )
        exponent = exponent[cell]
    if exponent and reference and param_budget:
        optim["lr"] = float(optim["lr"]) * (float(reference) / float(param_budget)) ** float(exponent)
    check_optim(optim)
    return optim


class PoemLM(L.LightningModule):
    def __init__(
        self,
        model: dict[str, Any],
        optim: dict[str, Any],
        vocab: dict[str, Any],
        data: dict[str, Any] | None = None,
    ):
        """``data`` (the data config) is only recorded, so evaluation can rebuild the test split from the
        checkpoint. What is logged besides the losses is done by callbacks (:mod:`tangshi.callbacks`)."""
        super().__init__()
        # Plain containers only: a DictConfig in a checkpoint fails torch's weights_only load. The
        # vocabulary is large, so it is kept out of hparams.yaml and stored by on_save_checkpoint instead.
        # logger=False: train() logs one TensorBoard hparams entry per run, with its final metrics.
        self.save_hyperparameters(ignore=["vocab"], logger=False)
        check_optim(optim)
        self.vocab = Vocab.from_dict(vocab)
        self.model = build_model(model, self.vocab)
        self.metrics = torch.nn.ModuleDict({s: MeanMetric() for s in ("val", "test")})
        self._clock: float | None = None
        self.tokens_seen = 0
        self.first_step_at: float | None = None  # wall clock, for start-up time
        self.train_seconds = 0.0
        self.timed_tokens = 0
        self._clock_tokens = 0
        # Gradient-norm statistics over all steps, kept as tensors so a GPU never waits on them.
        self.grad_stats: dict[str, Tensor] = {}
        self.schedule: Schedule | None = None
        self._restored_schedule: tuple[int, dict[str, Any]] | None = None  # (step, state) from a checkpoint

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None, **kwargs: Any) -> PoemLM:  # type: ignore[override]
        """Lightning's way of loading a run, ``PoemLM.load_from_checkpoint("…/best.ckpt")``: the vocabulary,
        kept out of the hyperparameters because of its size, is read from the checkpoint itself."""
        if "vocab" not in kwargs:
            kwargs["vocab"] = read_checkpoint(checkpoint_path)[CHECKPOINT_KEY]["vocab"]
        return super().load_from_checkpoint(checkpoint_path, map_location=map_location, **kwargs)

    def on_fit_start(self) -> None:
        # Parameter counts as scalars, so TensorBoard and reports can set cells side by side at equal budgets.
        if self.logger is not None:
            self.logger.log_metrics({f"params/{k}": float(v) for k, v in self.model.param_counts().items()}, step=0)

    # -- steps ------------------------------------------------------------------------------------------

    def _step(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        feats, _ = self.model(batch["inputs"])
        total, count = self.model.nll(feats, batch["targets"])
        return total / count, count

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, count = self._step(batch)
        if not torch.isfinite(loss):
            # Stop at once: every step after a NaN is wasted, and last.ckpt still holds the last good weights.
            clip = self.trainer.gradient_clip_val
            raise TangshiError(
                f"training diverged: the loss is {loss.item()} at step {self.global_step}; lower optim.lr "
                f"(now {self.hparams.optim['lr']}) or clip gradients (trainer.gradient_clip_val, now {clip}), "
                "and resume from the last good checkpoint (last.ckpt) if you like"
            )
        n = int(count)
        self.tokens_seen += n
        # The time from one step's start to the next is the previous step's work: credit it with the previous
        # step's tokens. The clock restarts after every validation, so throughput counts training only.
        now = time.perf_counter()
        if self._clock is not None:
            dt = now - self._clock
            self.train_seconds += dt
            self.timed_tokens += self._clock_tokens
            self.log("train/tokens_per_s", self._clock_tokens * self.trainer.world_size / dt, on_step=True)
        self._clock, self._clock_tokens = now, n
        if self.first_step_at is None:
            self.first_step_at = time.time()
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=n)
        self.log("train/bpc", loss / math.log(2), on_step=True, batch_size=n)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True)  # type: ignore[union-attr]
        return loss

    def on_train_epoch_start(self) -> None:
        self._clock = None

    def pause_clock(self, seconds: float) -> None:
        """Leave ``seconds`` spent between two steps (a diagnostic) out of the training time."""
        if self._clock is not None:
            self._clock += seconds

    def on_validation_start(self) -> None:
        self._clock = None

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: Any = None,
    ) -> None:
        """Clip by global norm and log that norm, from one norm computation (Lightning's default clipping
        would compute it again). Called after mixed-precision unscaling and DDP's all-reduce, every step."""
        if gradient_clip_algorithm not in (None, "norm"):  # "value" clipping: Lightning's own, norm not logged
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return None
        # the raw norm, before clipping: spikes here are exploding gradients
        norm = torch.nn.utils.get_total_norm([p.grad for p in params]).float()
        if gradient_clip_val:
            torch.nn.utils.clip_grads_with_norm_(params, gradient_clip_val, norm)
        self.log("train/grad_norm", norm, on_step=True)
        stats = {k: self.grad_stats.get(k, torch.zeros(())).to(norm.device) for k in ("steps", "clipped", "sum", "max")}
        stats["steps"] += 1
        stats["clipped"] += (norm > gradient_clip_val).float() if gradient_clip_val else 0.0
        stats["sum"] += norm
        stats["max"] = torch.maximum(stats["max"], norm)
        self.grad_stats = stats
        self.log("train/clip_share", stats["clipped"] / stats["steps"], on_step=True)
        return None

    def grad_summary(self) -> dict[str, float]:
        """Mean and largest gradient norm before clipping, and the share of steps that clipping changed."""
        s = {k: float(v) for k, v in self.grad_stats.items()}
        if not s.get("steps"):
            return {}
        steps = s["steps"]
        return {"grad_norm_mean": s["sum"] / steps, "grad_norm_max": s["max"], "clip_share": s["clipped"] / steps}

    def _eval_step(self, split: str, batch: dict[str, Tensor]) -> None:
        loss, count = self._step(batch)
        metric = self.metrics[split]
        metric.update(loss, weight=count)  # token-weighted mean over the epoch

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _log_eval(self, split: str) -> None:
        loss = self.metrics[split].compute()  # synchronised across ranks by torchmetrics
        self.metrics[split].reset()
        self.log(f"{split}/loss", loss, prog_bar=split == "val")
        self.log(f"{split}/bpc", loss / math.log(2), prog_bar=split == "val")
        self.log(f"{split}/ppl", torch.exp(loss))

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")
        if not self.trainer.sanity_checking:
            # the time axis of comparisons: seconds of training steps only, carried across resumes
            self.log("time/train_s", self.train_seconds, reduce_fx="max")

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    # -- optimisation -----------------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        o = self.hparams.optim
        optimizer = build_optimizer(self.model, o)
        kind = o.get("scheduler", "cosine")
        if kind == "constant":
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        if self._restored_schedule is not None:  # resumed: continue the stored schedule, to a new end if asked
            step, state = self._restored_schedule
            stored = Schedule(**state)
            if stored.kind == "wsd" and total > stored.end and step > stored.decay_start:
                log.warning(
                    "extending a wsd run from step %d, inside its cool-down (from step %d): the rate jumps back to "
                    "the peak; resume from checkpoints/stable.ckpt to extend the stable phase",
                    step,
                    stored.decay_start,
                )
            self.schedule = stored.extended(step, total)
        else:
            warmup = int(o.get("warmup_steps", 0))
            if warmup >= total:
                log.warning("optim.warmup_steps=%d >= %d steps: the rate never reaches optim.lr", warmup, total)
            self.schedule = Schedule(
                kind, warmup, total, float(o.get("min_lr_ratio", 0.1)), float(o.get("decay_frac", 0.2))
            )
        schedule = self.schedule
        # A plain function, so LambdaLR keeps no copy of the schedule in its state: the schedule travels in
        # the tangshi part of the checkpoint, where a resume can extend it.
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule(step))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- checkpoints ------------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The RNG state (dropout) makes a resumed run continue exactly as an uninterrupted one would.
        checkpoint[CHECKPOINT_KEY] = {
            "format": CHECKPOINT_FORMAT,
            "vocab": self.vocab.to_dict(),
            "torch_rng": torch.get_rng_state(),
            "grad_stats": {k: v.cpu() for k, v in self.grad_stats.items()},
            "schedule": self.schedule.state() if self.schedule is not None else None,
            "train_seconds": self.train_seconds,  # the clock of a resumed run goes on from here
            "timed_tokens": self.timed_tokens,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get(CHECKPOINT_KEY, {}).get("vocab")
        if saved is None:
            raise TangshiError("checkpoint has no tangshi vocabulary; it was not written by tangshi")
        Vocab.from_dict(saved).check_matches(self.vocab, "resume from this checkpoint")
        rng = checkpoint[CHECKPOINT_KEY].get("torch_rng")
        if rng is not None and self._trainer is not None and self.trainer.state.fn == "fit":  # resuming a fit
            torch.set_rng_state(rng)
            self.grad_stats = dict(checkpoint[CHECKPOINT_KEY].get("grad_stats", {}))
            self.train_seconds = float(checkpoint[CHECKPOINT_KEY].get("train_seconds", 0.0))
            self.timed_tokens = int(checkpoint[CHECKPOINT_KEY].get("timed_tokens", 0))
            schedule = checkpoint[CHECKPOINT_KEY].get("schedule")
            if schedule is not None:
                self._restored_schedule = (int(checkpoint.get("global_step", 0)), schedule)
