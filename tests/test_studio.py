"""The poem studio: its rendering and errors (default suite), and the page itself in headless Chromium
(``make test-browser``: Debian's chromium driven by Playwright's Python API; the test trains its own model)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tangshi import checkpoint
from tangshi.poetics import phonology, split_lines
from tangshi.studio import Models, model_choices, poem_html, poems_html, settings, surprise_html

from .conftest import ROOT, TINY, run_script

CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")


def test_a_poem_shows_tones_faults_rhymes_and_scores():
    phon = phonology()
    # 春望 keeps every rule; with 夜孤月落 in its last line (仄平仄仄平: 孤 stands alone, and breaks 对 with
    # 白头搔更短) exactly that character is marked, with both rules
    chun_wang = "国破山河在，城春草木深。感时花溅泪，恨别鸟惊心。烽火连三月，家书抵万金。白头搔更短，浑欲不胜簪。"
    page = poem_html(chun_wang, phon)
    assert 'class="ch ping rhyme"' in page and "侵" in page and "平仄 rules kept: 6/6" in page and "fault" not in page
    broken = poem_html(chun_wang.replace("浑欲不胜簪", "夜孤月落簪"), phon)
    assert broken.count('class="ch ping fault"') == 1 and 'title="平; breaks 对, 孤平">孤<' in broken
    assert "(broken: 对, 孤平)" in broken
    free = poem_html("日暮江亭远，须家酒大君", phon)
    assert "form: none" in free and "rules kept" not in free


def test_columns_give_poems_or_the_one_line_error(tiny_checkpoint, tmp_path):
    models = Models(model_choices([str(tiny_checkpoint)]))
    (name,) = [n for n in models.choices if not n.startswith("shipped")]
    loaded = models.get(name)
    acro = "".join(c for c in "春江花月" if c in loaded.vocab)
    column = poems_html(models, name, settings("qiyan_jueju", "", acro, True, True, 0.8, 0.95, 0.0, 0, 2, 0))
    assert column.count('class="poem"') == 2 and "(gru, " in column
    out = poems_html(models, name, settings("wuyan_jueju", "", "龘", False, False, 0.8, 0.95, 0.0, 0, 2, 0))
    assert out.startswith('<div class="error">error: acrostic character &#x27;龘&#x27; is not in the model')
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(tiny_checkpoint.read_bytes()[:3000])
    assert "is corrupt, truncated or not a PyTorch file" in poems_html(
        models, str(corrupt), settings("free", "", "", False, False, 0.8, 0.95, 0.0, 0, 1, 0)
    )
    assert models.get(name) is loaded  # loaded once
    surprise = surprise_html(models, name, "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。")
    assert surprise.count("rhymepos") == 2 and "bits/char over 25 targets" in surprise


# -- the page in a real browser ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def studio(tiny_checkpoint, tmp_path_factory):
    """The studio as `make demo` starts it, on a free loopback port, with the shipped models and models trained
    here (an RNN and an LSTM beside the session's tiny GRU); yields its address and the columns picked."""
    pytest.importorskip("gradio")
    root = tmp_path_factory.mktemp("studio")
    tiny = [o for o in TINY if not o.startswith("trainer.max_steps")]
    trained = []
    for cell in ("rnn", "lstm"):
        done = run_script(
            "train.py", *tiny, f"model.cell={cell}", "trainer.max_steps=60", f"hydra.run.dir={root / cell}"
        )
        assert done.returncode == 0, done.stderr[-2000:]
        trained.append(str(root / cell / "checkpoints" / "best.ckpt"))
    ckpts = [*trained, str(tiny_checkpoint)]
    # the columns: the shipped models (what `make demo` shows, and the README's screenshot), then those trained
    # here; every one of them is a choice in the page
    picks = [f"shipped {cell}" for cell in checkpoint.shipped_models()] + ckpts
    picks = picks[:3]
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "scripts" / "studio.py"),
            f"ckpts=[{','.join(ckpts)}]",
            f"models=[{','.join(picks)}]",
            f"port={port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if proc.poll() is not None:
            pytest.fail(proc.stdout.read())  # type: ignore[union-attr]
        time.sleep(0.5)
    yield f"http://127.0.0.1:{port}/", picks
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; make test-browser does it)")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            # closed network: no background fetches, no first-run or component updates
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        yield b
        b.close()


