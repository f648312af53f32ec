"""The Kneser-Ney floor: a proper distribution in every context, and the discounted counts of a case worked by hand."""

import pytest

from tangshi.ngram import BOS, EOS, UNK, KneserNey, baseline
from tangshi.vocab import Vocab

BODIES = ["白日依山尽，黄河入海流。", "白日放歌须纵酒，青春作伴好还乡。", "山中相送罢，日暮掩柴扉。", "日日山山"]


def test_every_context_gives_a_distribution_that_sums_to_one():
    vocab = Vocab.build(BODIES)
    model = KneserNey(4, vocab).fit(BODIES)
    outcomes = [*vocab.itos[4:], UNK, EOS]
    assert len(outcomes) == model.size
    for context in (BOS * 3, BOS * 2 + "白", "白日依", "山山山", "龘龘龘", "日暮掩"):  # seen, unseen, partial
        total = sum(model.prob(context, c) for c in outcomes)
        assert total == pytest.approx(1.0, abs=1e-9), context
        assert min(model.prob(context, c) for c in outcomes) > 0


def test_a_bigram_by_hand():
    # "aab": <bos>a, aa, ab, b<eos>. Bigram counts all 1, so D2 = 1/(1+0) = 1; continuation counts of the
    # unigrams: a ← {<bos>, a} = 2, b ← {a} = 1, <eos> ← {b} = 1, so n1 = 2, n2 = 1 and D1 = 2/4 = 0.5.
    vocab = Vocab.build(["aab"])
    model = KneserNey(2, vocab).fit(["aab"])
    assert model.discounts == [0.5, 1.0]
    uniform = 1 / 4  # a, b, <unk>, <eos>
    p1_b = (1 - 0.5) / 4 + 0.5 * 3 / 4 * uniform  # unigram level: N1+(·b) = 1 of 4 continuations, 3 types
    # after "a": c(a·) = 2 (aa, ab), 2 types; c(ab) = 1
    assert model.prob("a", "b") == pytest.approx((1 - 1.0) / 2 + 1.0 * 2 / 2 * p1_b)
    assert baseline(["aab"], ["ab"], vocab, order=2)["test_bpc"] > 0
