"""Every figure the project draws, from plain data, on matplotlib's Agg backend; PNGs written atomically.

Training (TensorBoard images), ``scripts/analyse.py`` and ``scripts/compare.py`` call these; nothing else draws.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence
from typing import Any

from tangshi.atomic import atomic_path

Curve = Sequence[tuple[float, float]]  # (x, y) points


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (imported on first use: it costs a second at start-up)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: str | os.PathLike[str]) -> None:
    """Write ``fig`` to ``path`` (all or nothing) and close it; the page grows to hold a legend below it."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    pyplot().close(fig)


def legend(ax: Any, fontsize: int = 8) -> None:
    """``ax``'s legend: inside the axes while its labels are few and short, else below the figure, where long
    labels (a comparison names each group by every setting that differs) cannot cover the curves."""
    handles, labels = ax.get_legend_handles_labels()
    if not labels:
        return
    if len(labels) <= 6 and max(len(label) for label in labels) <= 40:
        ax.legend(fontsize=fontsize)
    else:
        ax.figure.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 0.0))


def geo_mean(values: Sequence[float]) -> float:
    """Ratios of gradient norms span orders of magnitude: average them on a log scale (zeros left out)."""
    values = [v for v in values if v > 0]
    return math.exp(statistics.fmean(math.log(v) for v in values)) if values else math.nan


def _decay(norms: Sequence[float]) -> list[float]:
    return [max(v / norms[0], 1e-30) for v in norms] if norms and norms[0] > 0 else []


# -- gradient flow ----------------------------------------------------------------------------------------

FLOW_Y = "‖∂L/∂h(T−1−k)‖ / ‖∂L/∂h(T−1)‖"
FLOW_X = "distance k back from the scored character"


def gradient_flow(curves: dict[str, list[list[float]]], title: str) -> Any:
    """g(k) / g(0) on a log axis, one line per ``label -> per-layer norms``."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, layers) in enumerate(curves.items()):
        for layer, norms in enumerate(layers):
            if _decay(norms):
                ax.plot(
                    _decay(norms),
                    ("-", "--", ":", "-.")[layer % 4],
                    color=f"C{i % 10}",
                    label=f"{label}, layer {layer}",
                )
    ax.set(yscale="log", xlabel=FLOW_X, ylabel=FLOW_Y, title=title)
    ax.grid(alpha=0.3, which="both")
    legend(ax, 7)
    return fig


def gradient_flow_history(history: list[dict[str, Any]], title: str) -> Any:
    """The top layer's g(k) / g(0) at every measurement of a run, darker = later."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    cmap = plt.get_cmap("viridis")
    lines = []
    for i, m in enumerate(history):
        (line,) = ax.plot(_decay(m["norms"][-1]), color=cmap(i / max(1, len(history) - 1)), label=f"step {m['step']}")
        lines.append(line)
    ax.set(yscale="log", xlabel=FLOW_X, ylabel=FLOW_Y, title=title)
    ax.grid(alpha=0.3, which="both")
    if len(lines) > 8:  # a legend of every step is unreadable: keep the first and the last
        ax.legend([lines[0], lines[-1]], [lines[0].get_label(), lines[-1].get_label()])
    else:
        legend(ax, 7)
    return fig


def gradient_flow_by_group(flows: dict[str, list[list[dict[str, Any]]]]) -> Any:
    """Side by side, at initialisation and after training: each group's decay curve per layer, the geometric
    mean over its runs (``flows``: label -> each run's measurements, oldest first)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, index, when in ((axes[0], 0, "at initialisation"), (axes[1], -1, "after training")):
        steps = []
        for i, (label, runs) in enumerate(flows.items()):
            per_run = [ms[index]["norms"] for ms in runs]
            steps += [ms[index]["step"] for ms in runs]
            for layer in range(len(per_run[0])):
                width = min(len(norms[layer]) for norms in per_run)
                curve = [
                    geo_mean([n[layer][k] / n[layer][0] for n in per_run if n[layer][0] > 0]) for k in range(width)
                ]
                ax.plot(
                    curve,
                    ("-", "--", ":")[layer % 3],
                    color=f"C{i % 10}",
                    label=label + (f", layer {layer}" if layer else ""),
                )
        ax.set(yscale="log", xlabel=FLOW_X, title=f"{when} (step {statistics.fmean(steps):.0f})")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel(FLOW_Y)
    legend(axes[1])
    return fig


# -- losses and curves ------------------------------------------------------------------------------------


def loss_by_position(curves: dict[str, list[list[float]]]) -> Any:
    """Validation loss of the n-th character of a poem, the mean over each label's runs (regular verse: the
    rhyme positions of each form show as dips at their places)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, runs in curves.items():
        n = min(len(c) for c in runs)
        ax.plot(range(1, n + 1), [statistics.fmean(c[i] for c in runs) for i in range(n)], label=label)
    ax.set(xlabel="n-th character of the poem (punctuation not counted)", ylabel="validation loss (nats)")
    ax.grid(alpha=0.3)
    legend(ax)
    return fig


