import json

import pytest

from tangshi import checkpoint
from tangshi.corpus import CorpusConfig, prepare
from tangshi.errors import TangshiError
from tangshi.evaluate import evaluate, random_in_form, split_loss
from tangshi.poetics import FORMS, detect_form

from .conftest import run_script


def test_random_rows_are_in_form_but_rarely_rhyme(prepared):
    poems = random_in_form(prepared, 40)
    assert {detect_form(p) for p in poems} == set(FORMS)


def test_evaluate_reports_loss_references_and_model_rows(tiny_checkpoint, prepared):
    loaded = checkpoint.load(tiny_checkpoint)
    result = evaluate(loaded, prepared, n=16)
    rows = result["poetics"]
    real, rand = rows["real held-out poems (regular forms)"], rows["random characters in valid form"]
    assert real["well_formed"] == rand["well_formed"] == 1.0
    assert real["rhyme"] > 0.7 > 0.3 > rand["rhyme"]  # the reference rows bracket what rhyme means
    for form in FORMS:
        assert rows[f"model: {form}"]["well_formed"] == 1.0
        assert rows[f"model: {form} +rhyme"]["rhyme"] == 1.0
    assert result["test"] == pytest.approx(split_loss(loaded, prepared))


def test_evaluate_script_writes_json_and_markdown(tiny_checkpoint, tmp_path, prepared):
    out = run_script(
        "evaluate.py",
        f"ckpt={tiny_checkpoint}",
        "n=8",
        f"out_dir={tmp_path}",
        f"paths.data_dir={prepared.path.parents[1]}",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads((tmp_path / "eval.json").read_text(encoding="utf-8"))
    assert data["test"]["bpc"] > 0 and "model: free" in data["poetics"]
    assert "| real held-out poems (regular forms) |" in (tmp_path / "eval.md").read_text(encoding="utf-8")


def test_evaluating_on_data_with_another_vocabulary_is_refused(tiny_checkpoint, tmp_path, corpus_config):
    other = prepare(CorpusConfig(**{**corpus_config.__dict__, "min_freq": 2}), tmp_path)
    with pytest.raises(
        TangshiError,
        match=r"cannot evaluate .*: the checkpoint's vocabulary \(\d+ tokens, \w+\) differs from the data's",
    ):
        evaluate(checkpoint.load(tiny_checkpoint), other, n=4)
