"""Forms of Tang regular verse (近体诗): line lengths, line counts and their punctuation.

Depends on nothing else in tangshi, so the corpus filter, the decoder and the evaluation share one definition.
"""

from __future__ import annotations

import re
from typing import NamedTuple


class Form(NamedTuple):
    chars_per_line: int
    lines: int


FORMS: dict[str, Form] = {
    "wuyan_jueju": Form(5, 4),  # 五言绝句
    "qiyan_jueju": Form(7, 4),  # 七言绝句
    "wuyan_lvshi": Form(5, 8),  # 五言律诗
    "qiyan_lvshi": Form(7, 8),  # 七言律诗
}

LINE_PUNCT = "，。？！；：、"
COUPLET_END = "。？！"  # an even (second) line closes the couplet with a full stop
_LINE = re.compile(f"([^{LINE_PUNCT}]+)([{LINE_PUNCT}])")


def split_lines(body: str) -> list[tuple[str, str]]:
    """``[(text, punctuation), ...]`` for a body of lines each closed by punctuation; [] if it is not."""
    pieces = _LINE.findall(body)
    if sum(len(t) + 1 for t, _ in pieces) != len(body):
        return []
    return pieces


def detect_form(body: str) -> str | None:
    """The regular form of ``body`` (a key of FORMS), or None for any other poem."""
    lines = split_lines(body)
    if not lines:
        return None
    width = len(lines[0][0])
    if any(len(t) != width for t, _ in lines):
        return None
    if any(p not in COUPLET_END for _, p in lines[1::2]):
        return None
    for name, form in FORMS.items():
        if form == (width, len(lines)):
            return name
    return None
