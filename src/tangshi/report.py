"""Write a comparison: ``report.md``, ``report.json`` and figures from the numbers of :mod:`tangshi.comparison`,
for runs read by :mod:`tangshi.runs`; the trials of a search as a search. ``scripts/compare.py`` calls
:func:`compare`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from tangshi import figures
from tangshi.atomic import write_json, write_text
from tangshi.comparison import POSITION_CLASSES, SPREAD, baselines, group_runs, poems_of, summarise
from tangshi.errors import TangshiError
from tangshi.formatting import markdown_table
from tangshi.poem_sets import SETS
from tangshi.runs import Run, is_search, load, searches
from tangshi.stats import mean_std

# -- the report -------------------------------------------------------------------------------------------


def _fmt(ms: tuple[float, float] | None, digits: int = 3) -> str:
    if ms is None or math.isnan(ms[0]):
        return "–"
    mean, std = ms
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _seeds(values: list[float], digits: int = 3) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


def _p(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.2g}"


def _steps(t: dict[str, Any]) -> str:
    text = ", ".join(f"{b}/{s}" for b, s in zip(t["best_step"], t["steps"], strict=True))
    if not t["converged"]:
        gain = t.get("late_gain")
        text += (
            " (not converged)"
            if gain is None or math.isnan(gain[0])
            else f" (not converged: {gain[0]:.3f} bits gained in the last fifth)"
        )
    return text + (" (unstable)" if t.get("unstable") else "")


def _rhyme(p: dict[str, Any] | None) -> str:
    if not p or not p["well_formed_n"]:
        return "–"
    lo, hi = p["rhyme_ci"]
    per_seed = _seeds([100 * x for x in p["rhyme_per_seed"]], 0)
    return f"{100 * p['rhyme']:.0f} % [{100 * lo:.0f}–{100 * hi:.0f}] ({per_seed})"


def _rhyme_ref(s: dict[str, Any]) -> str:
    lo, hi = s["rhyme_ci"]
    return f"{100 * s['rhyme']:.0f} % [{100 * lo:.0f}–{100 * hi:.0f}]"


def to_markdown(summary: dict[str, Any], plots: list[str]) -> str:
    lines = ["# Comparison", ""]
    groups = summary["groups"]
    if groups:
        columns = ["group", "runs", "lr", "core params", "best val bpc", "per seed", "test bpc", "test ppl"]
        columns += ["best step / steps", "seconds of training", "tokens/s", "clipped steps"]
        rows = [
            [
                name,
                str(t["runs"]),
                f"{t['lr']:g}" if t["lr"] is not None else "unknown",
                f"{t['core_params']:,}" if t["core_params"] else "–",
                _fmt(t["best_val_bpc"]),
                _seeds(t["values"]["best_val_bpc"]),
                _fmt(t["test_bpc"]),
                _fmt(t["test_ppl"], 1),
                _steps(t),
                _fmt(t["train_time_s"], 0),
                _fmt(t["tokens_per_s"], 0),
                _fmt(t["clip_share"], 2),
            ]
            for name, t in groups.items()
        ]
        for f in (summary.get("ngram") or {}).values():
            rows.append([f"Kneser-Ney {f['order']}-gram ({f['corpus']})", "–", "–", "–", "–", "–"])
            rows[-1] += [f"{f['test_bpc']:.3f}", f"{f['test_ppl']:.1f}", "–", "–", "–", "–"]
        lines += markdown_table(columns, rows)
        lines += [
            "",
            "Mean ± standard deviation over seeds, each seed's value beside it. Seconds of training: training steps",
            "only (no validation, sampling or diagnostics), carried across resumes. Clipped steps: the share of",
            "steps whose gradient norm was clipped. Not converged: a run whose best validation was its last step.",
            f"Unstable: a run whose val bpc rose more than {SPREAD} bits above its best (diverged, not overfitted).",
        ]
        provenance = {name: t["seeds_are"] for name, t in groups.items()}
        seeds = {name: ", ".join(map(str, t["seeds"])) for name, t in groups.items()}
        selection = [n for n, p in provenance.items() if p == "selection"]
        fresh = [n for n, p in provenance.items() if p == "fresh"]
        lines += [""]
        if selection:
            lines.append(
                f"**Selection runs:** {', '.join(selection)} ran on seeds that chose their rates "
                "(`optim.lr_chosen_on_seeds`): these figures are the search's own, not an independent test of it."
            )
        if fresh:
            lines.append(
                f"Fresh seeds (not those that chose the rates): {'; '.join(f'{n}: {seeds[n]}' for n in fresh)}."
            )
        hardware = {t["hardware"] for t in groups.values()}
        precision = {t["precision"] for t in groups.values()}
        lines.append(f"Hardware: {', '.join(map(str, hardware))}; precision: {', '.join(map(str, precision))}.")
        if summary.get("legacy_runs"):
            lines.append(
                f"{summary['legacy_runs']} run(s) predate run records: read from .hydra/config.yaml, with what they "
                "did not record (rate, precision, machine) marked unknown."
            )
    poems = {name: t["poems"] for name, t in groups.items() if t["poems"]}
    if poems:
        references = summary.get("references") or {}
        lines += [
            "",
            "What each group writes on its own: rhyme share of the well-formed poems, all seeds pooled, with its",
            "Wilson 95 % interval and each seed's share. Free: the sampling defaults; 五绝 and 七绝: form masks only,",
            "no rhyme or tone masks. A repeated rhyme character is an echo, not a rhyme (echoed: its share).",
            *(
                [
                    "The reference rows, scored by the same code: real held-out poems of the regular forms and random",
                    "characters in those forms.",
                ]
                if references
                else ["No reference rows: they need the corpus (--no-ngram leaves them out)."]
            ),
            "",
            *markdown_table(
                ["group", "free: well-formed", "free: rhyme", "五绝: rhyme", "七绝: rhyme", "echoed (free / 五绝)"],
                [
                    [
                        name,
                        _fmt(p["free"]["well_formed"], 2) if "free" in p else "–",
                        _rhyme(p.get("free")),
                        _rhyme(p.get("wuyan_jueju")),
                        _rhyme(p.get("qiyan_jueju")),
                        " / ".join(_fmt(p[s]["repeated_rhyme"], 2) if s in p else "–" for s in ("free", "wuyan_jueju")),
                    ]
                    for name, p in poems.items()
                ]
                + [
                    [f"{name} ({corpus})", "1.00", _rhyme_ref(ref), "", "", _fmt((ref["repeated_rhyme"], math.nan), 2)]
                    for corpus, refs in references.items()
                    for name, ref in refs.items()
                ],
            ),
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
            "Learning rate per grid: the lowest mean best val bpc among rates whose next rate up is stable (no seed",
            f"failed, seeds within {SPREAD} bits):",
            "",
            *markdown_table(
                ["grid", "chosen", "mean best val bpc", "lowest mean at", "unstable rates"],
                [
                    [
                        grid,
                        f"{b['lr']:g}" if b["lr"] else "none",
                        f"{b['mean_best_val_bpc']:.3f}" if b["mean_best_val_bpc"] else "–",
                        f"{b['lowest_mean']:g}" if b["lowest_mean"] else "–",
                        ", ".join(lr for lr, ok in b["stable"].items() if not ok) or "none",
                    ]
                    for grid, b in summary["best_lr"].items()
                ],
            ),
        ]
    tests = summary["tests"]
    if tests:
        pairs = list(dict.fromkeys(pair for col in tests.values() for pair in col))  # a column may lack a pair
        order = ["best_val_bpc", "test_bpc", *(f"{name}_rhyme" for name in SETS)]
        cols = sorted(tests, key=lambda c: order.index(c) if c in order else len(order))
        lines += [
            "",
            "Two-sided p-values, raw / Holm-adjusted over the pairs of each column. bpc: Welch's t-test over seeds;",
            "rhyme: Fisher's exact test on the pooled poems.",
            "",
            *markdown_table(
                ["pair", *cols],
                [
                    [
                        pair,
                        *(
                            f"{_p(tests[c][pair]['p'])} / {_p(tests[c][pair]['holm'])}" if pair in tests[c] else "–"
                            for c in cols
                        ),
                    ]
                    for pair in pairs
                ],
            ),
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
        lines += ["", f"## Search `{sweep}`", "", *_search_lines(study)]
    if summary["not_completed"]:
        lines += ["", "Runs not in the tables (crashed, unfinished or never started):", ""]
        lines += [
            f"- `{o['run']}`: {o['status']}" + (f" — {o['error']}" if o.get("error") else "")
            for o in summary["not_completed"]
        ]
    lines += ["", *[f"![{p}]({p})" for p in plots], ""]
    return "\n".join(lines)


def _search_lines(study: dict[str, Any]) -> list[str]:
    def show(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = []
    best = study["best"]
    if best:
        settings = ", ".join(f"{k}={show(v)}" for k, v in best["params"].items())
        lines += [
            f"Best of {len(study['trials'])} trials: {best['run']}, "
            f"best val bpc {best['best_val_bpc']:.3f} ({settings}).",
            "",
        ]
    return lines + markdown_table(
        ["trial", *study["params"], "best val bpc", "test bpc", "clipped", "steps"],
        [
            [
                t["run"],
                *(show(t["params"][k]) for k in study["params"]),
                f"{t['best_val_bpc']:.3f}" if math.isfinite(t["best_val_bpc"]) else t["status"],
                f"{t['test_bpc']:.3f}" if t["test_bpc"] else "–",
                f"{t['clip_share']:.2f}" if t["clip_share"] is not None else "–",
                str(t["steps"]),
            ]
            for t in study["trials"]
        ],
    )


def plot(groups: dict[str, list[Run]], studies: dict[str, Any], out: Path) -> list[str]:
    """The report's figures (files in ``out``); their names."""
    made: dict[str, Any] = {}
    curves = {g: [[(s, b) for s, _, b in r.curve] for r in rs] for g, rs in groups.items()}
    timed = {g: [[(t, b) for _, t, b in r.curve if math.isfinite(t)] for r in rs] for g, rs in groups.items()}
    if any(c for cs in curves.values() for c in cs):
        made["val_bpc_vs_step.png"] = figures.mean_band(curves, "step", "validation bits per character")
        made["val_bpc_vs_time.png"] = figures.mean_band(
            timed, "seconds of training (steps only)", "validation bits per character"
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
    # free poems where every group wrote well-formed ones (a short run may not), else the form-only 五绝
    poems = {g: poems_of(rs) for g, rs in groups.items()}
    for name in ("free", "wuyan_jueju"):
        if poems and all(p.get(name) and p[name]["well_formed_n"] for p in poems.values()):
            rhyme = {
                g: (
                    *mean_std([r.metrics["best_val_bpc"] for r in rs]),
                    poems[g][name]["rhyme"],
                    *poems[g][name]["rhyme_ci"],
                )
                for g, rs in groups.items()
            }
            made["rhyme_vs_bpc.png"] = figures.rhyme_against_bpc(
                rhyme, {"free": "free sampling"}.get(name, "wuyan jueju, form only")
            )
            break
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
    runs = load(dirs)
    if not runs:
        raise TangshiError(f"no runs (folders with .hydra/) under {', '.join(map(str, dirs))}")
    studies = searches(runs)
    plain_runs = [r for r in runs if not is_search(r)]
    summary = summarise(plain_runs)
    summary["searches"] = studies
    if data_dir is not None and summary["groups"]:
        summary.update(baselines(plain_runs, data_dir))
    out = Path(dirs[0])
    plots = plot(group_runs([r for r in plain_runs if r.status == "completed"]), studies, out)
    write_text(out / "report.md", to_markdown(summary, plots))
    write_json(out / "report.json", summary)
    return summary, out / "report.md"
