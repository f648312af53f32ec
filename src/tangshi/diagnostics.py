"""Why gates help, measured: gradient flow through time, and how well each position of a poem is predicted.

* :func:`gradient_flow`: for fixed validation poems cut to ``T`` tokens, the norm of ∂(loss at the last
  position)/∂h_t for every layer's hidden state h_t, against the distance k = T-1-t. If gradients vanish,
  this falls geometrically in k and nothing far back can be learnt; gating should keep it up.
* :func:`position_losses`: loss and top-1 accuracy on rhyme positions (the last character of every even
  line, bound by rhyme to line 2's, 10–40 characters back), on line starts, on other characters and on
  punctuation, and the loss at every position of the poem.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tangshi.atomic import write_json, write_text
from tangshi.datamodule import PoemDataset, collate
from tangshi.errors import TangshiError
from tangshi.figures import pyplot, save_png
from tangshi.model import CharLM
from tangshi.poetics import LINE_PUNCT, detect_form
from tangshi.vocab import Vocab

DISTANCES = (10, 20, 40)  # the k whose ratio g(k) / g(0) goes to TensorBoard and metrics.json
CLASSES = ("rhyme", "line_start", "other", "punct")


# -- gradient flow through time ---------------------------------------------------------------------------


def probe_batch(bodies: Sequence[str], vocab: Vocab, length: int = 48, poems: int = 64) -> Tensor:
    """``(n, length + 1)`` tokens: the first ``poems`` of ``bodies`` with at least ``length + 1`` tokens
    (``<bos>`` and ``<eos>`` counted), cut to that length, so no padding enters the measurement."""
    rows = []
    for body in bodies:
        ids = vocab.encode(body)
        if len(ids) > length:
            rows.append(ids[: length + 1])
            if len(rows) == poems:
                break
    if not rows:
        longest = max((len(b) + 2 for b in bodies), default=0)
        raise TangshiError(f"no poem has {length + 1} tokens (longest: {longest}); lower the probe length")
    return torch.tensor(rows, dtype=torch.long)


def unroll(model: CharLM, inputs: Tensor) -> tuple[Tensor, list[list[Tensor]]]:
    """The core run one step and one layer at a time, dropout off: top-layer features ``(B, T, H)`` and, per
    layer and step, the state tensors (``[h]``, or ``[h, c]`` for an LSTM).

    The fused RNNs hide their recurrence from autograd, and the minimal cells' scan computes every h_t at once,
    so ∂L/∂h_t cannot be read off their outputs. Each core's single step (``layer_step``) runs the same
    weights with every h_t a node of the graph.
    """
    core = model.core
    if not getattr(core, "recurrent", False):
        raise TangshiError(f"gradient flow through time needs a recurrent core, not a {model.cell}")
    x = model.embed(inputs)
    layers = core.num_layers
    state: list[Any] = [None] * layers
    states: list[list[Tensor]] = [[] for _ in range(layers)]
    top = []
    for t in range(x.shape[1]):
        h = x[:, t]
        for layer in range(layers):
            state[layer] = core.layer_step(h, layer, state[layer])
            states[layer].append(list(state[layer]) if isinstance(state[layer], tuple) else [state[layer]])
            h = core.layer_output(state[layer])
        top.append(h)
    return torch.stack(top, dim=1), states


def gradient_flow(model: CharLM, tokens: Tensor) -> Tensor:
    """``(layers, T)``: g_l(k), the mean over poems of ‖∂L/∂s^l_{T-1-k}‖, L the NLL of the last target and
    s^l_t layer l's state at step t (h_t; for an LSTM h_t and c_t together).

    ``tokens`` ``(B, T + 1)`` holds whole (unpadded) sequences. The loss of each poem depends only on its own
    states, so one backward pass gives every poem's gradient. Parameter gradients are not touched.
    """
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    # inference_mode(False)/enable_grad: callable from any Lightning hook; autocast off: norms in float32.
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(tokens.device.type, enabled=False):
        top, states = unroll(model, inputs.clone())
        feats = model.proj(top[:, -1:]) if model.proj is not None else top[:, -1:]
        log_p = model.log_probs(feats)
        loss = -log_p.gather(-1, targets[:, -1:, None]).sum()
        flat = [s for layer in states for step in layer for s in step]
        grads = iter(torch.autograd.grad(loss, flat, allow_unused=True))
    norms = torch.zeros(len(states), inputs.shape[1])
    for layer, steps in enumerate(states):
        for t, step in enumerate(steps):
            g = [next(grads) for _ in step]
            sq = sum((x.float() ** 2).sum(-1) for x in g if x is not None)
            norms[layer, t] = torch.as_tensor(sq).sqrt().mean()
    return norms.flip(-1)  # index k = T-1-t: distance back from the scored position


def decay_ratios(norms: Tensor, distances: Sequence[int] = DISTANCES) -> dict[str, float]:
    """``{"layer{l}_k{k}": g_l(k) / g_l(0)}`` for the distances that fit: how much gradient survives k steps."""
    out = {}
    for layer, g in enumerate(norms.tolist()):
        for k in distances:
            if k < len(g) and g[0] > 0:
                out[f"layer{layer}_k{k}"] = g[k] / g[0]
    return out


def plot_flow(curves: dict[str, list[list[float]]], title: str) -> Any:
    """A matplotlib figure: g(k) / g(0) on a log axis, one line per ``label -> [per-layer curves]``."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    styles = ("-", "--", ":", "-.")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, layers) in enumerate(curves.items()):
        for layer, g in enumerate(layers):
            if g and g[0] > 0:
                ratio = [max(v / g[0], 1e-30) for v in g]
                ax.plot(ratio, styles[layer % 4], color=colors[i % len(colors)], label=f"{label}, layer {layer}")
    ax.set_yscale("log")
    ax.set_xlabel("distance k back from the scored position (characters)")
    ax.set_ylabel("‖∂L/∂h(T-1-k)‖ / ‖∂L/∂h(T-1)‖")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# -- loss by kind of position -----------------------------------------------------------------------------


