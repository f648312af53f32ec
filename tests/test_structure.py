"""Structure-aware inputs (model.structure=true): features of the characters already written, checked against
hand-read poems, for equality between training and stepwise decoding, and for no look-ahead."""

import json
import math
from pathlib import Path

import pytest
import torch

from tangshi import checkpoint
from tangshi.decoding import SamplingConfig, sample
from tangshi.errors import TangshiError
from tangshi.model import CELLS, CharLM
from tangshi.structure import COLUMNS, LINES, StructureFeatures
from tangshi.vocab import SPECIALS, Vocab

# 李白《静夜思》 and 王之涣《登鹳雀楼》: 霜/乡 rhyme in 阳 (下平七阳), 流/楼 in 尤 (下平十一尤), by the rhyme books
JINGYESI = "床前明月光，疑是地上霜。举头望明月，低头思故乡。"
GUANQUELOU = "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"


@pytest.fixture(scope="module")
def vocab() -> Vocab:
    chars = sorted(set(JINGYESI + GUANQUELOU + "春江花月夜"))
    return Vocab([*SPECIALS, *chars], [0] * len(SPECIALS) + [1] * len(chars))


@pytest.fixture(scope="module")
def features(vocab) -> StructureFeatures:
    return StructureFeatures(vocab.itos, 8)


def _read(sf: StructureFeatures, vocab: Vocab, poem: str) -> list[dict]:
    """The features after each token of ``<bos> poem <eos>``, decoded into named values."""
    ids = torch.tensor([vocab.encode(poem)])
    f = sf.encode(ids)[0][0]
    cats = sf.category_names
    n = len(cats)
    out = []
    for row in f:
        i = 0
        col = int(row[i : i + COLUMNS + 1].argmax())
        i += COLUMNS + 1
        line = int(row[i : i + LINES + 1].argmax())
        i += LINES + 1
        closes, closes_even = bool(row[i]), bool(row[i + 1])
        i += 2 + 2 + n + 2  # the character just written: tones, categories; then the last rhyme character's tones
        rhyme = {cats[k] for k in range(n) if row[i + k]}
        out.append({"col": col, "line": line, "closes": closes, "closes_even": closes_even, "rhyme": rhyme})
    return out


def test_features_of_a_known_poem_read_as_a_person_reads_it(features, vocab):
    seen = _read(features, vocab, JINGYESI)
    # seen[t] is what is known after token t (t = 0 is <bos>), about the character t + 1 of the poem
    before = {ch: seen[i] for i, ch in enumerate(JINGYESI)}  # the features that predict JINGYESI[i]
    assert before["床"] == {"col": 0, "line": 0, "closes": False, "closes_even": False, "rhyme": set()}
    assert before["光"]["col"] == 4 and not before["光"]["closes"]  # line 1's width is not known yet
    assert before["霜"] == {"col": 4, "line": 1, "closes": True, "closes_even": True, "rhyme": set()}
    assert before["月"]["closes"] and not before["月"]["closes_even"]  # 月 closes line 3, an odd line
    assert before["乡"]["closes_even"] and before["乡"]["rhyme"] == {"下平声七阳"}  # 霜 was the last rhyme
    assert before["低"] == {"col": 0, "line": 3, "closes": False, "closes_even": False, "rhyme": {"下平声七阳"}}
    assert seen[-1]["rhyme"] == {"下平声七阳"} and seen[-1]["line"] == 4  # after 乡 and 。
    assert _read(features, vocab, GUANQUELOU)[-1]["rhyme"] == {"下平声十一尤"}
    # a character the vocabulary lacks (<unk>) still takes its place in the line: 疑 → 嚻
    unknown = _read(features, vocab, JINGYESI.replace("疑", "嚻"))
    assert unknown[JINGYESI.index("霜")]["closes_even"] and unknown[JINGYESI.index("乡")]["closes_even"]


def test_features_in_decoding_equal_those_in_training(features, vocab):
    """One token at a time from the running state, as decoding reads them, or all at once, as training does."""
    ids = torch.tensor([vocab.encode(JINGYESI), vocab.encode(GUANQUELOU)])
    whole, _, ends = features.encode(ids)
    state, steps, kinds, chars = None, [], [], []
    for t in range(ids.shape[1]):
        f, state, _ = features.encode(ids[:, t : t + 1], state)
        steps.append(f)
        now = StructureFeatures.line_ends(state)  # what decoding reads from the state alone
        kinds.append(now.kind)
        chars.append(now.chars)
    assert torch.equal(torch.cat(steps, 1), whole)
    assert torch.equal(torch.stack(kinds, 1), ends.kind) and torch.equal(torch.stack(chars, 1), ends.chars)
    # and in uneven chunks
    a, state, ea = features.encode(ids[:, :7])
    b, _, eb = features.encode(ids[:, 7:], state)
    assert torch.equal(torch.cat([a, b], 1), whole)
    assert torch.equal(torch.cat([ea.chars, eb.chars], 1), ends.chars)


