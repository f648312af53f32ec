"""Compare runs: read every run's ``metrics.json``, config and TensorBoard curve, group the runs that differ only
by seed, aggregate, test differences (Welch's t), and write ``report.md``, ``report.json`` and figures.

* Runs are grouped by everything in their config except the seed (and paths, logging, sampling), so runs of
  different cells, sizes or learning rates are never averaged together; each group is labelled by what sets it
  apart from the others (``lstm 200k lr 0.02``).
* The trials of a search (``hparams_search=…``, a sweep dir with ``optuna.db``) are reported as a search: every
  trial's settings and objective, the best per cell, and the objective against each parameter.
* A count-based floor, an interpolated Kneser-Ney 5-gram on the same split and vocabulary, is added to every
  comparison (:mod:`tangshi.ngram`).

Imports no model code: it reads files (and the prepared corpus, for the n-gram floor).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from tangshi import figures
from tangshi.atomic import write_json, write_text
from tangshi.errors import TangshiError
from tangshi.formatting import markdown_table

CELL_ORDER = ("rnn", "gru", "lstm", "mingru", "minlstm", "transformer")
POSITION_CLASSES = ("rhyme", "line_start", "other", "punct")
SPREAD = 0.2  # bits: seeds of one rate farther apart than this make the rate unstable (lr choice)
# Config keys that never tell runs apart (the seed is what a group averages over).
IGNORED = (
    "seed",
    "paths.",
    "logger.",
    "callbacks.",
    "samples.",
    "task_name",
    "ckpt_path",
    "torch_threads",
    "test_after_fit",
    "final_samples",
    "poetics_samples",
    "position_losses",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "optim.lr",  # the rate a run used is recorded as `lr` (from optim.lr, lr_by_cell and the size rule)
    "optim.lr_by_cell",
    "optim.lr_by_size_exponent",
    "optim.lr_reference_budget",
    "model.hidden_size",  # the size is recorded as `core` (from hidden_size or param_budget)
    "model.param_budget",
)


@dataclass
class Run:
    path: Path
    metrics: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)  # flattened .hydra/config.yaml
    curve: list[tuple[int, float, float]] = field(default_factory=list)  # (step, seconds of training, val bpc)

    @property
    def status(self) -> str:
        return str(self.metrics.get("status", "unknown"))

    @property
    def cell(self) -> str:
        return str(self.metrics.get("cell") or self.config.get("model.cell", "?"))

    @property
    def lr(self) -> float | None:
        return self.metrics.get("lr")

    @property
    def core(self) -> int | None:
        return (self.metrics.get("params") or {}).get("core")

    def settings(self) -> dict[str, Any]:
        """What this run was: its config without what never tells runs apart, plus the rate and core size used."""
        kept = {k: v for k, v in self.config.items() if not k.startswith(IGNORED) and k not in IGNORED}
        return {**kept, "model.cell": self.cell, "lr": self.lr, "core": self.core}

    def gradient_flow(self) -> list[dict[str, Any]]:
        """The run's gradient-flow measurements (``diagnostics/gradient_flow.json``), oldest first."""
        path = self.path / "diagnostics" / "gradient_flow.json"
        return json.loads(path.read_text(encoding="utf-8"))["measurements"] if path.exists() else []


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix[:-1]: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}."))
    return out


def find_runs(dirs: list[Path]) -> list[Run]:
    """Every run dir (a folder with ``.hydra/``) under ``dirs``; one without ``metrics.json`` never started."""
    from omegaconf import OmegaConf

    runs = []
    for d in dirs:
        for hydra_dir in sorted(Path(d).rglob(".hydra")):
            run_dir = hydra_dir.parent
            path = run_dir / "metrics.json"
            metrics = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"status": "not started"}
            config_file = hydra_dir / "config.yaml"
            config = _flatten(OmegaConf.to_container(OmegaConf.load(config_file))) if config_file.exists() else {}
            if metrics.get("lr") is None:  # a run that crashed before recording it: the configured rate
                by_cell = config.get(f"optim.lr_by_cell.{config.get('model.cell')}")
                metrics["lr"] = by_cell if by_cell is not None else config.get("optim.lr")
            runs.append(Run(run_dir, metrics, config, read_curve(run_dir, metrics.get("train_started_at"))))
    return runs


