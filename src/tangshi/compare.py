"""Compare runs across cells: read every run's ``metrics.json`` and TensorBoard scalars, aggregate over seeds,
test differences (Welch's t), plot validation curves. Reads files only; imports no model code.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from tangshi.atomic import write_text
from tangshi.errors import TangshiError
from tangshi.figures import pyplot, save_png

CELL_ORDER = ("rnn", "gru", "lstm")
METRICS = ("best_val_bpc", "test_bpc", "test_ppl", "best_step", "wall_time_s", "tokens_per_s", "clip_share")
POSITION_CLASSES = ("rhyme", "line_start", "other", "punct")


@dataclass
class Run:
    path: Path
    metrics: dict[str, Any]
    curve: list[tuple[int, float, float]] = field(default_factory=list)  # (step, seconds since start, val bpc)

    @property
    def status(self) -> str:
        return str(self.metrics.get("status", "unknown"))

    @property
    def cell(self) -> str:
        return str(self.metrics.get("cell", "?"))

    @property
    def lr(self) -> float | None:
        return self.metrics.get("lr")

    def gradient_flow(self) -> list[dict[str, Any]]:
        """The run's gradient-flow measurements (``diagnostics/gradient_flow.json``), oldest first."""
        path = self.path / "diagnostics" / "gradient_flow.json"
        return json.loads(path.read_text(encoding="utf-8"))["measurements"] if path.exists() else []


def find_runs(dirs: list[Path]) -> list[Run]:
    """Every run dir (a folder with ``.hydra/``) under ``dirs``; one without ``metrics.json`` never started."""
    runs = []
    for d in dirs:
        for hydra_dir in sorted(Path(d).rglob(".hydra")):
            run_dir = hydra_dir.parent
            path = run_dir / "metrics.json"
            metrics = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"status": "not started"}
            metrics.setdefault("lr", _configured_lr(hydra_dir / "config.yaml", metrics.get("cell")))
            runs.append(Run(run_dir, metrics, read_curve(run_dir)))
    return runs


def _configured_lr(config: Path, cell: str | None) -> float | None:
    """The learning rate a run was configured with (metrics.json records it, but not for a crashed run)."""
    if not config.exists():
        return None
    from omegaconf import OmegaConf

    optim = OmegaConf.load(config).get("optim") or {}
    by_cell = optim.get("lr_by_cell")
    return by_cell.get(cell) if by_cell else optim.get("lr")


def read_curve(run_dir: Path) -> list[tuple[int, float, float]]:
    tb = run_dir / "tensorboard"
    if not tb.is_dir():
        return []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb), size_guidance={"scalars": 0}).Reload()
    if "val/bpc" not in events.Tags()["scalars"]:
        return []
    scalars = events.Scalars("val/bpc")
    start = min(e.wall_time for e in scalars)
    return [(e.step + 1, e.wall_time - start, e.value) for e in scalars]


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation; the deviation of a single run is unknown (NaN), not 0."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def welch_p(a: list[float], b: list[float]) -> float:
    """Two-sided p-value of Welch's t-test; NaN when either side has fewer than two runs."""
    if len(a) < 2 or len(b) < 2:
        return math.nan
    from scipy.stats import ttest_ind

    return float(ttest_ind(a, b, equal_var=False).pvalue)


def group_runs(runs: list[Run]) -> dict[str, list[Run]]:
    """Completed runs by cell, or by cell and learning rate where a cell ran at several rates (lr_search)."""
    done = [r for r in runs if r.status == "completed"]
    rates: dict[str, set] = defaultdict(set)
    for r in done:
        rates[r.cell].add(r.lr)
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in sorted(done, key=lambda r: (CELL_ORDER.index(r.cell) if r.cell in CELL_ORDER else 9, r.cell, r.lr or 0)):
        groups[r.cell if len(rates[r.cell]) == 1 else f"{r.cell} lr={r.lr:g}"].append(r)
    return dict(groups)


def _geo_mean(values: list[float]) -> float:
    """Ratios of gradient norms span orders of magnitude: average them on a log scale."""
    values = [v for v in values if v > 0]
    return math.exp(statistics.fmean(math.log(v) for v in values)) if values else math.nan


