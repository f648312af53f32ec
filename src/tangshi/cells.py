"""Recurrent cores behind one interface: the fused RNN, LSTM and GRU, and the minimal minGRU and minLSTM.

Every core maps embeddings ``(B, T, In)`` to hidden states ``(B, T, H)`` in one call (``forward``), advances one
step for decoding (``step``), reorders a batch of states (``select``), and exposes each layer's single step
(``layer_step``) so that the gradient-flow measurement can make every h_t a node of the autograd graph.

* ``rnn``, ``lstm``, ``gru``: PyTorch's fused modules (cuDNN on a GPU, one oneDNN/ATen call per layer on a
  CPU), so the three classic cells differ only in their recurrence, never in how well they are coded. Decoding
  steps through the single-step kernels behind ``nn.LSTMCell`` and its kinds, on the same weights: oneDNN's
  fused LSTM costs ~3 ms a call even for one step of one poem, 6x the step kernels at batch 1.
* ``mingru``, ``minlstm``: Feng et al. 2024, "Were RNNs All We Needed?". The gates read x_t only, never
  h_{t-1}, so the recurrence h_t = a_t ⊙ h_{t-1} + b_t is linear in h and a whole sequence is one parallel scan
  (their log-space version, Appendix B.3: h̃ = g(·) keeps every state positive). Decoding uses the sequential
  form of the same equations. No maintained scan package fits: accelerated-scan and fpscan are CUDA/Triton
  kernels (accelerated-scan also wants power-of-two lengths of 32 or more), and Heinsen's log-space scan is
  four lines of PyTorch that run on any device (:func:`scan_log`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

State = Any  # a core's recurrent state: a tensor, an (h, c) pair, or a transformer's key/value cache

# One step of one layer: the kernels behind nn.RNNCell / nn.LSTMCell / nn.GRUCell (same gate order as the fused
# modules, so they run the fused modules' own weights).
_STEP_KERNELS = {"rnn": torch.rnn_tanh_cell, "lstm": torch.lstm_cell, "gru": torch.gru_cell}


class _Fused:
    """What the fused cores add to ``nn.RNN``/``nn.LSTM``/``nn.GRU``: steps, state selection, a parameter count.

    Mixed into subclasses of the fused modules, so their parameters keep the fused modules' names and
    initialisation (checkpoints and seeds give the same weights as plain ``nn.LSTM`` and its kinds).
    """

    kind: str
    gates: int  # weight blocks per layer: h, (r, z, n), (i, f, g, o)
    recurrent = True
    input_size: int
    hidden_size: int
    num_layers: int
    all_weights: list[list[Tensor]]

    @classmethod
    def count_params(cls, input_size: int, hidden_size: int, num_layers: int) -> int:
        """W_ih, W_hh and two biases per layer."""
        g, h = cls.gates, hidden_size
        return sum(g * (h * ((input_size if layer == 0 else h) + h) + 2 * h) for layer in range(num_layers))

    def flops_per_token(self, seq_len: int) -> float:
        """Forward multiply-adds × 2 of the matrix products per token (element-wise work not counted)."""
        h = self.hidden_size
        return float(sum(2 * self.gates * h * ((self.input_size if i == 0 else h) + h) for i in range(self.num_layers)))

    def layer_step(self, x: Tensor, layer: int, state: State | None) -> State:
        """Layer ``layer`` advanced one step on inputs ``x`` ``(B, In)``: its new state ``(B, H)`` (a pair
        ``(h, c)`` for an LSTM). ``state=None`` starts from zeros, as the fused core does."""
        if state is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_size)
            state = (zeros, zeros) if self.kind == "lstm" else zeros
        return _STEP_KERNELS[self.kind](x, state, *self.all_weights[layer])

    @staticmethod
    def layer_output(state: State) -> Tensor:
        """The h of a layer's state (what the next layer reads)."""
        return state[0] if isinstance(state, tuple) else state

    def step(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """What ``forward`` gives for a ``(B, 1, In)`` input in eval mode, for inputs ``(B, In)``: ``(B, H)`` and the
        new state in the fused layout (``(layers, B, H)``, a pair of them for an LSTM)."""
        lstm = self.kind == "lstm"
        layers = []
        for layer in range(self.num_layers):
            prev = None if state is None else (state[0][layer], state[1][layer]) if lstm else state[layer]
            new = self.layer_step(x, layer, prev)
            x = self.layer_output(new)
            layers.append(new)
        if lstm:
            return x, (torch.stack([s[0] for s in layers]), torch.stack([s[1] for s in layers]))
        return x, torch.stack(layers)

    @staticmethod
    def select(state: State, index: Tensor) -> State:
        """The states of batch rows ``index`` (the batch is dimension 1 in the fused layout)."""
        if isinstance(state, tuple):
            return tuple(s.index_select(1, index) for s in state)
        return state.index_select(1, index)


class RNNCore(_Fused, nn.RNN):
    kind, gates = "rnn", 1

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0):
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            nonlinearity="tanh",
            batch_first=True,
            dropout=_between(dropout, num_layers),
        )


