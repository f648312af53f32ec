"""Read runs: each run dir's record (``metrics.json``), validation curve (TensorBoard) and gradient flow.

What a run was is what its record says (:mod:`tangshi.record`): nothing here rebuilds a rate, a size or a
precision from settings. A run made before records were written is read from ``.hydra/config.yaml`` as saved:
references inside it are followed, and what only the run knew (the rate it used, its hidden size, its
precision, its machine) comes from the few facts its ``metrics.json`` kept, or is marked unknown.

Imports no model code.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from tangshi.record import UNKNOWN, experiment


@dataclass
class Run:
    path: Path
    metrics: dict[str, Any]
    record: dict[str, Any]  # {"config": …, "environment": …}: the run's own, or a legacy run's best reading
    curve: list[tuple[int, float, float]] = field(default_factory=list)  # (step, seconds of training, val bpc)
    recorded: bool = True  # False: made before records, read from .hydra/config.yaml

    @property
    def status(self) -> str:
        return str(self.metrics.get("status", "unknown"))

    @cached_property
    def settings(self) -> dict[str, Any]:
        """What tells this run apart from others: the experiment settings, the seed aside (read once: grouping,
        labels and every column ask for it)."""
        return experiment(self.record)

    @property
    def cell(self) -> str:
        return str(self.settings.get("model.cell", "?"))

    @property
    def seed(self) -> Any:
        return (self.record.get("config") or {}).get("seed", self.metrics.get("seed"))

    @property
    def lr(self) -> float | None:
        """The rate the run used, or None where it is unknown."""
        lr = self.settings.get("optim.lr")
        return float(lr) if isinstance(lr, int | float) and not isinstance(lr, bool) else None

    @property
    def core(self) -> int | None:
        return (self.metrics.get("params") or {}).get("core")

    def gradient_flow(self) -> list[dict[str, Any]]:
        """The run's gradient-flow measurements (``diagnostics/gradient_flow.json``), oldest first."""
        path = self.path / "diagnostics" / "gradient_flow.json"
        return json.loads(path.read_text(encoding="utf-8"))["measurements"] if path.exists() else []


def load(dirs: list[Path]) -> list[Run]:
    """Every run dir (a folder with ``.hydra/``) under ``dirs``; one without ``metrics.json`` never started."""
    runs = []
    for d in dirs:
        for hydra_dir in sorted(Path(d).rglob(".hydra")):
            run_dir = hydra_dir.parent
            path = run_dir / "metrics.json"
            metrics = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"status": "not started"}
            recorded = "config" in metrics
            record = metrics if recorded else legacy_record(hydra_dir / "config.yaml", metrics)
            curve = read_curve(run_dir, metrics.get("train_started_at"))
            runs.append(Run(run_dir, metrics, record, curve, recorded))
    return runs


# What a run made before records kept in metrics.json, and the settings each stands for.
_LEGACY_FACTS = {"optim.lr": "lr", "trainer.precision": "precision", "model.hidden_size": "hidden_size"}
_FOLDED = ("optim.lr_by_cell", "optim.lr_by_size_exponent", "optim.lr_reference_budget", "model.param_budget")


