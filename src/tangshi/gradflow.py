"""Gradient flow through time: how much of the gradient of a loss reaches the hidden state k characters back.

For fixed validation poems cut to ``T`` tokens, the norm of ∂(loss at the last position)/∂h_t for every layer's
state h_t, against the distance k = T-1-t. If gradients vanish, this falls geometrically in k and nothing far
back can be learnt; gating should keep it up. Measured during training (``callbacks.GradientFlow``) and for
one checkpoint (``scripts/analyse.py``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tangshi.errors import TangshiError
from tangshi.model import CharLM
from tangshi.structure import LineEnds
from tangshi.vocab import Vocab

DISTANCES = (10, 20, 40)  # the k whose ratio g(k) / g(0) goes to TensorBoard and metrics.json


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


def unroll(model: CharLM, inputs: Tensor) -> tuple[Tensor, list[list[Tensor]], LineEnds | None]:
    """The core run one step and one layer at a time, dropout off: top-layer features ``(B, T, H)``, per
    layer and step the state tensors (``[h]``, or ``[h, c]`` for an LSTM), and the line ends of each step.

    The fused RNNs hide their recurrence from autograd, and the minimal cells' scan computes every h_t at once,
    so ∂L/∂h_t cannot be read off their outputs. Each core's single step (``layer_step``) runs the same
    weights with every h_t a node of the graph.
    """
    core = model.core
    if not getattr(core, "recurrent", False):
        raise TangshiError(f"gradient flow through time needs a recurrent core, not a {model.cell}")
    x, _, ends = model.embed_inputs(inputs)
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
    return torch.stack(top, dim=1), states, ends


def gradient_flow(model: CharLM, tokens: Tensor) -> Tensor:
    """``(layers, T)``: g_l(k), the mean over poems of ‖∂L/∂s^l_{T-1-k}‖, L the NLL of the last target and
    s^l_t layer l's state at step t (h_t; for an LSTM h_t and c_t together).

    ``tokens`` ``(B, T + 1)`` holds whole (unpadded) sequences. The loss of each poem depends only on its own
    states, so one backward pass gives every poem's gradient. Parameter gradients are not touched.
    """
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    # inference_mode(False)/enable_grad: callable from any Lightning hook; autocast off: norms in float32.
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(tokens.device.type, enabled=False):
        top, states, ends = unroll(model, inputs.clone())
        feats = model.proj(top[:, -1:]) if model.proj is not None else top[:, -1:]
        if ends is not None:  # the echo bias at the scored step
            ends = LineEnds(ends.kind[:, -1:], ends.chars[:, -1:])
        log_p = model.log_probs(feats, ends)
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


def read_history(path: Path) -> list[dict[str, Any]]:
    """The gradient-flow measurements a training run kept (``<run>/diagnostics/gradient_flow.json``)."""
    return json.loads(path.read_text(encoding="utf-8"))["measurements"] if path.exists() else []
