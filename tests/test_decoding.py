import pytest
import torch

from tangshi.decoding import SamplingConfig, filter_logits, sample
from tangshi.errors import TangshiError
from tangshi.model import CharRNN
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