def legacy_record(config_file: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """A record for a run made before records: its saved config with references followed; the rate, hidden
    size and precision from its metrics.json (they were computed by the run, not configured), else unknown;
    the settings those were computed from left out; the environment unknown."""
    from omegaconf import OmegaConf

    if not config_file.exists():
        return {"config": {}, "environment": {"hardware": UNKNOWN}}
    cfg = OmegaConf.load(config_file)
    for key, fact in _LEGACY_FACTS.items():
        value = metrics.get(fact)
        OmegaConf.update(cfg, key, UNKNOWN if value is None else value, force_add=True)
    for key in _FOLDED:
        group, name = key.split(".")
        if name in cfg.get(group, {}):
            cfg[group].pop(name)
    return {"config": _resolved(cfg), "environment": {"hardware": UNKNOWN}}


def _resolved(node: Any) -> Any:
    """The config as plain containers, each value resolved where its references can be followed inside the
    saved config, and :data:`UNKNOWN` where they cannot (Hydra's runtime, a machine-dependent resolver)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, DictConfig):
        out = {}
        for key in node:
            try:
                out[key] = _resolved(node[key])
            except Exception:  # omegaconf raises several kinds for a reference it cannot follow
                out[key] = UNKNOWN
        return out
    if isinstance(node, ListConfig):
        return OmegaConf.to_container(node, resolve=True)
    return node


def read_curve(run_dir: Path, started_at: float | None) -> list[tuple[int, float, float]]:
    """``(step, seconds of training, val bpc)`` at every validation of a run. The seconds are the run's own
    ``time/train_s`` (training steps only, carried across resumes); a run made before it was logged gets the
    wall clock since its first training step, and NaN where that would be negative (before a resume)."""
    tb = run_dir / "tensorboard"
    if not tb.is_dir():
        return []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb), size_guidance={"scalars": 0}).Reload()
    tags = events.Tags()["scalars"]
    if "val/bpc" not in tags:
        return []
    bpc = {e.step: e for e in events.Scalars("val/bpc")}  # a resumed run's repeated step: the latest value
    if "time/train_s" in tags:
        seconds = {e.step: e.value for e in events.Scalars("time/train_s")}
        return [(step + 1, seconds.get(step, math.nan), e.value) for step, e in sorted(bpc.items())]
    if started_at is None:  # runs written before train_started_at was recorded: the first train/loss event
        losses = events.Scalars("train/loss") if "train/loss" in tags else list(bpc.values())
        started_at = min(e.wall_time for e in losses)
    points = [(step + 1, e.wall_time - started_at, e.value) for step, e in sorted(bpc.items())]
    return [(s, t if t >= 0 else math.nan, b) for s, t, b in points]


# -- searches ---------------------------------------------------------------------------------------------


def is_search(run: Run) -> bool:
    """Whether the run is a trial of a search (its sweep dir holds the Optuna study ``optuna.db``)."""
    return (run.path.parent / "optuna.db").exists()


def searches(runs: list[Run]) -> dict[str, Any]:
    """The trials of every search among ``runs``: per study its trials (swept settings and objective, ``inf``
    for a failed trial) and its best trial."""
    studies: dict[str, list[Run]] = {}
    for r in runs:
        if is_search(r):
            studies.setdefault(str(r.path.parent), []).append(r)
    out = {}
    for sweep, rs in studies.items():
        swept = _swept_keys(Path(sweep))
        trials = []
        for r in sorted(rs, key=lambda r: int(r.path.name.split("_")[0]) if r.path.name[0].isdigit() else 0):
            value = r.metrics.get("best_val_bpc", math.inf) if r.status == "completed" else math.inf
            trials.append(
                {
                    "run": r.path.name,
                    "group": r.cell,
                    "status": r.status,
                    "params": {k: r.settings.get(k, UNKNOWN) for k in swept},
                    "best_val_bpc": value,
                    "test_bpc": r.metrics.get("test_bpc"),
                    "clip_share": r.metrics.get("clip_share"),
                    "steps": r.metrics.get("steps"),
                }
            )
        done = [t for t in trials if t["status"] == "completed"]
        best = min(done, key=lambda t: t["best_val_bpc"]) if done else None
        out[sweep] = {"params": swept, "trials": trials, "best": best}
    return out


def _swept_keys(sweep: Path) -> list[str]:
    """The parameters a search samples, in the order it samples them, as its study records them (read with
    sqlite3 rather than optuna, so comparing needs no search extra)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{sweep / 'optuna.db'}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT param_name, MIN(param_id) FROM trial_params GROUP BY param_name ORDER BY 2")
        return [name for name, _ in rows]
