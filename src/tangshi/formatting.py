"""Text for people: the end-of-run summary, poems as text or scored JSON, and the one Markdown table helper
that every report (analysis, comparison, benchmark) uses."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tangshi.decoding import SamplingConfig


def markdown_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table as lines: the first column (a name) left-aligned, the others (numbers) right-aligned."""
    return [
        "| " + " | ".join(columns) + " |",
        "| --- |" + " ---: |" * (len(columns) - 1),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def format_run_summary(summary: dict[str, Any]) -> str:
    lines = [f"run dir:  {summary['run_dir']}", f"status:   {summary['status']}"]
    if "best_val_bpc" in summary:
        nan = float("nan")
        lines.append(
            f"val bpc:  {summary['best_val_bpc']:.3f} (best, step {summary.get('best_step', '?')}); "
            f"test bpc {summary.get('test_bpc', nan):.3f}, test ppl {summary.get('test_ppl', nan):.1f}"
        )
    if summary.get("params"):
        p = summary["params"]
        lines.append(f"params:   {p['total']:,} total, {p['core']:,} in the {summary['cell']} core")
    if summary.get("stopped_by"):
        fitted = summary.get("schedule_fitted")
        ended = f" of {fitted['of']}, its schedule ended there to fit the time" if fitted else ""
        lines.append(f"stopped:  by {summary['stopped_by']} at step {summary.get('steps')}{ended}")
    if summary.get("tokens_per_s"):
        lines.append(
            f"speed:    {summary['tokens_per_s']:,.0f} tokens/s over {summary['steps']} steps; "
            f"wall time {summary['wall_time_s'] / 60:.1f} min; first step {summary.get('startup_s') or 0:.1f} s "
            "after start"
        )
    if summary.get("poems"):
        seconds = summary["poems"].get("seconds", 0.0)
        lines.append(f'poems:    {summary["poems"]["n"]} per set, scored in {seconds:.0f} s (metrics.json "poems")')
        lines += [f"  {line}" for line in poem_set_lines(summary["poems"])]
    if summary.get("samples"):
        lines += ["samples:", *(f"  {p}" for p in summary["samples"])]
    return "\n".join(lines)


def poem_set_lines(measured: dict[str, Any]) -> list[str]:
    """One line per poem set (:mod:`tangshi.poem_sets`) for people:
    ``free: rhymes 54 % [47–61 %] of 180 well-formed (90 % of 200); …``."""
    lines = []
    for name, s in measured.items():
        if not isinstance(s, dict) or "rhyme_ci" not in s:
            continue
        lo, hi = s["rhyme_ci"]
        ci = f" [{100 * lo:.0f}–{100 * hi:.0f} %]" if s["well_formed_n"] else ""
        lines.append(
            f"{name}: rhymes {100 * s['rhyme']:.0f} %{ci} of {s['well_formed_n']} well-formed "
            f"({100 * s['well_formed']:.0f} % of {s['n']}); echoed rhyme {100 * s['repeated_rhyme']:.0f} %, "
            f"平仄 kept {100 * s['tone_ok']:.0f} %, distinct-2 {s['distinct_2']:.2f}"
        )
    return lines


def print_run_summary(summary: dict[str, Any]) -> None:
    print(format_run_summary(summary), flush=True)


def format_samples(poems: list[str], settings: SamplingConfig, fmt: str = "text", **context: Any) -> str:
    """Poems one per line, or JSON with the prompt, the settings and each poem's poetics scores."""
    if fmt == "text":
        return "\n".join(poems)
    from tangshi.poetics import phonology, score_poem

    phon = phonology()
    return json.dumps(
        {
            **context,
            "prompt": {"begin": settings.begin, "acrostic": settings.acrostic, "form": settings.form},
            "settings": asdict(settings),
            "poems": [{"text": p, **score_poem(p, phon)} for p in poems],
        },
        ensure_ascii=False,
        indent=2,
    )
