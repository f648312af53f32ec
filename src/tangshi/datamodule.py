"""PoemDataModule: the prepared corpus as Lightning loaders of length-bucketed batches (:mod:`tangshi.batches`).

The training loader saves its place in the epoch in checkpoints, so a run resumed mid-epoch continues exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from tangshi.batches import BucketBatchSampler, PoemDataset, collate
from tangshi.corpus import LOADER_KEYS, CorpusConfig, Prepared, prepare
from tangshi.errors import TangshiError, require_positive_int
from tangshi.vocab import Vocab


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
        loader = {k: data[k] for k in LOADER_KEYS if k in data}
        for key in ("batch_size", "eval_batch_size"):
            if loader.get(key) is not None:
                require_positive_int(f"data.{key}", loader[key])
        if not isinstance(loader.get("num_workers", 0), int) or loader.get("num_workers", 0) < 0:
            raise TangshiError(f"data.num_workers must be an integer >= 0, got {loader['num_workers']!r}")
        return cls(data_dir, CorpusConfig.from_data(data), seed=seed, **loader)

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
