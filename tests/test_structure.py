"""Structure-aware inputs (model.structure=true): features of the characters already written, checked against
hand-read poems, for equality between training and stepwise decoding, and for no look-ahead."""

import json
from pathlib import Path

import pytest
import torch

from tangshi import checkpoint
from tangshi.decoding import SamplingConfig, sample
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
    whole, _ = features.encode(ids)
    state, steps = None, []
    for t in range(ids.shape[1]):
        f, state = features.encode(ids[:, t : t + 1], state)
        steps.append(f)
    assert torch.equal(torch.cat(steps, 1), whole)
    # and in uneven chunks
    a, state = features.encode(ids[:, :7])
    b, _ = features.encode(ids[:, 7:], state)
    assert torch.equal(torch.cat([a, b], 1), whole)


def test_a_later_character_never_changes_an_earlier_steps_features(features, vocab):
    ids = torch.tensor([vocab.encode(JINGYESI)])
    whole, _ = features.encode(ids)
    generator = torch.Generator().manual_seed(0)
    for t in range(1, ids.shape[1]):
        changed = ids.clone()
        changed[0, t:] = torch.randint(len(SPECIALS), len(vocab), (ids.shape[1] - t,), generator=generator)
        changed[0, t] = vocab.stoi["，"]  # punctuation where a character was: the structure changes most
        assert torch.equal(features.encode(changed)[0][:, :t], whole[:, :t]), t


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
