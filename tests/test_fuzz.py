"""Property tests: arbitrary Unicode into the cleaner, the prompt arguments and the poetics metrics gives a
clean result or a TangshiError, never a crash or a hang."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tangshi.corpus import _READABLE, clean_body
from tangshi.decoding import SamplingConfig, sample
from tangshi.errors import TangshiError
from tangshi.model import CharLM
from tangshi.poetics import detect_form, poetics_metrics, score_poem, split_lines
from tangshi.vocab import Vocab

# Mostly CJK and the corpus's punctuation and brackets, plus anything else Unicode has.
poemish = st.text(
    alphabet=st.one_of(
        st.sampled_from("白日依山尽黄河入海流，。？！；：、（）〔〕〖〗[]{}「」《》□○ ,.?!()\n"),
        st.characters(),
    ),
    max_size=80,
)
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

VOCAB = Vocab.build(["白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"])
torch.manual_seed(0)
MODEL = CharLM(len(VOCAB), cell="gru", embed_dim=8, hidden_size=8, num_layers=1)


@FAST
@given(poemish)
def test_cleaner_returns_readable_text_or_none(text):
    out = clean_body(text)
    assert out is None or (_READABLE.fullmatch(out) and out[0] not in "，。？！；：、")


@FAST
@given(poemish)
def test_poetics_never_crash(text):
    score = score_poem(text)
    assert score["form"] == detect_form(text)
    assert all(0 <= v <= 1 for k, v in poetics_metrics([text, text]).items() if k != "poems")
    assert sum(len(t) + 1 for t, _ in split_lines(text)) in (0, len(text))


@FAST
@given(
    begin=poemish.map(lambda s: s[:8]),
    acrostic=poemish.map(lambda s: s[:4]),
    form=st.sampled_from([None, "wuyan_jueju", "qiyan_lvshi"]),
    rhyme=st.booleans(),
)
def test_prompts_give_poems_or_one_clear_error(begin, acrostic, form, rhyme):
    try:
        cfg = SamplingConfig(
            n=2,
            begin=begin,
            acrostic=acrostic,
            form=form,
            rhyme=rhyme and form is not None,
            max_len=max(12, len(begin)),
            seed=0,
        )
        poems = sample(MODEL, VOCAB, cfg)
    except TangshiError as e:
        assert "\n" not in str(e)
        return
    assert len(poems) == 2 and all(p.startswith(begin) for p in poems)
    if form:
        assert all(detect_form(p) == form for p in poems)


@pytest.mark.parametrize("begin", ["\x00", "日\n月", "🙂", "白" * 200])
def test_odd_prompts(begin):
    with pytest.raises(TangshiError):
        sample(MODEL, VOCAB, SamplingConfig(begin=begin, form="wuyan_jueju"))