def _poems(page, column: int) -> list[str]:
    return page.locator(f"#poems-{column} .poem").evaluate_all("els => els.map(e => e.dataset.poem)")


def _generate(page, acrostic: str, form: str) -> None:
    page.locator("#acrostic textarea").fill(acrostic)
    page.locator("#form").get_by_text(form, exact=True).click()
    page.locator("#generate").click()


@pytest.mark.browser
def test_the_studio_writes_acrostic_poems_side_by_side(studio, browser, tiny_checkpoint):
    url, _ = studio
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(url)
    page.wait_for_selector("#generate")
    acro = "春江花月"
    _generate(page, acro, "qiyan_jueju")
    page.wait_for_function("document.querySelectorAll('#poems-2 .poem').length > 0", timeout=120_000)
    for column in range(3):
        poems = _poems(page, column)
        assert len(poems) == 3, column
        for poem in poems:
            lines = [t for t, _ in split_lines(poem)]
            assert [t[0] for t in lines] == list(acro) and all(len(t) == 7 for t in lines), poem
    assert "rhyme: yes" in page.locator("#poems-0").inner_text()
    shot = Path(os.environ.get("STUDIO_SCREENSHOT", str(tiny_checkpoint.parent / "studio.png")))
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000

    # a character outside the vocabulary: the page says so, in one line, where the poems would be
    _generate(page, "春龘", "wuyan_jueju")
    page.wait_for_function("document.querySelector('#poems-0 .error') !== null", timeout=60_000)
    error = page.locator("#poems-0 .error").inner_text()
    assert error.startswith("error: acrostic character '龘' is not in the model's vocabulary"), error
    assert "Traceback" not in page.content()
    page.close()


@pytest.mark.browser
def test_two_tabs_both_get_their_poems_and_a_long_generation_stops(studio, browser):
    url, _ = studio
    pages = [browser.new_page() for _ in range(2)]
    for page in pages:
        page.goto(url)
        page.wait_for_selector("#generate")
    for page, acro in zip(pages, ("春江", "山月"), strict=True):
        _generate(page, acro, "wuyan_jueju")
    for page, acro in zip(pages, ("春江", "山月"), strict=True):
        page.wait_for_function("document.querySelectorAll('#poems-2 .poem').length > 0", timeout=120_000)
        assert all(p[0] == acro[0] for p in _poems(page, 2))
    # a slow request (16 poems by beam search of 16 per model, column by column), stopped after its first column
    page = pages[0]
    page.locator("#n input").fill("16")
    page.locator("#beam input").fill("16")
    _generate(page, "", "qiyan_lvshi")
    page.wait_for_function("document.querySelectorAll('#poems-0 .poem').length === 16", timeout=120_000)
    page.locator("#stop").click()
    time.sleep(8)  # far longer than the remaining columns would take to start showing
    assert len(_poems(page, 2)) == 0
    for p in pages:
        p.close()


@pytest.mark.browser
def test_hostile_sizes_through_the_api_get_one_line_and_the_server_lives_on(studio):
    """What a user of the page's API can send: each size past its bound gets one line naming the bound (from
    the page's control or from the decoder and scorer behind it), and the server still answers afterwards. The
    old code let beam=100000 take the server to 24 GB and the kernel killed it."""
    from gradio_client import Client

    url, picks = studio
    client = Client(url, verbose=False)
    controls = {
        "form": "wuyan_jueju",
        "begin": "",
        "acrostic": "",
        "rhyme": False,
        "tone": False,
        "temperature": 0.8,
        "top_p": 0.95,
        "penalty": 0.0,
        "beam": 0,
        "n": 1,
        "seed": 0,
    }

    def answer(api: str, *args) -> str:
        try:
            return str(client.predict(*args, api_name=api)[0])
        except Exception as e:  # the page's own check of a control's bound answers as an error
            return str(e)

    hostile = [({"beam": 100_000}, "64"), ({"n": 100_000}, "64"), ({"beam": 65}, "64"), ({"n": 65}, "64")]
    for changes, bound in hostile:
        started = time.time()
        out = answer("/generate", picks[0], "", "", *{**controls, **changes}.values())
        assert bound in out and 'class="poem"' not in out and time.time() - started < 60, out
    out = answer("/score_text", picks[0], "", "", "白" * 100_000)
    assert "2,000" in out and "surprise" not in out, out[:300]
    # and the server still writes poems
    assert answer("/generate", picks[0], "", "", *controls.values()).count('class="poem"') == 1
