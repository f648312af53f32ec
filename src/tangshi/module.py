"""PoemLM: the LightningModule that trains a CharLM: its steps, loss, optimiser and schedule, and what its
checkpoint carries besides the weights.

Losses are means over real (non-pad) tokens, aggregated over an epoch as total NLL / total tokens, so a
batch of short poems does not count as much as a batch of long ones. Logged: ``{train,val,test}/loss``
(nats/char), ``/bpc`` (bits/char), ``/ppl`` and the learning rate. Throughput, training time, gradient norms,
gradient flow and sampled poems are callbacks' (:mod:`tangshi.callbacks`).
"""

from __future__ import annotations

import logging
import math
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
    lr_by_size_exponent`` when a reference budget is set (experiment=scaling: the cells' rates at one core size,
    carried to others by the rule in each cell's recipe; the gated cells and the RNN follow different rules,
    docs/convergence.md)."""
    optim = dict(optim)
    exponent = optim.pop("lr_by_size_exponent", None)
    reference = optim.pop("lr_reference_budget", None)
    if reference and exponent is None:
        raise TangshiError(
            f"optim.lr_reference_budget is set but model.cell={cell} has no size rule: set "
            f"recipes.{cell}.optim.lr_by_size_exponent (0 keeps the rate at every size)"
        )
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
        total, count = self.model.loss(batch["inputs"], batch["targets"])
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
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=n)
        self.log("train/bpc", loss / math.log(2), on_step=True, batch_size=n)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True)  # type: ignore[union-attr]
        return loss

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
        # A plain function, so LambdaLR keeps no copy of the schedule in its state: the schedule travels in
        # the tangshi part of the checkpoint, where a resume can extend it, and a time limit can end it earlier.
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.schedule(step))  # type: ignore[misc]
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def end_schedule_at(self, step: int, total: int) -> bool:
        """Move the schedule's end to ``total`` from ``step`` on (a time limit that will stop the run there:
        :class:`tangshi.callbacks.StoppingRule`); False where there is no schedule to move."""
        if self.schedule is None:
            return False
        self.schedule = self.schedule.extended(step, total)
        return True

    # -- checkpoints ------------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The RNG state (dropout) makes a resumed run continue exactly as an uninterrupted one would.
        checkpoint[CHECKPOINT_KEY] = {
            "format": CHECKPOINT_FORMAT,
            "vocab": self.vocab.to_dict(),
            "torch_rng": torch.get_rng_state(),
            "schedule": self.schedule.state() if self.schedule is not None else None,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get(CHECKPOINT_KEY, {}).get("vocab")
        if saved is None:
            raise TangshiError("checkpoint has no tangshi vocabulary; it was not written by tangshi")
        Vocab.from_dict(saved).check_matches(self.vocab, "resume from this checkpoint")
        rng = checkpoint[CHECKPOINT_KEY].get("torch_rng")
        if rng is not None and self._trainer is not None and self.trainer.state.fn == "fit":  # resuming a fit
            torch.set_rng_state(rng)
            schedule = checkpoint[CHECKPOINT_KEY].get("schedule")
            if schedule is not None:
                self._restored_schedule = (int(checkpoint.get("global_step", 0)), schedule)
