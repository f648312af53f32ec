import torch

from tangshi.batches import BucketBatchSampler, collate
from tangshi.datamodule import PoemDataModule
from tangshi.model import IGNORE_INDEX
from tangshi.vocab import BOS_ID, EOS_ID, PAD_ID


def _lengths(n=997, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, 130, (n,), generator=g).tolist()


def test_every_poem_once_per_epoch_and_a_new_order_each_epoch():
    lengths = _lengths()
    s = BucketBatchSampler(lengths, 32, seed=1)
    epochs = []
    for epoch in range(2):
        s.set_epoch(epoch)
        batches = list(s)
        assert len(batches) == len(s)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(len(lengths)))
        epochs.append(flat)
    assert epochs[0] != epochs[1]
    s.set_epoch(0)
    assert [i for b in s for i in b] == epochs[0]  # reproducible per (seed, epoch)


def test_buckets_keep_padding_low():
    lengths = _lengths()
    batches = list(BucketBatchSampler(lengths, 32, seed=0))
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    random_batches = [list(range(i, min(i + 32, len(lengths)))) for i in range(0, len(lengths), 32)]
    padded_random = sum(len(b) * max(lengths[i] for i in b) for b in random_batches)
    assert padded / sum(lengths) < 1.1 < padded_random / sum(lengths)


def test_two_ranks_get_disjoint_batches_covering_every_poem_in_equal_numbers():
    lengths = _lengths(n=1001)
    for epoch in range(3):
        ranks = []
        for rank in range(2):
            s = BucketBatchSampler(lengths, 64, seed=3, num_replicas=2, rank=rank)
            s.set_epoch(epoch)
            ranks.append(list(s))
        assert len(ranks[0]) == len(ranks[1])  # no rank waits for another at the end of an epoch
        seen = [[i for b in r for i in b] for r in ranks]
        assert not set(seen[0]) & set(seen[1])
        assert sorted(seen[0] + seen[1]) == list(range(len(lengths)))


def test_lightning_reaches_set_epoch_through_the_sampler_attribute():
    s = BucketBatchSampler(_lengths(), 32)
    s.sampler.set_epoch(5)  # what lightning.fabric.utilities.data._set_sampler_epoch calls
    assert s.epoch == 5


def test_collate_pads_inputs_and_masks_targets():
    batch = collate([torch.tensor([BOS_ID, 7, 8, EOS_ID]), torch.tensor([BOS_ID, 9, EOS_ID])])
    assert batch["inputs"].tolist() == [[BOS_ID, 7, 8], [BOS_ID, 9, PAD_ID]]
    assert batch["targets"].tolist() == [[7, 8, EOS_ID], [9, EOS_ID, IGNORE_INDEX]]


def test_datamodule_loaders_cover_the_splits(corpus_config, prepared, tmp_path):
    dm = PoemDataModule(prepared.path.parents[1], corpus_config, batch_size=8)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.vocab.fingerprint == prepared.vocab.fingerprint
    for split, loader in (("train", dm.train_dataloader()), ("val", dm.val_dataloader())):
        n = sum(int((b["targets"] != IGNORE_INDEX).sum()) for b in loader)
        assert n == dm.tokens(split) == sum(len(p) + 1 for p in prepared.splits[split])
