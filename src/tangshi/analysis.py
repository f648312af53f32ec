"""Analysis of one checkpoint, built on one per-token loss pass: test bits/char, loss by kind of position,
gradient flow through time, and poetics metrics of fixed-seed poem sets beside two reference rows.

* :func:`token_scores` scores every target of every poem once (loss in nats, top-1 hit). Split losses, rhyme
  positions, the loss of the n-th character and the studio's per-character surprisal all read it.
* The reference rows make the poetics metrics mean something: real held-out poems (the ceiling a model should
  approach) and random characters poured into valid forms (what form alone achieves, without any language).

``scripts/analyse.py`` runs :func:`analyse` and writes ``analysis.json``, ``analysis.md`` and figures.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tangshi import figures
from tangshi import poem_sets as sets
from tangshi.atomic import write_json, write_text
from tangshi.batches import PoemDataset, collate
from tangshi.checkpoint import Loaded
from tangshi.corpus import Prepared
from tangshi.decoding import SamplingConfig, sample
from tangshi.errors import TangshiError
from tangshi.formatting import markdown_table
from tangshi.gradflow import DISTANCES, decay_ratios, gradient_flow, probe_batch
from tangshi.model import CharLM
from tangshi.poem_sets import random_in_form
from tangshi.poetics import FORMS, LINE_PUNCT, detect_form, poetics_metrics, rhyme_indices, split_lines
from tangshi.vocab import Vocab

CLASSES = ("rhyme", "line_start", "other", "punct")
MAX_SCORED_CHARS = 2000  # one text scored by surprisal: a long poem is 128 characters
BEGINS = "春山月风花江秋云"  # one begin character per slice of each constrained set
COLUMNS = (
    "well_formed",
    "rhyme",
    "tone_ok",
    "distinct_1",
    "distinct_2",
    "repeated_line",
    "copied_lines",
    "copied_poems",
)


# -- the per-token pass -----------------------------------------------------------------------------------


@dataclass
class TokenScores:
    """Per poem, per target (its characters, then ``<eos>``): the loss in nats and whether the top-1 guess hit."""

    nll: list[Tensor]
    hit: list[Tensor]

    def mean(self) -> float:
        """Token-weighted mean loss: total nats over total targets, as training's epoch losses are."""
        return float(sum(x.sum() for x in self.nll) / sum(len(x) for x in self.nll))


@torch.no_grad()
def token_scores(model: CharLM, vocab: Vocab, bodies: Sequence[str], batch_size: int = 64) -> TokenScores:
    """:class:`TokenScores` of ``model`` on ``bodies``, in eval mode (the mode is restored afterwards)."""
    ds = PoemDataset(bodies, vocab)
    order = sorted(range(len(ds)), key=ds.lengths.__getitem__)  # length-sorted batches: little padding
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    nll: list[Tensor] = [torch.empty(0)] * len(ds)
    hit: list[Tensor] = [torch.empty(0)] * len(ds)
    try:
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            batch = collate([ds[j] for j in idx])
            inputs = batch["inputs"].to(device)
            log_p = model.next_log_probs(inputs).cpu()
            targets = batch["targets"]
            losses = -log_p.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
            hits = log_p.argmax(-1) == targets
            for row, j in enumerate(idx):
                n = ds.lengths[j] - 1
                nll[j], hit[j] = losses[row, :n], hits[row, :n]
    finally:
        model.train(was_training)
    return TokenScores(nll, hit)


def split_loss(model: CharLM, vocab: Vocab, bodies: Sequence[str]) -> dict[str, float]:
    """Token-weighted loss over ``bodies``: nats, bits per character, perplexity."""
    loss = token_scores(model, vocab, bodies).mean()
    return {"loss": loss, "bpc": loss / math.log(2), "ppl": math.exp(loss)}


def surprisal(model: CharLM, vocab: Vocab, text: str) -> list[tuple[str, float]]:
    """Each character of ``text`` with the model's surprisal for it in bits (−log₂ p given what precedes it),
    then ``<eos>``'s. Characters outside the vocabulary are scored as ``<unk>``. At most
    :data:`MAX_SCORED_CHARS` characters (100,000 pasted characters held a studio worker for 51 s)."""
    if len(text) > MAX_SCORED_CHARS:
        raise TangshiError(f"the text has {len(text):,} characters; at most {MAX_SCORED_CHARS:,} are scored at once")
    nll = token_scores(model, vocab, [text]).nll[0]
    return [(c, float(x) / math.log(2)) for c, x in zip([*text, "<eos>"], nll, strict=True)]


# -- loss by kind of position -----------------------------------------------------------------------------


