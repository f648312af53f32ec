from dataclasses import replace

import pytest
import torch

from tangshi.decoding import SamplingConfig, filter_logits, sample
from tangshi.errors import TangshiError
from tangshi.model import CharRNN
from tangshi.poetics import FORMS, detect_form, poetics_metrics, rhymes, split_lines, tone_rules
from tangshi.vocab import Vocab

VOCAB = Vocab.build(["白日依山尽，黄河入海流。", "欲穷千里目，更上一层楼。"])


@pytest.fixture
def model():
    torch.manual_seed(0)
    return CharRNN(len(VOCAB), cell="gru", embed_dim=8, hidden_size=16, num_layers=1, unigram_counts=VOCAB.counts)


def test_same_seed_same_poems_other_seed_other_poems(model):
    a = sample(model, VOCAB, SamplingConfig(n=6, seed=3, max_len=20))
    assert a == sample(model, VOCAB, SamplingConfig(n=6, seed=3, max_len=20))
    assert a != sample(model, VOCAB, SamplingConfig(n=6, seed=4, max_len=20))
    assert len(a) == 6 and all(len(p) <= 20 for p in a)


def test_sampling_leaves_the_global_rng_alone(model):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    sample(model, VOCAB, SamplingConfig(n=4, seed=0, max_len=10))
    assert torch.equal(torch.rand(3), expected)


def test_begin_starts_every_poem_and_specials_never_appear(model):
    poems = sample(model, VOCAB, SamplingConfig(n=8, begin="黄河", temperature=1.5, max_len=30))
    assert all(p.startswith("黄河") for p in poems)
    assert not any(tok in p for p in poems for tok in ("<pad>", "<bos>", "<unk>"))


def test_greedy_is_deterministic_without_a_seed(model):
    cfg = SamplingConfig(n=3, temperature=0, seed=None, max_len=15)
    poems = sample(model, VOCAB, cfg)
    assert len(set(poems)) == 1 and poems == sample(model, VOCAB, cfg)


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.1)).tolist() == [[False, True, True, True]]


def test_begin_outside_the_vocabulary_is_named(model):
    with pytest.raises(TangshiError, match="begin character '龘' is not in the model's vocabulary"):
        sample(model, VOCAB, SamplingConfig(begin="白龘"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "n must be >= 1"),
        ({"temperature": -1}, "temperature must be >= 0"),
        ({"top_p": 0}, r"top_p must be in \(0, 1\]"),
        ({"top_k": -2}, "top_k must be >= 0"),
    ],
)
def test_bad_sampling_settings(kwargs, message):
    with pytest.raises(TangshiError, match=message):
        SamplingConfig(**kwargs)


# -- constraints, on a GRU trained briefly on the fixture ------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tiny_checkpoint):
    from tangshi import checkpoint

    return checkpoint.load(tiny_checkpoint)


@pytest.mark.parametrize("form", list(FORMS))
def test_form_masks_make_every_poem_well_formed(trained, form):
    poems = sample(trained.model, trained.vocab, SamplingConfig(n=24, form=form, temperature=1.2, seed=1))
    assert [detect_form(p) for p in poems] == [form] * 24


@pytest.mark.parametrize("form", ["wuyan_jueju", "qiyan_lvshi"])
def test_rhyme_masks_make_even_lines_rhyme_without_repeating_a_rhyme_character(trained, form):
    poems = sample(trained.model, trained.vocab, SamplingConfig(n=24, form=form, rhyme=True, seed=2))
    assert all(detect_form(p) == form and rhymes(p) for p in poems)
    for p in poems:
        ends = [t[-1] for t, _ in split_lines(p)][1::2]
        assert len(set(ends)) == len(ends)


def test_tone_steering_keeps_the_key_positions_regular(trained):
    cfg = SamplingConfig(n=24, form="wuyan_lvshi", rhyme=True, tone=True, tone_bias=50.0, seed=3)
    rules = [tone_rules(p) for p in sample(trained.model, trained.vocab, cfg)]
    for name in ("alternation", "opposition", "adhesion", "level_rhyme"):
        assert all(r[name] for r in rules), name
    free = [tone_rules(p) for p in sample(trained.model, trained.vocab, replace(cfg, tone=False))]
    assert sum(r["opposition"] for r in free) < 24  # without steering the rules do not hold by themselves


