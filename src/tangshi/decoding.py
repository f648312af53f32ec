"""Batched decoding of poems from a CharLM: sampling (temperature, top-k, top-p) or beam search, with a
repetition penalty, a given beginning, acrostics (藏头诗), and logit masks that enforce a regular form,
平水韵 rhyme and steer 平仄 (:mod:`tangshi.constraints`).

All poems of a call advance together, one batched step per character. A private ``torch.Generator`` makes
results reproducible under ``seed`` without touching the global RNG (sampling during training must not
change the training run). Constraints act on the scores before sampling: a masked token has probability
zero, so a constrained poem is well-formed by construction, not by luck.

Order of operations, which is what makes the stated units true: the model's log-probabilities are divided by
the temperature first; the repetition penalty and the 平仄 bias are then added in nats of the distribution
actually sampled from; masks last; top-k/top-p cut what is left.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tangshi.cells import State
from tangshi.constraints import Constraints
from tangshi.errors import TangshiError
from tangshi.model import CharLM
from tangshi.poetics import FORMS, is_hanzi
from tangshi.vocab import BOS_ID, EOS_ID, Vocab

# Bounds on what one request may ask for: a beam or a batch of rows costs memory in proportion (beam=100000 took
# a studio server to 24 GB and the kernel killed it). The studio's controls show the same bounds.
MAX_POEMS = 10_000  # a statistical test samples 6,000 at once
MAX_BEAM = 64
MAX_CHARS = 512  # max_len: the corpus's longest poem is 128 characters


@dataclass(frozen=True)
class SamplingConfig:
    """How to decode. The defaults are the project's one set of sampling defaults (conf/sampling/default.yaml
    repeats them for the command line and for training's samples; a test keeps the two equal)."""

    n: int = 5
    begin: str = ""
    temperature: float = 0.8  # 0: greedy
    top_k: int = 0  # 0: no limit
    top_p: float = 0.95  # 1.0: no limit
    max_len: int = 128  # characters, beginning included
    seed: int | None = 0
    repetition_penalty: float = 0.0  # nats taken from every character already in the poem; 0: none
    beam: int = 0  # 0: sample; k >= 1: beam search keeping max(k, n) beams, returning the n best
    beam_groups: int | None = None  # diverse beam search: groups of beams (null: one per poem asked for)
    diversity_penalty: float = 1.0  # nats taken from a token another group chose at the same step
    form: str | None = None  # wuyan_jueju | qiyan_jueju | wuyan_lvshi | qiyan_lvshi
    acrostic: str = ""  # line i starts with the i-th character
    rhyme: bool = False  # even lines end in one 平水韵 level-tone category (needs form)
    tone: bool = False  # steer positions 2/4/6 toward a regular 平仄 pattern (needs form)
    tone_bias: float = 2.0  # nats taken from a character of the wrong tone when tone=true

    def __post_init__(self) -> None:
        # Hydra hands ``begin=123`` over as an int and ``begin=null`` as None: both are text here.
        for name in ("begin", "acrostic"):
            value = getattr(self, name)
            object.__setattr__(self, name, "" if value is None else str(value))
        if not 1 <= self.n <= MAX_POEMS:
            raise TangshiError(f"n must be between 1 and {MAX_POEMS}, got {self.n}")
        if self.temperature < 0:
            raise TangshiError(f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if self.top_k < 0:
            raise TangshiError(f"top_k must be >= 0 (0 means no limit), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise TangshiError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty < 0:
            raise TangshiError(
                f"repetition_penalty must be >= 0 (nats taken from repeated characters; 0 means none), "
                f"got {self.repetition_penalty}"
            )
        if not 0 <= self.beam <= MAX_BEAM:
            raise TangshiError(f"beam must be between 0 (sampling) and {MAX_BEAM}, got {self.beam}")
        if self.beam_groups is not None and not 1 <= self.beam_groups <= max(self.beam, self.n):
            raise TangshiError(
                f"beam_groups must be between 1 and the number of beams, max(beam, n) = {max(self.beam, self.n)}, "
                f"got {self.beam_groups}"
            )
        if self.diversity_penalty < 0:
            raise TangshiError(f"diversity_penalty must be >= 0 (nats), got {self.diversity_penalty}")
        if self.tone_bias < 0:
            raise TangshiError(f"tone_bias must be >= 0 (nats), got {self.tone_bias}")
        for c in self.acrostic:
            if not is_hanzi(c):
                raise TangshiError(f"acrostic character {c!r} is not allowed: an acrostic is Chinese characters only")
        if self.max_len < max(1, len(self.begin)):
            raise TangshiError(f"max_len must be >= 1 and >= the length of begin, got {self.max_len}")
        if self.max_len > MAX_CHARS:
            raise TangshiError(f"max_len must be at most {MAX_CHARS} characters, got {self.max_len}")
        if self.form is not None and self.form not in FORMS:
            raise TangshiError(f"unknown form {self.form!r}; allowed: {', '.join(FORMS)}")
        if (self.rhyme or self.tone) and self.form is None:
            raise TangshiError("rhyme=true and tone=true need a form (form=wuyan_jueju, qiyan_lvshi, …)")
        if self.form is not None:
            form = FORMS[self.form]
            if len(self.acrostic) > form.lines:
                raise TangshiError(
                    f"acrostic {self.acrostic!r} has {len(self.acrostic)} characters but a {self.form} has "
                    f"{form.lines} lines"
                )
            if len(self.begin) > form.chars_per_line + 1:
                raise TangshiError(
                    f"begin {self.begin!r} is longer than the first line of a {self.form} "
                    f"({form.chars_per_line} characters and its punctuation)"
                )
        if self.acrostic and self.begin and self.begin[0] != self.acrostic[0]:
            raise TangshiError(
                f"begin {self.begin!r} and acrostic {self.acrostic!r} cannot both hold: the first line must "
                f"start with {self.acrostic[0]!r}"
            )

    @property
    def max_chars(self) -> int:
        """Length bound: a form's exact length, else max_len."""
        if self.form is None:
            return self.max_len
        form = FORMS[self.form]
        return form.lines * (form.chars_per_line + 1)


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Set to -inf every logit outside the top-k and outside the smallest set holding top_p of the mass."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the mass before it already reaches top_p; the most likely token always stays.
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def draw(probs: Tensor, generator: torch.Generator) -> Tensor:
    """One token per row of ``probs`` by inverse-CDF sampling: a cumulative sum and a binary search, where
    ``torch.multinomial`` spends ~40x longer on the CPU (16 ms for 100 rows of 5.6k). Zero-probability
    tokens are never drawn: u < total, and ``right=True`` skips every flat step of the CDF."""
    cdf = probs.float().cumsum(-1)
    total = cdf[:, -1:]
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device) * total
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))  # rounding must not reach the total
    return torch.searchsorted(cdf, u, right=True).squeeze(1)


