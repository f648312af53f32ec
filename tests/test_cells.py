"""The minimal cells and the Transformer against their defining equations, computed the plain way."""

import torch

from tangshi.cells import MinGRUCore, MinLSTMCore, g, scan_log


def _loop(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    h = torch.zeros_like(b[:, 0]) if h0 is None else h0
    out = []
    for t in range(a.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, dim=1)


def test_the_log_space_scan_matches_a_sequential_loop():
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(3, 50, 7, generator=gen, dtype=torch.float64)  # coefficients in (0, 1), as gates give
    b = torch.rand(3, 50, 7, generator=gen, dtype=torch.float64) * 2
    h0 = torch.rand(3, 7, generator=gen, dtype=torch.float64) + 0.1
    for start in (None, h0):
        torch.testing.assert_close(scan_log(a.log(), b.log(), start), _loop(a, b, start))


def test_g_is_positive_continuous_and_linear_above_zero():
    x = torch.linspace(-30, 30, 601, dtype=torch.float64)
    assert (g(x) > 0).all()
    assert torch.allclose(
        g(torch.tensor([-1e-9, 0.0], dtype=torch.float64)), torch.tensor([0.5, 0.5], dtype=torch.float64)
    )
    assert torch.equal(g(torch.tensor([3.0])), torch.tensor([3.5]))


def test_min_gru_and_min_lstm_follow_the_papers_equations():
    torch.manual_seed(0)
    x = torch.randn(2, 9, 5, dtype=torch.float64)
    gru = MinGRUCore(5, 4).double()
    w, bias = gru.layers[0].weight, gru.layers[0].bias
    pre = x @ w.T + bias
    z, cand = torch.sigmoid(pre[..., :4]), g(pre[..., 4:])
    expected = _loop(1 - z, z * cand, None)  # h_t = (1 − z_t) h_{t−1} + z_t h̃_t
    out, last = gru(x)  # the scan runs in float32 whatever the input's precision; outputs read h − 1/2
    torch.testing.assert_close(out, expected - 0.5, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(last[0], expected[:, -1], rtol=1e-5, atol=1e-6)

    lstm = MinLSTMCore(5, 4).double()
    pre = x @ lstm.layers[0].weight.T + lstm.layers[0].bias
    f, i, cand = torch.sigmoid(pre[..., :4]), torch.sigmoid(pre[..., 4:8]), g(pre[..., 8:])
    expected = _loop(f / (f + i), i / (f + i) * cand, None)  # normalised gates, h_t = f' h_{t−1} + i' h̃_t
    torch.testing.assert_close(lstm(x)[1][0], expected[:, -1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lstm(x)[0], expected - 0.5, rtol=1e-5, atol=1e-6)