def test_line_ends_name_the_characters_earlier_lines_ended_on(features, vocab):
    ids = torch.tensor([vocab.encode(JINGYESI)])
    _, _, ends = features.encode(ids)
    before = {ch: i for i, ch in enumerate(JINGYESI)}  # step i predicts JINGYESI[i]
    named = [[vocab.itos[c] for c in row if c != vocab.stoi["<pad>"]] for row in ends.chars[0].tolist()]
    assert named[before["霜"]] == ["光"] and int(ends.kind[0, before["霜"]]) == 2  # an even line closes
    assert named[before["月"]] == ["光", "霜"] and int(ends.kind[0, before["月"]]) == 1  # line 3 (odd; 举头望明月)
    assert named[before["乡"]] == ["光", "霜", "月"] and int(ends.kind[0, before["乡"]]) == 2
    assert int(ends.kind[0, before["低"]]) == 0 and int(ends.kind[0, before["光"]]) == 0  # width not yet known


def test_a_later_character_never_changes_an_earlier_steps_features(features, vocab):
    ids = torch.tensor([vocab.encode(JINGYESI)])
    whole, _, ends = features.encode(ids)
    generator = torch.Generator().manual_seed(0)
    for t in range(1, ids.shape[1]):
        changed = ids.clone()
        changed[0, t:] = torch.randint(len(SPECIALS), len(vocab), (ids.shape[1] - t,), generator=generator)
        changed[0, t] = vocab.stoi["，"]  # punctuation where a character was: the structure changes most
        f, _, e = features.encode(changed)
        assert torch.equal(f[:, :t], whole[:, :t]), t
        assert torch.equal(e.chars[:, :t], ends.chars[:, :t]) and torch.equal(e.kind[:, :t], ends.kind[:, :t]), t


@pytest.mark.parametrize("cell", list(CELLS))
def test_a_structured_model_steps_as_it_trains_and_scores_true_probabilities(vocab, cell):
    torch.manual_seed(0)
    model = CharLM(len(vocab), cell=cell, embed_dim=16, hidden_size=32, head="full", structure=True, itos=vocab.itos)
    model.eval()
    ids = torch.tensor([vocab.encode(JINGYESI)])
    feats, _ = model(ids)
    out, state = model(ids[:, :1])
    stepped = [out[:, -1]]
    for t in range(1, ids.shape[1]):
        h, state = model.step(ids[:, t], state)
        stepped.append(h)
    assert torch.allclose(torch.stack(stepped, 1), feats, atol=1e-5)
    # bpc is a per-character loss: every position's distribution over the vocabulary sums to one
    assert torch.allclose(model.log_probs(feats).exp().sum(-1), torch.ones(ids.shape), atol=1e-5)
    plain = CharLM(len(vocab), cell=cell, embed_dim=16, hidden_size=32, head="full")
    assert model.param_counts()["structure"] > 0 and plain.param_counts()["structure"] == 0


