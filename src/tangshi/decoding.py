"""Batched sampling of poems from a CharRNN: temperature, top-k, top-p (nucleus), and a given beginning.

All poems of a call advance together, one batched step per character, so n poems cost little more than one.
A private ``torch.Generator`` makes results reproducible under ``seed`` without touching the global RNG
(sampling during training must not change the training run).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tangshi.errors import TangshiError
from tangshi.model import CharRNN
from tangshi.vocab import BOS_ID, EOS_ID, SPECIALS, Vocab


@dataclass(frozen=True)
class SamplingConfig:
    n: int = 5
    begin: str = ""
    temperature: float = 0.8
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0  # 1.0: no limit
    max_len: int = 128  # characters, beginning included
    seed: int | None = 0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise TangshiError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise TangshiError(f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if self.top_k < 0:
            raise TangshiError(f"top_k must be >= 0 (0 means no limit), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise TangshiError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_len < max(1, len(self.begin)):
            raise TangshiError(f"max_len must be >= 1 and >= the length of begin, got {self.max_len}")


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Set to -inf every logit outside the top-k and outside the smallest set holding top_p of the mass."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the mass before it already reaches top_p; the most likely token always stays.
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


@torch.no_grad()
def sample(model: CharRNN, vocab: Vocab, cfg: SamplingConfig | None = None) -> list[str]:
    """``cfg.n`` poems as strings, each starting with ``cfg.begin``."""
    cfg = cfg or SamplingConfig()
    prompt = vocab.require(cfg.begin, "begin")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    g = torch.Generator(device=device)
    if cfg.seed is not None:
        g.manual_seed(cfg.seed)
    else:
        g.seed()
    try:
        ids = torch.tensor([[BOS_ID, *prompt]] * cfg.n, device=device)
        feats, state = model(ids)
        out = ids[:, 1:].tolist()
        done = torch.zeros(cfg.n, dtype=torch.bool, device=device)
        banned = torch.zeros(len(vocab), dtype=torch.bool, device=device)
        banned[[i for i, s in enumerate(SPECIALS) if i != EOS_ID]] = True  # never emit <pad>, <bos>, <unk>
        for _ in range(cfg.max_len - len(prompt)):  # a poem still open at max_len is cut there
            logits = model.log_probs(feats[:, -1]).masked_fill(banned, float("-inf"))
            if cfg.temperature == 0:
                nxt = logits.argmax(-1)
            else:
                logits = filter_logits(logits / cfg.temperature, cfg.top_k, cfg.top_p)
                nxt = torch.multinomial(logits.softmax(-1), 1, generator=g).squeeze(1)
            nxt = nxt.masked_fill(done, EOS_ID)
            for row, token in zip(out, nxt.tolist(), strict=True):
                row.append(token)
            done |= nxt == EOS_ID
            if bool(done.all()):
                break
            feats, state = model(nxt[:, None], state)
        return [vocab.decode(row) for row in out]
    finally:
        model.train(was_training)
