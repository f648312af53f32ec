"""Structure-aware inputs (``model.structure=true``): what the characters already written say about the poem's
form and rhyme, added to the character embedding of every step.

SongNet (Li et al., ACL 2020) gives a Transformer format and rhyme symbols as extra inputs. Here the features
are computed from the tokens read so far and nothing else, so they work for every core, in training and in
stepwise decoding alike, and the loss stays a true per-character loss (no extra tokens, no look-ahead).

After reading token x_t, the features describe the character about to be written (x_{t+1}):

- its column in the line and the line's index (one-hot, the last value standing for "this many or more");
- whether it closes a line, and whether it closes an even line (a rhyme position, :func:`poetics.is_rhyme_position`),
  once the first line has shown the line width;
- the 平仄 tones and 平水韵 level-tone categories of x_t, of the last rhyme character written, and the tone of
  line 1's second character (which fixes the 平仄 pattern, :func:`poetics.pattern`).

One function (:meth:`StructureFeatures.encode`) computes them for a chunk of tokens from a running state; a
whole sequence at once (training) and one token at a time (decoding) give the same features.

It also gives, for each step, the :class:`LineEnds`: whether the next character closes a line (an odd or an
even one) and the last characters of the lines already written. ``model.echo_bias`` (:class:`EchoBias`)
learns from them how much less likely a line is to end on a character an earlier line ended on: real poems
almost never repeat a rhyme character, and a model that learned the rhyme category but not which of its
characters were used "rhymes" by echoing (…心, …心).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from tangshi.poetics import LINE_PUNCT, PING, ZE, is_hanzi, is_rhyme_position, phonology
from tangshi.vocab import PAD_ID, UNK_ID

ENDS = 8  # line-end characters remembered: every line of a 律诗
COLUMNS = 8  # one-hot columns 0..7, and "8 or more"
LINES = 8  # one-hot lines 0..7, and "8 or more"
OPENING_COL = 1  # line 1's second character fixes the 平仄 pattern (poetics.pattern)
OTHER, HANZI, PUNCT = 0, 1, 2  # token kinds


class StructState(NamedTuple):
    """Where each row stands after the tokens read so far, all ``(B,)`` long tensors."""

    line: Tensor  # lines closed
    col: Tensor  # characters written in the current line
    width: Tensor  # characters in line 1 once it closed; 0 before
    rhyme: Tensor  # token id of the last rhyme character; PAD_ID before the first
    opening: Tensor  # token id of line 1's second character; PAD_ID before it
    hanzi: Tensor  # token id of the last character written; PAD_ID before the first
    ends: Tensor  # (B, ENDS): the last characters of the last ENDS lines, oldest first; PAD_ID where none

    def select(self, index: Tensor) -> StructState:
        return StructState(*(t.index_select(0, index) for t in self))


class LineEnds(NamedTuple):
    """Per step, what :class:`EchoBias` reads: ``kind`` ``(...)`` is 0, or 1 / 2 where the next character closes
    an odd / even line; ``chars`` ``(..., ENDS)`` the last characters of the lines written (PAD_ID: none)."""

    kind: Tensor
    chars: Tensor


def _line_kind(line: Tensor, col: Tensor, width: Tensor) -> tuple[Tensor, Tensor]:
    """Whether the next character closes a line, and whether that line is even (a rhyme position)."""
    closes = (width > 0) & (col == width - 1)
    return closes, closes & is_rhyme_position(line, col, width)


def _last_index(mask: Tensor) -> Tensor:
    """``(B, T)``: for each position, the latest position at or before it where ``mask`` holds, or -1."""
    idx = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask, idx, torch.full_like(idx, -1)).cummax(dim=1).values


def _gather_or(values: Tensor, index: Tensor, default: Tensor) -> Tensor:
    """``values`` ``(B, T)`` at ``index`` ``(B, T)`` where index >= 0, else the row's ``default`` ``(B,)``."""
    got = values.gather(1, index.clamp(min=0))
    return torch.where(index >= 0, got, default[:, None].expand_as(got))


