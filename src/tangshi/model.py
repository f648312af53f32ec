"""CharLM: embedding → core → dropout → (projection) → softmax head. Plain PyTorch, no Lightning.

The core is the one switch (``model.cell``): a vanilla RNN, an LSTM or a GRU (PyTorch's fused modules), the
minimal minGRU and minLSTM (a parallel scan), or a small causal Transformer, all behind one interface
(:mod:`tangshi.cells`, :mod:`tangshi.transformer`). ``build_model`` turns a model config and a vocabulary into
a model; inference (checkpoint → model → decoding) needs nothing else.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tangshi.cells import GRUCore, LSTMCore, MinGRUCore, MinLSTMCore, RNNCore, State
from tangshi.errors import TangshiError, require_positive_int
from tangshi.structure import EchoBias, LineEnds, StructState, StructureFeatures
from tangshi.transformer import POSITIONS, TransformerCore

if TYPE_CHECKING:
    from tangshi.vocab import Vocab

CELLS: dict[str, type[nn.Module]] = {
    "rnn": RNNCore,
    "lstm": LSTMCore,
    "gru": GRUCore,
    "mingru": MinGRUCore,
    "minlstm": MinLSTMCore,
    "transformer": TransformerCore,
}
HEADS = ("full", "adaptive")
IGNORE_INDEX = -100  # target value at padded positions


class Reading(NamedTuple):
    """What :meth:`CharLM.read` returns: features ``(B, T, D)``, the state after the last step, and the
    :class:`~tangshi.structure.LineEnds` of each step (None without the echo bias)."""

    features: Tensor
    state: State
    ends: LineEnds | None


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
    heads: int = 4,
    positions: str = "learned",
    mlp_width: int | None = None,
    chrono_span: int | None = None,
    structure: bool = False,
    echo_bias: bool = False,
    **_: object,
) -> None:
    """Raise one clear error for a model setting CharLM cannot build (cheap: call before heavy work)."""
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
    if chrono_span is not None:
        if cell != "lstm":
            raise TangshiError(f"model.chrono_span initialises an LSTM's gates; model.cell is {cell!r}: set it to null")
        if not isinstance(chrono_span, int) or isinstance(chrono_span, bool) or chrono_span < 3:
            raise TangshiError(f"model.chrono_span must be an integer >= 3 (characters) or null, got {chrono_span!r}")
    if echo_bias and not structure:
        raise TangshiError("model.echo_bias=true reads the line structure: it needs model.structure=true")
    if cell == "transformer":
        require_positive_int("model.heads", heads)
        if mlp_width is not None:
            require_positive_int("model.mlp_width", mlp_width)
        if positions not in POSITIONS:
            raise TangshiError(f"unknown model.positions {positions!r}; allowed: {', '.join(POSITIONS)}")
        if hidden_size % heads or (positions == "rotary" and (hidden_size // heads) % 2):
            raise TangshiError(
                f"model.hidden_size={hidden_size} must split into model.heads={heads} heads"
                + (" of an even width (rotary positions)" if positions == "rotary" else "")
            )
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


def _core_kwargs(cell: str, heads: int, positions: str, mlp_width: int | None) -> dict[str, Any]:
    """The settings only the transformer takes."""
    return {"heads": heads, "positions": positions, "mlp_width": mlp_width} if cell == "transformer" else {}


class CharLM(nn.Module):
    """A character language model whose core is chosen by ``cell``.

    ``read`` returns features for every position, the state, and the line ends the echo bias reads (computed
    once, with the structure features); ``log_probs`` turns features into next-character log-probabilities
    and ``nll`` scores targets, so both heads (full and adaptive softmax) share one API; ``loss`` and
    ``next_log_probs`` are the two together. ``step``, ``next_line_ends`` and ``select_state`` are what
    decoding needs.
    """

    def __init__(
        self,
        vocab_size: int,
        cell: str = "lstm",
        embed_dim: int = 128,
        hidden_size: int = 512,
        num_layers: int = 1,
        dropout: float = 0.1,
        tie_weights: bool = False,
        out_dim: int | None = None,
        head: str = "adaptive",
        adaptive_cutoffs: Sequence[int] = (1000, 3000),
        unigram_counts: Sequence[int] | None = None,
        heads: int = 4,
        positions: str = "learned",
        mlp_width: int | None = None,
        structure: bool = False,
        echo_bias: bool = False,
        chrono_span: int | None = None,
        itos: Sequence[str] | None = None,
    ):
        """``structure``: add :mod:`tangshi.structure`'s features of the characters written so far to the
        embedding (needs ``itos``, the vocabulary's characters). ``echo_bias``: learn how much less likely a
        line ends on a character an earlier line ended on (:class:`tangshi.structure.EchoBias`)."""
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
            heads=heads,
            positions=positions,
            mlp_width=mlp_width,
            chrono_span=chrono_span,
            structure=structure,
            echo_bias=echo_bias,
        )
        self.cell, self.head_kind, self.vocab_size = cell, head, vocab_size
        self.chrono_span = chrono_span

        # Construction order fixes the initial weights under a seed: keep it (embedding, core, projection, head).
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.core = CELLS[cell](
            embed_dim, hidden_size, num_layers, dropout, **_core_kwargs(cell, heads, positions, mlp_width)
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
        if structure and (itos is None or len(itos) != vocab_size):
            raise TangshiError("model.structure=true needs the vocabulary's characters (itos) to compute its features")
        # last, so a model with structure starts from the same weights as one without under the same seed
        self.structure = StructureFeatures(itos, embed_dim) if structure and itos is not None else None
        self.echo = EchoBias() if echo_bias else None
        self.reset_parameters(unigram_counts)

    @torch.no_grad()
    def reset_parameters(self, unigram_counts: Sequence[int] | None = None) -> None:
        nn.init.normal_(self.embed.weight, std=0.1)
        if self.chrono_span is not None:
            self.core.init_forget_bias(self.chrono_span)
        elif hasattr(self.core, "init_forget_bias"):
            self.core.init_forget_bias()
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

    def embed_inputs(
        self, x: Tensor, state: StructState | None = None
    ) -> tuple[Tensor, StructState | None, LineEnds | None]:
        """The core's inputs ``(B, T, E)`` for token ids ``x`` ``(B, T)``: the character embedding, plus the
        structure features when ``structure`` is on (``state``: theirs before ``x``; returned after it), and
        the line ends the echo bias reads at each step (None without ``echo_bias``)."""
        e = self.embed(x)
        if self.structure is None:
            return e, None, None
        features, state, ends = self.structure.encode(x, state)
        return e + self.structure.embed(features), state, ends if self.echo is not None else None

    def read(self, x: Tensor, state: State | None = None) -> Reading:
        """One pass over token ids ``x`` ``(B, T)``: the features ``(B, T, D)``, the state after the last step
        (the core's, paired with the structure features' when they are on), and the line ends that
        ``log_probs`` and ``nll`` need when ``echo_bias`` is on."""
        core_state, struct_state = self._split(state)
        inputs, struct_state, ends = self.embed_inputs(x, struct_state)
        out, core_state = self.core(self.drop(inputs), core_state)
        out = self.drop(out)
        if self.proj is not None:
            out = self.proj(out)
        return Reading(out, self._join(core_state, struct_state), ends)

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """``read``'s features and state, for decoding's prompt and the cores' common interface."""
        features, state, _ = self.read(x, state)
        return features, state

    def loss(self, x: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """``nll`` of ``targets`` ``(B, T)`` after reading ``x`` ``(B, T)`` from the start of the poems."""
        features, _, ends = self.read(x)
        return self.nll(features, targets, ends)

    def next_log_probs(self, x: Tensor) -> Tensor:
        """Next-character log-probabilities ``(B, T, V)`` after each token of ``x`` ``(B, T)``."""
        features, _, ends = self.read(x)
        return self.log_probs(features, ends)

    def step(self, tokens: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Features ``(B, D)`` after one more token per row (``tokens`` ``(B,)``), and the new state: what
        ``forward`` gives for a ``(B, 1)`` input in eval mode (no dropout), for decoding."""
        core_state, struct_state = self._split(state)
        inputs, struct_state, _ = self.embed_inputs(tokens[:, None], struct_state)
        h, core_state = self.core.step(inputs[:, 0], core_state)
        return (self.proj(h) if self.proj is not None else h), self._join(core_state, struct_state)

    def select_state(self, state: State, index: Tensor) -> State:
        """The state of the batch rows in ``index`` (beams that survive, poems still being written)."""
        core_state, struct_state = self._split(state)
        core_state = self.core.select(core_state, index)
        return self._join(core_state, struct_state.select(index) if struct_state is not None else None)

    def _split(self, state: State | None) -> tuple[State | None, StructState | None]:
        if self.structure is None or state is None:
            return state, None
        return state

    def _join(self, core_state: State, struct_state: StructState | None) -> State:
        return core_state if self.structure is None else (core_state, struct_state)

    def next_line_ends(self, state: State) -> LineEnds | None:
        """The line ends for the step a decoding state stands at (``(B,)`` rows), or None without ``echo_bias``."""
        if self.echo is None:
            return None
        return StructureFeatures.line_ends(self._split(state)[1])

    def _full_log_probs(self, flat: Tensor) -> Tensor:
        if isinstance(self.decoder, nn.Linear):
            return self._first_stage(flat)
        with _float32(flat):
            return self.decoder.log_prob(flat.float())

    def _first_stage(self, flat: Tensor) -> Tensor:
        """The log-softmax every row needs whatever it scores: the whole distribution ``(N, V)`` under the
        full head; the adaptive head's ``(N, shortlist + clusters)``, whose tails are computed per row later."""
        if isinstance(self.decoder, nn.Linear):
            return F.log_softmax(self.decoder(flat).float(), dim=-1)
        with _float32(flat):
            return F.log_softmax(self.decoder.head(flat.float()), dim=1)

    def _log_probs_of(self, flat: Tensor, chars: Tensor, first: Tensor | None = None) -> Tensor:
        """log p ``(N, K)`` of ``chars`` ``(N, K)`` for rows ``flat`` ``(N, D)`` (``first``: their
        ``_first_stage``, when the caller has it already). The adaptive head computes a tail cluster only for
        the rows that list one of its characters, as ``nn.AdaptiveLogSoftmaxWithLoss`` does for targets: most
        characters are in the shortlist, so this costs little more than the head."""
        first = self._first_stage(flat) if first is None else first
        if isinstance(self.decoder, nn.Linear):
            return first.gather(1, chars)
        d = self.decoder
        with _float32(flat):
            flat = flat.float()
            out = first.gather(1, chars.clamp(max=d.shortlist_size - 1))  # right for the shortlist's characters
            for i, (lo, hi) in enumerate(itertools.pairwise(d.cutoffs)):
                inside = (chars >= lo) & (chars < hi)
                rows = inside.any(1).nonzero()[:, 0]
                if len(rows):
                    tail = F.log_softmax(d.tail[i](flat[rows]), dim=1).gather(
                        1, (chars[rows] - lo).clamp(0, hi - lo - 1)
                    )
                    got = first[rows, d.shortlist_size + i, None] + tail
                    out = out.index_copy(0, rows, torch.where(inside[rows], got, out[rows]))
        return out

    def _echoes(self, ends: LineEnds | None) -> bool:
        """Whether scoring applies the echo bias; without its line ends it would silently be dropped: refused."""
        if self.echo is None:
            return False
        if ends is None:
            raise TangshiError("model.echo_bias is on: pass the line ends from read() or next_line_ends()")
        return True

    def log_probs(self, features: Tensor, ends: LineEnds | None = None) -> Tensor:
        """Next-character log-probabilities ``(..., V)`` from features ``(..., D)`` (``ends``: from ``read``
        or ``next_line_ends``, with the features' leading shape; needed when ``echo_bias`` is on)."""
        out = self._full_log_probs(features.reshape(-1, features.shape[-1]))
        if self._echoes(ends):
            rows = (ends.kind.reshape(-1) > 0).nonzero()[:, 0]
            picked = LineEnds(ends.kind.reshape(-1)[rows], ends.chars.reshape(-1, ends.chars.shape[-1])[rows])
            gain, log_z = self.echo.terms(out[rows].gather(1, picked.chars), picked)
            out = out.index_copy(0, rows, out[rows].scatter_add(1, picked.chars, gain) - log_z[:, None])
        return out.reshape(*features.shape[:-1], self.vocab_size)

    def nll(self, features: Tensor, targets: Tensor, ends: LineEnds | None = None) -> tuple[Tensor, Tensor]:
        """Summed negative log-likelihood over non-padded targets, and how many there were (``ends``: from
        ``read``; needed when ``echo_bias`` is on).

        Padded positions are dropped before the output layer, so they cost nothing and cannot leak into
        the loss whatever their features hold.
        """
        keep = targets != IGNORE_INDEX
        feats, tgts = features[keep], targets[keep]
        # one pass of the head: the targets and, at line-closing steps, the echo bias's listed characters
        first = self._first_stage(feats)
        total = -self._log_probs_of(feats, tgts[:, None], first).sum()
        if self._echoes(ends):
            # only the steps that close a line change: there, score the listed characters too
            kind, chars = ends.kind[keep], ends.chars[keep]
            rows = (kind > 0).nonzero()[:, 0]
            picked = LineEnds(kind[rows], chars[rows])
            gain, log_z = self.echo.terms(self._log_probs_of(feats[rows], picked.chars, first[rows]), picked)
            hit = (gain * (picked.chars == tgts[rows, None])).sum(-1)
            total = total - (hit - log_z).sum()
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
            "structure": count(self.structure) + count(self.echo),
            "head": total
            - count(self.core)
            - count(self.embed)
            - count(self.proj)
            - count(self.structure)
            - count(self.echo),
            "total": total,
        }


def _float32(t: Tensor) -> torch.autocast:
    """Autocast off: nn.AdaptiveLogSoftmaxWithLoss writes log-softmaxes (float32 under CUDA autocast, bf16
    under CPU autocast) into buffers of its input's dtype and fails on the mismatch, so it runs in float32."""
    return torch.autocast(t.device.type, enabled=False)


def core_params(cell: str, input_size: int, hidden_size: int, num_layers: int, **settings: Any) -> int:
    """Parameters of a ``cell`` core of ``num_layers`` layers of ``hidden_size`` over ``input_size`` inputs
    (``settings``: the transformer's ``heads``, ``positions`` and ``mlp_width``; other cells ignore them)."""
    if cell not in CELLS:
        raise TangshiError(f"unknown model.cell {cell!r}; allowed: {', '.join(CELLS)}")
    return CELLS[cell].count_params(  # type: ignore[attr-defined]
        input_size, hidden_size, num_layers, **(settings if cell == "transformer" else {})
    )


def settings_for_budget(
    cell: str,
    budget: int,
    input_size: int,
    num_layers: int,
    tolerance: float = 0.02,
    heads: int = 4,
    positions: str = "learned",
) -> dict[str, int]:
    """The ``hidden_size`` (and, for a transformer, ``mlp_width``) whose core comes closest to ``budget``
    parameters, within ``tolerance``.

    Used to compare cells at equal capacity: an LSTM has four weight blocks per layer to the RNN's one, so at
    equal hidden size it holds about four times the parameters. A transformer's width must split into its
    heads (into heads of an even width, with rotary positions), steps too coarse to hit a budget within 2 %:
    its width is the widest that fits with a 4x MLP, and the MLP's width then takes up the rest.
    """
    unit = (heads * (2 if positions == "rotary" else 1)) if cell == "transformer" else 1

    def params(units: int, mlp: int | None = None) -> int:
        return core_params(cell, input_size, units * unit, num_layers, heads=heads, positions=positions, mlp_width=mlp)

    lo, hi = 1, 1
    while params(hi) < budget:  # parameters grow with the hidden size: bracket, then bisect
        lo, hi = hi, hi * 2
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if params(mid) < budget else (lo, mid)
    out: dict[str, int]
    if cell == "transformer":
        width = max(1, lo - 1) * unit
        without_mlp = params(width // unit, 0)
        mlp = max(1, round((budget - without_mlp) / (num_layers * (2 * width + 1))))
        out, got = {"hidden_size": width, "mlp_width": mlp}, params(width // unit, mlp)
    else:
        best = min({max(1, lo - 1), lo}, key=lambda u: abs(params(u) - budget))
        out, got = {"hidden_size": best}, params(best)
    if abs(got - budget) > tolerance * budget:
        raise TangshiError(
            f"model.param_budget={budget} cannot be met within {tolerance:.0%} by a {num_layers}-layer {cell} "
            f"(closest: {', '.join(f'{k}={v}' for k, v in out.items())} with {got} parameters); "
            "choose a larger budget"
        )
    return out


def resolve_budget(model_cfg: dict) -> dict:
    """The model settings with ``param_budget`` (if set) turned into the matching ``hidden_size`` (and, for a
    transformer, ``mlp_width``)."""
    cfg = dict(model_cfg)
    budget = cfg.pop("param_budget", None)
    if budget is not None:
        if cfg.get("cell") not in CELLS:  # named before any budget arithmetic
            raise TangshiError(f"unknown model.cell {cfg.get('cell')!r}; allowed: {', '.join(CELLS)}")
        cfg.update(
            settings_for_budget(
                cfg["cell"],
                int(budget),
                cfg["embed_dim"],
                cfg["num_layers"],
                heads=cfg.get("heads", 4),
                positions=cfg.get("positions", "learned"),
            )
        )
    return cfg


def build_model(model_cfg: dict[str, Any], vocab: Vocab, init_bias: bool = True) -> CharLM:
    """The model a config describes, for ``vocab``; ``init_bias`` starts the output bias at the unigram
    distribution (a trained checkpoint's weights replace it anyway)."""
    return CharLM(
        len(vocab), unigram_counts=vocab.counts if init_bias else None, itos=vocab.itos, **resolve_budget(model_cfg)
    )


def bits(nats: float) -> float:
    """Nats per character → bits per character."""
    return nats / math.log(2)
