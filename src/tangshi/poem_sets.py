"""What a model writes, measured: fixed-seed poem sets scored by the project's own 平水韵 and 平仄 checker.

Three sets of ``n`` poems each, the same seeds for every model:

* ``free``: the sampling defaults (``conf/sampling/default.yaml``), no masks: form, rhyme and tone are the
  model's own.
* ``wuyan_jueju``, ``qiyan_jueju``: form masks only (exact line lengths and punctuation), no rhyme and no tone
  masks, so every poem is well-formed and whether it rhymes is still the model's doing.

Per set: the well-formed share; among well-formed poems the 平水韵 rhyme share with its Wilson 95 % interval
(a repeated rhyme character is not a rhyme; its share is reported beside), the 平仄 share; over all poems
distinct-2 and the mean share of repeated characters. :func:`references` scores real held-out poems and
random characters in form with the same code, as the ceiling and the floor. Training runs :func:`measure` at
its end (``poem_sets``), and ``scripts/analyse.py`` too.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any

from tangshi.decoding import SamplingConfig, sample
from tangshi.formatting import markdown_table
from tangshi.poetics import FORMS, LINE_PUNCT, detect_form, poetics_metrics
from tangshi.stats import wilson

if TYPE_CHECKING:
    from tangshi.corpus import Prepared
    from tangshi.model import CharLM
    from tangshi.vocab import Vocab

SETS: dict[str, str | None] = {"free": None, "wuyan_jueju": "wuyan_jueju", "qiyan_jueju": "qiyan_jueju"}
COLUMNS = ["poems", "n", "well-formed", "rhyme [95 % CI]", "echoed rhyme", "平仄 kept", "distinct-2", "repeated chars"]
KEPT = ("well_formed", "rhyme", "repeated_rhyme", "tone_ok", "distinct_2", "repeated_chars")


def score(poems: list[str]) -> dict[str, Any]:
    """The set's shares (:data:`KEPT`), the counts behind the rhyme share and its 95 % interval."""
    metrics = poetics_metrics(poems)
    formed, rhymed = int(metrics["well_formed_n"]), int(metrics["rhymed_n"])
    return {
        "n": len(poems),
        **{k: metrics[k] for k in KEPT},
        "well_formed_n": formed,
        "rhymed_n": rhymed,
        "rhyme_ci": list(wilson(rhymed, formed)),
    }


def measure(model: CharLM, vocab: Vocab, n: int = 200, seed: int = 0) -> dict[str, Any]:
    """Each set of :data:`SETS`, ``n`` poems at ``seed``, scored; ``seconds`` is what it all took."""
    start = time.perf_counter()
    out: dict[str, Any] = {"n": n, "seed": seed}
    for name, form in SETS.items():
        poems = sample(model, vocab, SamplingConfig(n=n, seed=seed, form=form))
        out[name] = {**score(poems), "examples": poems[:3]}
    out["seconds"] = time.perf_counter() - start
    return out


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


def references(prepared: Prepared, n: int = 200, seed: int = 0) -> dict[str, Any]:
    """The reference rows, scored as a model's sets are: ``n`` real held-out poems of the regular forms (test
    split) and ``n`` poems of random characters in those forms."""
    regular = [b for b in prepared.splits["test"] if detect_form(b)]
    real = random.Random(seed).sample(regular, min(n, len(regular)))
    return {"real held-out poems": score(real), "random characters in form": score(random_in_form(prepared, n, seed))}


def markdown(measured: dict[str, Any], refs: dict[str, Any] | None = None) -> list[str]:
    """The sets (and the reference rows) as a Markdown table."""
    rows = [(f"model: {name}", measured[name]) for name in SETS if name in measured]
    rows += list((refs or {}).items())
    return [
        *markdown_table(
            COLUMNS,
            [
                [
                    name,
                    str(s["n"]),
                    f"{s['well_formed']:.2f}",
                    f"{s['rhyme']:.2f} [{s['rhyme_ci'][0]:.2f}, {s['rhyme_ci'][1]:.2f}]",
                    f"{s['repeated_rhyme']:.2f}",
                    f"{s['tone_ok']:.2f}",
                    f"{s['distinct_2']:.2f}",
                    f"{s['repeated_chars']:.3f}",
                ]
                for name, s in rows
            ],
        ),
        "",
        "Rhyme, echoed rhyme and 平仄 are shares of the well-formed poems; a poem whose even lines end on one",
        "repeated character echoes, and does not count as rhyming.",
    ]