def position_classes(body: str) -> list[int]:
    """For each target of ``body + <eos>``, its index in CLASSES.

    rhyme: the last character of lines 2, 4, 6, 8; line_start: the first character of every line but the
    first; punct: punctuation and ``<eos>``; other: every other character.
    """
    classes = []
    rhymes = set(rhyme_indices(body))
    line, start = 0, True
    for i, ch in enumerate(body):
        if ch in LINE_PUNCT:
            classes.append(CLASSES.index("punct"))
            line, start = line + 1, True
            continue
        if i in rhymes:
            classes.append(CLASSES.index("rhyme"))
        elif start and line > 0:
            classes.append(CLASSES.index("line_start"))
        else:
            classes.append(CLASSES.index("other"))
        start = False
    return [*classes, CLASSES.index("punct")]  # <eos>


def position_losses(model: CharLM, vocab: Vocab, bodies: Sequence[str]) -> dict[str, Any]:
    """Loss (nats) and top-1 accuracy per kind of position, over the regular-verse poems among ``bodies``,
    and the mean loss of the n-th character of a poem (``by_position``; punctuation not counted, so the
    n-th character is the same syllable of the verse in every poem of a form). ``None`` when ``bodies``
    holds no regular verse (a corpus of 词, say)."""
    poems = [b for b in bodies if detect_form(b)]
    if not poems:
        return {"poems": 0, "classes": None, "by_position": None}
    scores = token_scores(model, vocab, poems)
    punct = CLASSES.index("punct")
    width = max(len(p) for p in poems)
    loss_sum, correct, count = torch.zeros(len(CLASSES)), torch.zeros(len(CLASSES)), torch.zeros(len(CLASSES))
    pos_sum, pos_count = torch.zeros(width), torch.zeros(width)
    for body, nll, hit in zip(poems, scores.nll, scores.hit, strict=True):
        cls = torch.tensor(position_classes(body))
        loss_sum.index_add_(0, cls, nll)
        correct.index_add_(0, cls, hit.float())
        count.index_add_(0, cls, torch.ones(len(cls)))
        chars = cls != punct
        pos_sum[: int(chars.sum())] += nll[chars]
        pos_count[: int(chars.sum())] += 1
    return {
        "poems": len(poems),
        "classes": {
            name: {
                "loss": float(loss_sum[c] / count[c]) if count[c] else math.nan,
                "acc": float(correct[c] / count[c]) if count[c] else math.nan,
                "tokens": int(count[c]),
            }
            for c, name in enumerate(CLASSES)
        },
        "by_position": {
            "loss": [float(s / n) for s, n in zip(pos_sum, pos_count, strict=True) if n],
            "tokens": [int(n) for n in pos_count if n],
        },
    }


# -- poetics of sampled sets ------------------------------------------------------------------------------


