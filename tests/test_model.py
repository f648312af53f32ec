import math

import pytest
import torch

from tangshi.errors import TangshiError
from tangshi.model import CELLS, IGNORE_INDEX, CharLM, core_params, resolve_budget, settings_for_budget

V = 50


def _batch(b=3, t=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(4, V, (b, t), generator=g)
    y = torch.randint(4, V, (b, t), generator=g)
    return x, y


@pytest.mark.parametrize("head", ["full", "adaptive"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_each_cell_runs_forward_and_backward(cell, head):
    torch.manual_seed(0)
    m = CharLM(V, cell=cell, embed_dim=16, hidden_size=24, num_layers=2, head=head, adaptive_cutoffs=[10, 30])
    assert isinstance(m.core, CELLS[cell])
    x, y = _batch()
    feats, _ = m(x)
    assert feats.shape == (3, 9, 24)
    logp = m.log_probs(feats)
    assert logp.shape == (3, 9, V)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(3, 9), atol=1e-4)
    total, n = m.nll(feats, y)
    assert int(n) == 27
    # nll agrees with the explicit distribution, for both heads
    assert torch.allclose(total, -logp.gather(-1, y[..., None]).sum(), rtol=1e-4)
    total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_nll_matches_pytorchs_adaptive_loss_and_its_gradients():
    """nll scores targets with one pass of the head (shared with the echo bias's listed characters): it must
    give nn.AdaptiveLogSoftmaxWithLoss's own loss and gradients, shortlist and tail targets alike."""
    torch.manual_seed(0)
    m = CharLM(V, cell="gru", embed_dim=16, hidden_size=24, head="adaptive", adaptive_cutoffs=[10, 30])
    x, y = _batch()
    feats = m(x)[0].detach().requires_grad_(True)
    assert (y < 10).any() and ((y >= 10) & (y < 30)).any() and (y >= 30).any()  # every cluster is scored
    ours, _ = m.nll(feats, y)
    (g_ours,) = torch.autograd.grad(ours, feats)
    theirs = -m.decoder(feats.reshape(-1, 24), y.reshape(-1)).output.sum()
    (g_theirs,) = torch.autograd.grad(theirs, feats)
    assert torch.allclose(ours, theirs, rtol=1e-5)
    assert torch.allclose(g_ours, g_theirs, atol=1e-6)


def _states_equal(a, b) -> bool:
    """Equal recurrent states, key/value caches included, within float tolerance."""
    if isinstance(a, torch.Tensor):
        return a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    if isinstance(a, int):
        return a == b
    return len(a) == len(b) and all(_states_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("out_dim", [None, 12])
@pytest.mark.parametrize("cell", list(CELLS))
def test_stepping_reproduces_the_parallel_pass(cell, out_dim):
    # Decoding steps one token at a time (the step kernels, the sequential minimal cells, a key/value cache);
    # it must give what the parallel pass (fused core, scan, causal attention) gives, state included.
    torch.manual_seed(0)
    m = CharLM(V, cell=cell, embed_dim=16, hidden_size=24, num_layers=3, dropout=0.3, out_dim=out_dim).eval()
    for p in m.core.parameters():  # away from the initial biases, which would hide a swapped gate
        p.data.normal_(0, 0.3)
    x, _ = _batch(b=4, t=6)
    feats, state = m(x)
    step_feats, step_state = m.step(x[:, 0])
    for t in range(1, x.shape[1]):
        step_feats, step_state = m.step(x[:, t], step_state)
    assert torch.allclose(step_feats, feats[:, -1], atol=1e-5)
    assert _states_equal(state, step_state)
    # and the parallel pass continues from a stepped state as the steps do
    more, _ = _batch(b=4, t=3, seed=1)
    cont, _ = m(more, step_state)
    for t in range(3):
        step_feats, step_state = m.step(more[:, t], step_state)
    assert torch.allclose(cont[:, -1], step_feats, atol=1e-5)


@pytest.mark.parametrize("head", ["full", "adaptive"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_padding_content_cannot_change_the_loss(cell, head):
    torch.manual_seed(0)
    m = CharLM(V, cell=cell, embed_dim=8, hidden_size=32, num_layers=1, head=head, adaptive_cutoffs=[10, 30]).eval()
    x, y = _batch(b=2, t=10)
    y[1, 6:] = IGNORE_INDEX  # the second sequence ends at position 6; the rest is padding
    x2 = x.clone()
    x2[1, 6:] = torch.randint(0, V, (4,))  # anything in the padded input positions
    y2 = y.clone()
    y2[1, 6:] = IGNORE_INDEX
    a, na = m.nll(m(x)[0], y)
    b, nb = m.nll(m(x2)[0], y2)
    assert int(na) == int(nb) == 16
    assert torch.equal(a, b)
    # the padded row's real part scores as that row alone, so padding is neither counted nor averaged over
    alone, n_alone = m.nll(m(x[1:, :6])[0], y[1:, :6])
    first, _n_first = m.nll(m(x[:1])[0], y[:1])
    assert int(n_alone) == 6 and torch.allclose(a, alone + first, rtol=1e-5)


def test_lstm_forget_gate_bias_is_effectively_one():
    m = CharLM(V, cell="lstm", embed_dim=8, hidden_size=6, num_layers=2)
    for layer in range(2):
        total = getattr(m.core, f"bias_ih_l{layer}") + getattr(m.core, f"bias_hh_l{layer}")
        assert torch.equal(total[6:12], torch.ones(6))  # gates i, f, g, o: f is the second block
        assert torch.equal(total[:6], torch.zeros(6))


@pytest.mark.parametrize("head", ["full", "adaptive"])
def test_output_starts_at_the_unigram_distribution(head):
    counts = [0, 0, 100] + [1000 // (i + 1) for i in range(V - 3)]
    m = CharLM(V, embed_dim=8, hidden_size=32, head=head, adaptive_cutoffs=[10, 30], unigram_counts=counts)
    with torch.no_grad():
        m.decoder.weight.zero_() if head == "full" else m.decoder.head.weight.zero_()
        if head == "adaptive":
            for tail in m.decoder.tail:
                tail[1].weight.zero_()  # uniform within each cluster
        logp = m.log_probs(torch.zeros(1, 32))[0]
    c = torch.tensor(counts, dtype=torch.float64) + 1
    target = (c / c.sum()).log()
    if head == "full":
        assert torch.allclose(logp.double(), target, atol=1e-5)
    else:  # shortlist exact; each tail cluster holds the right total mass
        assert torch.allclose(logp[:10].double(), target[:10], atol=1e-5)
        assert math.isclose(logp[10:30].exp().sum().item(), target[10:30].exp().sum().item(), rel_tol=1e-4)


def test_weight_tying_shares_the_matrix_through_a_projection():
    m = CharLM(V, embed_dim=8, hidden_size=16, tie_weights=True, head="full")
    assert m.decoder.weight is m.embed.weight
    assert m.param_counts()["total"] == sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cell": "xlstm"}, "unknown model.cell 'xlstm'; allowed: rnn, lstm, gru, mingru, minlstm, transformer"),
        ({"cell": "transformer", "hidden_size": 30, "heads": 4}, "must split into model.heads=4 heads"),
        ({"cell": "transformer", "positions": "alibi"}, "unknown model.positions 'alibi'"),
        ({"hidden_size": 0}, "model.hidden_size must be a positive integer, got 0"),
        ({"num_layers": -1}, "model.num_layers must be a positive integer"),
        ({"dropout": 1.0}, r"model.dropout must be in \[0, 1\), got 1.0"),
        ({"head": "hierarchical"}, "unknown model.head"),
        ({"head": "adaptive", "tie_weights": True}, "tie_weights=true needs model.head=full"),
    ],
)
def test_bad_settings_are_one_clear_error(kwargs, message):
    with pytest.raises(TangshiError, match=message):
        CharLM(V, **kwargs)


@pytest.mark.parametrize("budget", [200_000, 691_200, 1_500_000, 5_000_000])
@pytest.mark.parametrize("layers", [1, 2])
def test_param_budget_matches_every_cell_within_two_percent(budget, layers):
    for cell in CELLS:
        settings = resolve_budget({"cell": cell, "embed_dim": 128, "num_layers": layers, "param_budget": budget})
        core = CharLM(50, **settings).param_counts()["core"]  # counted from the built module, not the formula
        assert core == core_params(cell, 128, settings["hidden_size"], layers, mlp_width=settings.get("mlp_width"))
        assert abs(core - budget) <= 0.02 * budget, (cell, settings, core)


def test_param_budget_resolves_hidden_size_and_refuses_impossible_budgets():
    cfg = resolve_budget(
        {"cell": "rnn", "embed_dim": 128, "hidden_size": 256, "num_layers": 2, "param_budget": 691_200}
    )
    assert "param_budget" not in cfg and cfg["hidden_size"] > 256  # an RNN needs more units for a GRU's budget
    with pytest.raises(TangshiError, match="cannot be met within 2%"):
        settings_for_budget("lstm", 500, input_size=128, num_layers=2)


def test_out_dim_gives_every_cell_the_same_softmax_at_equal_core_budgets():
    counts = {
        cell: CharLM(
            3000,
            **resolve_budget(
                {
                    "cell": cell,
                    "embed_dim": 64,
                    "num_layers": 1,
                    "param_budget": 100_000,
                    "out_dim": 64,
                    "head": "adaptive",
                }
            ),
        ).param_counts()
        for cell in ("rnn", "lstm", "gru")
    }
    assert len({c["head"] for c in counts.values()}) == 1 and len({c["embedding"] for c in counts.values()}) == 1
    assert max(c["core"] for c in counts.values()) < 1.02 * min(c["core"] for c in counts.values())
    assert counts["rnn"]["projection"] > counts["lstm"]["projection"] > 0  # the RNN's hidden state is widest


def test_chrono_initialisation_spreads_the_lstms_memory_over_the_span():
    """With no input and a zero hidden state, an LSTM cell's memory decays by σ(b_f) per step: chrono
    initialisation (Tallec & Ollivier 2018) gives its units time scales 1/(1 - σ(b_f)) from 2 to T characters,
    where the default bias of 1 gives every unit 1 + e ≈ 3.7."""
    torch.manual_seed(0)
    for span, low, high in ((48, 2.0, 48.0), (None, 1 + math.e - 1e-3, 1 + math.e + 1e-3)):
        model = CharLM(12, cell="lstm", embed_dim=4, hidden_size=256, head="full", chrono_span=span)
        core = model.core
        h = core.hidden_size
        c = torch.ones(1, h)
        state = (torch.zeros(1, 1, h), c[None])
        with torch.no_grad():
            _, (_, c_next) = core.step(torch.zeros(1, 4), state)  # x = 0, h = 0: c' = σ(b_f) c + σ(b_i) tanh(b_g)
        kept = c_next[0, 0]  # b_g = 0: the candidate adds nothing, c' = σ(b_f)
        scales = 1 / (1 - kept)
        assert low <= scales.min() and scales.max() <= high, (span, scales.min(), scales.max())
        if span is not None:  # spread evenly over the span (uniform on [2, T] in the paper's derivation)
            assert scales.min() < 4 and scales.max() > 44 and 20 < scales.median() < 30
            b = core.bias_ih_l0 + core.bias_hh_l0
            assert torch.allclose(b[:h], -b[h : 2 * h])  # the input gate opposes the forget gate
    with pytest.raises(TangshiError, match=r"model\.chrono_span initialises an LSTM"):
        CharLM(12, cell="gru", chrono_span=48)