class StructureFeatures(nn.Module):
    """Features of the tokens read so far, embedded to ``dim`` and added to the character embedding.

    The per-token tables (kind, tones, categories) are buffers saved with the model, so a checkpoint keeps the
    inputs it was trained with even if the rhyme table of :mod:`tangshi.poetics` changes later. The feature
    table is an ``nn.Embedding`` (one row per feature, the active rows summed): it is an embedding and gets
    no weight decay, like the character embedding.
    """

    def __init__(self, itos: Sequence[str], dim: int):
        super().__init__()
        phon = phonology()
        cats = sorted({c for cs in phon.rhymes.values() for c in cs})
        self.category_names = tuple(cats)  # the 平水韵 level-tone categories, in feature order
        kind = torch.full((len(itos),), OTHER, dtype=torch.long)
        tones = torch.zeros(len(itos), 2)
        categories = torch.zeros(len(itos), len(cats))
        for i, char in enumerate(itos):
            if char in LINE_PUNCT:
                kind[i] = PUNCT
            elif is_hanzi(char):
                kind[i] = HANZI
                t = phon.tone(char)
                tones[i] = torch.tensor([PING in t, ZE in t], dtype=torch.float)
                for c in phon.categories(char):
                    categories[i, cats.index(c)] = 1.0
        kind[UNK_ID] = HANZI  # a character outside the vocabulary still fills its place in the line
        self.register_buffer("kind", kind)
        self.register_buffer("tones", tones)
        self.register_buffer("categories", categories)
        self.size = (COLUMNS + 1) + (LINES + 1) + 2 + 2 * (2 + len(cats)) + 2
        self.table = nn.Embedding(self.size, dim)
        # about nine features are on at once: their sum starts near the character embedding's scale (0.1)
        nn.init.normal_(self.table.weight, std=0.1 / 3)

    def initial(self, batch: int, device: torch.device) -> StructState:
        zero = torch.zeros(batch, dtype=torch.long, device=device)
        ends = torch.full((batch, ENDS), PAD_ID, dtype=torch.long, device=device)
        return StructState(zero, zero, zero, zero + PAD_ID, zero + PAD_ID, zero + PAD_ID, ends)

    def encode(self, ids: Tensor, state: StructState | None = None) -> tuple[Tensor, StructState, LineEnds]:
        """The 0/1 features ``(B, T, size)`` after each token of ``ids`` ``(B, T)``, the state after the last
        one, and the :class:`LineEnds` of each step. ``state``: where the rows stood before ``ids`` (None: a
        poem starts, ``ids`` from its ``<bos>``)."""
        s = state if state is not None else self.initial(ids.shape[0], ids.device)
        kind = self.kind[ids]
        hanzi, punct = kind == HANZI, kind == PUNCT
        closed = punct.long().cumsum(1)
        line = s.line[:, None] + closed
        written = hanzi.long().cumsum(1)  # characters up to and including each position
        last_break = _last_index(punct)
        # characters since the last punctuation, or since the chunk began plus those written before it
        col = written - _gather_or(written, last_break, -s.col)
        # line 1's width: the characters written before the poem's first punctuation
        first = _last_index(punct & (closed == 1) & (s.line == 0)[:, None])
        width = _gather_or(s.col[:, None] + written, first, s.width)
        # x_t is a rhyme character if it sits on a rhyme position: its column before it was written is col - 1
        rhymed = hanzi & (width > 0) & is_rhyme_position(line, col - 1, width)
        rhyme = _gather_or(ids, _last_index(rhymed), s.rhyme)
        opening = _gather_or(ids, _last_index(hanzi & (line == 0) & (col == OPENING_COL + 1)), s.opening)
        closes, even = _line_kind(line, col, width)
        # the line-end characters: the last character written at each punctuation, appended to the state's
        written_last = _gather_or(ids, _last_index(hanzi), s.hanzi)
        T = ids.shape[1]
        breaks = torch.where(punct, torch.arange(T, device=ids.device), T).sort(dim=1).values.clamp(max=T - 1)
        every = torch.cat([s.ends, written_last.gather(1, breaks)], dim=1)  # (B, ENDS + T): ENDS + closed filled
        window = closed[..., None] + torch.arange(ENDS, device=ids.device)
        ends = every[:, None, :].expand(-1, T, -1).gather(2, window)
        parts = [
            nn.functional.one_hot(col.clamp(max=COLUMNS), COLUMNS + 1),
            nn.functional.one_hot(line.clamp(max=LINES), LINES + 1),
            closes[..., None],
            even[..., None],
            self.tones[ids],
            self.categories[ids],
            self.tones[rhyme],
            self.categories[rhyme],
            self.tones[opening],
        ]
        features = torch.cat([p.float() for p in parts], dim=-1)
        last = StructState(*(t[:, -1] for t in (line, col, width, rhyme, opening, written_last, ends)))
        return features, last, LineEnds(closes.long() + even.long(), ends)

    @staticmethod
    def line_ends(state: StructState) -> LineEnds:
        """The :class:`LineEnds` of the step a state stands at, ``(B,)`` and ``(B, ENDS)``: what decoding reads."""
        closes, even = _line_kind(state.line, state.col, state.width)
        return LineEnds(closes.long() + even.long(), state.ends)

    def embed(self, features: Tensor) -> Tensor:
        """``encode``'s 0/1 features ``(..., size)`` embedded to ``(..., dim)``: the sum of their table rows."""
        return features @ self.table.weight


class EchoBias(nn.Module):
    """A learned log-odds for the next character when it is one an earlier line ended on: one value where the
    next character closes an odd line, one where it closes an even line (a rhyme position). Everywhere else the
    distribution is left alone.

    Applied to a normalised distribution p, a set S of earlier line-end characters and the value a:
    p'(c) = p(c) e^{a [c in S]} / Z, Z = 1 - p(S) + e^a p(S), so p' is again a distribution and the loss stays a
    true per-character loss. Starts at 0 (no change); training finds how rare echoes are.
    """

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(2))

    def terms(self, listed_log_p: Tensor, ends: LineEnds) -> tuple[Tensor, Tensor]:
        """For rows at line-closing steps (``ends`` ``(N,)``, ``(N, ENDS)``) and the log-probabilities
        ``(N, ENDS)`` of the characters they list: the log-odds ``(N, ENDS)`` each listed character gains (0
        for a repeat within the list and for PAD_ID), and log Z ``(N,)``."""
        chars = ends.chars
        earlier = torch.ones(chars.shape[-1], chars.shape[-1], dtype=torch.bool, device=chars.device).tril(-1)
        repeat = ((chars[:, :, None] == chars[:, None, :]) & earlier).any(-1)
        listed = (chars != PAD_ID) & ~repeat
        a = self.weight[ends.kind - 1]
        gain = torch.where(listed, a[:, None], 0.0)
        log_s = listed_log_p.masked_fill(~listed, float("-inf")).logsumexp(-1)
        s = log_s.exp().clamp(max=1 - 1e-6)
        # log Z = log((1 - s) + e^a s); rows with nothing listed have s = 0 and log Z = 0
        log_z = torch.where(listed.any(-1), torch.logaddexp(torch.log1p(-s), a + log_s), torch.zeros_like(s))
        return gain, log_z
