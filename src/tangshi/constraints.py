"""Which tokens each poem may emit next, given what it has written: the decoder's masks and 平仄 bias.

Built from small pieces, each read in one go:

- :class:`PoemState`: where one poem stands (line, column, the rhyme it committed to, the pattern it opened);
- :class:`TokenMasks`: boolean masks over the vocabulary (characters, one token, a rhyme category, a tone);
- :func:`form_mask`: the form and the acrostic; :func:`rhyme_mask`: the rhyme; :func:`tone_bias`: 平仄;
- :class:`Constraints`: one state per poem in the batch, and the masks and biases of the next step.

The rules themselves (rhyme positions, 平仄 patterns, tones and categories) are :mod:`tangshi.poetics`'.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from tangshi.errors import TangshiError
from tangshi.poetics import FORMS, LINE_PUNCT, PING, ZE, Form, Phonology, is_rhyme_position, pattern, phonology
from tangshi.vocab import EOS_ID, SPECIALS, Vocab

COMMA, STOP = "，", "。"
DONE = 1 << 30  # line number of a finished poem


@dataclass
class PoemState:
    """Where one poem stands: line and column, and what rhyme and tone it has committed to."""

    line: int = 0
    col: int = 0
    cats: frozenset[str] | None = None  # the 平水韵 categories every rhyme so far shares
    used: set[int] = field(default_factory=set)  # rhyme characters used
    opening: str | None = None  # tone of line 1's second character: fixes the 平仄 pattern
    seen: set[int] = field(default_factory=set)  # characters so far, for the repetition penalty

    def copy(self) -> PoemState:
        return replace(self, used=set(self.used), seen=set(self.seen))


class TokenMasks:
    """Boolean masks over the vocabulary, built once per decoding call and cached."""

    def __init__(self, vocab: Vocab, phon: Phonology | None, rhymes_per_poem: int):
        self.vocab, self.phon = vocab, phon
        self.free = torch.ones(len(vocab), dtype=torch.bool)  # anything but <pad> <bos> <unk>
        self.free[[i for i in range(len(SPECIALS)) if i != EOS_ID]] = False
        self.chars = self.free.clone()  # Chinese characters only
        self.chars[EOS_ID] = False
        self.chars[[vocab.stoi[p] for p in LINE_PUNCT if p in vocab.stoi]] = False
        self._cache: dict[object, Tensor] = {}
        self.open_categories: frozenset[str] = frozenset()
        if phon is not None:
            self.oblique = self.where(lambda c: phon.tone(c) == frozenset({ZE}))
            self.level_only = self.where(lambda c: phon.tone(c) == frozenset({PING}))
            # A category opens only if the vocabulary holds a character for every rhyme of the poem, so the poem
            # never has to repeat a rhyme character.
            size: dict[str, int] = {}
            for c in (c for i, c in enumerate(vocab.itos) if self.chars[i]):
                for cat in phon.categories(c):
                    size[cat] = size.get(cat, 0) + 1
            self.open_categories = frozenset(cat for cat, k in size.items() if k >= rhymes_per_poem)
            self.rhyme_any = self.where(lambda c: bool(phon.categories(c) & self.open_categories))

    def where(self, keep: Callable[[str], bool]) -> Tensor:
        """The Chinese characters for which ``keep`` holds."""
        m = torch.zeros(len(self.vocab), dtype=torch.bool)
        for i, c in enumerate(self.vocab.itos):
            if i >= len(SPECIALS) and keep(c):
                m[i] = True
        return m & self.chars

    def single(self, token: int) -> Tensor:
        if token not in self._cache:
            m = torch.zeros(len(self.vocab), dtype=torch.bool)
            m[token] = True
            self._cache[token] = m
        return self._cache[token]

    def category(self, cats: frozenset[str]) -> Tensor:
        """The characters that rhyme in any of ``cats``."""
        if cats not in self._cache:
            phon = self.phon
            assert phon is not None
            self._cache[cats] = self.where(lambda c: bool(phon.categories(c) & cats))
        return self._cache[cats]


def form_mask(masks: TokenMasks, state: PoemState, form: Form | None, acrostic: str) -> Tensor:
    """What the form and the acrostic allow next: characters inside a line, ，after odd lines and 。after even
    ones, ``<eos>`` after the last; each line's first character fixed by the acrostic. Without a form, anything
    but the acrostic's line starts is free, and ``<eos>`` waits for the acrostic's last line."""
    stoi = masks.vocab.stoi
    if form is None:
        if not acrostic:
            return masks.free
        if state.col == 0:
            return masks.single(stoi[acrostic[state.line]] if state.line < len(acrostic) else EOS_ID)
        m = masks.free.clone()
        m[EOS_ID] = False  # the acrostic's lines are not all written yet
        return m
    if state.line >= form.lines:
        return masks.single(EOS_ID)
    if state.col == form.chars_per_line:
        return masks.single(stoi[COMMA if state.line % 2 == 0 else STOP])
    if state.col == 0 and state.line < len(acrostic):
        return masks.single(stoi[acrostic[state.line]])
    return masks.chars


def rhyme_mask(masks: TokenMasks, state: PoemState) -> Tensor:
    """At a rhyme position: the characters of the category line 2 opened (any open one before), a rhyme
    character not used twice unless the category has no other."""
    if state.cats is None:
        return masks.rhyme_any
    m = masks.category(state.cats)
    fresh = m.clone()
    for t in state.used:
        fresh[t] = False
    return fresh if fresh.any() else m


def tone_bias(masks: TokenMasks, state: PoemState, form_name: str, nats: float) -> Tensor | None:
    """``-nats`` on characters of the wrong tone where the regular pattern (:func:`poetics.pattern`) wants one;
    before line 1's second character fixes the pattern, only the rhyme positions' 平."""
    form = FORMS[form_name]
    if state.line >= form.lines or state.col >= form.chars_per_line:
        return None
    if state.opening is not None:
        want = pattern(form_name, state.opening)[state.line].get(state.col)
    else:
        want = PING if is_rhyme_position(state.line, state.col, form.chars_per_line) else None
    if want is None:
        return None
    wrong = masks.oblique if want == PING else masks.level_only
    return wrong.float() * -nats


class Constraints:
    """One :class:`PoemState` per row of the batch, and the masks and biases of the next step.

    Without a form and acrostic it only bans ``<pad> <bos> <unk>``. ``rhyme`` restricts even lines' last
    characters to line 2's 平声 category; ``tone`` adds a bias toward the 平仄 pattern that line 1's second
    character opens (both need a form).
    """

    def __init__(
        self,
        vocab: Vocab,
        device: torch.device,
        form: str | None = None,
        acrostic: str = "",
        rhyme: bool = False,
        tone: bool = False,
        tone_bias: float = 2.0,
        phon: Phonology | None = None,
    ):
        self.vocab, self.device = vocab, device
        self.form_name, self.form = form, FORMS[form] if form else None
        self.acrostic, self.rhyme, self.tone, self.tone_nats = acrostic, rhyme, tone, tone_bias
        self.phon = phon or (phonology() if rhyme or tone else None)
        rhymes = self.form.lines // 2 if self.form is not None else 1
        self.masks = TokenMasks(vocab, self.phon, rhymes)
        for c in (COMMA, STOP):
            if self.form is not None and c not in vocab.stoi:
                raise TangshiError(f"the model's vocabulary lacks {c!r}, so it cannot write a {form}")
        if rhyme and not self.masks.open_categories:
            raise TangshiError(
                f"no 平水韵 level-tone category has {rhymes} characters in the "
                f"model's vocabulary, so it cannot rhyme a {form}"
            )
        self.rows: list[PoemState] = []

    def start(self, rows: int) -> None:
        self.rows = [PoemState() for _ in range(rows)]

    def reorder(self, index: list[int]) -> None:
        """Rows follow their beams (or one prompt row fans out to n poems)."""
        self.rows = [self.rows[i].copy() for i in index]

    def _allowed(self, state: PoemState) -> Tensor:
        form = self.form
        if (
            self.rhyme
            and form is not None
            and state.line < form.lines
            and is_rhyme_position(state.line, state.col, form.chars_per_line)
        ):
            return rhyme_mask(self.masks, state)
        return form_mask(self.masks, state, form, self.acrostic)

    def allowed(self) -> Tensor:
        """``(rows, V)``, or ``(1, V)`` when every row has the same mask (always so without a form): it broadcasts,
        which spares a ``(rows, V)`` copy per step."""
        masks = [self._allowed(r) for r in self.rows]
        if all(m is masks[0] for m in masks):
            return masks[0][None].to(self.device)
        return torch.stack(masks).to(self.device)

    def bias(self) -> Tensor | None:
        if not self.tone or self.form_name is None:
            return None
        biases = [tone_bias(self.masks, r, self.form_name, self.tone_nats) for r in self.rows]
        if all(b is None for b in biases):
            return None
        zero = torch.zeros(len(self.vocab))
        return torch.stack([zero if b is None else b for b in biases]).to(self.device)

    def advance(self, tokens: list[int]) -> None:
        for r, t in zip(self.rows, tokens, strict=True):
            char = self.vocab.itos[t]
            if t == EOS_ID or r.line == DONE or (self.form is not None and r.line >= self.form.lines):
                r.line = DONE
                continue
            if char in LINE_PUNCT:
                r.line, r.col = r.line + 1, 0
                continue
            r.seen.add(t)
            if self.form is not None and self.phon is not None:
                if r.line == 0 and r.col == 1 and r.opening is None:
                    r.opening = ZE if self.phon.tone(char) == frozenset({ZE}) else PING
                if is_rhyme_position(r.line, r.col, self.form.chars_per_line):
                    # narrow to the categories every rhyme so far shares (还 is in both 删 and 先)
                    cats = self.phon.categories(char) & self.masks.open_categories
                    r.cats = cats if r.cats is None else (r.cats & cats) or r.cats
                    r.used.add(t)
            r.col += 1

    def seen(self) -> Tensor:
        """``(rows, V)``: True where a character is already in the row's poem."""
        seen = torch.zeros(len(self.rows), len(self.vocab), dtype=torch.bool)
        for i, r in enumerate(self.rows):
            if r.seen:
                seen[i, list(r.seen)] = True
        return seen.to(self.device)