def position_classes(body: str) -> list[int]:
    """For each target of ``body + <eos>``, its index in CLASSES.

    rhyme: the last character of lines 2, 4, 6, 8; line_start: the first character of every line but the
    first; punct: punctuation and ``<eos>``; other: every other character.
    """
    classes = []
    line, start = 0, True
    for i, ch in enumerate(body):
        if ch in LINE_PUNCT:
            classes.append(CLASSES.index("punct"))
            line, start = line + 1, True
            continue
        if i + 1 < len(body) and body[i + 1] in LINE_PUNCT and line % 2 == 1:
            classes.append(CLASSES.index("rhyme"))
        elif start and line > 0:
            classes.append(CLASSES.index("line_start"))
        else:
            classes.append(CLASSES.index("other"))
        start = False
    return [*classes, CLASSES.index("punct")]  # <eos>


@torch.no_grad()
def position_losses(model: CharLM, vocab: Vocab, bodies: Sequence[str], batch_size: int = 64) -> dict[str, Any]:
    """Loss (nats) and top-1 accuracy per kind of position, over the regular-verse poems among ``bodies``,
    and the mean loss of the n-th character of a poem (``by_position``; punctuation not counted, so the
    n-th character is the same syllable of the verse in every poem of a form)."""
    poems = [b for b in bodies if detect_form(b)]
    if not poems:
        raise TangshiError("no regular-verse poem (绝句 or 律诗) to measure rhyme positions on")
    model = model.eval()
    device = next(model.parameters()).device
    ds = PoemDataset(poems, vocab)
    order = sorted(range(len(poems)), key=ds.lengths.__getitem__)
    n_cls = len(CLASSES)
    width = max(ds.lengths)
    punct = CLASSES.index("punct")
    loss_sum, correct, count = torch.zeros(n_cls), torch.zeros(n_cls), torch.zeros(n_cls)
    pos_sum, pos_count = torch.zeros(width), torch.zeros(width)
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        batch = collate([ds[j] for j in idx])
        targets = batch["targets"]
        classes = torch.full_like(targets, -1)
        char_at = torch.full_like(targets, -1)  # the target's index among the poem's characters
        for row, j in enumerate(idx):
            c = torch.tensor(position_classes(poems[j]))
            classes[row, : len(c)] = c
            is_char = c != punct
            char_at[row, : len(c)][is_char] = torch.arange(int(is_char.sum()))
        feats, _ = model(batch["inputs"].to(device))
        log_p = model.log_probs(feats).cpu()
        nll = -log_p.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
        hit = (log_p.argmax(-1) == targets).float()
        for c in range(n_cls):
            m = classes == c
            loss_sum[c] += nll[m].sum()
            correct[c] += hit[m].sum()
            count[c] += m.sum()
        chars = char_at >= 0
        pos_sum.index_add_(0, char_at[chars], nll[chars])
        pos_count.index_add_(0, char_at[chars], torch.ones(int(chars.sum())))
    return {
        "poems": len(poems),
        "classes": {
            name: {
                "loss": float(loss_sum[c] / count[c]) if count[c] else math.nan,
                "acc": float(correct[c] / count[c]) if count[c] else math.nan,
                "tokens": int(count[c]),
            }
            for c, name in enumerate(CLASSES)
        },
        "by_position": {
            "loss": [float(s / n) for s, n in zip(pos_sum, pos_count, strict=True) if n],
            "tokens": [int(n) for n in pos_count if n],
        },
    }