@pytest.mark.parametrize("head", ["full", "adaptive"])
def test_the_echo_bias_keeps_a_true_distribution_and_lowers_only_echoes(vocab, head):
    torch.manual_seed(0)
    model = CharLM(
        len(vocab),
        embed_dim=16,
        hidden_size=32,
        head=head,
        adaptive_cutoffs=(12, 24),
        structure=True,
        echo_bias=True,
        itos=vocab.itos,
    )
    model.eval()
    with torch.no_grad():
        model.echo.weight.copy_(torch.tensor([-1.0, -3.0]))
    ids = torch.tensor([vocab.encode(JINGYESI)])
    inputs, targets = ids[:, :-1], ids[:, 1:]
    feats, _, ends = model.read(inputs)
    plain = model._full_log_probs(feats[0])[None]  # the distribution before the echo bias
    biased = model.log_probs(feats, ends)
    assert torch.equal(model.next_log_probs(inputs), biased)
    assert torch.allclose(biased.exp().sum(-1), torch.ones(inputs.shape), atol=1e-5)
    at = JINGYESI.index("乡")  # step `at` predicts 乡, closing line 4; 光, 霜 and 月 ended lines before
    光, 霜, 乡 = (vocab.stoi[c] for c in "光霜乡")
    # by hand: p'(c) = p(c) e^a / Z for an earlier line end, p(c) / Z otherwise, Z = 1 - p(S) + e^a p(S)
    p = plain[0, at].exp()
    s = p[[光, 霜, vocab.stoi["月"]]].sum()
    z = 1 - s + torch.exp(torch.tensor(-3.0)) * s
    assert torch.allclose(biased[0, at, 霜].exp(), p[霜] * torch.exp(torch.tensor(-3.0)) / z, atol=1e-6)
    assert torch.allclose(biased[0, at, 乡].exp(), p[乡] / z, atol=1e-6)
    inside = JINGYESI.index("前")  # not a line end: untouched
    assert torch.equal(biased[0, inside], plain[0, inside])
    # the training loss is the same per-character loss as scoring with log_probs
    total, count = model.nll(feats, targets, ends)
    assert torch.allclose(total, -biased.gather(-1, targets[..., None]).sum(), atol=1e-4) and count == targets.numel()
    # the training path scores only the listed characters (and a tail cluster only where one is listed)
    flat = feats[0]
    chars = torch.arange(len(vocab)).roll(5).reshape(-1, 1)[: flat.shape[0]].expand(-1, 3) % len(vocab)
    expected = plain[0].gather(1, chars)
    assert torch.allclose(model._log_probs_of(flat, chars), expected, atol=1e-5)
    # and decoding sees the same distribution, step by step from the state
    out, state = model(ids[:, :1])
    for t in range(1, at + 1):
        out, state = model.step(ids[:, t], state)
    assert torch.allclose(model.log_probs(out, model.next_line_ends(state))[0], biased[0, at], atol=1e-5)
    # scoring without the line ends would silently drop the bias: refused
    with pytest.raises(TangshiError, match="echo_bias is on: pass the line ends"):
        model.log_probs(feats)
    with pytest.raises(TangshiError, match="echo_bias is on: pass the line ends"):
        model.nll(feats, targets)


def test_the_echo_bias_needs_structure(vocab):
    with pytest.raises(TangshiError, match=r"model\.echo_bias=true .* needs model\.structure=true"):
        CharLM(len(vocab), structure=False, echo_bias=True, itos=vocab.itos)


def test_a_structured_run_trains_records_and_samples_in_form(compose_train):
    from tangshi.train import train

    cfg = compose_train("model.cell=gru", "model.structure=true")
    summary = train(cfg)
    assert summary["status"] == "completed"
    record = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text(encoding="utf-8"))
    assert record["config"]["model"]["structure"] is True and record["params"]["structure"] > 0
    assert "gradient_flow" in record  # unrolled through the structured inputs
    loaded = checkpoint.load(summary["best_checkpoint"])
    assert loaded.model.structure is not None
    poems = sample(loaded.model, loaded.vocab, SamplingConfig(n=4, form="wuyan_jueju", rhyme=True, seed=1))
    assert all(len(p) == 24 and p[5] == "，" and p[11] == "。" for p in poems)
    beams = sample(loaded.model, loaded.vocab, SamplingConfig(n=2, beam=4, form="wuyan_jueju"))
    assert len(beams) == 2 and all(len(p) == 24 for p in beams)


def test_the_echo_terms_by_hand_and_a_row_with_nothing_listed():
    """kind > 0 with no earlier line end (all PAD_ID): Z = 1, no gain, and no NaN in the gradient."""
    from tangshi.structure import ENDS, EchoBias, LineEnds
    from tangshi.vocab import PAD_ID

    echo = EchoBias()
    log_p = torch.log(torch.full((2, ENDS), 0.01)).requires_grad_()
    chars = torch.full((2, ENDS), PAD_ID)
    chars[1, 0] = 7  # the second row lists one character, p = 0.01
    with torch.no_grad():
        echo.weight.fill_(-2.0)
    gain, log_z = echo.terms(log_p, LineEnds(torch.tensor([2, 2]), chars))
    assert gain[0].abs().sum() == 0 and float(log_z[0]) == 0.0
    # by hand: Z = 1 - 0.01 + e^-2 * 0.01
    assert float(log_z[1]) == pytest.approx(math.log(1 - 0.01 + math.exp(-2) * 0.01), abs=1e-6)
    log_z.sum().backward()
    assert torch.isfinite(log_p.grad).all() and torch.isfinite(echo.weight.grad).all()
