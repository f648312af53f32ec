"""One checkpoint analysed: the per-token pass, split losses, rhyme positions, poetics rows, the script."""

import json
import math

import pytest
import torch

from tangshi import checkpoint
from tangshi.analysis import (
    CLASSES,
    analyse,
    position_classes,
    position_losses,
    random_in_form,
    split_loss,
    surprisal,
    token_scores,
)
from tangshi.corpus import CorpusConfig, prepare
from tangshi.errors import TangshiError
from tangshi.poetics import FORMS, detect_form, phonology, rhymes, split_lines

from .conftest import run_script


def test_random_rows_are_in_form_but_rarely_rhyme(prepared):
    poems = random_in_form(prepared, 40)
    assert {detect_form(p) for p in poems} == set(FORMS)
    assert sum(rhymes(p) for p in poems) <= 4  # characters drawn by frequency seldom share a 平水韵 category


def test_analysis_reports_loss_positions_flow_and_poetics_rows(tiny_checkpoint, prepared):
    loaded = checkpoint.load(tiny_checkpoint)
    result = analyse(loaded, prepared, n=16)
    rows = result["poetics"]
    real, rand = rows["real held-out poems (regular forms)"], rows["random characters in valid form"]
    assert real["well_formed"] == rand["well_formed"] == 1.0
    assert real["rhyme"] > 0.7 > 0.3 > rand["rhyme"]  # the reference rows bracket what rhyme means
    for form in FORMS:
        assert rows[f"model: {form}"]["well_formed"] == 1.0
        assert rows[f"model: {form} +rhyme"]["rhyme"] == 1.0
    assert result["test"] == pytest.approx(split_loss(loaded.model, loaded.vocab, prepared.splits["test"]))
    assert set(result["positions"]["classes"]) == set(CLASSES) and len(result["gradient_flow"]["norms"]) == 1


def test_the_per_token_pass_agrees_with_the_models_batched_loss(tiny_checkpoint, prepared):
    # token_scores scores poems from length-sorted, padded batches; model.nll over one poem at a time is the
    # plain way. Both must give every poem the same total, whatever its batch and padding.
    loaded = checkpoint.load(tiny_checkpoint)
    bodies = prepared.splits["val"][:40]
    scores = token_scores(loaded.model, loaded.vocab, bodies, batch_size=7)
    for body, nll in zip(bodies, scores.nll, strict=True):
        ids = torch.tensor([loaded.vocab.encode(body)])
        total, n = loaded.model.loss(ids[:, :-1], ids[:, 1:])
        assert int(n) == len(nll) == len(body) + 1
        assert float(total) == pytest.approx(float(nll.sum()), rel=1e-5)


def test_surprisal_of_a_pasted_poem_is_per_character_bits(tiny_checkpoint):
    loaded = checkpoint.load(tiny_checkpoint)
    poem = "白日依山尽，黄河入海流。"
    bits = surprisal(loaded.model, loaded.vocab, poem)
    assert [c for c, _ in bits] == [*poem, "<eos>"] and all(b > 0 for _, b in bits)
    total = split_loss(loaded.model, loaded.vocab, [poem])["bpc"] * (len(poem) + 1)
    assert sum(b for _, b in bits) == pytest.approx(total, rel=1e-5)


