"""Gradient flow through time, checked against hand computation and theory."""

import pytest
import torch
import torch.nn.functional as F

from tangshi.errors import TangshiError
from tangshi.gradflow import decay_ratios, gradient_flow, probe_batch, unroll
from tangshi.model import CharLM
from tangshi.vocab import BOS_ID


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "mingru", "minlstm"])
def test_unrolled_steps_reproduce_the_parallel_core(cell):
    # the fused RNNs and the minimal cells' scan, re-run one step at a time with every h_t in the graph
    torch.manual_seed(0)
    model = CharLM(50, cell=cell, embed_dim=8, hidden_size=12, num_layers=2, dropout=0.0).eval()
    x = torch.randint(0, 50, (3, 9))
    top, states, ends = unroll(model, x)
    assert ends is None  # no echo bias
    parallel, _ = model.core(model.embed(x))
    torch.testing.assert_close(top, parallel, atol=1e-5, rtol=1e-5)
    assert len(states) == 2 and len(states[0]) == 9 and len(states[0][0]) == (2 if cell == "lstm" else 1)


def test_gradient_flow_of_a_transformer_is_refused_in_one_line():
    model = CharLM(50, cell="transformer", embed_dim=8, hidden_size=12, num_layers=1)
    with pytest.raises(TangshiError, match="gradient flow through time needs a recurrent core, not a transformer"):
        gradient_flow(model, torch.randint(4, 50, (2, 10)))


def test_gradient_flow_matches_a_hand_built_tanh_rnn():
    """h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh) written out by hand for two layers; autograd on each
    h_t (retain_grad) must give the same per-layer, per-distance norms."""
    torch.manual_seed(1)
    model = CharLM(40, cell="rnn", embed_dim=6, hidden_size=10, num_layers=2, dropout=0.0, head="full").eval()
    tokens = torch.randint(0, 40, (4, 13))
    inputs, target = tokens[:, :-1], tokens[:, -1]
    core = model.core
    x = model.embed(inputs).detach()
    hs: list[list[torch.Tensor]] = [[], []]
    prev = [torch.zeros(4, 10), torch.zeros(4, 10)]
    for t in range(inputs.shape[1]):
        below = x[:, t]
        for layer in range(2):
            w_ih, w_hh = getattr(core, f"weight_ih_l{layer}"), getattr(core, f"weight_hh_l{layer}")
            b = getattr(core, f"bias_ih_l{layer}") + getattr(core, f"bias_hh_l{layer}")
            h = torch.tanh(below @ w_ih.T + prev[layer] @ w_hh.T + b)
            h.retain_grad()
            hs[layer].append(h)
            prev[layer] = below = h
    loss = F.cross_entropy(model.decoder(hs[1][-1]), target, reduction="sum")
    loss.backward()
    expected = torch.tensor([[h.grad.norm(dim=-1).mean().item() for h in reversed(layer)] for layer in hs])

    measured = gradient_flow(model, tokens)
    torch.testing.assert_close(measured, expected, atol=1e-6, rtol=1e-5)
    model.zero_grad(set_to_none=True)
    gradient_flow(model, tokens)
    assert all(p.grad is None for p in model.parameters()), "the measurement must not touch parameter gradients"


def test_small_recurrent_weights_give_geometric_decay():
    """Near zero, tanh' ≈ 1, so ∂h_T/∂h_{T-k} = (ρQ)^k for W_hh = ρQ with Q orthogonal: the gradient norm
    falls by exactly ρ per step back, the vanishing gradient of a vanilla RNN in its textbook form."""
    torch.manual_seed(2)
    rho, hidden = 0.6, 32
    model = CharLM(30, cell="rnn", embed_dim=8, hidden_size=hidden, num_layers=1, dropout=0.0, head="full").eval()
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(hidden, hidden))
        model.core.weight_hh_l0.copy_(rho * q)
        model.core.weight_ih_l0.mul_(1e-3)
        model.core.bias_ih_l0.zero_()
        model.core.bias_hh_l0.zero_()
    g = gradient_flow(model, torch.randint(0, 30, (8, 31)))[0]
    steps = g[1:21] / g[:20]
    torch.testing.assert_close(steps, torch.full_like(steps, rho), atol=2e-3, rtol=0)
    assert decay_ratios(g[None], (10, 20)) == pytest.approx({"layer0_k10": rho**10, "layer0_k20": rho**20}, rel=0.02)


def test_probe_batch_cuts_poems_to_length_and_says_when_none_is_long_enough(prepared):
    tokens = probe_batch(prepared.splits["val"], prepared.vocab, length=20, poems=5)
    assert tokens.shape == (5, 21) and (tokens[:, 0] == BOS_ID).all()
    with pytest.raises(TangshiError, match="no poem has 1001 tokens"):
        probe_batch(prepared.splits["val"], prepared.vocab, length=1000)