# -- one checkpoint, everything ---------------------------------------------------------------------------


def diagnose(model: CharLM, vocab: Vocab, bodies: Sequence[str], length: int = 48, poems: int = 64) -> dict[str, Any]:
    """Gradient flow and position losses of one model on ``bodies`` (a validation split)."""
    device = next(model.parameters()).device
    norms = gradient_flow(model, probe_batch(bodies, vocab, length, poems).to(device))
    return {
        "cell": model.cell,
        "gradient_flow": {"length": length, "poems": poems, "norms": norms.tolist(), "ratios": decay_ratios(norms)},
        "positions": position_losses(model, vocab, bodies),
    }


def to_markdown(result: dict[str, Any], history: list[dict[str, Any]] | None = None) -> str:
    flow, pos = result["gradient_flow"], result["positions"]
    lines = [
        f"# Diagnostics: {result['cell']}" + (f", step {result['step']}" if "step" in result else ""),
        "",
        f"Gradient flow through time ({flow['poems']} validation poems cut to {flow['length']} characters):",
        "‖∂L/∂h(T−1−k)‖ / ‖∂L/∂h(T−1)‖, the share of the last position's gradient that reaches k characters back.",
        "",
        "| layer | " + " | ".join(f"k={k}" for k in (1, 5, *DISTANCES)) + " |",
        "| --- |" + " ---: |" * (2 + len(DISTANCES)),
    ]
    for layer, g in enumerate(flow["norms"]):
        cells = [f"{g[k] / g[0]:.2e}" if k < len(g) and g[0] > 0 else "–" for k in (1, 5, *DISTANCES)]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    if history:
        key = f"layer{len(flow['norms']) - 1}_k20"
        lines += ["", f"During training ({key}, top layer):", ""]
        for m in history:
            ratio = decay_ratios(torch.tensor(m["norms"])).get(key, math.nan)
            lines.append(f"- step {m['step']}: {ratio:.2e}")
    lines += [
        "",
        f"Loss by position ({pos['poems']} regular-verse validation poems):",
        "",
        "| position | tokens | loss (nats) | top-1 accuracy |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, c in pos["classes"].items():
        lines.append(f"| {name} | {c['tokens']} | {c['loss']:.3f} | {c['acc']:.3f} |")
    return "\n".join(lines) + "\n"


def plot_history(history: list[dict[str, Any]], title: str) -> Any:
    """g(k)/g(0) of the top layer at every measurement of a run, darker = later."""
    curves = {f"step {m['step']}": [m["norms"][-1]] for m in history}
    fig = plot_flow(curves, title)
    ax = fig.axes[0]
    cmap = pyplot().get_cmap("viridis")
    for i, line in enumerate(ax.get_lines()):
        line.set_color(cmap(i / max(1, len(history) - 1)))
    if len(history) > 8:  # a legend of every step is unreadable: keep the first and the last
        handles = ax.get_lines()
        ax.legend([handles[0], handles[-1]], [f"step {history[0]['step']}", f"step {history[-1]['step']}"])
    else:
        ax.legend(fontsize=7)
    return fig


def plot_position_loss(by_position: dict[str, list], title: str) -> Any:
    fig, ax = pyplot().subplots(figsize=(7, 4))
    loss = by_position["loss"]
    ax.plot(range(1, len(loss) + 1), loss)
    ax.set_xlabel("n-th character of the poem (punctuation not counted)")
    ax.set_ylabel("validation loss (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def read_history(path: Path) -> list[dict[str, Any]]:
    """The gradient-flow measurements a training run kept (``<run>/diagnostics/gradient_flow.json``)."""
    return json.loads(path.read_text(encoding="utf-8"))["measurements"] if path.exists() else []


def write_report(result: dict[str, Any], history: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """diagnose.json, diagnose.md and the figures, into ``out_dir``."""
    written = [out_dir / "diagnose.json", out_dir / "diagnose.md"]
    write_json(written[0], result)
    write_text(written[1], to_markdown(result, history))
    cell, step = result["cell"], result.get("step", "?")
    figures = {"diagnose_gradient_flow.png": plot_flow({f"step {step}": result["gradient_flow"]["norms"]}, cell)}
    figures["diagnose_loss_by_position.png"] = plot_position_loss(result["positions"]["by_position"], cell)
    if history:
        figures["gradient_flow_history.png"] = plot_history(history, f"{cell}: gradient flow during training")
    for name, fig in figures.items():
        save_png(fig, out_dir / name)
        written.append(out_dir / name)
    return written
