"""A comparison's numbers: runs grouped by what they recorded, each group summarised over its seeds, pairwise
tests with Holm's adjustment, the stable best rate of a rate grid, and the baselines of the runs' corpora.

* Runs are grouped by their recorded settings with the seed aside (:func:`tangshi.record.experiment`): runs of
  different cells, sizes, rates, precisions or machines are never averaged as seeds, and each group is
  labelled by what sets it apart from the others (``lstm 200k lr 0.02``, ``… precision=bf16-mixed``).
* Best val bpc and test bpc are compared by Welch's t-test over seeds; rhyme shares by Fisher's exact test on
  the poems of all seeds pooled. Each column's p-values are Holm-adjusted over its pairs.
* A group whose seeds include those its rates were chosen on (``optim.lr_chosen_on_seeds``) is marked as
  selection runs: its figures are the search's, not an independent test of it.

:mod:`tangshi.report` writes these numbers as tables and figures. Imports no model code.
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
from tangshi.poem_sets import SETS
from tangshi.runs import Run
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