def read_curve(run_dir: Path, started_at: float | None) -> list[tuple[int, float, float]]:
    """``(step, seconds since the first training step, val bpc)`` at every validation of a run."""
    tb = run_dir / "tensorboard"
    if not tb.is_dir():
        return []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb), size_guidance={"scalars": 0}).Reload()
    if "val/bpc" not in events.Tags()["scalars"]:
        return []
    scalars = events.Scalars("val/bpc")
    if started_at is None:  # runs written before train_started_at was recorded: the first train/loss event
        losses = events.Scalars("train/loss") if "train/loss" in events.Tags()["scalars"] else scalars
        started_at = min(e.wall_time for e in losses)
    return [(e.step + 1, e.wall_time - started_at, e.value) for e in scalars]


# -- statistics -------------------------------------------------------------------------------------------


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation; the deviation of a single run is unknown (NaN), not 0, and so is the
    deviation of values of which one is not finite (a run that diverged, or had no validation yet)."""
    if not values:
        return math.nan, math.nan
    if len(values) < 2 or not all(math.isfinite(v) for v in values):
        return statistics.fmean(values), math.nan
    return statistics.fmean(values), statistics.stdev(values)


def welch_p(a: list[float], b: list[float]) -> float:
    """Two-sided p-value of Welch's t-test; NaN when either side has fewer than two runs."""
    if len(a) < 2 or len(b) < 2:
        return math.nan
    from scipy.stats import ttest_ind

    return float(ttest_ind(a, b, equal_var=False).pvalue)


def _signature(run: Run) -> str:
    return json.dumps(run.settings(), sort_keys=True, default=str)


def _order(run: Run) -> tuple:
    return (CELL_ORDER.index(run.cell) if run.cell in CELL_ORDER else 9, run.cell, run.core or 0, run.lr or 0)


def _describe(key: str, value: Any) -> str:
    if key == "model.cell":
        return str(value)
    if key == "core":
        return f"{value / 1e3:.0f}k" if value and value >= 1000 else f"{value} core"
    if key == "lr":
        return f"lr {value:g}"
    return f"{key.rsplit('.', 1)[-1]}={value}"