class GRUCore(_Fused, nn.GRU):
    kind, gates = "gru", 3

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0):
        super().__init__(input_size, hidden_size, num_layers, batch_first=True, dropout=_between(dropout, num_layers))


class LSTMCore(_Fused, nn.LSTM):
    kind, gates = "lstm", 4

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0):
        super().__init__(input_size, hidden_size, num_layers, batch_first=True, dropout=_between(dropout, num_layers))

    @torch.no_grad()
    def init_forget_bias(self, chrono_span: int | None = None) -> None:
        """PyTorch adds two bias vectors (b_ih + b_hh), gates ordered i, f, g, o: an effective forget bias of 1
        (Gers et al. 2000; Jozefowicz et al. 2015) is 1 in one vector and 0 in the other.

        ``chrono_span`` T: chrono initialisation (Tallec & Ollivier 2018) instead, b_f = log U(1, T - 1) and
        b_i = -b_f, so each unit starts with a memory of 1/(1 - σ(b_f)) ≈ 2 to T characters, spread over the
        distances a poem's dependencies span (a rhyme is 10-48 characters back), where a bias of 1 gives every
        unit about 3.7."""
        h = self.hidden_size
        for layer in range(self.num_layers):
            b_ih, b_hh = getattr(self, f"bias_ih_l{layer}"), getattr(self, f"bias_hh_l{layer}")
            b_ih.zero_()
            b_hh.zero_()
            if chrono_span is None:
                b_ih[h : 2 * h].fill_(1.0)
            else:
                forget = torch.empty(h).uniform_(1.0, chrono_span - 1.0).log_()
                b_ih[h : 2 * h].copy_(forget)
                b_ih[:h].copy_(-forget)


def _between(dropout: float, num_layers: int) -> float:
    """Dropout between stacked layers only (torch warns when a one-layer core is given any)."""
    return dropout if num_layers > 1 else 0.0


# -- minimal cells ----------------------------------------------------------------------------------------