def sets_to_sample(n: int, seed: int) -> dict[str, list[SamplingConfig]]:
    """The fixed poem sets: free sampling, and each form alone, with rhyme, and with rhyme and tone steering,
    each begun with fixed characters."""
    sets: dict[str, list[SamplingConfig]] = {"free": [SamplingConfig(n=n, seed=seed)]}
    per = max(1, n // len(BEGINS))
    for form in FORMS:
        for suffix, rhyme, tone in (("", False, False), (" +rhyme", True, False), (" +rhyme +tone", True, True)):
            sets[form + suffix] = [
                SamplingConfig(n=per, seed=seed + i, begin=b, form=form, rhyme=rhyme, tone=tone)
                for i, b in enumerate(BEGINS)
            ]
    return sets


def poetics_rows(loaded: Loaded, prepared: Prepared, n: int, seed: int) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """One row of poetics metrics per poem set, the two reference rows first; and the sampled poems."""
    train_lines = {t for body in prepared.splits["train"] for t, _ in split_lines(body)}
    train_bodies = set(prepared.splits["train"])
    rng = random.Random(seed)
    regular = [b for b in prepared.splits["test"] if detect_form(b)]
    rows = {
        "real held-out poems (regular forms)": poetics_metrics(
            rng.sample(regular, min(n, len(regular))), train_lines, train_bodies
        ),
        "random characters in valid form": poetics_metrics(
            random_in_form(prepared, n, seed), train_lines, train_bodies
        ),
    }
    samples: dict[str, list[str]] = {}
    for name, configs in sets_to_sample(n, seed).items():
        samples[name] = [p for cfg in configs for p in sample(loaded.model, loaded.vocab, cfg)]
        rows[f"model: {name}"] = poetics_metrics(samples[name], train_lines, train_bodies)
    return rows, samples


# -- one checkpoint, everything ---------------------------------------------------------------------------


def analyse(
    loaded: Loaded,
    prepared: Prepared,
    n: int = 96,
    seed: int = 0,
    length: int = 48,
    poems: int = 64,
    poem_sets: int = 200,
) -> dict[str, Any]:
    """Test loss, position losses and gradient flow on the validation split (recurrent cores only), the
    poetics rows (``n`` poems per set, 0 to skip them), and the poem sets a training run measures at its end
    (:mod:`tangshi.poem_sets`, ``poem_sets`` poems each, 0 to skip them) beside their reference rows."""
    loaded.vocab.check_matches(prepared.vocab, f"analyse {loaded.path} on {prepared.path}")
    model, vocab, val = loaded.model, loaded.vocab, prepared.splits["val"]
    result: dict[str, Any] = {
        "checkpoint": str(loaded.path),
        "cell": model.cell,
        "step": loaded.step,
        "test": split_loss(model, vocab, prepared.splits["test"]),
        "positions": position_losses(model, vocab, val),
    }
    if getattr(model.core, "recurrent", False):
        device = next(model.parameters()).device
        norms = gradient_flow(model, probe_batch(val, vocab, length, poems).to(device))
        result["gradient_flow"] = {
            "length": length,
            "poems": poems,
            "norms": norms.tolist(),
            "ratios": decay_ratios(norms),
        }
    if n:
        result["poetics"], result["samples"] = poetics_rows(loaded, prepared, n, seed)
    if poem_sets:
        result["poem_sets"] = sets.measure(model, vocab, poem_sets, seed)
        result["poem_sets_references"] = sets.references(prepared, poem_sets, seed)
    return result


def to_markdown(result: dict[str, Any], history: list[dict[str, Any]] | None = None) -> str:
    t = result["test"]
    lines = [
        f"# Analysis of `{result['checkpoint']}` ({result['cell']}, step {result['step']})",
        "",
        f"Test split: loss {t['loss']:.4f} nats/char, **{t['bpc']:.3f} bits/char**, perplexity {t['ppl']:.1f}.",
    ]
    pos = result["positions"]
    if pos["classes"]:
        lines += ["", f"Loss by kind of position ({pos['poems']} regular-verse validation poems):", ""]
        lines += markdown_table(
            ["position", "tokens", "loss (nats)", "top-1 accuracy"],
            [[name, str(c["tokens"]), f"{c['loss']:.3f}", f"{c['acc']:.3f}"] for name, c in pos["classes"].items()],
        )
    flow = result.get("gradient_flow")
    if flow:
        ks = [k for k in (1, 5, *DISTANCES) if k < len(flow["norms"][0])]
        lines += [
            "",
            f"Gradient flow through time ({flow['poems']} validation poems cut to {flow['length']} characters):",
            "‖∂L/∂h(T−1−k)‖ / ‖∂L/∂h(T−1)‖, the share of the last position's gradient that reaches k characters back.",
            "",
            *markdown_table(
                ["layer", *(f"k={k}" for k in ks)],
                [
                    [str(i), *(f"{g[k] / g[0]:.2e}" if g[0] > 0 else "–" for k in ks)]
                    for i, g in enumerate(flow["norms"])
                ],
            ),
        ]
        if history:
            key = f"layer{len(flow['norms']) - 1}_k20"
            lines += ["", f"During training ({key}, top layer):", ""]
            for m in history:
                lines.append(f"- step {m['step']}: {decay_ratios(torch.tensor(m['norms'])).get(key, math.nan):.2e}")
    if "poem_sets" in result:
        lines += ["", "What the model writes on its own, the sets every training run measures at its end:", ""]
        lines += sets.markdown(result["poem_sets"], result.get("poem_sets_references"))
    if "poetics" in result:
        lines += ["", "Poetics of fixed-seed poem sets, beside real held-out poems and random characters in form:", ""]
        lines += markdown_table(
            ["poems", "n", *COLUMNS],
            [
                [name, str(int(m["poems"])), *(f"{m[c]:.2f}" if c in m else "–" for c in COLUMNS)]
                for name, m in result["poetics"].items()
            ],
        )
        lines += ["", "Shares: rhyme and tone_ok among well-formed poems; copied_* against the training split.", ""]
        for name, poems in result["samples"].items():
            lines += [f"## {name}", "", *(f"- {p}" for p in poems[:5]), ""]
    return "\n".join(lines) + "\n"


def write_report(result: dict[str, Any], history: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """analysis.json, analysis.md and the figures, into ``out_dir``."""
    written = [out_dir / "analysis.json", out_dir / "analysis.md"]
    write_json(written[0], result)
    write_text(written[1], to_markdown(result, history))
    cell, step = result["cell"], result["step"]
    plots: dict[str, Any] = {}
    if result.get("gradient_flow"):
        plots["gradient_flow.png"] = figures.gradient_flow({f"step {step}": result["gradient_flow"]["norms"]}, cell)
    if result["positions"]["by_position"]:
        plots["loss_by_position.png"] = figures.loss_by_position({cell: [result["positions"]["by_position"]["loss"]]})
    if history:
        plots["gradient_flow_history.png"] = figures.gradient_flow_history(
            history, f"{cell}: gradient flow during training"
        )
    for name, fig in plots.items():
        figures.save_png(fig, out_dir / name)
        written.append(out_dir / name)
    return written