def _prepare(model: CharLM, vocab: Vocab, cfg: SamplingConfig) -> tuple[list[int], Constraints, torch.device]:
    prompt = vocab.require(cfg.begin, "begin")
    vocab.require(cfg.acrostic, "acrostic")
    device = next(model.parameters()).device
    cons = Constraints(vocab, device, cfg.form, cfg.acrostic, cfg.rhyme, cfg.tone, cfg.tone_bias)
    # Walk the beginning through the constraints: a beginning that breaks the form is an error, not a poem.
    cons.start(1)
    for i, t in enumerate(prompt):
        if not bool(cons.allowed()[0, t]):
            where = f"a {cfg.form}" if cfg.form else "this poem"
            raise TangshiError(
                f"begin {cfg.begin!r} cannot start {where}: {cfg.begin[i]!r} is not allowed as character {i + 1}"
            )
        cons.advance([t])
    return prompt, cons, device


@torch.no_grad()
def sample(model: CharLM, vocab: Vocab, cfg: SamplingConfig | None = None) -> list[str]:
    """``cfg.n`` poems as strings, each starting with ``cfg.begin`` and obeying the configured constraints."""
    cfg = cfg or SamplingConfig()
    if cfg.beam:
        return beam_search(model, vocab, cfg)
    was_training = model.training
    model.eval()
    try:
        prompt, cons, device = _prepare(model, vocab, cfg)
        g = torch.Generator(device=device)
        if cfg.seed is not None:
            g.manual_seed(cfg.seed)
        else:
            g.seed()
        cons.reorder([0] * cfg.n)
        ids = torch.tensor([[BOS_ID, *prompt]] * cfg.n, device=device)
        feats, state = model(ids)
        last = feats[:, -1]
        out = [list(prompt) for _ in range(cfg.n)]
        alive = list(range(cfg.n))  # the poem each row of the batch is writing
        for _ in range(cfg.max_chars - len(prompt) + (cfg.form is not None)):
            if cfg.temperature == 0:
                nxt = _scored(model, cons, last, state, cfg, 1.0).argmax(-1)
            else:
                logits = filter_logits(_scored(model, cons, last, state, cfg, cfg.temperature), cfg.top_k, cfg.top_p)
                nxt = draw(logits.softmax(-1), g)
            tokens = nxt.tolist()
            cons.advance(tokens)
            for i, token in zip(alive, tokens, strict=True):
                out[i].append(token)
            keep = [j for j, t in enumerate(tokens) if t != EOS_ID]
            if not keep:
                break
            if len(keep) < len(alive):  # finished poems leave the batch: no steps are spent on them
                alive = [alive[j] for j in keep]
                cons.reorder(keep)
                index = torch.tensor(keep, device=device)
                nxt, state = nxt[index], model.select_state(state, index)
            last, state = model.step(nxt, state)
        return [vocab.decode(row) for row in out]
    finally:
        model.train(was_training)


