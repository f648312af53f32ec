"""CharRNN: embedding → nn.RNN | nn.LSTM | nn.GRU → dropout → softmax head. Plain PyTorch, no Lightning.

The fused recurrent modules are used on purpose: they run cuDNN kernels on a GPU and one oneDNN/ATen call
per layer on a CPU, so the three cells differ only in their recurrence, never in how well they are coded.
Decoding, one character per call, steps through the single-step kernels instead (:meth:`CharRNN.step`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tangshi.errors import TangshiError, require_positive_int

CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
# One step of one layer, the kernels behind nn.RNNCell / nn.LSTMCell / nn.GRUCell (same gate order as the fused
# modules, so they run the fused modules' own weights).
STEP_KERNELS = {"rnn": torch.rnn_tanh_cell, "lstm": torch.lstm_cell, "gru": torch.gru_cell}
HEADS = ("full", "adaptive")
IGNORE_INDEX = -100  # target value at padded positions

State = Tensor | tuple[Tensor, Tensor]


def check_config(
    *,
    cell: str = "lstm",
    head: str = "full",
    vocab_size: int = 8,
    embed_dim: int = 1,
    hidden_size: int = 1,
    num_layers: int = 1,
    dropout: float = 0.0,
    tie_weights: bool = False,
    out_dim: int | None = None,
    **_: object,
) -> None:
    """Raise one clear ValueError for a model setting CharRNN cannot build (cheap: call before heavy work)."""
    if cell not in CELLS:
        raise TangshiError(f"unknown model.cell {cell!r}; allowed: {', '.join(CELLS)}")
    if head not in HEADS:
        raise TangshiError(f"unknown model.head {head!r}; allowed: {', '.join(HEADS)}")
    for name, value in (
        ("vocab_size", vocab_size),
        ("embed_dim", embed_dim),
        ("hidden_size", hidden_size),
        ("num_layers", num_layers),
    ):
        require_positive_int(f"model.{name}", value)
    if out_dim is not None:
        require_positive_int("model.out_dim", out_dim)
        if tie_weights and out_dim != embed_dim:
            raise TangshiError(f"model.tie_weights=true needs model.out_dim=null or {embed_dim} (the embed_dim)")
    if not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise TangshiError(f"model.dropout must be in [0, 1), got {dropout!r}")
    if tie_weights and head != "full":
        raise TangshiError("model.tie_weights=true needs model.head=full")


def head_cutoffs(cutoffs: Sequence[int], vocab_size: int) -> list[int]:
    """The adaptive softmax's cluster boundaries for a vocabulary of ``vocab_size`` tokens: the configured ones
    that fall inside it, or, when none does (a small corpus), boundaries at a sixth and at half of it, the
    shares the defaults take of the Tang vocabulary."""
    kept = sorted({int(c) for c in cutoffs if 0 < c < vocab_size - 1})
    if kept:
        return kept
    derived = sorted({c for c in (vocab_size // 6, vocab_size // 2) if 0 < c < vocab_size - 1})
    if not derived:
        raise TangshiError(f"model.head=adaptive needs a vocabulary of at least 4 characters, got {vocab_size - 4}")
    return derived


class CharRNN(nn.Module):
    """A character language model whose recurrent core is chosen by ``cell``.

    ``forward`` returns features for every position; ``log_probs`` turns features into next-character
    log-probabilities and ``nll`` scores targets, so both heads (full and adaptive softmax) share one API.
    """

    def __init__(
        self,
        vocab_size: int,
        cell: str = "lstm",
        embed_dim: int = 256,
        hidden_size: int = 512,
        num_layers: int = 2,
        dropout: float = 0.2,
        tie_weights: bool = False,
        out_dim: int | None = None,
        head: str = "full",
        adaptive_cutoffs: Sequence[int] = (1000, 3000),
        unigram_counts: Sequence[int] | None = None,
    ):
        super().__init__()
        check_config(
            cell=cell,
            head=head,
            vocab_size=vocab_size,
            embed_dim=embed_dim,
            hidden_size=hidden_size,
            num_layers=num_layers,
            dropout=dropout,
            tie_weights=tie_weights,
            out_dim=out_dim,
        )
        self.cell, self.head_kind, self.vocab_size = cell, head, vocab_size

        self.embed = nn.Embedding(vocab_size, embed_dim)
        extra = {"nonlinearity": "tanh"} if cell == "rnn" else {}
        self.core = CELLS[cell](
            embed_dim, hidden_size, num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0, **extra
        )
        self.drop = nn.Dropout(dropout)
        # A projection to out_dim features makes the softmax the same for every hidden size (cells compared at
        # equal core parameters have different hidden sizes); tying needs features in embedding space.
        out_dim = out_dim or (embed_dim if tie_weights else hidden_size)
        self.proj = nn.Linear(hidden_size, out_dim) if out_dim != hidden_size else None
        if head == "full":
            self.decoder: nn.Module = nn.Linear(out_dim, vocab_size)
            if tie_weights:
                self.decoder.weight = self.embed.weight
        else:
            cutoffs = head_cutoffs(adaptive_cutoffs, vocab_size)
            self.decoder = nn.AdaptiveLogSoftmaxWithLoss(out_dim, vocab_size, cutoffs, div_value=4.0, head_bias=True)
        self.reset_parameters(unigram_counts)

    @torch.no_grad()
    def reset_parameters(self, unigram_counts: Sequence[int] | None = None) -> None:
        nn.init.normal_(self.embed.weight, std=0.1)
        if isinstance(self.core, nn.LSTM):
            # PyTorch adds two bias vectors (b_ih + b_hh), gates ordered i, f, g, o: an effective forget bias
            # of 1 (Gers et al. 2000; Jozefowicz et al. 2015) is 1 in one vector and 0 in the other.
            h = self.core.hidden_size
            for layer in range(self.core.num_layers):
                b_ih, b_hh = getattr(self.core, f"bias_ih_l{layer}"), getattr(self.core, f"bias_hh_l{layer}")
                b_ih.zero_()
                b_hh.zero_()
                b_ih[h : 2 * h].fill_(1.0)
        if unigram_counts is not None:
            self._init_output_bias(torch.tensor(unigram_counts, dtype=torch.float64))

    def _init_output_bias(self, counts: Tensor) -> None:
        """Start from the unigram distribution: the first steps then learn context, not character frequency."""
        log_p = torch.log((counts + 1.0) / (counts + 1.0).sum())
        if isinstance(self.decoder, nn.Linear):
            self.decoder.bias.copy_(log_p)
        else:  # adaptive: shortlist tokens, then one logit per tail cluster holding that cluster's mass
            head = self.decoder.head
            cut = self.decoder.shortlist_size
            bounds = [*self.decoder.cutoffs]
            cluster_mass = [log_p[a:b].exp().sum().log() for a, b in itertools.pairwise(bounds)]
            head.bias.copy_(torch.cat([log_p[:cut], torch.stack(cluster_mass)]))

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Features ``(B, T, D)`` for token ids ``x`` ``(B, T)``, and the recurrent state after the last step."""
        out, state = self.core(self.drop(self.embed(x)), state)
        out = self.drop(out)
        if self.proj is not None:
            out = self.proj(out)
        return out, state

    def layer_step(self, x: Tensor, layer: int, state: Tensor | tuple[Tensor, Tensor] | None) -> State:
        """Layer ``layer`` of the core advanced one step on inputs ``x`` ``(B, In)``: its new state ``(B, H)``
        (a pair ``(h, c)`` for an LSTM). ``state=None`` starts from zeros, as the fused core does."""
        if state is None:
            zeros = x.new_zeros(x.shape[0], self.core.hidden_size)
            state = (zeros, zeros) if self.cell == "lstm" else zeros
        return STEP_KERNELS[self.cell](x, state, *self.core.all_weights[layer])

    def step(self, tokens: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Features ``(B, D)`` after one more token per row (``tokens`` ``(B,)``), and the new state: what
        ``forward`` gives for a ``(B, 1)`` input in eval mode (no dropout), for decoding.

        The step kernels, not the fused core: oneDNN's fused LSTM costs ~3 ms a call even for one step of one
        poem, 6x the step kernels at batch 1 and 1.6x at batch 100 (2-layer LSTM, hidden 256, this CPU).
        """
        h = self.embed(tokens)
        lstm = self.cell == "lstm"
        layers = []
        for layer in range(self.core.num_layers):
            prev = None if state is None else (state[0][layer], state[1][layer]) if lstm else state[layer]
            new = self.layer_step(h, layer, prev)
            h = new[0] if lstm else new
            layers.append(new)
        out: State = (
            (torch.stack([s[0] for s in layers]), torch.stack([s[1] for s in layers])) if lstm else torch.stack(layers)
        )
        return (self.proj(h) if self.proj is not None else h), out

    def log_probs(self, features: Tensor) -> Tensor:
        """Next-character log-probabilities ``(..., V)`` from features ``(..., D)``."""
        flat = features.reshape(-1, features.shape[-1])
        if isinstance(self.decoder, nn.Linear):
            out = F.log_softmax(self.decoder(flat).float(), dim=-1)
        else:
            with _float32(flat):
                out = self.decoder.log_prob(flat.float())
        return out.reshape(*features.shape[:-1], self.vocab_size)

    def nll(self, features: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Summed negative log-likelihood over non-padded targets, and how many there were.

        Padded positions are dropped before the output layer, so they cost nothing and cannot leak into
        the loss whatever their features hold.
        """
        keep = targets != IGNORE_INDEX
        feats, tgts = features[keep], targets[keep]
        if isinstance(self.decoder, nn.Linear):
            total = F.cross_entropy(self.decoder(feats).float(), tgts, reduction="sum")
        else:
            with _float32(feats):
                total = -self.decoder(feats.float(), tgts).output.sum()
        return total, keep.sum()

    def param_counts(self) -> dict[str, int]:
        """Parameter counts by part; ``core`` is what differs between cells at equal sizes."""

        def count(m: nn.Module | None) -> int:
            return sum(p.numel() for p in m.parameters()) if m is not None else 0

        total = sum(p.numel() for p in self.parameters())  # counts a tied matrix once
        return {
            "core": count(self.core),
            "embedding": count(self.embed),
            "projection": count(self.proj),
            "head": total - count(self.core) - count(self.embed) - count(self.proj),
            "total": total,
        }


def _float32(t: Tensor) -> torch.autocast:
    """Autocast off: nn.AdaptiveLogSoftmaxWithLoss writes log-softmaxes (float32 under CUDA autocast, bf16
    under CPU autocast) into buffers of its input's dtype and fails on the mismatch, so it runs in float32."""
    return torch.autocast(t.device.type, enabled=False)


GATES = {"rnn": 1, "gru": 3, "lstm": 4}  # weight blocks per layer: h, (r, z, n), (i, f, g, o)


def core_params(cell: str, input_size: int, hidden_size: int, num_layers: int) -> int:
    """Parameters of ``nn.RNN/GRU/LSTM(input_size, hidden_size, num_layers)``: W_ih, W_hh and two biases."""
    g, h = GATES[cell], hidden_size
    return sum(g * (h * ((input_size if layer == 0 else h) + h) + 2 * h) for layer in range(num_layers))


def hidden_for_budget(cell: str, budget: int, input_size: int, num_layers: int, tolerance: float = 0.02) -> int:
    """The hidden size whose recurrent core comes closest to ``budget`` parameters (within ``tolerance``).

    Used to compare cells at equal capacity: an LSTM has four weight blocks per layer to the RNN's one, so
    at equal hidden size it holds about four times the parameters.
    """
    if cell not in GATES:
        raise TangshiError(f"unknown model.cell {cell!r}; allowed: {', '.join(CELLS)}")
    g, i, n = GATES[cell], input_size, num_layers
    # core_params is quadratic in h: g * ((2n - 1) h^2 + (i + 2n) h); solve for the budget, then check neighbours
    a, b = g * (2 * n - 1), g * (i + 2 * n)
    root = (-b + math.sqrt(b * b + 4 * a * budget)) / (2 * a)
    best = min({max(1, math.floor(root)), math.ceil(root)}, key=lambda h: abs(core_params(cell, i, h, n) - budget))
    got = core_params(cell, i, best, n)
    if abs(got - budget) > tolerance * budget:
        raise TangshiError(
            f"model.param_budget={budget} cannot be met within {tolerance:.0%} by a {n}-layer {cell} "
            f"(closest: hidden_size={best} with {got} parameters); choose a larger budget"
        )
    return best


def resolve_budget(model_cfg: dict) -> dict:
    """The model settings with ``param_budget`` (if set) turned into the matching ``hidden_size``."""
    cfg = dict(model_cfg)
    budget = cfg.pop("param_budget", None)
    if budget is not None:
        cfg["hidden_size"] = hidden_for_budget(cfg["cell"], int(budget), cfg["embed_dim"], cfg["num_layers"])
    return cfg


def bits(nats: float) -> float:
    """Nats per character → bits per character."""
    return nats / math.log(2)
