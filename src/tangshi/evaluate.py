"""Evaluate a checkpoint: test-split loss, and poetics metrics of fixed-seed poem sets beside two reference rows.

The reference rows make the metrics mean something: real held-out poems (the ceiling a model should
approach) and random characters poured into valid forms (what form alone achieves, without any language).
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import torch

from tangshi.atomic import write_json, write_text
from tangshi.checkpoint import Loaded
from tangshi.corpus import Prepared
from tangshi.datamodule import PoemDataset, collate
from tangshi.decoding import SamplingConfig, sample
from tangshi.model import CharLM
from tangshi.poetics import FORMS, LINE_PUNCT, detect_form, poetics_metrics, split_lines

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


@torch.no_grad()
def mean_loss(model: CharLM, ds: PoemDataset, batch_size: int = 256) -> float:
    """Token-weighted loss (nats per character) of ``model`` over ``ds``, in eval mode; the mode is restored."""
    order = sorted(range(len(ds)), key=ds.lengths.__getitem__)  # length-sorted: little padding
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(order), batch_size):
        batch = collate([ds[j] for j in order[i : i + batch_size]])
        feats, _ = model(batch["inputs"].to(device))
        nll, n = model.nll(feats, batch["targets"].to(device))
        total, count = total + float(nll), count + int(n)
    model.train(was_training)
    return total / count


def split_loss(loaded: Loaded, prepared: Prepared, split: str = "test", batch_size: int = 256) -> dict[str, float]:
    """Token-weighted loss over a split: nats, bits per character, perplexity."""
    loss = mean_loss(loaded.model, PoemDataset(prepared.splits[split], loaded.vocab), batch_size)
    return {"loss": loss, "bpc": loss / math.log(2), "ppl": math.exp(loss)}


def random_in_form(prepared: Prepared, n: int, seed: int = 0) -> list[str]:
    """Poems of random characters (drawn by training frequency) in the four regular forms, in turn."""
    rng = random.Random(seed)
    chars = [c for c in prepared.vocab.itos[4:] if c not in LINE_PUNCT]
    weights = [prepared.vocab.counts[prepared.vocab.stoi[c]] for c in chars]
    forms = list(FORMS.values())
    poems = []
    for i in range(n):
        form = forms[i % len(forms)]
        lines = ["".join(rng.choices(chars, weights, k=form.chars_per_line)) for _ in range(form.lines)]
        poems.append("".join(line + ("，" if j % 2 == 0 else "。") for j, line in enumerate(lines)))
    return poems


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


def evaluate(loaded: Loaded, prepared: Prepared, n: int = 96, seed: int = 0) -> dict[str, Any]:
    """Test loss and one row of poetics metrics per poem set, with the two reference rows first."""
    loaded.vocab.check_matches(prepared.vocab, f"evaluate {loaded.path} on {prepared.path}")
    train_lines = {t for body in prepared.splits["train"] for t, _ in split_lines(body)}
    train_bodies = set(prepared.splits["train"])
    rng = random.Random(seed)
    regular = [b for b in prepared.splits["test"] if detect_form(b)]
    rows: dict[str, dict[str, float]] = {
        "real held-out poems (regular forms)": poetics_metrics(
            rng.sample(regular, min(n, len(regular))), train_lines, train_bodies
        ),
        "random characters in valid form": poetics_metrics(
            random_in_form(prepared, n, seed), train_lines, train_bodies
        ),
    }
    samples: dict[str, list[str]] = {}
    for name, configs in sets_to_sample(n, seed).items():
        poems = [p for cfg in configs for p in sample(loaded.model, loaded.vocab, cfg)]
        samples[name] = poems
        rows[f"model: {name}"] = poetics_metrics(poems, train_lines, train_bodies)
    return {
        "checkpoint": str(loaded.path),
        "step": loaded.step,
        "test": split_loss(loaded, prepared),
        "poetics": rows,
        "samples": samples,
    }


def to_markdown(result: dict[str, Any]) -> str:
    t = result["test"]
    lines = [
        f"# Evaluation of `{result['checkpoint']}` (step {result['step']})",
        "",
        f"Test split: loss {t['loss']:.4f} nats/char, **{t['bpc']:.3f} bits/char**, perplexity {t['ppl']:.1f}.",
        "",
        "| poems | n | " + " | ".join(COLUMNS) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in COLUMNS) + " |",
    ]
    for name, m in result["poetics"].items():
        cells = [f"{m[c]:.2f}" if c in m else "–" for c in COLUMNS]
        lines.append(f"| {name} | {int(m['poems'])} | " + " | ".join(cells) + " |")
    lines += ["", "Shares: rhyme and tone_ok among well-formed poems; copied_* against the training split.", ""]
    for name, poems in result["samples"].items():
        lines += [f"## {name}", "", *(f"- {p}" for p in poems[:5]), ""]
    return "\n".join(lines)


def write_report(result: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    write_json(out_dir / "eval.json", result)
    write_text(out_dir / "eval.md", to_markdown(result))
    return out_dir / "eval.json", out_dir / "eval.md"