def _scored(
    model: CharLM, cons: Constraints, feats: Tensor, state: State, cfg: SamplingConfig, temperature: float
) -> Tensor:
    """Next-token scores in nats: log-probabilities divided by ``temperature``, less the repetition penalty on
    characters already in the poem, plus the 平仄 bias, with every disallowed token at -inf (``state``: the
    model's after ``feats``)."""
    scores = model.log_probs(feats, model.next_line_ends(state))
    if temperature != 1.0:
        scores = scores / temperature
    if cfg.repetition_penalty:
        scores = scores - cfg.repetition_penalty * cons.seen()
    bias = cons.bias()
    if bias is not None:
        scores = scores + bias
    return scores.masked_fill_(~cons.allowed(), float("-inf"))  # in place: scores is this step's own tensor


@torch.no_grad()
def beam_search(model: CharLM, vocab: Vocab, cfg: SamplingConfig) -> list[str]:
    """The ``cfg.n`` most likely poems under the constraints, by diverse beam search (Vijayakumar et al. 2016).

    ``max(beam, n)`` beams in ``beam_groups`` groups (by default one group per poem asked for). At each step
    the groups choose in turn, and a group's candidates lose ``diversity_penalty`` nats for every earlier group
    that chose the same token at this step, so the groups, and the poems they return, drift apart. That
    penalty steers the choice only. A poem's score is the sum of its step scores (log-probabilities, less the
    repetition penalty, plus the 平仄 bias) divided by the number of tokens scored: the characters generated
    after the prompt, and ``<eos>`` if it ended. Poems that ended and poems cut at the length limit are ranked
    by that one definition. The result takes each group's best poem in turn (best first), then the second
    best of each, skipping a poem another group already returned.
    """
    width = max(cfg.beam, cfg.n)
    n_groups = cfg.beam_groups or min(cfg.n, width)
    sizes = [width // n_groups + (g < width % n_groups) for g in range(n_groups)]
    was_training = model.training
    model.eval()
    try:
        prompt, cons, device = _prepare(model, vocab, cfg)
        feats, state = model(torch.tensor([[BOS_ID, *prompt]], device=device))
        start = torch.zeros(n_groups, dtype=torch.long, device=device)
        last, state = feats[start, -1], model.select_state(state, start)
        cons.reorder([0] * n_groups)
        group = list(range(n_groups))  # each live row's group, its generated tokens and its summed score
        gen: list[list[int]] = [[] for _ in range(n_groups)]
        score = [0.0] * n_groups
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(n_groups)]
        for _ in range(cfg.max_chars - len(prompt) + 1):
            step = _scored(model, cons, last, state, cfg, 1.0).cpu().double()
            chosen = torch.zeros(step.shape[1], dtype=torch.float64)  # tokens earlier groups took this step
            keep: list[tuple[int, int, float]] = []  # (row, token, new score)
            for g in range(n_groups):
                rows = [r for r in range(len(group)) if group[r] == g]
                if not rows or len(finished[g]) >= sizes[g]:
                    continue
                total = torch.tensor([score[r] for r in rows], dtype=torch.float64)[:, None] + step[rows]
                ranked = (total - cfg.diversity_penalty * chosen).flatten()
                k = min(2 * sizes[g], int(torch.isfinite(ranked).sum()))
                kept = 0
                for rank, flat in enumerate(ranked.topk(k).indices.tolist()):
                    r, t = rows[flat // step.shape[1]], flat % step.shape[1]
                    value = float(total.flatten()[flat])
                    if t == EOS_ID:
                        if rank < sizes[g]:  # an ending among the group's best candidates: a finished poem
                            finished[g].append((value / (len(gen[r]) + 1), gen[r]))
                            chosen[t] += 1
                        continue
                    keep.append((r, t, value))
                    chosen[t] += 1
                    kept += 1
                    if kept == sizes[g]:
                        break
            keep = [k for k in keep if len(finished[group[k[0]]]) < sizes[group[k[0]]]]
            if not keep:
                break
            rows_kept = [r for r, _, _ in keep]
            tokens = [t for _, t, _ in keep]
            group = [group[r] for r in rows_kept]
            gen = [gen[r] + [t] for r, t, _ in keep]
            score = [v for _, _, v in keep]
            cons.reorder(rows_kept)
            cons.advance(tokens)
            state = model.select_state(state, torch.tensor(rows_kept, device=device))
            last, state = model.step(torch.tensor(tokens, device=device), state)
        else:  # the length limit cut these beams: they compete by the same per-token score
            for g, q, v in zip(group, gen, score, strict=True):
                if len(finished[g]) < sizes[g]:
                    finished[g].append((v / max(1, len(q)), q))
        return _one_per_group(finished, cfg.n, prompt, vocab)
    finally:
        model.train(was_training)


def _one_per_group(finished: list[list[tuple[float, list[int]]]], n: int, prompt: list[int], vocab: Vocab) -> list[str]:
    """Up to ``n`` poems: every group's best (best first), then every group's second best, and so on, without a
    poem twice unless the groups found fewer than ``n`` distinct ones."""
    ranked = [sorted(f, key=lambda x: -x[0]) for f in finished]
    rounds = [sorted((r[i] for r in ranked if i < len(r)), key=lambda x: -x[0]) for i in range(max(map(len, ranked)))]
    poems = [vocab.decode(prompt + q) for rnd in rounds for _, q in rnd]
    out = list(dict.fromkeys(poems))[:n]
    return out + poems[: n - len(out)]