def group_runs(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs by their settings (everything but the seed), labelled by the settings that differ between groups.
    ``runs`` of any status: the caller picks completed ones or all."""
    by_sig: dict[str, list[Run]] = defaultdict(list)
    for r in sorted(runs, key=_order):
        by_sig[_signature(r)].append(r)
    settings = [rs[0].settings() for rs in by_sig.values()]
    keys = sorted({k for s in settings for k in s})
    varying = [k for k in keys if len({json.dumps(s.get(k), default=str) for s in settings}) > 1]
    # a setting that follows from the cell (a rate from lr_by_cell, the core size at a common hidden size) adds
    # nothing to a label that names the cell
    varying = [
        k
        for k in varying
        if k == "model.cell"
        or any(
            len({json.dumps(s.get(k), default=str) for s in settings if s["model.cell"] == c}) > 1 for c in CELL_ORDER
        )
        or "model.cell" not in varying
    ]
    varying.sort(key=lambda k: ("model.cell", "core", "lr").index(k) if k in ("model.cell", "core", "lr") else 3)
    groups: dict[str, list[Run]] = {}
    for rs in by_sig.values():
        s = rs[0].settings()
        label = " ".join(_describe(k, s.get(k)) for k in varying) or rs[0].cell
        groups[label] = rs
    return groups


def _best_so_far(curve: list[tuple[int, float, float]], index: int, limit: float) -> float:
    """The best val bpc a run had reached by step (index 0) or second (index 1) ``limit``."""
    seen = [p[2] for p in curve if p[index] <= limit + 1e-9]
    return min(seen) if seen else math.nan


def summarise(runs: list[Run]) -> dict[str, Any]:
    completed = [r for r in runs if r.status == "completed"]
    groups = group_runs(completed)
    table, positions, flow = {}, {}, {}
    for name, rs in groups.items():
        col = {
            key: [float(r.metrics[key]) for r in rs if r.metrics.get(key) is not None]
            for key in (
                "best_val_bpc",
                "test_bpc",
                "test_ppl",
                "wall_time_s",
                "tokens_per_s",
                "clip_share",
                "train_time_s",
            )
        }
        not_converged = [r for r in rs if r.metrics.get("best_step") == r.metrics.get("steps")]
        # diverged rather than overfitted: its val bpc rose further above its best than seeds may differ
        unstable = [r for r in rs if r.curve and r.curve[-1][2] - min(p[2] for p in r.curve) > SPREAD]
        # how far from converged: what the last fifth of the steps still gained in best val bpc
        late_gain = [_best_so_far(r.curve, 0, 0.8 * r.curve[-1][0]) - min(p[2] for p in r.curve) for r in rs if r.curve]
        table[name] = {
            "cell": rs[0].cell,
            "runs": len(rs),
            "seeds": [r.metrics.get("seed") for r in rs],
            "lr": rs[0].lr,
            "core_params": rs[0].core,
            "total_params": (rs[0].metrics.get("params") or {}).get("total"),
            "steps": [r.metrics.get("steps") for r in rs],
            "best_step": [r.metrics.get("best_step") for r in rs],
            "stopped_by": [r.metrics.get("stopped_by") for r in rs],
            "converged": not not_converged,
            "unstable": bool(unstable),
            "late_gain": mean_std(late_gain) if late_gain else None,
            **{key: mean_std(values) for key, values in col.items()},
            "values": {k: col[k] for k in ("best_val_bpc", "test_bpc", "clip_share")},
        }
        with_pos = [r.metrics["positions"] for r in rs if r.metrics.get("positions")]
        if with_pos:
            positions[name] = {
                c: {m: mean_std([p[c][m] for p in with_pos]) for m in ("loss", "acc")} for c in POSITION_CLASSES
            }
        with_flow = [r.metrics["gradient_flow"] for r in rs if r.metrics.get("gradient_flow")]
        if with_flow:
            flow[name] = {
                when: {k: figures.geo_mean([f[when].get(k, 0.0) for f in with_flow]) for k in with_flow[0][when]}
                for when in ("first", "last")
            }
            flow[name]["last_step"] = with_flow[0]["last_step"]
    seeded = [g for g in table if table[g]["runs"] > 1]
    pvalues = {
        f"{a} vs {b}": {k: welch_p(table[a]["values"][k], table[b]["values"][k]) for k in ("best_val_bpc", "test_bpc")}
        for a, b in combinations(seeded, 2)
    }
    return {
        "groups": table,
        "equal": equal_budget(groups),
        "best_lr": best_lr(runs),
        "welch_p": pvalues,
        "positions": positions,
        "gradient_flow": flow,
        "not_completed": [
            {"run": str(r.path), "status": r.status, "error": r.metrics.get("error")}
            for r in runs
            if r.status != "completed"
        ],
    }


def equal_budget(groups: dict[str, list[Run]]) -> dict[str, Any]:
    """Each group's best val bpc (mean over runs) by the largest step, and by the longest training time, that
    every run of every group reached: cells compared at equal work and at equal time on this machine."""
    curves = [r.curve for rs in groups.values() for r in rs if r.curve]
    if len(groups) < 2 or not curves:
        return {}
    step = min(c[-1][0] for c in curves)
    seconds = min(c[-1][1] for c in curves)
    return {
        "step": step,
        "seconds": seconds,
        "by_step": {g: mean_std([_best_so_far(r.curve, 0, step) for r in rs if r.curve]) for g, rs in groups.items()},
        "by_time": {
            g: mean_std([_best_so_far(r.curve, 1, seconds) for r in rs if r.curve]) for g, rs in groups.items()
        },
    }


def best_lr(runs: list[Run]) -> dict[str, dict[str, Any]]:
    """Per cell (and size) that ran at several rates: the rate with the lowest mean best val bpc among the rates
    whose next rate up is stable, that is, no seed failed and the seeds agree within :data:`SPREAD` bits. A rate
    at the top of the grid has no such margin and is not chosen."""
    by_rate: dict[tuple[str, Any, Any, str], dict[float, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        if r.lr is not None and r.status in ("completed", "failed"):
            # a grid is per model size, read from the config (a run that crashed early recorded no core size)
            budget, hidden = r.config.get("model.param_budget"), r.config.get("model.hidden_size")
            rest = {k: v for k, v in r.settings().items() if k not in ("lr", "core")}
            by_rate[(r.cell, budget, hidden, json.dumps(rest, sort_keys=True, default=str))][r.lr].append(r)
    grids = Counter(cell for cell, *_ in by_rate)
    out = {}
    for (cell, budget, hidden, _), rates in by_rate.items():
        if len(rates) < 2:
            continue
        label = cell if grids[cell] == 1 else f"{cell} {_describe('core', budget) if budget else hidden}"
        grid = sorted(rates)
        stable = {lr: _stable(rs) for lr, rs in rates.items()}

        means = {
            lr: statistics.fmean(r.metrics["best_val_bpc"] for r in rs)
            for lr, rs in rates.items()
            if all(r.status == "completed" for r in rs)
        }
        allowed = [lr for lr, nxt in itertools.pairwise(grid) if stable[nxt] and lr in means]
        best = min(allowed, key=means.__getitem__) if allowed else None
        out[label] = {
            "lr": best,
            "mean_best_val_bpc": means.get(best) if best else None,
            "lowest_mean": min(means, key=means.__getitem__) if means else None,
            "seeds": {f"{lr:g}": len(rates[lr]) for lr in grid},
            "stable": {f"{lr:g}": stable[lr] for lr in grid},
        }
    return out


def _stable(rs: list[Run]) -> bool:
    """No seed failed, and the seeds' best val bpc lie within :data:`SPREAD` bits."""
    bpc = [r.metrics["best_val_bpc"] for r in rs if r.status == "completed" and "best_val_bpc" in r.metrics]
    return len(bpc) == len(rs) and max(bpc) - min(bpc) <= SPREAD


# -- searches ---------------------------------------------------------------------------------------------


def searches(runs: list[Run]) -> dict[str, Any]:
    """The trials of every search among ``runs`` (run dirs whose sweep dir holds ``optuna.db``): per study its
    trials (swept settings and objective, ``inf`` for a failed trial) and its best trial."""
    studies: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        if (r.path.parent / "optuna.db").exists():
            studies[str(r.path.parent)].append(r)
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
                    "params": {k: r.config.get(k) for k in swept},
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
    sqlite3 rather than optuna, so comparing needs no search extra). Parameters the command line fixed are not
    among them: Hydra's Optuna sweeper does not search a parameter given a plain value."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{sweep / 'optuna.db'}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT param_name, MIN(param_id) FROM trial_params GROUP BY param_name ORDER BY 2")
        return [name for name, _ in rows]


