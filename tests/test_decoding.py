import math
from dataclasses import replace

import pytest
import torch

from tangshi.decoding import SamplingConfig, filter_logits, sample
from tangshi.errors import TangshiError
from tangshi.model import CharLM
from tangshi.poetics import FORMS, detect_form, rhymes, split_lines, tone_rules
from tangshi.vocab import Vocab

VOCAB = Vocab.build(["白日依山尽，黄河入海流。", "欲穷千里目，更上一层楼。"])


@pytest.fixture
def model():
    torch.manual_seed(0)
    return CharLM(len(VOCAB), cell="gru", embed_dim=8, hidden_size=16, num_layers=1, unigram_counts=VOCAB.counts)


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
        ({"n": 0}, "n must be between 1 and 10000, got 0"),
        ({"n": 100000}, "n must be between 1 and 10000, got 100000"),
        ({"beam": 100000}, "beam must be between 0 \\(sampling\\) and 64, got 100000"),
        ({"max_len": 10**6}, "max_len must be at most 512 characters, got 1000000"),
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
    cfg = SamplingConfig(n=3, beam=4, form="wuyan_jueju", rhyme=True, repetition_penalty=1.0)
    a = sample(trained.model, trained.vocab, cfg)
    assert a == sample(trained.model, trained.vocab, replace(cfg, seed=99))  # beam search ignores the seed
    assert len(a) == 3 and len(set(a)) == 3
    assert all(detect_form(p) == "wuyan_jueju" and rhymes(p) for p in a)


def repeated_share(poems: list[str]) -> float:
    """Share of a poem's characters (punctuation aside) that already occurred earlier in it."""
    repeats = total = 0
    for p in poems:
        chars = [c for c in p if c not in "，。"]
        repeats += len(chars) - len(set(chars))
        total += len(chars)
    return repeats / total


def test_repetition_penalty_lowers_the_repeated_character_rate(trained):
    base = SamplingConfig(n=32, temperature=0.8, seed=6, form="qiyan_lvshi")
    plain = repeated_share(sample(trained.model, trained.vocab, base))
    penalised = repeated_share(sample(trained.model, trained.vocab, replace(base, repetition_penalty=1.5)))
    assert penalised < 0.7 * plain, (plain, penalised)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"form": "wuyan_jueju", "acrostic": "春夏秋冬雪"}, "has 5 characters but a wuyan_jueju has 4 lines"),
        ({"form": "wuyan_jueju", "begin": "白日依山尽黄河"}, "longer than the first line of a wuyan_jueju"),
        ({"begin": "白日", "acrostic": "春夏"}, "cannot both hold: the first line must start with '春'"),
        ({"rhyme": True}, "need a form"),
        ({"form": "sonnet"}, "unknown form 'sonnet'"),
        ({"repetition_penalty": -0.5}, "repetition_penalty must be >= 0"),
        ({"acrostic": "，春", "form": "wuyan_jueju"}, "acrostic character '，' is not allowed: an acrostic is Chinese"),
        ({"acrostic": "<eos>"}, "acrostic character '<' is not allowed"),
        ({"beam": 4, "n": 2, "beam_groups": 5}, "beam_groups must be between 1 and the number of beams"),
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


# -- hand-built models: distributions known exactly ------------------------------------------------------


