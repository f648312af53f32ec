"""Run one training job from a composed config: data → model → Trainer.fit → test → metrics.json → samples.

``scripts/train.py`` is a thin Hydra wrapper around :func:`train`; tests call it with composed configs.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from omegaconf import DictConfig

from tangshi import checkpoint, poem_sets, record
from tangshi.analysis import position_losses
from tangshi.atomic import write_json, write_text
from tangshi.callbacks import GradientFlow, GradientNorms, StoppingRule, TrainingClock, parse_duration
from tangshi.config import apply_recipe, command_line_keys, cpu_has_amx, default_threads, to_plain
from tangshi.datamodule import PoemDataModule
from tangshi.decoding import SamplingConfig, sample
from tangshi.errors import TangshiError
from tangshi.model import bits, check_config, resolve_budget
from tangshi.module import PoemLM, resolve_lr
from tangshi.optimizer import newton_schulz_dtype

log = logging.getLogger(__name__)
CPU_CORES = torch.get_num_threads()  # torch's default (physical cores), before any run of this process changes it


def train(cfg: DictConfig, process_start: float | None = None) -> dict[str, Any]:
    """Train, test and sample per ``cfg``; returns (and writes to ``<run dir>/metrics.json``) the summary.

    ``process_start`` (``time.time()`` when the calling script began) lets ``startup_s`` include imports.
    """
    run_dir = Path(cfg.paths.output_dir)
    started = time.perf_counter()
    entered = time.time()
    process_start = process_start or entered
    summary: dict[str, Any] = {"status": "running", "cell": cfg.model.cell, "seed": cfg.seed, "run_dir": str(run_dir)}
    metrics_path = run_dir / "metrics.json"
    # Settings errors surface here, in one line, before any data is read.
    taken = apply_recipe(cfg)
    if taken:
        log.info("recipe of %s: %s", cfg.model.cell, ", ".join(f"{k} {_shown(v)}" for k, v in taken.items()))
    check_config(**to_plain(cfg.model))
    model_cfg = resolve_budget(to_plain(cfg.model))
    optim = resolve_lr(to_plain(cfg.optim), model_cfg["cell"], cfg.model.get("param_budget"))
    settings = {"model": {**model_cfg, "param_budget": cfg.model.get("param_budget")}, "optim": optim}
    settings["data"] = to_plain(cfg.data)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path == "last" and metrics_path.exists():
        previous = json.loads(metrics_path.read_text(encoding="utf-8"))
        check_same_run(previous, settings, run_dir)
        if previous.get("status") == "completed":
            if not extends(previous, cfg):  # resuming a sweep: finished jobs are not redone
                log.info("%s already completed; nothing to resume", run_dir)
                return previous
            stable = run_dir / "checkpoints" / "stable.ckpt"
            if cfg.optim.get("scheduler") == "wsd" and stable.exists():
                ckpt_path = str(stable)  # the weights before the cool-down: the extension goes on at the peak
            log.info(
                "extending %s from step %s to %s steps (from %s)",
                run_dir,
                previous.get("steps"),
                cfg.trainer.max_steps,
                Path(ckpt_path).name if ckpt_path != "last" else "last.ckpt",
            )
    log.info("learning rate: %g", optim["lr"])
    datamodule = PoemDataModule.from_config(settings["data"], cfg.paths.data_dir, seed=cfg.seed)
    SamplingConfig(**to_plain(cfg.samples))
    devices = cfg.trainer.get("devices")
    processes = devices if cfg.trainer.get("accelerator") == "cpu" and isinstance(devices, int) else 1
    torch.set_num_threads(int(cfg.get("torch_threads") or default_threads(CPU_CORES, processes)))

    cfg.trainer.max_time = time_limit(cfg)  # as used, so the record says so: an explicit max_steps drops the guard
    stopping = StoppingRule(parse_duration(cfg.trainer.max_time), fit_schedule=bool(cfg.get("fit_schedule_to_time")))
    clock, norms = TrainingClock(), GradientNorms()
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    if not cfg.trainer.get("enable_progress_bar", True):  # the bar is a callback: drop it rather than fail
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]

    L.seed_everything(cfg.seed, workers=True)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        max_time=None,  # StoppingRule enforces it, counting this process only
        logger=[instantiate(cfg.logger)] if cfg.get("logger") else False,
        callbacks=[clock, norms, *callbacks, stopping],  # the clock first: no other callback's work is timed
    )
    log.info("precision: %s%s", trainer.precision, " (this CPU has AMX)" if cpu_has_amx() else "")
    if optim.get("optimizer") == "muon" and newton_schulz_dtype(trainer.strategy.root_device) == torch.float32:
        log.info("Muon's Newton-Schulz iteration in float32: this CPU has no bf16 matrix unit (optimizer.Muon)")
    log.info("stopping rule: %s", stopping.describe(trainer))
    # The record: every setting as used (not as spelled), and where it ran.
    config = to_plain(cfg)
    config.update(settings)
    config["trainer"]["precision"] = str(trainer.precision)
    config["ckpt_path"] = ckpt_path
    summary.update(config=config, environment=record.environment(cfg.trainer.get("accelerator")))
    if trainer.is_global_zero:
        write_json(metrics_path, summary)
    try:
        datamodule.prepare_data()
        datamodule.setup("fit")
        module = PoemLM(
            model=model_cfg,
            optim=optim,
            vocab=datamodule.vocab.to_dict(),
            data=settings["data"],
        )
        summary["params"] = module.model.param_counts()
        summary["hidden_size"] = model_cfg["hidden_size"]
        summary["lr"] = optim["lr"]
        summary["threads"] = torch.get_num_threads()
        summary["vocab_size"] = len(datamodule.vocab)
        summary["data"] = datamodule.prepared.meta["counts"]  # type: ignore[union-attr]
        log.info("parameters: %s", ", ".join(f"{k} {v:,}" for k, v in summary["params"].items()))

        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        # the monitored checkpoint (best.ckpt), not whichever ModelCheckpoint comes first: last.ckpt has its own
        ckpt_cb = next((c for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None)), None)
        best = ckpt_cb.best_model_path if isinstance(ckpt_cb, ModelCheckpoint) else ""
        summary.update(
            steps=trainer.global_step,
            stopped_by=stopping.stopped_by,
            schedule_fitted=stopping.fitted,  # the steps the time limit allowed, where it moved the end
            precision=str(trainer.precision),
            startup_s=clock.first_step_at - process_start if clock.first_step_at else None,
            train_started_at=clock.first_step_at,  # wall clock: curves against time start here
            launch_s=entered - process_start,  # of startup_s: imports and Hydra's composition, before train()
            epochs=trainer.current_epoch,
            tokens_seen=clock.tokens,
            tokens_per_s=clock.tokens_per_s(trainer.world_size),
            train_time_s=clock.seconds,
            **norms.summary(),
        )
        for cb in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(cb, GradientFlow) and cb.measurements:
                summary["gradient_flow"] = cb.summary()
        score = ckpt_cb.best_model_score if isinstance(ckpt_cb, ModelCheckpoint) else None
        if best and score is not None:
            summary.update(best_checkpoint=best, best_val_loss=float(score), best_val_bpc=bits(float(score)))
            summary["last_checkpoint"] = str(Path(best).with_name("last.ckpt"))
        else:  # no validation ran (a run stopped before its first step): nothing to test or sample
            best = ""
            log.warning("no validation ran, so there is no best checkpoint (steps: %d)", trainer.global_step)
        if cfg.get("test_after_fit", True):
            result = trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
            test = result[0] if result else {}
            summary.update({f"test_{k.split('/')[1]}": float(v) for k, v in test.items() if k.startswith("test/")})
        if best and trainer.is_global_zero:
            loaded = checkpoint.load(best)
            summary["best_step"] = loaded.step
            if cfg.get("position_losses", True):  # rhyme positions vs the rest, on the validation split
                val = datamodule.prepared.splits["val"]  # type: ignore[union-attr]
                positions = position_losses(loaded.model, loaded.vocab, val)
                if positions["classes"] is None:
                    log.info("rhyme-position losses skipped: the validation split holds no regular verse")
                else:
                    summary["positions"] = positions["classes"]
                    summary["loss_by_position"] = positions["by_position"]["loss"]
            if cfg.get("poem_sets", 0):  # what the model writes on its own: free, and in form without rhyme masks
                summary["poems"] = poem_sets.measure(loaded.model, loaded.vocab, int(cfg.poem_sets))
                log_poems(trainer, summary["poems"])
            if cfg.get("final_samples", 0):
                final = SamplingConfig(**{**to_plain(cfg.samples), "n": int(cfg.final_samples)})
                summary["samples"] = sample(loaded.model, loaded.vocab, final)
                write_text(run_dir / "samples.txt", "".join(p + "\n" for p in summary["samples"]))
        summary["status"] = "completed"
        log_hparams(trainer, cfg, summary)
    except BaseException as e:
        summary.update(status="failed", error=f"{type(e).__name__}: {e}")
        raise
    finally:
        summary["wall_time_s"] = time.perf_counter() - started
        if trainer.is_global_zero:
            write_json(metrics_path, summary)
    return summary


def check_same_run(previous: dict[str, Any], settings: dict[str, Any], run_dir: Path) -> None:
    """Resuming a run in place with other model, optimiser or data settings than it ran with (a GRU run resumed
    without its ``model.cell=gru`` would be composed as an LSTM) is one line naming what differs and the run's
    own command-line arguments. A run made before records is not checked."""
    if not previous.get("config"):
        return
    before = record.flat_settings({k: previous["config"].get(k) for k in settings})
    now = record.flat_settings(settings)
    differ = [k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
    if differ:
        changes = ", ".join(f"{k} {now.get(k)!r}, was {before.get(k)!r}" for k in differ[:3])
        argv = " ".join(a for a in previous.get("environment", {}).get("argv", []) if not a.startswith("ckpt_path="))
        raise TangshiError(
            f"resuming {run_dir} in place with other settings than it ran with ({changes}); repeat its own "
            f"arguments: python scripts/train.py {argv} ckpt_path=last"
        )


def extends(previous: dict[str, Any], cfg: DictConfig) -> bool:
    """Whether resuming a completed run in place asks for more: a larger ``trainer.max_steps`` than it was given
    (a run made before records, than it ran to). A run ended by early stopping or the epoch cap is done."""
    stopped_by = previous.get("stopped_by")
    if stopped_by not in ("max_steps", "max_time"):
        return False
    given = (previous.get("config") or {}).get("trainer", {}).get("max_steps")
    if given is None and stopped_by == "max_steps":
        given = previous.get("steps")
    return given is not None and int(cfg.trainer.max_steps) > int(given)


def log_poems(trainer: L.Trainer, measured: dict[str, Any]) -> None:
    """The poem sets' shares as ``poems/<set>/<metric>`` scalars at the last step."""
    if trainer.logger is None or not trainer.is_global_zero:
        return
    values = {
        f"poems/{name}/{key}": float(value)
        for name in poem_sets.SETS
        for key, value in measured.get(name, {}).items()
        if key in poem_sets.KEPT
    }
    trainer.logger.log_metrics(values, step=trainer.global_step)