# -- the n-gram floor -------------------------------------------------------------------------------------


def ngram_floor(runs: list[Run], data_dir: Path, order: int = 5) -> dict[str, Any]:
    """The Kneser-Ney test bpc of the corpus of each data setting among completed ``runs`` (cached beside the
    prepared corpus as ``kn<order>.json``)."""
    from tangshi.corpus import CorpusConfig, prepare
    from tangshi.ngram import baseline

    out: dict[str, Any] = {}
    corpora: set[CorpusConfig] = set()
    for r in runs:
        if r.status != "completed":
            continue
        data = {
            k[len("data.") :]: v
            for k, v in r.config.items()
            if k.startswith("data.") and not (isinstance(v, str) and "${" in v)
        }
        if not data:
            continue
        corpus = CorpusConfig.from_data(data)  # batching settings (however spelled) are not the corpus's
        if corpus in corpora:
            continue
        corpora.add(corpus)
        prepared = prepare(corpus, data_dir)
        cache = prepared.path / f"kn{order}.json"
        if cache.exists():
            result = json.loads(cache.read_text(encoding="utf-8"))
        else:
            result = baseline(prepared.splits["train"], prepared.splits["test"], prepared.vocab, order)
            write_json(cache, result)
        out[prepared.path.name] = {"data": prepared.path.name, **result}
    return out


# -- the report -------------------------------------------------------------------------------------------


def _fmt(ms: tuple[float, float], digits: int = 3) -> str:
    mean, std = ms
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _seeds(values: list[float], digits: int = 3) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


def _not_converged(late_gain: tuple[float, float] | None) -> str:
    if late_gain is None or math.isnan(late_gain[0]):
        return " (not converged)"
    return f" (not converged: {late_gain[0]:.3f} bits gained in the last fifth)"