def test_acrostic_with_and_without_a_form(trained):
    acro = "".join(c for c in "春江花月夜" if c in trained.vocab)[:4]
    for form in ("qiyan_jueju", None):
        poems = sample(trained.model, trained.vocab, SamplingConfig(n=8, form=form, acrostic=acro, seed=4))
        for p in poems:
            assert [t[0] for t, _ in split_lines(p)] == list(acro), p


def test_begin_then_form(trained):
    begin = trained.vocab.itos[10] + trained.vocab.itos[11]
    poems = sample(trained.model, trained.vocab, SamplingConfig(n=6, begin=begin, form="wuyan_jueju", seed=5))
    assert all(p.startswith(begin) and detect_form(p) == "wuyan_jueju" for p in poems)


def test_beam_search_is_deterministic_and_obeys_the_form(trained):
    cfg = SamplingConfig(n=3, beam=4, form="wuyan_jueju", rhyme=True, repetition_penalty=1.3)
    a = sample(trained.model, trained.vocab, cfg)
    assert a == sample(trained.model, trained.vocab, replace(cfg, seed=99))  # beam search ignores the seed
    assert len(a) == 3 and len(set(a)) == 3
    assert all(detect_form(p) == "wuyan_jueju" and rhymes(p) for p in a)


def test_repetition_penalty_raises_character_variety(trained):
    base = SamplingConfig(n=32, temperature=0.7, seed=6, form="qiyan_lvshi")
    plain = poetics_metrics(sample(trained.model, trained.vocab, base))["distinct_1"]
    penalised = poetics_metrics(sample(trained.model, trained.vocab, replace(base, repetition_penalty=3.0)))
    assert penalised["distinct_1"] > plain


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"form": "wuyan_jueju", "acrostic": "春夏秋冬雪"}, "has 5 characters but a wuyan_jueju has 4 lines"),
        ({"form": "wuyan_jueju", "begin": "白日依山尽黄河"}, "longer than the first line of a wuyan_jueju"),
        ({"begin": "白日", "acrostic": "春夏"}, "cannot both hold: the first line must start with '春'"),
        ({"rhyme": True}, "need a form"),
        ({"form": "sonnet"}, "unknown form 'sonnet'"),
        ({"repetition_penalty": 0.5}, "repetition_penalty must be >= 1"),
    ],
)
def test_impossible_requests_are_one_clear_error(kwargs, message):
    with pytest.raises(TangshiError, match=message):
        SamplingConfig(**kwargs)


def test_begin_breaking_the_form_and_unknown_acrostic_characters(trained):
    two = trained.vocab.itos[10] + trained.vocab.itos[11]
    with pytest.raises(TangshiError, match=r"cannot start a wuyan_jueju: '，' is not allowed as character 3"):
        sample(trained.model, trained.vocab, SamplingConfig(begin=two + "，", form="wuyan_jueju"))
    with pytest.raises(TangshiError, match="acrostic character '龘' is not in the model's vocabulary"):
        sample(trained.model, trained.vocab, SamplingConfig(acrostic=two[0] + "龘", form="wuyan_jueju"))


def test_sample_script_json_output_scores_each_poem(tiny_checkpoint, tmp_path):
    import json

    from .conftest import run_script

    out = run_script(
        "sample.py", f"ckpt={tiny_checkpoint}", "form=wuyan_jueju", "rhyme=true", "n=4", "format=json", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout)
    assert data["prompt"] == {"begin": "", "acrostic": "", "form": "wuyan_jueju"}
    assert data["settings"]["rhyme"] is True and len(data["poems"]) == 4
    assert all(p["form"] == "wuyan_jueju" and p["rhymes"] and set(p["tone_rules"]) for p in data["poems"])
    bad = run_script("sample.py", f"ckpt={tiny_checkpoint}", "format=xml", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: unknown format 'xml'; allowed: text, json"


def test_draw_follows_the_distribution_and_never_picks_a_masked_token():
    from tangshi.decoding import draw

    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0]]).repeat(40_000, 1)
    picks = draw(probs, torch.Generator().manual_seed(0))
    counts = torch.bincount(picks, minlength=6).float() / len(picks)
    assert counts[[0, 2, 5]].sum() == 0
    torch.testing.assert_close(counts, probs[0], atol=0.01, rtol=0)
