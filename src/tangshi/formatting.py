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
        lines.append(f"stopped:  by {summary['stopped_by']} at step {summary.get('steps')}")
    if summary.get("tokens_per_s"):
        lines.append(
            f"speed:    {summary['tokens_per_s']:,.0f} tokens/s over {summary['steps']} steps; "
            f"wall time {summary['wall_time_s'] / 60:.1f} min; first step {summary.get('startup_s') or 0:.1f} s "
            "after start"
        )
    if summary.get("poems"):
        from tangshi.poem_sets import summary_lines

        seconds = summary["poems"].get("seconds", 0.0)
        lines.append(f'poems:    {summary["poems"]["n"]} per set, scored in {seconds:.0f} s (metrics.json "poems")')
        lines += [f"  {line}" for line in summary_lines(summary["poems"])]
    if summary.get("samples"):
        lines += ["samples:", *(f"  {p}" for p in summary["samples"])]
    return "\n".join(lines)


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