def to_markdown(summary: dict[str, Any], plots: list[str]) -> str:
    lines = ["# Comparison", ""]
    groups = summary["groups"]
    if groups:
        columns = ["group", "runs", "lr", "core params", "best val bpc", "per seed", "test bpc", "test ppl"]
        columns += ["best step / steps", "wall time (s)", "tokens/s", "clipped steps", "per seed"]
        rows = [
            [
                name,
                str(t["runs"]),
                f"{t['lr']:g}" if t["lr"] is not None else "–",
                f"{t['core_params']:,}" if t["core_params"] else "–",
                _fmt(t["best_val_bpc"]),
                _seeds(t["values"]["best_val_bpc"]),
                _fmt(t["test_bpc"]),
                _fmt(t["test_ppl"], 1),
                ", ".join(f"{b}/{s}" for b, s in zip(t["best_step"], t["steps"], strict=True))
                + ("" if t["converged"] else _not_converged(t.get("late_gain")))
                + (" (unstable)" if t.get("unstable") else ""),
                _fmt(t["wall_time_s"], 0),
                _fmt(t["tokens_per_s"], 0),
                _fmt(t["clip_share"], 2),
                _seeds(t["values"]["clip_share"], 2),
            ]
            for name, t in groups.items()
        ]
        floor = summary.get("ngram", {})
        for f in floor.values():
            rows.append([f"Kneser-Ney {f['order']}-gram ({f['data']})", "–", "–", "–", "–", "–"])
            rows[-1] += [f"{f['test_bpc']:.3f}", f"{f['test_ppl']:.1f}", "–", "–", "–", "–", "–"]
        lines += markdown_table(columns, rows)
        lines += [
            "",
            "Mean ± standard deviation over seeds, each seed's value beside it. Clipped steps: the share of steps",
            "whose gradient norm was clipped. Not converged: a run whose best validation was its last step.",
            f"Unstable: a run whose val bpc rose more than {SPREAD} bits above its best (diverged, not overfitted).",
        ]
    eq = summary.get("equal") or {}
    if eq:
        lines += [
            "",
            f"Best val bpc by step {eq['step']:,} and by {eq['seconds']:.0f} s of training, the most that every run "
            "reached:",
            "",
            *markdown_table(
                ["group", f"by step {eq['step']:,}", f"by {eq['seconds']:.0f} s"],
                [[g, _fmt(eq["by_step"][g]), _fmt(eq["by_time"][g])] for g in eq["by_step"]],
            ),
        ]
    if summary["best_lr"]:
        lines += [
            "",
            "Learning rate per cell: the lowest mean best val bpc among rates whose next rate up is stable (no seed",
            f"failed, seeds within {SPREAD} bits):",
            "",
            *markdown_table(
                ["cell", "chosen", "mean best val bpc", "lowest mean at", "unstable rates"],
                [
                    [
                        cell,
                        f"{b['lr']:g}" if b["lr"] else "none",
                        f"{b['mean_best_val_bpc']:.3f}" if b["mean_best_val_bpc"] else "–",
                        f"{b['lowest_mean']:g}" if b["lowest_mean"] else "–",
                        ", ".join(lr for lr, ok in b["stable"].items() if not ok) or "none",
                    ]
                    for cell, b in summary["best_lr"].items()
                ],
            ),
        ]
        chosen = ", ".join(f"{c}: {b['lr']:g}" for c, b in summary["best_lr"].items() if b["lr"])
        if chosen:
            lines += ["", f'To run each cell at its rate: `optim.lr_by_cell="{{{chosen}}}"`.']
    if summary["welch_p"]:
        fmt = lambda v: "n/a" if math.isnan(v) else f"{v:.3g}"  # noqa: E731
        rows = [[pair, fmt(p["best_val_bpc"]), fmt(p["test_bpc"])] for pair, p in summary["welch_p"].items()]
        lines += [
            "",
            "Welch's t-test, two-sided p-values:",
            "",
            *markdown_table(["pair", "best val bpc", "test bpc"], rows),
        ]
    if summary["positions"]:
        lines += [
            "",
            "Loss (nats) and top-1 accuracy by position, regular-verse validation poems, best checkpoint. Rhyme: last",
            "character of every even line; line start: first character of lines 2 onwards.",
            "",
            *markdown_table(
                ["group", *(f"{c} {m}" for c in POSITION_CLASSES for m in ("loss", "acc"))],
                [
                    [name, *(_fmt(pos[c][m], 2) for c in POSITION_CLASSES for m in ("loss", "acc"))]
                    for name, pos in summary["positions"].items()
                ],
            ),
        ]
    if summary["gradient_flow"]:
        keys = sorted({k for f in summary["gradient_flow"].values() for k in f["first"]})
        lines += [
            "",
            "Gradient flow through time: ‖∂L/∂h(T−1−k)‖ / ‖∂L/∂h(T−1)‖, the share of the gradient of the last",
            "position's loss that reaches k characters back (geometric mean over seeds), at initialisation and at",
            "the end of training.",
            "",
            *markdown_table(
                ["group", *(f"{k} {when}" for k in keys for when in ("init", "end"))],
                [
                    [name, *(f"{f[w].get(k, math.nan):.2e}" for k in keys for w in ("first", "last"))]
                    for name, f in summary["gradient_flow"].items()
                ],
            ),
        ]
    for sweep, study in summary.get("searches", {}).items():
        best = study["best"]
        lines += ["", f"## Search `{sweep}`", ""]
        if best:
            settings = ", ".join(
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items()
            )
            lines += [
                f"Best of {len(study['trials'])} trials: {best['run']}, best val bpc {best['best_val_bpc']:.3f} "
                f"({settings}).",
                "",
            ]
        lines += markdown_table(
            ["trial", *study["params"], "best val bpc", "test bpc", "clipped", "steps"],
            [
                [
                    t["run"],
                    *(
                        f"{t['params'][k]:.3g}" if isinstance(t["params"][k], float) else str(t["params"][k])
                        for k in study["params"]
                    ),
                    f"{t['best_val_bpc']:.3f}" if math.isfinite(t["best_val_bpc"]) else t["status"],
                    f"{t['test_bpc']:.3f}" if t["test_bpc"] else "–",
                    f"{t['clip_share']:.2f}" if t["clip_share"] is not None else "–",
                    str(t["steps"]),
                ]
                for t in study["trials"]
            ],
        )
    if summary["not_completed"]:
        lines += ["", "Runs not in the tables (crashed, unfinished or never started):", ""]
        lines += [
            f"- `{o['run']}`: {o['status']}" + (f" — {o['error']}" if o.get("error") else "")
            for o in summary["not_completed"]
        ]
    lines += ["", *[f"![{p}]({p})" for p in plots], ""]
    return "\n".join(lines)


