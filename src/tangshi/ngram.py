"""A count-based floor: an interpolated Kneser-Ney character n-gram model on the same split and vocabulary.

Zhang & Lapata (2014) report a KN5 model (perplexity 172) beside their RNNs; a recurrent cell that does not beat
this clearly has learnt little beyond n-grams. Scored like the neural models: every character of a held-out
poem and its ``<eos>``, characters outside the vocabulary as ``<unk>``, in bits per character.

No maintained Python library fits: NLTK's ``KneserNeyInterpolated`` took 94 ms per character here and gave
some characters probability zero, and KenLM's ``lmplz`` builder is not on PyPI. The estimator is Chen &
Goodman's (1999) interpolated Kneser-Ney with one absolute discount per order, D = n1 / (n1 + 2 n2):

    P(w | h) = max(c(hw) − D, 0) / c(h·) + D · N1+(h·) / c(h·) · P(w | h′)

with raw counts at the highest order, continuation counts N1+(·hw) below it, and a uniform distribution over
the vocabulary under the unigram, so no character in the vocabulary has probability zero.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tangshi.vocab import Vocab

BOS, EOS, UNK = "\x02", "\x03", "\x01"  # one-character stand-ins for the special tokens inside n-gram strings


class KneserNey:
    """An interpolated Kneser-Ney model of order ``order`` over the characters of ``vocab`` (and ``<eos>``)."""

    def __init__(self, order: int, vocab: Vocab):
        self.order, self.vocab = order, vocab
        self.size = len(vocab) - 2  # what can be predicted: the characters, <unk> and <eos> (not <pad>, <bos>)
        self.counts: list[dict[str, int]] = []  # per order k (index k-1): count of each k-gram
        self.totals: list[dict[str, int]] = []  # per order: sum of counts over w of each context h
        self.types: list[dict[str, int]] = []  # per order: number of distinct w after each context h
        self.discounts: list[float] = []

    def _padded(self, body: str) -> str:
        return BOS * (self.order - 1) + "".join(c if c in self.vocab else UNK for c in body) + EOS

    def fit(self, bodies: Sequence[str]) -> KneserNey:
        n = self.order
        top: Counter[str] = Counter()
        for body in bodies:
            s = self._padded(body)
            top.update(s[j - n + 1 : j + 1] for j in range(n - 1, len(s)))
        counts: list[dict[str, int]] = [dict(top)]
        for _ in range(n - 1):  # continuation counts: distinct characters seen before each shorter gram
            cont: Counter[str] = Counter(g[1:] for g in counts[0])
            counts.insert(0, dict(cont))
        self.counts = counts
        for grams in counts:
            total: defaultdict[str, int] = defaultdict(int)
            types: defaultdict[str, int] = defaultdict(int)
            for g, c in grams.items():
                total[g[:-1]] += c
                types[g[:-1]] += 1
            self.totals.append(dict(total))
            self.types.append(dict(types))
            of = Counter(grams.values())
            n1, n2 = of.get(1, 0), of.get(2, 0)
            self.discounts.append(n1 / (n1 + 2 * n2) if n1 + n2 else 0.5)
        return self

    def prob(self, context: str, char: str) -> float:
        """P(char | the last order − 1 characters of context), interpolated down to a uniform distribution."""
        p = 1.0 / self.size
        for k in range(1, self.order + 1):  # from the unigram up, each order interpolating the one below
            h = context[len(context) - (k - 1) :] if k > 1 else ""
            total = self.totals[k - 1].get(h, 0)
            if not total:  # unseen context: this order adds nothing
                continue
            d = self.discounts[k - 1]
            c = self.counts[k - 1].get(h + char, 0)
            p = max(c - d, 0.0) / total + d * self.types[k - 1][h] / total * p
        return p

    def bits(self, body: str) -> tuple[float, int]:
        """Total bits of ``body`` and its ``<eos>``, and how many targets that is."""
        s = self._padded(body)
        n = self.order
        total = sum(-math.log2(self.prob(s[j - n + 1 : j], s[j])) for j in range(n - 1, len(s)))
        return total, len(s) - n + 1


def baseline(train: Sequence[str], test: Sequence[str], vocab: Vocab, order: int = 5) -> dict[str, Any]:
    """Test bits per character and perplexity of a ``order``-gram Kneser-Ney model fitted on ``train``."""
    model = KneserNey(order, vocab).fit(train)
    scored = [model.bits(b) for b in test]
    bpc = sum(b for b, _ in scored) / sum(n for _, n in scored)
    return {"order": order, "test_bpc": bpc, "test_ppl": 2**bpc, "discounts": model.discounts}


def floor(data: dict[str, Any], data_dir: str | Path, order: int = 5) -> dict[str, Any]:
    """The Kneser-Ney test bpc of the corpus that the ``data`` settings prepare (``data_dir``), cached beside
    the prepared corpus as ``kn<order>.json``; ``corpus`` names the prepared corpus."""
    from tangshi.atomic import write_json
    from tangshi.corpus import CorpusConfig, prepare

    prepared = prepare(CorpusConfig.from_data(data), Path(data_dir))
    cache = prepared.path / f"kn{order}.json"
    if cache.exists():
        result = json.loads(cache.read_text(encoding="utf-8"))
    else:
        result = baseline(prepared.splits["train"], prepared.splits["test"], prepared.vocab, order)
        write_json(cache, result)
    return {"corpus": prepared.path.name, **result}
