"""PoemDataModule: one poem per sequence (``<bos> body <eos>``) in length-bucketed batches.

Poems range from 10 to 128+ characters; batching poems of similar length wastes little compute on
padding (about 4x faster than random batches here). The batch sampler shards batches across DDP ranks
itself, so Lightning must not wrap it (``use_distributed_sampler: false`` in the trainer configs). The
training loader saves its place in the epoch in checkpoints, so a run resumed mid-epoch continues exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from tangshi.corpus import CorpusConfig, Prepared, prepare
from tangshi.errors import TangshiError, require_positive_int
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
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.shuffle:
            order = torch.randperm(n, generator=g).tolist()
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
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.skip = self.skip, 0
        yield from self._all_batches()[self.rank :: self.num_replicas][skip:]

    def __len__(self) -> int:
        # Pool boundaries decide the count, so compute it the same way the iterator does (cheap: sorting ints).
        return len(self._all_batches()) // self.num_replicas


class ResumableLoader(DataLoader):
    """A DataLoader whose place in the epoch travels in Lightning checkpoints (Lightning calls these two
    methods on loaders that have them), so a run resumed mid-epoch sees exactly the batches an uninterrupted
    run would have seen next."""

    def __init__(self, *args: Any, batches_done: Callable[[], int], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._batches_done = batches_done

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.batch_sampler.epoch, "batches_done": self._batches_done()}  # type: ignore[union-attr]

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.epoch = state["epoch"]  # type: ignore[union-attr]
        self.batch_sampler.skip = state["batches_done"]  # type: ignore[union-attr]


class PoemDataModule(L.LightningDataModule):
    def __init__(
        self,
        data_dir: str | Path,
        corpus: CorpusConfig,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        pin_memory: bool = False,
    ):
        super().__init__()
        self.data_dir, self.corpus = Path(data_dir), corpus
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.seed, self.pin_memory = num_workers, seed, pin_memory
        self.prepared: Prepared | None = None
        self.datasets: dict[str, PoemDataset] = {}

    @classmethod
    def from_config(cls, data: dict[str, Any], data_dir: str | Path, seed: int = 0) -> PoemDataModule:
        """Build from the ``data`` config group (a plain dict)."""
        data = dict(data)
        loader = {k: data.pop(k) for k in ("batch_size", "eval_batch_size", "num_workers", "pin_memory") if k in data}
        for key in ("batch_size", "eval_batch_size"):
            if loader.get(key) is not None:
                require_positive_int(f"data.{key}", loader[key])
        if not isinstance(loader.get("num_workers", 0), int) or loader.get("num_workers", 0) < 0:
            raise TangshiError(f"data.num_workers must be an integer >= 0, got {loader['num_workers']!r}")
        forms = data.get("forms")
        data["forms"] = tuple(forms) if forms else None
        return cls(data_dir, CorpusConfig(**data), seed=seed, **loader)

    @property
    def vocab(self) -> Vocab:
        if self.prepared is None:
            raise RuntimeError("call prepare_data() and setup() before asking for the vocabulary")
        return self.prepared.vocab

    def prepare_data(self) -> None:
        if self.prepared is None:  # Lightning calls this again for test(); the data are already loaded
            self.prepared = prepare(self.corpus, self.data_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.prepared is None:  # other DDP ranks: read what rank 0 prepared
            self.prepared = prepare(self.corpus, self.data_dir)
        for split, bodies in self.prepared.splits.items():
            if split not in self.datasets:
                self.datasets[split] = PoemDataset(bodies, self.prepared.vocab)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        ds = self.datasets[split]
        sampler = BucketBatchSampler(
            ds.lengths,
            self.batch_size if shuffle else self.eval_batch_size,
            shuffle=shuffle,
            seed=self.seed,
            num_replicas=world,
            rank=rank,
        )
        kwargs: dict[str, Any] = {}
        loader_cls: type[DataLoader] = DataLoader
        if shuffle and trainer is not None:
            loader_cls = ResumableLoader
            # batches trained on in the current epoch (Lightning's count, which ignores prefetched batches)
            kwargs["batches_done"] = lambda: trainer.fit_loop.epoch_loop.batch_progress.current.completed
        return loader_cls(
            ds,
            batch_sampler=sampler,
            # A DataLoader draws a worker seed from this generator for every new iterator; a private one keeps
            # those draws out of the global RNG, so dropout noise does not depend on when iterators were made.
            generator=torch.Generator().manual_seed(self.seed),
            collate_fn=collate,
            num_workers=self.num_workers,
            # pinned pages let Lightning's non-blocking host-to-GPU copies overlap with compute
            pin_memory=self.pin_memory or (trainer is not None and trainer.strategy.root_device.type == "cuda"),
            persistent_workers=self.num_workers > 0,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def tokens(self, split: str) -> int:
        """Prediction targets in a split: every character plus ``<eos>``, per poem."""
        return sum(n - 1 for n in self.datasets[split].lengths)
