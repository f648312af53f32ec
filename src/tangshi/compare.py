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

from tangshi.atomic import atomic_path, write_text
from tangshi.errors import TangshiError

CELL_ORDER = ("rnn", "gru", "lstm")
METRICS = ("best_val_bpc", "test_bpc", "test_ppl", "best_step", "wall_time_s", "tokens_per_s")


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


def find_runs(dirs: list[Path]) -> list[Run]:
    """Every run dir (a folder with ``.hydra/``) under ``dirs``; one without ``metrics.json`` never started."""
    runs = []
    for d in dirs:
        for hydra_dir in sorted(Path(d).rglob(".hydra")):
            run_dir = hydra_dir.parent
            path = run_dir / "metrics.json"
            metrics = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"status": "not started"}
            runs.append(Run(run_dir, metrics, read_curve(run_dir)))
    return runs


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
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def welch_p(a: list[float], b: list[float]) -> float:
    """Two-sided p-value of Welch's t-test; NaN when either side has fewer than two runs."""
    if len(a) < 2 or len(b) < 2:
        return math.nan
    from scipy.stats import ttest_ind

    return float(ttest_ind(a, b, equal_var=False).pvalue)


def summarise(runs: list[Run]) -> dict[str, Any]:
    done = [r for r in runs if r.status == "completed"]
    by_cell: dict[str, list[Run]] = defaultdict(list)
    for r in done:
        by_cell[r.cell].append(r)
    cells = sorted(by_cell, key=lambda c: (CELL_ORDER.index(c) if c in CELL_ORDER else 9, c))
    table = {}
    for cell in cells:
        rs = by_cell[cell]
        col = {key: [float(r.metrics[key]) for r in rs if r.metrics.get(key) is not None] for key in METRICS}
        table[cell] = {
            "runs": len(rs),
            "seeds": sorted(r.metrics.get("seed") for r in rs),
            "core_params": sorted({r.metrics["params"]["core"] for r in rs}),
            "total_params": sorted({r.metrics["params"]["total"] for r in rs}),
            **{key: _mean_std(values) for key, values in col.items()},
            "values": {"best_val_bpc": col["best_val_bpc"], "test_bpc": col["test_bpc"]},
        }
    pvalues = {
        f"{a} vs {b}": {k: welch_p(table[a]["values"][k], table[b]["values"][k]) for k in ("best_val_bpc", "test_bpc")}
        for a, b in combinations(cells, 2)
    }
    others = [
        {"run": str(r.path), "status": r.status, "error": r.metrics.get("error")}
        for r in runs
        if r.status != "completed"
    ]
    return {"cells": table, "welch_p": pvalues, "not_completed": others}


def _fmt(ms: tuple[float, float], digits: int = 3) -> str:
    mean, std = ms
    return "–" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def to_markdown(summary: dict[str, Any], plots: list[str]) -> str:
    lines = [
        "# Cell comparison",
        "",
        "| cell | runs | core params | total params | best val bpc | test bpc | test ppl | step of best "
        "| wall time (s) | tokens/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for cell, t in summary["cells"].items():
        lines.append(
            f"| {cell} | {t['runs']} | {', '.join(f'{p:,}' for p in t['core_params'])} | "
            f"{', '.join(f'{p:,}' for p in t['total_params'])} | {_fmt(t['best_val_bpc'])} | {_fmt(t['test_bpc'])} | "
            f"{_fmt(t['test_ppl'], 1)} | {_fmt(t['best_step'], 0)} | {_fmt(t['wall_time_s'], 0)} | "
            f"{_fmt(t['tokens_per_s'], 0)} |"
        )
    lines += ["", "Mean ± standard deviation over seeds. Welch's t-test, two-sided p-values:", ""]
    lines += ["| pair | best val bpc | test bpc |", "| --- | ---: | ---: |"]
    for pair, p in summary["welch_p"].items():
        fmt = lambda v: "n/a (< 2 runs)" if math.isnan(v) else f"{v:.3g}"  # noqa: E731
        lines.append(f"| {pair} | {fmt(p['best_val_bpc'])} | {fmt(p['test_bpc'])} |")
    if summary["not_completed"]:
        lines += ["", "Runs not in the table (crashed, unfinished or never started):", ""]
        lines += [
            f"- `{o['run']}`: {o['status']}" + (f" — {o['error']}" if o.get("error") else "")
            for o in summary["not_completed"]
        ]
    lines += ["", *[f"![{p}]({p})" for p in plots], ""]
    return "\n".join(lines)


def plot_curves(runs: list[Run], out_dir: Path) -> list[str]:
    """val bpc against step and against wall time: the mean over seeds per cell, with a min–max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for x_index, x_label, name in ((0, "step", "val_bpc_vs_step.png"), (1, "seconds", "val_bpc_vs_time.png")):
        fig, ax = plt.subplots(figsize=(6, 4))
        by_cell: dict[str, list[Run]] = defaultdict(list)
        for r in runs:
            if r.status == "completed" and r.curve:
                by_cell[r.cell].append(r)
        for cell, rs in sorted(by_cell.items()):
            n = min(len(r.curve) for r in rs)  # runs stopped by a time budget may have fewer points
            xs = [statistics.fmean(r.curve[i][x_index] for r in rs) for i in range(n)]
            ys = [[r.curve[i][2] for r in rs] for i in range(n)]
            ax.plot(xs, [statistics.fmean(y) for y in ys], label=f"{cell} ({len(rs)} runs)")
            ax.fill_between(xs, [min(y) for y in ys], [max(y) for y in ys], alpha=0.2)
        ax.set_xlabel(x_label)
        ax.set_ylabel("validation bits per character")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        with atomic_path(out_dir / name) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        plt.close(fig)
        names.append(name)
    return names


def compare(dirs: list[Path]) -> tuple[dict[str, Any], Path]:
    """Write ``report.md``, ``report.json`` and the plots into the first directory; return the summary."""
    runs = find_runs(dirs)
    if not runs:
        raise TangshiError(f"no runs (folders with .hydra/) under {', '.join(map(str, dirs))}")
    summary = summarise(runs)
    out = Path(dirs[0])
    plots = plot_curves(runs, out)
    write_text(out / "report.md", to_markdown(summary, plots))
    write_text(out / "report.json", json.dumps(summary, indent=2, default=str) + "\n")
    return summary, out / "report.md"