def summarise(runs: list[Run]) -> dict[str, Any]:
    groups = group_runs(runs)
    table, positions, flow = {}, {}, {}
    for name, rs in groups.items():
        col = {key: [float(r.metrics[key]) for r in rs if r.metrics.get(key) is not None] for key in METRICS}
        table[name] = {
            "cell": rs[0].cell,
            "runs": len(rs),
            "seeds": sorted(r.metrics.get("seed") for r in rs),
            "lr": sorted({r.lr for r in rs if r.lr is not None}),
            "core_params": sorted({r.metrics["params"]["core"] for r in rs}),
            "total_params": sorted({r.metrics["params"]["total"] for r in rs}),
            **{key: _mean_std(values) for key, values in col.items()},
            "values": {"best_val_bpc": col["best_val_bpc"], "test_bpc": col["test_bpc"]},
        }
        with_pos = [r.metrics["positions"] for r in rs if r.metrics.get("positions")]
        if with_pos:
            positions[name] = {
                c: {m: _mean_std([p[c][m] for p in with_pos]) for m in ("loss", "acc")} for c in POSITION_CLASSES
            }
        with_flow = [r.metrics["gradient_flow"] for r in rs if r.metrics.get("gradient_flow")]
        if with_flow:
            flow[name] = {
                when: {k: _geo_mean([f[when].get(k, 0.0) for f in with_flow]) for k in with_flow[0][when]}
                for when in ("first", "last")
            }
            flow[name]["last_step"] = with_flow[0]["last_step"]
    seeded = [g for g in table if table[g]["runs"] > 1]
    pvalues = {
        f"{a} vs {b}": {k: welch_p(table[a]["values"][k], table[b]["values"][k]) for k in ("best_val_bpc", "test_bpc")}
        for a, b in combinations(seeded, 2)
    }
    others = [
        {"run": str(r.path), "status": r.status, "error": r.metrics.get("error")}
        for r in runs
        if r.status != "completed"
    ]
    return {
        "cells": table,
        "best_lr": best_lr(table),
        "welch_p": pvalues,
        "positions": positions,
        "gradient_flow": flow,
        "not_completed": others,
    }


def best_lr(table: dict[str, Any]) -> dict[str, float]:
    """Per cell that ran at several rates, the rate with the lowest mean best val bpc."""
    by_cell: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for t in table.values():
        if len(t["lr"]) == 1 and not math.isnan(t["best_val_bpc"][0]):
            by_cell[t["cell"]].append((t["best_val_bpc"][0], t["lr"][0]))
    return {cell: min(scores)[1] for cell, scores in by_cell.items() if len(scores) > 1}


