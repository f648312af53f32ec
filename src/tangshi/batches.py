"""Poems as tensors: one poem per sequence (``<bos> body <eos>``), right-padded batches, and the length-bucketed
batch sampler. Torch only, so analysis and the studio use them without Lightning.

Poems range from 10 to 128+ characters; batching poems of similar length wastes little compute on padding
(about 4x faster than random batches here). The sampler shards batches across DDP ranks itself, so Lightning
must not wrap it (``use_distributed_sampler: false`` in the trainer configs).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from tangshi.errors import TangshiError
from tangshi.model import IGNORE_INDEX
from tangshi.vocab import PAD_ID, Vocab


class PoemDataset(Dataset[Tensor]):
    """Encoded poems, each ``<bos> body <eos>``."""

    def __init__(self, bodies: Sequence[str], vocab: Vocab):
        flat, self.lengths = vocab.encode_many(bodies)
        self.seqs = list(torch.from_numpy(flat).split(self.lengths))  # views into one tensor

    def __len__(self) -> int:
        return len(self.seqs)

    def __getitem__(self, i: int) -> Tensor:
        return self.seqs[i]


def collate(seqs: Sequence[Tensor]) -> dict[str, Tensor]:
    """Right-pad a batch; inputs are tokens 0..n-2, targets 1..n-1 with padding set to IGNORE_INDEX."""
    n = max(len(s) for s in seqs) - 1
    inputs = torch.full((len(seqs), n), PAD_ID, dtype=torch.long)
    targets = torch.full((len(seqs), n), IGNORE_INDEX, dtype=torch.long)
    for i, s in enumerate(seqs):
        inputs[i, : len(s) - 1] = s[:-1]
        targets[i, : len(s) - 1] = s[1:]
    return {"inputs": inputs, "targets": targets}


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar-length sequences, reshuffled every epoch, split across ``num_replicas`` ranks.

    Each epoch: shuffle, sort within pools of ``pool_batches`` batches, cut into batches, shuffle the batches.
    Every sequence lands in exactly one batch and every batch on exactly one rank; when the batch count does
    not divide among the ranks, the largest batches are halved until it does, so no poem is repeated or dropped
    and all ranks take the same number of steps.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        pool_batches: int = 50,
    ):
        if batch_size < 1:
            raise TangshiError(f"data.batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        if len(lengths) < num_replicas:
            raise ValueError(f"{len(lengths)} sequences cannot be shared among {num_replicas} ranks")
        self.lengths = list(lengths)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.num_replicas, self.rank, self.pool = num_replicas, rank, pool_batches * batch_size
        self.epoch = 0
        self.skip = 0  # batches of this epoch already trained on before a resume

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def sampler(self) -> BucketBatchSampler:
        # Lightning calls ``dataloader.batch_sampler.sampler.set_epoch(epoch)`` each epoch (also after a
        # resume); pointing ``sampler`` at ourselves makes that call reach us.
        return self

    def _all_batches(self) -> list[list[int]]:
        n = len(self.lengths)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.shuffle:
            order = torch.randperm(n, generator=generator).tolist()
            pools = [order[i : i + self.pool] for i in range(0, n, self.pool)]
        else:
            pools = [list(range(n))]
        batches = []
        for pool in pools:
            pool.sort(key=self.lengths.__getitem__)
            batches += [pool[i : i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
        while len(batches) % self.num_replicas:
            biggest = max(range(len(batches)), key=lambda i: len(batches[i]))
            b = batches.pop(biggest)
            batches += [b[: len(b) // 2], b[len(b) // 2 :]]
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.skip = self.skip, 0
        yield from self._all_batches()[self.rank :: self.num_replicas][skip:]

    def __len__(self) -> int:
        # Pool boundaries decide the count, so compute it the same way the iterator does (cheap: sorting ints).
        return len(self._all_batches()) // self.num_replicas
