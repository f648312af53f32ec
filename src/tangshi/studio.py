"""The poem studio: a local web page (Gradio) that sets up to three models side by side.

* **Poems.** One prompt and seed, one column of poems per model, under every decoding control. Each character
  is coloured by its tone (平 level, 仄 oblique, either, unknown), a character that breaks a 平仄 rule is marked
  (hover: which rule), the rhyme characters carry their 平水韵 category, and each poem shows its scores.
* **Surprise.** Any pasted text, each character shaded by the model's surprisal in bits, per model, with the
  text's bits per character; rhyme positions are outlined, where an RNN's forgetting shows.

Models are the shipped checkpoints, any ``.ckpt`` path, or the runs of a sweep directory, each loaded once.
Errors a command-line user gets as one line (a character outside the vocabulary, an impossible acrostic, a
corrupt checkpoint) appear as that line in the page. Imports torch and Gradio, not Lightning.
``scripts/studio.py`` (``make demo``) starts it on 127.0.0.1.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tangshi import checkpoint
from tangshi.analysis import CLASSES, MAX_SCORED_CHARS, position_classes, surprisal
from tangshi.checkpoint import Loaded
from tangshi.decoding import MAX_BEAM, SamplingConfig, sample
from tangshi.errors import TangshiError
from tangshi.poetics import (
    FORMS,
    LINE_PUNCT,
    PING,
    TONE_RULES,
    ZE,
    Phonology,
    phonology,
    rhyme_indices,
    score_poem,
    tone_faults,
)

MAX_MODELS = 3
DEFAULTS = SamplingConfig()  # the sliders start at the one set of sampling defaults (conf/sampling/default.yaml)
MAX_POEMS = 64  # per model and request: a page is shared, and 64 poems of three models take seconds, not minutes
FREE = "free"
RULE_NAMES = {
    "alternation": "二四六分明",
    "opposition": "对",
    "adhesion": "粘",
    "level_rhyme": "韵脚平声",
    "no_three_level_tail": "三平尾",
    "no_lone_level": "孤平",
}
EXAMPLE = "床前明月光，疑是地上霜。举头望明月，低头思故乡。"
BITS_FULL = 14.0  # surprisal (bits) shown at full colour

CSS = """
.poem { margin: 0 0 14px 0; font-size: 20px; line-height: 1.6; }
.poem .line { white-space: nowrap; }
.ch { padding: 0 1px; border-radius: 3px; }
.ping { color: #1d4ed8; } .ze { color: #c2410c; } .both { color: #7e22ce; } .unknown { color: #6b7280; }
.fault { text-decoration: underline wavy #dc2626; background: #fee2e2; }
.rhyme { font-weight: 700; border-bottom: 2px solid #16a34a; }
.meta { font-size: 13px; color: #374151; line-height: 1.4; }
.error { color: #991b1b; background: #fef2f2; border: 1px solid #fecaca; padding: 8px; border-radius: 6px; }
.surprise { font-size: 22px; line-height: 1.8; }
.surprise .ch { padding: 1px 2px; }
.surprise .rhymepos { outline: 2px solid #16a34a; }
.modelhead { font-weight: 700; font-size: 15px; margin-bottom: 6px; }
"""


class Models:
    """Checkpoints by name (shipped, sweep runs, paths given at start) or by any ``.ckpt`` path typed in;
    each loaded once and kept."""

    def __init__(self, choices: dict[str, Path]):
        self.choices = choices
        self._loaded: dict[Path, Loaded] = {}
        self._lock = threading.Lock()

    def name_of(self, name_or_path: str) -> str:
        """The choice that names ``name_or_path``, or the path itself."""
        for name, path in self.choices.items():
            if name_or_path in (name, str(path)):
                return name
        return name_or_path

    def get(self, name: str) -> Loaded:
        path = self.choices.get(name) or Path(name).expanduser()
        with self._lock:  # two tabs asking for one model load it once
            if path not in self._loaded:
                self._loaded[path] = checkpoint.load(path)
        return self._loaded[path]


def model_choices(ckpts: list[str] | None = None, sweep: str | None = None) -> dict[str, Path]:
    """The shipped models, then the given checkpoints, then every run of ``sweep`` with a best checkpoint."""
    choices = {f"shipped {cell}": p for cell, p in checkpoint.shipped_models().items()}
    for c in ckpts or []:
        path = Path(c)
        choices[f"{path.parent.parent.name}/{path.name}" if path.parent.name == "checkpoints" else str(c)] = path
    if sweep:
        for best in sorted(Path(sweep).glob("**/checkpoints/best.ckpt")):
            choices[best.parent.parent.name] = best
    return choices


def settings(
    form: str,
    begin: str,
    acrostic: str,
    rhyme: bool,
    tone: bool,
    temperature: float,
    top_p: float,
    penalty: float,
    beam: float,
    n: float,
    seed: float,
) -> SamplingConfig:
    """The page's controls as decoding settings (a bad combination is a TangshiError naming it)."""
    if not 1 <= n <= MAX_POEMS:
        raise TangshiError(f"poems per model must be between 1 and {MAX_POEMS}, got {n:g}")
    return SamplingConfig(
        n=int(n),
        begin=begin.strip(),
        acrostic=acrostic.strip(),
        form=None if form == FREE else form,
        rhyme=bool(rhyme) and form != FREE,
        tone=bool(tone) and form != FREE,
        temperature=float(temperature),
        top_p=float(top_p),
        repetition_penalty=float(penalty),
        beam=int(beam),
        seed=int(seed),
    )


# -- rendering --------------------------------------------------------------------------------------------


def error_html(message: str) -> str:
    return f'<div class="error">error: {html.escape(message)}</div>'


def _tone_class(phon: Phonology, char: str) -> str:
    tones = phon.tone(char)
    return {frozenset({PING}): "ping", frozenset({ZE}): "ze", frozenset({PING, ZE}): "both"}.get(tones, "unknown")


def poem_html(poem: str, phon: Phonology) -> str:
    """A poem with each character coloured by tone, faults marked, rhymes and scores beneath."""
    scores = score_poem(poem, phon)
    faults = tone_faults(poem, phon) or {}
    at_fault: dict[tuple[int, int], list[str]] = {}
    for rule, places in faults.items():
        for place in places:
            at_fault.setdefault(place, []).append(RULE_NAMES[rule])
    regular = scores["form"] is not None
    out, line, col = [], 0, 0
    rhymes, rhyme_at = [], set(rhyme_indices(poem))
    for i, ch in enumerate(poem):
        if ch in LINE_PUNCT:
            out.append(html.escape(ch) + ("<br>" if regular and line % 2 == 1 else ""))
            line, col = line + 1, 0
            continue
        classes = ["ch", _tone_class(phon, ch)]
        title = [{"ping": "平", "ze": "仄", "both": "平 or 仄", "unknown": "tone unknown"}[classes[1]]]
        if (line, col) in at_fault:
            classes.append("fault")
            title.append("breaks " + ", ".join(at_fault[(line, col)]))
        if regular and i in rhyme_at:
            classes.append("rhyme")
            cats = sorted(phon.categories(ch))
            rhymes.append(f"{ch} ({'/'.join(cats) or '仄声, no level category'})")
            title.append("rhyme: " + ("/".join(cats) or "no level-tone category"))
        out.append(
            f'<span class="{" ".join(classes)}" title="{html.escape("; ".join(title))}">{html.escape(ch)}</span>'
        )
        col += 1
    meta = [f"form: {scores['form'] or 'none'}"]
    if regular:
        kept = sum(1 for r in TONE_RULES if not faults.get(r))
        broken = [RULE_NAMES[r] for r in TONE_RULES if faults.get(r)]
        meta.append(f"rhyme: {'yes' if scores['rhymes'] else 'no'} · rhymes {', '.join(rhymes)}")
        meta.append(
            f"平仄 rules kept: {kept}/{len(TONE_RULES)}" + (f" (broken: {', '.join(broken)})" if broken else "")
        )
    if scores["repeated_line"]:
        meta.append("a line repeats")
    return (
        f'<div class="poem" data-poem="{html.escape(poem)}"><div class="line">{"".join(out)}</div>'
        f'<div class="meta">{"<br>".join(meta)}</div></div>'
    )


def _head(name: str, loaded: Loaded) -> str:
    info = loaded.info
    detail = [loaded.model.cell, f"{loaded.step:,} steps"]
    if info.get("test_bpc"):
        detail.append(f"test {info['test_bpc']:.2f} bits/char")
    return f'<div class="modelhead">{html.escape(name)} <span class="meta">({", ".join(detail)})</span></div>'


def poems_html(models: Models, name: str, cfg: SamplingConfig) -> str:
    """One model's column of poems, or its one-line error."""
    try:
        loaded = models.get(name)
        poems = sample(loaded.model, loaded.vocab, cfg)
    except TangshiError as e:
        return error_html(str(e))
    phon = phonology()
    return _head(name, loaded) + "".join(poem_html(p, phon) for p in poems)


def surprise_html(models: Models, name: str, text: str) -> str:
    """One model's surprisal of ``text``, character by character, and its bits per character."""
    text = "".join(text.split())
    if not text:
        return error_html("paste a poem first")
    try:
        loaded = models.get(name)
        bits = surprisal(loaded.model, loaded.vocab, text)
    except TangshiError as e:
        return error_html(str(e))
    rhyme = CLASSES.index("rhyme")
    classes = position_classes(text)
    spans = []
    for (ch, b), cls in zip(bits[:-1], classes[:-1], strict=True):
        alpha = min(1.0, b / BITS_FULL)
        extra = " rhymepos" if cls == rhyme else ""
        unknown = "" if ch in loaded.vocab or ch in LINE_PUNCT else " (not in the vocabulary: scored as <unk>)"
        spans.append(
            f'<span class="ch{extra}" style="background: rgba(220, 38, 38, {alpha:.2f})" '
            f'title="{b:.1f} bits{unknown}">{html.escape(ch)}</span>'
        )
    total = sum(b for _, b in bits)
    summary = (
        f"{total / len(bits):.2f} bits/char over {len(bits)} targets (the characters and the end), {total:.0f} bits"
    )
    return _head(name, loaded) + f'<div class="surprise">{"".join(spans)}</div><div class="meta">{summary}</div>'


# -- the page ---------------------------------------------------------------------------------------------


def build(models: Models, default: list[str]) -> Any:
    """The Gradio app (a ``gr.Blocks``), with ``default`` models preselected."""
    import gradio as gr

    names = list(models.choices)
    picks = [models.name_of(d) for d in default][:MAX_MODELS]
    with gr.Blocks(title="tangshi studio") as app:
        gr.Markdown("# tangshi studio: Tang poems from an RNN, an LSTM and a GRU, side by side")
        with gr.Row():
            chosen = [
                gr.Dropdown(
                    names,
                    value=picks[i] if i < len(picks) else None,
                    label=f"model {i + 1}",
                    allow_custom_value=True,  # any .ckpt path
                    elem_id=f"model-{i}",
                )
                for i in range(MAX_MODELS)
            ]
        with gr.Tab("Poems"):
            with gr.Row():
                form = gr.Radio([FREE, *FORMS], value="wuyan_jueju", label="form", elem_id="form")
                acrostic = gr.Textbox(label="acrostic (藏头)", placeholder="春江花月", elem_id="acrostic")
                begin = gr.Textbox(label="begin", placeholder="日", elem_id="begin")
            with gr.Row():
                rhyme = gr.Checkbox(True, label="rhyme (平水韵)", elem_id="rhyme")
                tone = gr.Checkbox(True, label="tone (平仄)", elem_id="tone")
                temperature = gr.Slider(0, 1.5, value=DEFAULTS.temperature, step=0.05, label="temperature (0: greedy)")
                top_p = gr.Slider(0.05, 1.0, value=DEFAULTS.top_p, step=0.05, label="top-p")
                penalty = gr.Slider(
                    0, 3, value=DEFAULTS.repetition_penalty, step=0.1, label="repetition penalty (nats)"
                )
            with gr.Row():
                beam = gr.Number(
                    0,
                    precision=0,
                    minimum=0,
                    maximum=MAX_BEAM,
                    label=f"beam (0: sampling; ≤ {MAX_BEAM})",
                    elem_id="beam",
                )
                n = gr.Number(
                    3, precision=0, minimum=1, maximum=MAX_POEMS, label=f"poems per model (≤ {MAX_POEMS})", elem_id="n"
                )
                seed = gr.Number(DEFAULTS.seed, precision=0, label="seed", elem_id="seed")
                go = gr.Button("Generate", variant="primary", elem_id="generate")
                stop = gr.Button("Stop", variant="stop", elem_id="stop")
            gr.HTML(
                '<div class="meta">Tone: <span class="ping">平 level</span> · <span class="ze">仄 oblique</span> · '
                '<span class="both">either</span> · <span class="unknown">unknown</span> · '
                '<span class="fault">breaks a rule</span> (hover for which) · <span class="rhyme">rhyme</span></div>'
            )
            with gr.Row():
                columns = [gr.HTML(elem_id=f"poems-{i}") for i in range(MAX_MODELS)]
        with gr.Tab("Surprise"):
            text = gr.Textbox(
                EXAMPLE,
                lines=4,
                max_length=MAX_SCORED_CHARS,
                label=f"any text: a real poem, or a generated one (≤ {MAX_SCORED_CHARS:,} characters)",
                elem_id="text",
            )
            score = gr.Button("Score", variant="primary", elem_id="score")
            gr.HTML('<div class="meta">Darker red: more bits of surprisal. Outlined: rhyme positions.</div>')
            with gr.Row():
                surprises = [gr.HTML(elem_id=f"surprise-{i}") for i in range(MAX_MODELS)]

        controls = [form, begin, acrostic, rhyme, tone, temperature, top_p, penalty, beam, n, seed]

        def generate(*values: Any) -> Iterator[list[str]]:
            picked, rest = values[:MAX_MODELS], values[MAX_MODELS:]
            try:
                cfg = settings(*rest)
            except TangshiError as e:
                yield [error_html(str(e))] + [""] * (MAX_MODELS - 1)
                return
            out = ["" for _ in range(MAX_MODELS)]
            for i, name in enumerate(picked):  # column by column: a Stop between columns cancels the rest
                out[i] = poems_html(models, name, cfg) if name else ""
                yield list(out)

        def score_text(*values: Any) -> list[str]:
            picked, pasted = values[:MAX_MODELS], values[MAX_MODELS]
            return [surprise_html(models, name, pasted) if name else "" for name in picked]

        event = go.click(generate, [*chosen, *controls], columns, concurrency_limit=2)
        stop.click(None, None, None, cancels=[event])
        score.click(score_text, [*chosen, text], surprises, concurrency_limit=2)
    return app


def launch(app: Any, port: int, block: bool = True) -> None:
    """Serve ``app`` on 127.0.0.1:``port``, requests queued (two at a time)."""
    app.queue(default_concurrency_limit=2).launch(
        server_name="127.0.0.1", server_port=port, css=CSS, prevent_thread_lock=not block, quiet=True
    )
