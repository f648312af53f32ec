"""Compare runs: group what the runs recorded, test the differences, write ``report.md``, ``report.json`` and
figures.

* Runs are grouped by their recorded settings with the seed aside (:func:`tangshi.record.experiment`): runs of
  different cells, sizes, rates, precisions or machines are never averaged as seeds, and each group is
  labelled by what sets it apart from the others (``lstm 200k lr 0.02``, ``… precision=bf16-mixed``).
* Best val bpc and test bpc are compared by Welch's t-test over seeds; rhyme shares by Fisher's exact test on
  the poems of all seeds pooled. Each column's p-values are Holm-adjusted over its pairs, the adjusted value
  beside the raw one.
* A group whose seeds include those its rates were chosen on (``optim.lr_chosen_on_seeds``) is marked as
  selection runs: its figures are the search's, not an independent test of it.
* A count-based floor, an interpolated Kneser-Ney 5-gram on the same split and vocabulary, is added
  (:func:`tangshi.ngram.floor`), and the trials of a search are reported as a search.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import defaultdict
from itertools import combinations
from pathlib import Path
from typing import Any

from tangshi import figures
from tangshi.atomic import write_json, write_text
from tangshi.errors import TangshiError
from tangshi.formatting import markdown_table
from tangshi.poem_sets import SETS
from tangshi.runs import Run, is_search, load, searches
from tangshi.stats import fisher_p, holm, mean_std, welch_p, wilson

CELL_ORDER = ("rnn", "gru", "lstm", "mingru", "minlstm", "transformer")
POSITION_CLASSES = ("rhyme", "line_start", "other", "punct")
SPREAD = 0.2  # bits: seeds of one rate farther apart than this make the rate unstable (lr choice)
FIRST = ("model.cell", "model.param_budget", "optim.lr")  # label order: cell, size, rate, then the rest


# -- groups -----------------------------------------------------------------------------------------------


def _key(settings: dict[str, Any], drop: tuple[str, ...] = ()) -> str:
    return json.dumps({k: v for k, v in settings.items() if k not in drop}, sort_keys=True, default=str)


def _order(run: Run) -> tuple:
    seed = run.seed if isinstance(run.seed, int) else -1
    return (CELL_ORDER.index(run.cell) if run.cell in CELL_ORDER else 9, run.cell, run.core or 0, run.lr or 0, seed)


def _describe(key: str, value: Any) -> str:
    if key == "model.cell":
        return str(value)
    if key == "model.param_budget" and isinstance(value, int):
        return f"{value / 1e3:g}k"
    if key == "optim.lr" and isinstance(value, float | int):
        return f"lr {value:g}"
    return f"{key.rsplit('.', 1)[-1]}={value}"


def labels(settings: list[dict[str, Any]]) -> list[str]:
    """A short label for each of ``settings``: the values of the keys that differ among them. A key that
    differs only between cells (a hidden size at a common budget, each cell's own rate) adds nothing to a
    label that names the cell."""
    keys = sorted({k for s in settings for k in s})
    varying = [k for k in keys if len({json.dumps(s.get(k), default=str) for s in settings}) > 1]
    if "model.cell" in varying:
        cells = {s.get("model.cell") for s in settings}
        varying = [
            k
            for k in varying
            if k == "model.cell"
            or any(
                len({json.dumps(s.get(k), default=str) for s in settings if s.get("model.cell") == c}) > 1
                for c in cells
            )
        ]
    varying.sort(key=lambda k: (FIRST.index(k) if k in FIRST else len(FIRST), k))
    return [" ".join(_describe(k, s.get(k)) for k in varying) or str(s.get("model.cell")) for s in settings]


def group_runs(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs by their recorded settings (the seed aside), each group under its label."""
    by_key: dict[str, list[Run]] = defaultdict(list)
    for r in sorted(runs, key=_order):
        by_key[_key(r.settings)].append(r)
    groups = list(by_key.values())
    return dict(zip(labels([rs[0].settings for rs in groups]), groups, strict=True))


# -- one group --------------------------------------------------------------------------------------------


def _best_so_far(curve: list[tuple[int, float, float]], index: int, limit: float) -> float:
    """The best val bpc a run had reached by step (index 0) or second of training (index 1) ``limit``."""
    seen = [p[2] for p in curve if p[index] <= limit + 1e-9]
    return min(seen) if seen else math.nan


def _provenance(rs: list[Run]) -> str:
    """``selection`` when the group's seeds include those its rates were chosen on, ``fresh`` when none do,
    ``unknown`` when the runs did not record where their rates came from."""
    chosen = rs[0].settings.get("optim.lr_chosen_on_seeds")
    if not isinstance(chosen, list):
        return "unknown"
    return "selection" if {r.seed for r in rs} & set(chosen) else "fresh"


def poems_of(rs: list[Run]) -> dict[str, Any]:
    """Per poem set: each seed's rhyme share, the poems of all seeds pooled (rhymed / well-formed), the pooled
    share with its Wilson interval, and the mean well-formed and echoed-rhyme shares."""
    out = {}
    for name in SETS:
        sets = [r.metrics["poems"][name] for r in rs if name in (r.metrics.get("poems") or {})]
        if not sets:
            continue
        hits, formed = sum(s["rhymed_n"] for s in sets), sum(s["well_formed_n"] for s in sets)
        out[name] = {
            "rhyme_per_seed": [s["rhyme"] for s in sets],
            "rhymed": hits,
            "well_formed_n": formed,
            "rhyme": hits / formed if formed else math.nan,
            "rhyme_ci": list(wilson(hits, formed)),
            "well_formed": mean_std([s["well_formed"] for s in sets]),
            "repeated_rhyme": mean_std([s["repeated_rhyme"] for s in sets]),
            "tone_ok": mean_std([s["tone_ok"] for s in sets]),
        }
    return out


def summarise_group(rs: list[Run]) -> dict[str, Any]:
    values = {
        k: [float(r.metrics[k]) for r in rs if r.metrics.get(k) is not None]
        for k in ("best_val_bpc", "test_bpc", "test_ppl", "wall_time_s", "tokens_per_s", "clip_share", "train_time_s")
    }
    curves = [r.curve for r in rs if r.curve]
    return {
        "cell": rs[0].cell,
        "runs": len(rs),
        "seeds": [r.seed for r in rs],
        "seeds_are": _provenance(rs),
        "lr": rs[0].lr,
        "core_params": rs[0].core,
        "total_params": (rs[0].metrics.get("params") or {}).get("total"),
        "hardware": rs[0].settings.get("hardware"),
        "precision": rs[0].settings.get("trainer.precision"),
        "steps": [r.metrics.get("steps") for r in rs],
        "best_step": [r.metrics.get("best_step") for r in rs],
        "stopped_by": [r.metrics.get("stopped_by") for r in rs],
        "converged": all(r.metrics.get("best_step") != r.metrics.get("steps") for r in rs),
        # diverged rather than overfitted: its val bpc rose further above its best than seeds may differ
        "unstable": any(c[-1][2] - min(p[2] for p in c) > SPREAD for c in curves),
        # how far from converged: what the last fifth of the steps still gained in best val bpc
        "late_gain": mean_std([_best_so_far(c, 0, 0.8 * c[-1][0]) - min(p[2] for p in c) for c in curves])
        if curves
        else None,
        **{k: mean_std(v) for k, v in values.items()},
        "values": {k: values[k] for k in ("best_val_bpc", "test_bpc", "clip_share")},
        "poems": poems_of(rs),
    }


# -- across groups ----------------------------------------------------------------------------------------


def pairwise(table: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per column, per pair of groups: the raw two-sided p-value and its Holm adjustment over the column's
    pairs. bpc columns: Welch's t over seeds (groups of two or more runs); rhyme columns: Fisher's exact test
    on the pooled poems."""
    tests: dict[str, dict[str, float]] = defaultdict(dict)
    for a, b in combinations(table, 2):
        pair = f"{a} vs {b}"
        ta, tb = table[a], table[b]
        if ta["runs"] > 1 and tb["runs"] > 1:
            for k in ("best_val_bpc", "test_bpc"):
                tests[k][pair] = welch_p(ta["values"][k], tb["values"][k])
        for name in SETS:
            pa, pb = ta["poems"].get(name), tb["poems"].get(name)
            if pa and pb:
                p = fisher_p(pa["rhymed"], pa["well_formed_n"], pb["rhymed"], pb["well_formed_n"])
                tests[f"{name}_rhyme"][pair] = p
    return {col: {pair: {"p": p, "holm": holm(ps)[pair]} for pair, p in ps.items()} for col, ps in tests.items()}


def equal_budget(groups: dict[str, list[Run]]) -> dict[str, Any]:
    """Each group's best val bpc (mean over runs) by the largest step, and by the most seconds of training,
    that every run of every group reached: cells compared at equal work and at equal training time."""
    curves = [r.curve for rs in groups.values() for r in rs if r.curve]
    if len(groups) < 2 or not curves:
        return {}
    step = min(c[-1][0] for c in curves)
    seconds = min((max((p[1] for p in c if math.isfinite(p[1])), default=math.nan) for c in curves), default=math.nan)
    return {
        "step": step,
        "seconds": seconds,
        "by_step": {g: mean_std([_best_so_far(r.curve, 0, step) for r in rs if r.curve]) for g, rs in groups.items()},
        "by_time": {
            g: mean_std([_best_so_far(r.curve, 1, seconds) for r in rs if r.curve]) for g, rs in groups.items()
        },
    }


def best_lr(runs: list[Run]) -> dict[str, dict[str, Any]]:
    """Per grid of rates (runs alike in every setting but the rate and the seed): the rate with the lowest mean
    best val bpc among the rates whose next rate up is stable, that is, no seed failed and the seeds agree
    within :data:`SPREAD` bits. A rate at the top of the grid has no such margin and is not chosen. Runs whose
    rate is unknown are in no grid."""
    grids: dict[str, dict[float, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        if r.lr is not None and r.status in ("completed", "failed"):
            grids[_key(r.settings, ("optim.lr",))][r.lr].append(r)
    grids = {k: g for k, g in grids.items() if len(g) > 1}
    names = labels([json.loads(k) for k in grids])
    out = {}
    for name, rates in zip(names, grids.values(), strict=True):
        grid = sorted(rates)
        stable = {lr: _stable(rs) for lr, rs in rates.items()}
        means = {
            lr: sum(r.metrics["best_val_bpc"] for r in rs) / len(rs)
            for lr, rs in rates.items()
            if all(r.status == "completed" and "best_val_bpc" in r.metrics for r in rs)
        }
        allowed = [lr for lr, nxt in itertools.pairwise(grid) if stable[nxt] and lr in means]
        best = min(allowed, key=means.__getitem__) if allowed else None
        out[name] = {
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


def summarise(runs: list[Run]) -> dict[str, Any]:
    groups = group_runs([r for r in runs if r.status == "completed"])
    table = {name: summarise_group(rs) for name, rs in groups.items()}
    positions, flow = {}, {}
    for name, rs in groups.items():
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
    return {
        "groups": table,
        "tests": pairwise(table),
        "equal": equal_budget(groups),
        "best_lr": best_lr(runs),
        "positions": positions,
        "gradient_flow": flow,
        "legacy_runs": sum(not r.recorded for r in runs),
        "not_completed": [
            {"run": str(r.path), "status": r.status, "error": r.metrics.get("error")}
            for r in runs
            if r.status != "completed"
        ],
    }


def corpora(runs: list[Run]) -> list[dict[str, Any]]:
    """The data settings of each corpus that completed ``runs`` trained on, once each (known settings only)."""
    from tangshi.corpus import LOADER_KEYS
    from tangshi.record import UNKNOWN

    out, seen = [], set()
    for r in runs:
        data = (r.record.get("config") or {}).get("data") or {}
        corpus = {k: v for k, v in data.items() if k not in LOADER_KEYS}
        key = json.dumps(corpus, sort_keys=True)
        if r.status == "completed" and corpus and UNKNOWN not in corpus.values() and key not in seen:
            seen.add(key)
            out.append(data)
    return out


def baselines(runs: list[Run], data_dir: Path) -> dict[str, Any]:
    """Per corpus of ``runs``: the Kneser-Ney floor (``ngram``), and the poem sets' reference rows (real held-out
    poems, random characters in form) scored by the same code as the runs' poems, as many as a run sampled."""
    from tangshi.corpus import CorpusConfig, prepare
    from tangshi.ngram import floor
    from tangshi.poem_sets import references

    n = max((int((r.metrics.get("poems") or {}).get("n", 0)) for r in runs), default=0)
    out: dict[str, Any] = {"ngram": {}, "references": {}}
    for data in corpora(runs):
        result = floor(data, data_dir)
        out["ngram"][result["corpus"]] = result
        if n:
            out["references"][result["corpus"]] = references(prepare(CorpusConfig.from_data(data), data_dir), n)
    return out


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
        lines += [
            "",
            "What each group writes on its own: rhyme share of the well-formed poems, all seeds pooled, with its",
            "Wilson 95 % interval and each seed's share. Free: the sampling defaults; 五绝 and 七绝: form masks only,",
            "no rhyme or tone masks. A repeated rhyme character is an echo, not a rhyme (echoed: its share). The",
            "reference rows, scored by the same code: real held-out poems of the regular forms and random characters",
            "in those forms.",
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
                    for corpus, refs in (summary.get("references") or {}).items()
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
        pairs = sorted({pair for col in tests.values() for pair in col}, key=list(tests[next(iter(tests))]).index)
        cols = list(tests)
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