class TableLM(torch.nn.Module):
    """A real (bigram) language model with a hand-written table: the next character's log-probabilities
    depend on the last token only. Implements the interface decoding uses (forward, step, log_probs,
    next_line_ends, select_state), so beam search and sampling can be checked against exact enumeration."""

    def __init__(self, log_table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(log_table, requires_grad=False)

    def forward(self, ids, state=None):
        return torch.nn.functional.one_hot(ids, self.table.shape[0]).float(), None

    def step(self, tokens, state=None):
        return torch.nn.functional.one_hot(tokens, self.table.shape[0]).float(), None

    def select_state(self, state, index):
        return state

    def next_line_ends(self, state):
        return None  # no echo bias

    def log_probs(self, feats, ends=None):
        return self.table[feats.argmax(-1)]  # impossible transitions stay at -inf


def table_lm(vocab: Vocab, rows: dict[str, dict[str, float]]) -> TableLM:
    """Log-probability table from ``{previous: {next: probability}}`` (``<bos>`` and ``<eos>`` by name)."""
    table = torch.full((len(vocab), len(vocab)), -math.inf)
    for prev, nexts in rows.items():
        for nxt, p in nexts.items():
            table[vocab.stoi[prev], vocab.stoi[nxt]] = float(torch.tensor(p).log())
    return TableLM(table)


ABC = Vocab(["<pad>", "<bos>", "<eos>", "<unk>", "甲", "乙", "丙"], [0, 0, 1, 0, 1, 1, 1])


def test_beam_ranks_finished_and_cut_poems_by_score_per_generated_token():
    # After the prompt 甲乙 the model ends at log p -1.0, or writes 丙 (-0.8) and ends (-0.8): per generated
    # token 甲乙丙 is better (-0.8 > -1.0). Dividing by the prompt's length as well would put 甲乙 first
    # (-1.0/3 > -1.6/4). Longer poems, 丙丙… up to the length limit (cut poems: no <eos> scored), are worse.
    log = {("<bos>", "甲"): 0.0, ("甲", "乙"): 0.0, ("乙", "<eos>"): -1.0, ("乙", "丙"): -0.8}
    log |= {("丙", "<eos>"): -0.8, ("丙", "丙"): -2.0}
    table = torch.full((len(ABC), len(ABC)), -math.inf)
    for (a, b), v in log.items():
        table[ABC.stoi[a], ABC.stoi[b]] = v
    model = TableLM(table)
    cfg = SamplingConfig(n=1, beam=8, begin="甲乙", max_len=6)
    # exhaustive reference: every continuation, scored by the definition (sum over generated tokens / count)
    scores = {}
    for extra in range(0, cfg.max_len - 1):
        steps = list(zip(("乙" + "丙" * extra)[:extra], "丙" * extra, strict=True))
        total = sum(log[step] for step in steps)
        if 2 + extra < cfg.max_len:
            scores["甲乙" + "丙" * extra] = (total + log[("丙" if extra else "乙", "<eos>")]) / (extra + 1)
        else:
            scores["甲乙" + "丙" * extra] = total / extra
    assert max(scores, key=scores.get) == "甲乙丙"
    assert sample(model, ABC, cfg) == ["甲乙丙"]
    # a cut poem against a finished one: only 丙丙丙丙 fits in max_len=6 besides shorter finished ones
    ranked = sample(model, ABC, replace(cfg, n=len(scores), beam=len(scores), beam_groups=1))
    assert ranked == sorted(scores, key=lambda k: -scores[k])


def test_diverse_beam_groups_return_different_poems(trained):
    cfg = SamplingConfig(n=8, beam=8, form="wuyan_jueju")
    poems = sample(trained.model, trained.vocab, cfg)
    assert len(poems) == 8 and len(set(poems)) == 8
    assert len({p.split("，")[0] for p in poems}) >= 4, poems  # not one first line eight times
    one_group = sample(trained.model, trained.vocab, replace(cfg, beam_groups=1))
    assert len({p.split("，")[0] for p in one_group}) < len({p.split("，")[0] for p in poems})


def test_a_confident_repeat_loses_most_of_its_odds_under_the_penalty():
    # After 甲 the model repeats 甲 with probability 0.95. A penalty of 1.5 nats must cut that to
    # 0.95·e^-1.5 / (0.95·e^-1.5 + 0.05) = 0.81; scaling the log-probability by 1.5 (-0.05 → -0.077) would
    # leave it at 0.95.
    model = table_lm(ABC, {"<bos>": {"甲": 1.0}, "甲": {"甲": 0.95, "乙": 0.05}, "乙": {"<eos>": 1.0}})
    cfg = SamplingConfig(n=4000, temperature=1.0, top_p=1.0, max_len=2, seed=0)
    repeats = sum(p == "甲甲" for p in sample(model, ABC, cfg)) / cfg.n
    penalised = sum(p == "甲甲" for p in sample(model, ABC, replace(cfg, repetition_penalty=1.5))) / cfg.n
    assert abs(repeats - 0.95) < 0.015 and abs(penalised - 0.809) < 0.02, (repeats, penalised)


def test_tone_bias_is_in_nats_of_the_sampled_distribution_at_any_temperature():
    # A uniform model over characters: at the 4th character of a wuyan_jueju whose 2nd is level (平), tone
    # steering wants an oblique (仄) one, so a level-only character's odds against a neutral one must be
    # e^-bias, at temperature 1 and at 2 alike (applied before the temperature, it would be e^-bias/2).
    from tangshi.poetics import PING, ZE, phonology

    phon = phonology()
    chars = [c for c in "山河花鸟风月春秋天人心水云江寒石" if c]
    vocab = Vocab(["<pad>", "<bos>", "<eos>", "<unk>", "，", "。", *chars], [0, 0, 1, 0, 1, 1] + [1] * len(chars))
    uniform = torch.zeros(len(vocab), len(vocab))
    model = TableLM(uniform.log_softmax(-1))
    level = [c for c in chars if phon.tone(c) == frozenset({PING})]
    oblique = [c for c in chars if phon.tone(c) == frozenset({ZE})]
    begin = level[0] + level[1] + oblique[0]  # second character level: the fourth is steered to oblique
    for temperature in (1.0, 2.0):
        cfg = SamplingConfig(
            n=6000, begin=begin, form="wuyan_jueju", tone=True, tone_bias=1.0, temperature=temperature, top_p=1.0
        )
        fourth = [p[3] for p in sample(model, vocab, cfg)]
        share_level = sum(c in level for c in fourth) / len(fourth)
        expected = len(level) * math.exp(-1.0) / (len(level) * math.exp(-1.0) + len(chars) - len(level))
        assert abs(share_level - expected) < 0.02, (temperature, share_level, expected)