def mean_band(groups: dict[str, list[Curve]], xlabel: str, ylabel: str, xlog: bool = False) -> Any:
    """Per label, the mean of its runs' curves (point by point, as far as every run goes) with a min–max band."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, curves in groups.items():
        curves = [c for c in curves if c]
        if not curves:
            continue
        n = min(len(c) for c in curves)  # runs stopped by a time limit or early stopping may have fewer points
        xs = [statistics.fmean(c[i][0] for c in curves) for i in range(n)]
        ys = [[c[i][1] for c in curves] for i in range(n)]
        ax.plot(xs, [statistics.fmean(y) for y in ys], label=f"{label} ({len(curves)} runs)")
        ax.fill_between(xs, [min(y) for y in ys], [max(y) for y in ys], alpha=0.2)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    if xlog:
        ax.set_xscale("log")
    ax.grid(alpha=0.3, which="both")
    legend(ax)
    return fig


def points_with_error(groups: dict[str, list[tuple[float, float, float]]], xlabel: str, ylabel: str) -> Any:
    """Per label, points (x, mean, std) joined by a line, with error bars; x on a log axis (core sizes)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in groups.items():
        points = sorted(points)
        ax.errorbar(
            [p[0] for p in points],
            [p[1] for p in points],
            yerr=[0 if math.isnan(p[2]) else p[2] for p in points],
            marker="o",
            capsize=3,
            label=label,
        )
    ax.set(xscale="log", xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3, which="both")
    legend(ax)
    return fig


def rhyme_against_bpc(points: dict[str, tuple[float, float, float, float, float]], poem_set: str) -> Any:
    """Per group, what it writes against how well it predicts: best validation bpc (mean ± std over seeds) on x,
    the share of its well-formed ``poem_set`` poems that rhyme (seeds pooled, Wilson 95 % interval) on y. Lowest
    bpc is not best structure: the points show where the two part."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, (bpc, sd, rhyme, lo, hi)) in enumerate(sorted(points.items())):
        ax.errorbar(
            [bpc],
            [100 * rhyme],
            xerr=[[0 if math.isnan(sd) else sd], [0 if math.isnan(sd) else sd]],
            yerr=[[100 * (rhyme - lo)], [100 * (hi - rhyme)]],
            marker="o",
            capsize=3,
            color=f"C{i % 10}",
            label=label,
        )
    ax.set(xlabel="best validation bits per character", ylabel=f"{poem_set}: rhyming share of well-formed poems (%)")
    ax.invert_xaxis()  # better to the right on both axes
    ax.grid(alpha=0.3)
    legend(ax)
    return fig


def objective_by_parameter(trials: list[dict[str, Any]], params: list[str], objective: str) -> Any:
    """A search's objective against each searched parameter, one panel each, one colour per group (cell);
    numeric parameters on a log axis when they span a factor of 20 or more."""
    plt = pyplot()
    cols = min(3, len(params))
    rows = math.ceil(len(params) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    groups = sorted({t["group"] for t in trials})
    finite = [t[objective] for t in trials if math.isfinite(t[objective])]
    top = sorted(finite)[int(0.9 * (len(finite) - 1))] if finite else 1.0
    for ax, param in zip(axes.flat, params, strict=False):
        for i, g in enumerate(groups):
            pts = [(t["params"][param], t[objective]) for t in trials if t["group"] == g and param in t["params"]]
            pts = [(x, min(y, top)) for x, y in pts]  # diverged trials drawn at the top of the axis
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=18, color=f"C{i}", label=g)
        xs = [t["params"][param] for t in trials if isinstance(t["params"].get(param), int | float)]
        if xs and min(xs) > 0 and max(xs) / min(xs) >= 20:
            ax.set_xscale("log")
        ax.set(xlabel=param, ylabel=objective)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(params) :]:
        ax.axis("off")
    legend(axes.flat[0])
    return fig