def plot(groups: dict[str, list[Run]], studies: dict[str, Any], out: Path) -> list[str]:
    """The report's figures (files in ``out``); their names."""
    made: dict[str, Any] = {}
    curves = {g: [[(s, b) for s, _, b in r.curve] for r in rs] for g, rs in groups.items()}
    timed = {g: [[(t, b) for _, t, b in r.curve] for r in rs] for g, rs in groups.items()}
    if any(c for cs in curves.values() for c in cs):
        made["val_bpc_vs_step.png"] = figures.mean_band(curves, "step", "validation bits per character")
        made["val_bpc_vs_time.png"] = figures.mean_band(
            timed, "seconds since the first training step", "validation bits per character"
        )
    flows = {g: [m for m in (r.gradient_flow() for r in rs) if m] for g, rs in groups.items()}
    flows = {g: ms for g, ms in flows.items() if ms}
    if flows:
        made["gradient_flow.png"] = figures.gradient_flow_by_group(flows)
    by_pos = {
        g: [r.metrics["loss_by_position"] for r in rs if r.metrics.get("loss_by_position")] for g, rs in groups.items()
    }
    by_pos = {g: c for g, c in by_pos.items() if c}
    if by_pos:
        made["loss_by_position.png"] = figures.loss_by_position(by_pos)
    sizes: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for rs in groups.values():
        if rs[0].core:
            sizes[rs[0].cell].append((rs[0].core, *mean_std([r.metrics["best_val_bpc"] for r in rs])))
    if any(len({p[0] for p in pts}) > 1 for pts in sizes.values()):
        made["scaling.png"] = figures.points_with_error(sizes, "core parameters", "best validation bits per character")
    for i, study in enumerate(studies.values()):
        if study["params"] and study["trials"]:
            made[f"search_{i}.png"] = figures.objective_by_parameter(study["trials"], study["params"], "best_val_bpc")
    for name, fig in made.items():
        figures.save_png(fig, out / name)
    return list(made)


def compare(dirs: list[Path], data_dir: Path | None = None) -> tuple[dict[str, Any], Path]:
    """Write ``report.md``, ``report.json`` and the figures into the first directory; return the summary.
    ``data_dir`` (the prepared corpora) adds the Kneser-Ney floor; None leaves it out."""
    runs = find_runs(dirs)
    if not runs:
        raise TangshiError(f"no runs (folders with .hydra/) under {', '.join(map(str, dirs))}")
    studies = searches(runs)
    plain_runs = [r for r in runs if not (r.path.parent / "optuna.db").exists()]
    summary = summarise(plain_runs)
    summary["searches"] = studies
    if data_dir is not None and summary["groups"]:
        summary["ngram"] = ngram_floor(plain_runs, data_dir)
    out = Path(dirs[0])
    plots = plot(group_runs([r for r in plain_runs if r.status == "completed"]), studies, out)
    write_text(out / "report.md", to_markdown(summary, plots))
    write_text(out / "report.json", json.dumps(summary, indent=2, default=str) + "\n")
    return summary, out / "report.md"
