"""A small causal Transformer decoder, the attention reference beside the recurrent cores (same interface).

Pre-LN blocks in the style of nanoGPT: x + attn(LN(x)), then x + MLP(LN(x)) with a 4x GELU MLP, a final LN,
``scaled_dot_product_attention`` with a causal mask. Positions are learned (an embedding per position) or
rotary (RoPE, Su et al. 2021, on queries and keys). Decoding keeps a key/value cache per layer, so a step
costs one query against the cached keys instead of a pass over the whole prefix.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MAX_LEN = 256  # positions a learned embedding covers (poems are at most 128 characters, plus <bos> and <eos>)
POSITIONS = ("learned", "rotary")

# The cache: per layer (keys, values) of shape (B, heads, t, head_dim), and the position of the next token.
Cache = tuple[list[tuple[Tensor, Tensor]], int]


def _rotate(x: Tensor, start: int) -> Tensor:
    """Rotary position embedding of ``x`` ``(B, heads, T, d)`` whose first row is position ``start``."""
    d = x.shape[-1]
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d))
    angles = torch.arange(start, start + x.shape[-2], device=x.device, dtype=torch.float32)[:, None] * inv
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


class Block(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float, rotary: bool, mlp_width: int):
        super().__init__()
        self.heads, self.rotary, self.dropout = heads, rotary, dropout
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_width), nn.GELU(), nn.Linear(mlp_width, width))
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, cache: tuple[Tensor, Tensor] | None, start: int
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``x`` ``(B, T, W)`` at positions ``start…``, attending to ``cache`` (earlier keys and values) too."""
        b, t, w = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        if self.rotary:
            q, k = _rotate(q, start), _rotate(k, start)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        # a query attends to every cached key and to the new ones up to its own position
        causal = t > 1
        mask = None
        if causal and cache is not None:
            mask = torch.ones(t, k.shape[2], dtype=torch.bool, device=x.device).tril(k.shape[2] - t)
            causal = False
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.drop(self.out(y.transpose(1, 2).reshape(b, t, w)))
        x = x + self.drop(self.mlp(self.ln2(x)))
        return x, (k, v)


class TransformerCore(nn.Module):
    """``num_layers`` pre-LN blocks of width ``hidden_size`` (``heads`` heads, an MLP of ``mlp_width``, by default
    4x the width) over the embeddings, which are projected to that width when it differs from theirs."""

    kind = "transformer"
    recurrent = False

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        heads: int = 4,
        positions: str = "learned",
        mlp_width: int | None = None,
    ):
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers, self.heads = input_size, hidden_size, num_layers, heads
        self.mlp_width = mlp_width or 4 * hidden_size
        self.inp = nn.Linear(input_size, hidden_size) if input_size != hidden_size else None
        self.pos = nn.Embedding(MAX_LEN, hidden_size) if positions == "learned" else None
        self.blocks = nn.ModuleList(
            Block(hidden_size, heads, dropout, positions == "rotary", self.mlp_width) for _ in range(num_layers)
        )
        self.ln = nn.LayerNorm(hidden_size)
        self.drop = nn.Dropout(dropout)
        self.apply(self._init)
        for block in self.blocks:  # GPT-2: residual projections scaled down with depth
            nn.init.normal_(block.out.weight, std=0.02 / math.sqrt(2 * num_layers))
            nn.init.normal_(block.mlp[2].weight, std=0.02 / math.sqrt(2 * num_layers))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    @classmethod
    def count_params(
        cls,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        heads: int = 4,
        positions: str = "learned",
        mlp_width: int | None = None,
    ) -> int:
        w, m = hidden_size, mlp_width if mlp_width is not None else 4 * hidden_size
        block = 2 * 2 * w + (3 * w * w + 3 * w) + (w * w + w) + (w * m + m) + (m * w + w)
        inp = input_size * w + w if input_size != w else 0
        pos = MAX_LEN * w if positions == "learned" else 0
        return inp + pos + num_layers * block + 2 * w

    def flops_per_token(self, seq_len: int) -> float:
        """Matrix products per token: projections (4 W² per layer) and MLP (2 W M), and attention's two
        products against on average half the sequence (causal)."""
        w, m = self.hidden_size, self.mlp_width
        inp = 2 * self.input_size * w if self.inp is not None else 0
        return float(inp + self.num_layers * (2 * (4 * w * w + 2 * w * m) + 2 * 2 * w * seq_len / 2))

    def _run(self, x: Tensor, cache: Cache | None) -> tuple[Tensor, Cache]:
        layers, start = cache if cache is not None else ([None] * self.num_layers, 0)
        if start + x.shape[1] > MAX_LEN and self.pos is not None:
            raise ValueError(f"the transformer's learned positions end at {MAX_LEN}")
        if self.inp is not None:
            x = self.inp(x)
        if self.pos is not None:
            x = x + self.pos(torch.arange(start, start + x.shape[1], device=x.device))
        x = self.drop(x)
        new = []
        for block, kv in zip(self.blocks, layers, strict=True):
            x, kv = block(x, kv, start)
            new.append(kv)
        return self.ln(x), (new, start + x.shape[1])

    def forward(self, x: Tensor, state: Cache | None = None) -> tuple[Tensor, Cache]:
        """Outputs ``(B, T, W)`` for embeddings ``(B, T, In)``, and the key/value cache after them."""
        return self._run(x, state)

    def step(self, x: Tensor, state: Cache | None = None) -> tuple[Tensor, Cache]:
        out, cache = self._run(x[:, None], state)
        return out[:, 0], cache

    @staticmethod
    def select(state: Cache, index: Tensor) -> Cache:
        layers, start = state
        return [(k.index_select(0, index), v.index_select(0, index)) for k, v in layers], start