def time_limit(cfg: DictConfig) -> str | None:
    """``trainer.max_time`` unless the command line set ``trainer.max_steps`` and not ``trainer.max_time``: an
    explicit step count wins over the default time guard, which would otherwise cut it silently."""
    given = command_line_keys()
    if "trainer.max_steps" in given and "trainer.max_time" not in given:
        return None
    return cfg.trainer.get("max_time")


def log_hparams(trainer: L.Trainer, cfg: DictConfig, summary: dict[str, Any]) -> None:
    """One TensorBoard hparams entry per run: what differs between runs of a sweep, and how each ended."""
    logger = trainer.logger
    if logger is None or not trainer.is_global_zero or not hasattr(logger, "log_hyperparams"):
        return
    params = {
        "cell": cfg.model.cell,
        "seed": cfg.seed,
        "hidden_size": summary.get("hidden_size"),
        "num_layers": cfg.model.num_layers,
        "core_params": summary.get("params", {}).get("core"),
        "lr": summary.get("lr"),
        "head": cfg.model.head,
        "batch_size": cfg.data.batch_size,
        "max_steps": cfg.trainer.max_steps,
    }
    metrics = {
        f"hparams/{k}": summary[k] for k in ("best_val_bpc", "test_bpc", "test_ppl", "clip_share") if k in summary
    }
    for name in poem_sets.SETS:
        if name in summary.get("poems", {}):
            metrics[f"hparams/{name}_rhyme"] = summary["poems"][name]["rhyme"]
    rhyme = summary.get("positions", {}).get("rhyme")
    if rhyme:
        metrics.update({"hparams/rhyme_loss": rhyme["loss"], "hparams/rhyme_acc": rhyme["acc"]})
    logger.log_hyperparams(params, metrics)


def _shown(value: Any) -> str:
    """A recipe value as the command line would write it: ``true``, ``0.03``, ``muon``."""
    if isinstance(value, bool):
        return str(value).lower()
    return format(value, "g") if isinstance(value, int | float) else str(value)