def _fmt(ms: tuple[float, float], digits: int = 3) -> str:
    mean, std = ms
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _table(columns: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table: the first column (the cell) left-aligned, the numbers right-aligned."""
    return [
        "| " + " | ".join(columns) + " |",
        "| --- |" + " ---: |" * (len(columns) - 1),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def to_markdown(summary: dict[str, Any], plots: list[str]) -> str:
    columns = ["cell", "runs", "lr", "core params", "total params", "best val bpc", "test bpc", "test ppl"]
    columns += ["step of best", "wall time (s)", "tokens/s", "clipped steps"]
    rows = [
        [
            name,
            str(t["runs"]),
            ", ".join(f"{v:g}" for v in t["lr"]),
            ", ".join(f"{p:,}" for p in t["core_params"]),
            ", ".join(f"{p:,}" for p in t["total_params"]),
            _fmt(t["best_val_bpc"]),
            _fmt(t["test_bpc"]),
            _fmt(t["test_ppl"], 1),
            _fmt(t["best_step"], 0),
            _fmt(t["wall_time_s"], 0),
            _fmt(t["tokens_per_s"], 0),
            _fmt(t["clip_share"], 2),
        ]
        for name, t in summary["cells"].items()
    ]
    lines = ["# Cell comparison", "", *_table(columns, rows)]
    lines += ["", "Mean ± standard deviation over seeds; clipped steps: share of steps whose gradient was clipped."]
    if summary["best_lr"]:
        rates = ", ".join(f"{c}: {lr:g}" for c, lr in summary["best_lr"].items())
        lines += [
            "",
            f"Best learning rate per cell (lowest mean best val bpc): {rates}. To compare the cells each at its own",
            f'rate: `optim.lr_by_cell="{{{rates}}}"`.',
        ]
    if summary["welch_p"]:
        fmt = lambda v: "n/a" if math.isnan(v) else f"{v:.3g}"  # noqa: E731
        rows = [[pair, fmt(p["best_val_bpc"]), fmt(p["test_bpc"])] for pair, p in summary["welch_p"].items()]
        lines += ["", "Welch's t-test, two-sided p-values:", "", *_table(["pair", "best val bpc", "test bpc"], rows)]
    if summary["positions"]:
        lines += [
            "",
            "Loss (nats) and top-1 accuracy by position, regular-verse validation poems, best checkpoint. Rhyme: last",
            "character of every even line; line start: first character of lines 2 onwards.",
            "",
            *_table(
                ["cell", *(f"{c} {m}" for c in POSITION_CLASSES for m in ("loss", "acc"))],
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
            *_table(
                ["cell", *(f"{k} {when}" for k in keys for when in ("init", "end"))],
                [
                    [name, *(f"{f[w].get(k, math.nan):.2e}" for k in keys for w in ("first", "last"))]
                    for name, f in summary["gradient_flow"].items()
                ],
            ),
        ]
    if summary["not_completed"]:
        lines += ["", "Runs not in the table (crashed, unfinished or never started):", ""]
        lines += [
            f"- `{o['run']}`: {o['status']}" + (f" — {o['error']}" if o.get("error") else "")
            for o in summary["not_completed"]
        ]
    lines += ["", *[f"![{p}]({p})" for p in plots], ""]
    return "\n".join(lines)


def plot_curves(groups: dict[str, list[Run]], out_dir: Path) -> list[str]:
    """val bpc against step and against wall time: the mean over seeds per cell, with a min–max band."""
    plt = pyplot()
    names = []
    for x_index, x_label, name in ((0, "step", "val_bpc_vs_step.png"), (1, "seconds", "val_bpc_vs_time.png")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, all_runs in groups.items():
            rs = [r for r in all_runs if r.curve]
            if not rs:
                continue
            n = min(len(r.curve) for r in rs)  # runs stopped by a time budget may have fewer points
            xs = [statistics.fmean(r.curve[i][x_index] for r in rs) for i in range(n)]
            ys = [[r.curve[i][2] for r in rs] for i in range(n)]
            ax.plot(xs, [statistics.fmean(y) for y in ys], label=f"{label} ({len(rs)} runs)")
            ax.fill_between(xs, [min(y) for y in ys], [max(y) for y in ys], alpha=0.2)
        ax.set_xlabel(x_label)
        ax.set_ylabel("validation bits per character")
        ax.legend()
        ax.grid(alpha=0.3)
        save_png(fig, out_dir / name)
        names.append(name)
    return names


def plot_gradient_flow(groups: dict[str, list[Run]], out_dir: Path) -> list[str]:
    """Each cell's gradient-decay curve (geometric mean over seeds), at initialisation and after training."""
    flows = {label: [m for m in (r.gradient_flow() for r in rs) if m] for label, rs in groups.items()}
    flows = {label: ms for label, ms in flows.items() if ms}
    if not flows:
        return []
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, index, when in ((axes[0], 0, "at initialisation"), (axes[1], -1, "after training")):
        for i, (label, measurements) in enumerate(flows.items()):
            per_run = [ms[index]["norms"] for ms in measurements]
            for layer in range(len(per_run[0])):
                curve = [
                    _geo_mean([norms[layer][k] / norms[layer][0] for norms in per_run if norms[layer][0] > 0])
                    for k in range(min(len(norms[layer]) for norms in per_run))
                ]
                style = ("-", "--", ":")[layer % 3]
                ax.plot(curve, style, color=f"C{i}", label=f"{label}" + (f", layer {layer}" if layer else ""))
        step = statistics.fmean(ms[index]["step"] for ms in next(iter(flows.values())))
        ax.set_title(f"{when} (step {step:.0f})")
        ax.set_yscale("log")
        ax.set_xlabel("distance k back from the scored character")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("‖∂L/∂h(T−1−k)‖ / ‖∂L/∂h(T−1)‖")
    axes[1].legend(fontsize=8)
    save_png(fig, out_dir / "gradient_flow.png")
    return ["gradient_flow.png"]


def plot_loss_by_position(groups: dict[str, list[Run]], out_dir: Path) -> list[str]:
    """Validation loss of the n-th character of a poem, mean over seeds per cell (regular verse: 20, 28, 40 or
    56 characters, so the rhyme positions of each form show as dips at their places)."""
    curves = {
        label: [r.metrics["loss_by_position"] for r in rs if r.metrics.get("loss_by_position")]
        for label, rs in groups.items()
    }
    curves = {label: cs for label, cs in curves.items() if cs}
    if not curves:
        return []
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, cs in curves.items():
        n = min(len(c) for c in cs)
        ax.plot(range(1, n + 1), [statistics.fmean(c[i] for c in cs) for i in range(n)], label=label)
    ax.set_xlabel("n-th character of the poem (punctuation not counted)")
    ax.set_ylabel("validation loss (nats)")
    ax.grid(alpha=0.3)
    ax.legend()
    save_png(fig, out_dir / "loss_by_position.png")
    return ["loss_by_position.png"]


def compare(dirs: list[Path]) -> tuple[dict[str, Any], Path]:
    """Write ``report.md``, ``report.json`` and the plots into the first directory; return the summary."""
    runs = find_runs(dirs)
    if not runs:
        raise TangshiError(f"no runs (folders with .hydra/) under {', '.join(map(str, dirs))}")
    summary = summarise(runs)
    out = Path(dirs[0])
    groups = group_runs(runs)
    plots = [*plot_curves(groups, out), *plot_gradient_flow(groups, out), *plot_loss_by_position(groups, out)]
    write_text(out / "report.md", to_markdown(summary, plots))
    write_text(out / "report.json", json.dumps(summary, indent=2, default=str) + "\n")
    return summary, out / "report.md"