def g(x: Tensor) -> Tensor:
    """Feng et al.'s activation for h̃: x + 1/2 for x >= 0, sigmoid below: positive, continuous, and linear for
    large x, so every state is positive and its logarithm exists."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_g(x: Tensor) -> Tensor:
    """log g(x) without overflow: log(x + 1/2) for x >= 0, -softplus(-x) below."""
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))


def scan_log(log_a: Tensor, log_b: Tensor, h0: Tensor | None = None) -> Tensor:
    """h_t = a_t ⊙ h_{t-1} + b_t for t = 1..T, all at once, from log a and log b ``(B, T, H)``: Heinsen's
    log-space parallel scan (2023), as Feng et al. use it. With a* = cumsum(log a), h_t = exp(a*_t) ⊙
    (h_0 + Σ_{s<=t} exp(log b_s − a*_s)), the sum taken by logcumsumexp. ``h0`` (positive) is the state
    before step 1; None means zero."""
    if h0 is not None:
        log_a = F.pad(log_a, (0, 0, 1, 0))
        log_b = torch.cat([torch.log(h0)[:, None], log_b], dim=1)
    a_star = torch.cumsum(log_a, dim=1)
    h = torch.exp(a_star + torch.logcumsumexp(log_b - a_star, dim=1))
    return h[:, 1:] if h0 is not None else h


class _Minimal(nn.Module):
    """Layers of a minimal cell: each a linear map of x_t to its gates and candidate, and a linear recurrence."""

    kind: str
    blocks: int  # linear outputs per hidden unit: (z, h̃) for minGRU, (f, i, h̃) for minLSTM
    recurrent = True

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0):
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.layers = nn.ModuleList(
            nn.Linear(input_size if i == 0 else hidden_size, self.blocks * hidden_size) for i in range(num_layers)
        )
        self.drop = nn.Dropout(_between(dropout, num_layers))

    @classmethod
    def count_params(cls, input_size: int, hidden_size: int, num_layers: int) -> int:
        h = hidden_size
        return sum(cls.blocks * h * ((input_size if i == 0 else h) + 1) for i in range(num_layers))

    def flops_per_token(self, seq_len: int) -> float:
        """Forward multiply-adds × 2 of the gate and candidate projections per token (the scan is element-wise)."""
        h = self.hidden_size
        return float(sum(2 * self.blocks * h * (self.input_size if i == 0 else h) for i in range(self.num_layers)))

    def _coefficients(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        """log a_t and log b_t of the recurrence from a layer's linear outputs."""
        raise NotImplementedError

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Outputs ``(B, T, H)`` of the top layer and the last state of every layer ``(layers, B, H)``."""
        last = []
        for i, linear in enumerate(self.layers):
            if i:
                x = self.drop(x)
            log_a, log_b = self._coefficients(linear(x).float())
            h = scan_log(log_a, log_b, None if state is None else state[i].float()).to(x.dtype)
            last.append(h[:, -1])
            x = self.layer_output(h)
        return x, torch.stack(last)

    def layer_step(self, x: Tensor, layer: int, state: Tensor | None) -> Tensor:
        """The sequential form: h_t = a_t ⊙ h_{t-1} + b_t with the same a_t and b_t as the scan."""
        log_a, log_b = self._coefficients(self.layers[layer](x).float())
        h = torch.exp(log_b) if state is None else torch.exp(log_a) * state + torch.exp(log_b)
        return h.to(x.dtype)

    @staticmethod
    def layer_output(state: Tensor) -> Tensor:
        """What the next layer and the head read: h − g(0). States are positive (the log-space scan needs it) and
        sit near g(0) = 1/2 at initialisation; read raw, that offset times the next layer's random weights
        would swamp the softmax's unigram start. The shift is a bias the next layer could hold: it changes
        where training starts, not what the model can express."""
        return state - 0.5

    def step(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        layers = []
        for i in range(self.num_layers):
            h = self.layer_step(x, i, None if state is None else state[i])
            layers.append(h)
            x = self.layer_output(h)
        return x, torch.stack(layers)

    @staticmethod
    def select(state: Tensor, index: Tensor) -> Tensor:
        return state.index_select(1, index)


class MinGRUCore(_Minimal):
    """minGRU: z_t = σ(W_z x_t), h̃_t = g(W_h x_t), h_t = (1 − z_t) ⊙ h_{t-1} + z_t ⊙ h̃_t."""

    kind, blocks = "mingru", 2

    def _coefficients(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        k, hidden = pre.chunk(2, dim=-1)
        # log(1 − σ(k)) = −softplus(k), log σ(k) = −softplus(−k): exact and stable for any k
        return -F.softplus(k), -F.softplus(-k) + log_g(hidden)


class MinLSTMCore(_Minimal):
    """minLSTM: f_t = σ(W_f x_t), i_t = σ(W_i x_t), normalised to f'_t = f_t / (f_t + i_t) and i'_t = i_t /
    (f_t + i_t) (time-independent scale), h̃_t = g(W_h x_t), h_t = f'_t ⊙ h_{t-1} + i'_t ⊙ h̃_t."""

    kind, blocks = "minlstm", 3

    @torch.no_grad()
    def init_forget_bias(self) -> None:
        """Start the forget gate open, as the LSTM's (f = σ(1) against i = σ(0))."""
        for linear in self.layers:
            h = self.hidden_size
            linear.bias[:h].fill_(1.0)
            linear.bias[h : 2 * h].zero_()

    def _coefficients(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        k_f, k_i, hidden = pre.chunk(3, dim=-1)
        # log f' = log σ(k_f) − log(σ(k_f) + σ(k_i)) = −softplus(d), log i' = −softplus(−d), d = log σ(k_i) − log σ(k_f)
        diff = F.softplus(-k_f) - F.softplus(-k_i)
        return -F.softplus(diff), -F.softplus(-diff) + log_g(hidden)