def test_analyse_script_writes_json_markdown_and_figures(tiny_checkpoint, tmp_path, prepared):
    out = run_script(
        "analyse.py",
        f"ckpt={tiny_checkpoint}",
        "n=8",
        "poem_sets=12",
        f"out_dir={tmp_path}",
        f"paths.data_dir={prepared.path.parents[1]}",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads((tmp_path / "analysis.json").read_text(encoding="utf-8"))
    assert data["test"]["bpc"] > 0 and "model: free" in data["poetics"]
    assert data["poem_sets"]["wuyan_jueju"]["n"] == 12 and data["poem_sets"]["wuyan_jueju"]["well_formed"] == 1.0
    text = (tmp_path / "analysis.md").read_text(encoding="utf-8")
    assert "| real held-out poems (regular forms) |" in text and "| model: qiyan_jueju | 12 |" in text
    assert {"gradient_flow.png", "loss_by_position.png"} <= {p.name for p in tmp_path.iterdir()}


def test_analysing_a_file_outside_a_run_writes_under_outputs(tiny_checkpoint, tmp_path, prepared):
    # a checkpoint that is not in a run dir, as the shipped models are: the old code wrote beside it, into the
    # package (src/tangshi/analysis/)
    package = tmp_path / "package"
    package.mkdir()
    (package / "gru.ckpt").write_bytes(tiny_checkpoint.read_bytes())
    out = run_script(
        "analyse.py",
        f"ckpt={package / 'gru.ckpt'}",
        "n=0",
        "poem_sets=0",
        f"paths.root_dir={tmp_path}",
        f"paths.data_dir={prepared.path.parents[1]}",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "outputs" / "analysis" / "gru" / "analysis.json").exists()
    assert not (tmp_path / "analysis").exists() and [p.name for p in package.iterdir()] == ["gru.ckpt"]


def test_a_text_too_long_to_score_is_one_line(tiny_checkpoint):
    loaded = checkpoint.load(tiny_checkpoint)
    with pytest.raises(TangshiError, match="the text has 100,000 characters; at most 2,000 are scored at once"):
        surprisal(loaded.model, loaded.vocab, "白" * 100_000)


def test_analysing_data_with_another_vocabulary_is_refused(tiny_checkpoint, tmp_path, corpus_config):
    other = prepare(CorpusConfig(**{**corpus_config.__dict__, "min_freq": 2}), tmp_path)
    with pytest.raises(
        TangshiError,
        match=r"cannot analyse .*: the checkpoint's vocabulary \(\d+ tokens, \w+\) differs from the data's",
    ):
        analyse(checkpoint.load(tiny_checkpoint), other, n=4)


def test_rhyme_positions_on_a_known_poem():
    body = "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"
    classes = [CLASSES[c] for c in position_classes(body)]
    assert len(classes) == len(body) + 1  # and <eos>
    picked = {name: "".join(ch for ch, c in zip(body, classes, strict=False) if c == name) for name in CLASSES}
    assert picked["rhyme"] == "流楼"
    assert picked["line_start"] == "黄欲更"
    assert picked["punct"] == "，。，。" and classes[-1] == "punct"


def test_rhyme_positions_rhyme_in_real_poems(prepared):
    """On the real fixture poems, the characters marked as rhyme positions rhyme with line 2's far more often
    than the characters one place earlier do: an off-by-one in the indexing would reverse this."""
    phon = phonology()
    hits = {0: [], 1: []}
    for body in prepared.splits["train"]:
        if not detect_form(body):
            continue
        rhyme_at = [i for i, c in enumerate(position_classes(body)[:-1]) if CLASSES[c] == "rhyme"]
        assert len(rhyme_at) == len(split_lines(body)) // 2
        assert all(body[i + 1] in "。？！" for i in rhyme_at)
        for shift in hits:
            first = body[rhyme_at[0] - shift]
            hits[shift] += [bool(phon.categories(first) & phon.categories(body[i - shift])) for i in rhyme_at[1:]]
    assert len(hits[0]) > 100
    rate, off = sum(hits[0]) / len(hits[0]), sum(hits[1]) / len(hits[1])
    assert rate > 0.8 and off < 0.5, (rate, off)


def test_position_losses_on_a_trained_model(tiny_checkpoint, prepared):
    loaded = checkpoint.load(tiny_checkpoint)
    result = position_losses(loaded.model, loaded.vocab, prepared.splits["val"])
    regular = [b for b in prepared.splits["val"] if detect_form(b)]
    assert result["poems"] == len(regular)
    classes = result["classes"]
    assert sum(c["tokens"] for c in classes.values()) == sum(len(b) + 1 for b in regular)
    assert classes["rhyme"]["tokens"] == sum(len(split_lines(b)) // 2 for b in regular)
    # punctuation is all but fixed by the form, and the model has learnt it
    assert classes["punct"]["loss"] < 1.0 < classes["other"]["loss"] and classes["punct"]["acc"] > 0.8
    by_pos = result["by_position"]
    assert by_pos["tokens"][0] == len(regular) and not math.isnan(by_pos["loss"][0])
    assert sum(by_pos["tokens"]) == sum(len(t) for b in regular for t, _ in split_lines(b))  # characters only
    assert len(by_pos["loss"]) == max(len(b) - len(split_lines(b)) for b in regular)
