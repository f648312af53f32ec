import pytest

from tangshi.vocab import BOS_ID, EOS_ID, SPECIALS, UNK_ID, Vocab, VocabError


def test_build_orders_by_frequency_and_counts_targets():
    v = Vocab.build(["春风春雨", "春山", "雨"], min_freq=2)
    assert v.itos == [*SPECIALS, "春", "雨"]
    assert v.counts == [0, 0, 3, 2, 3, 2]  # <eos> once per text; 风 and 山 fell under min_freq into <unk>


def test_encode_decode_round_trip_and_unknowns():
    v = Vocab.build(["白日依山尽", "黄河入海流"])
    ids = v.encode("白日龘")
    assert ids == [BOS_ID, v.stoi["白"], v.stoi["日"], UNK_ID, EOS_ID]
    assert v.decode(ids) == "白日"
    assert v.decode([v.stoi["黄"], EOS_ID, v.stoi["河"]]) == "黄"


def test_json_round_trip(tmp_path):
    v = Vocab.build(["白日依山尽", "黄河入海流"])
    v.save(tmp_path / "vocab.json")
    w = Vocab.load(tmp_path / "vocab.json")
    assert (w.itos, w.counts, w.fingerprint) == (v.itos, v.counts, v.fingerprint)
    assert "白" in w and "<eos>" not in w


def test_require_names_the_missing_character():
    v = Vocab.build(["白日依山尽"])
    assert v.require("白日", "begin") == [v.stoi["白"], v.stoi["日"]]
    with pytest.raises(VocabError, match=r"begin character '龘' is not in the model's vocabulary \(5 characters\)"):
        v.require("白龘", "begin")


def test_corrupt_vocabulary_file(tmp_path):
    (tmp_path / "v.json").write_text('{"itos": ["a"]', encoding="utf-8")
    with pytest.raises(VocabError, match="cannot read vocabulary"):
        Vocab.load(tmp_path / "v.json")


def test_encode_many_matches_encode():
    v = Vocab.build(["白日依山尽", "黄河入海流"])
    texts = ["白日龘", "", "黄河入海流，𠀋"]
    flat, lengths = v.encode_many(texts)
    assert lengths == [5, 2, 9]  # 𠀋 (outside the BMP) is one character
    assert flat.tolist() == [i for t in texts for i in v.encode(t)]
