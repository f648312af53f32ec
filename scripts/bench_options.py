"""One-off experiments that settled a default, kept runnable outside the package (README, Performance):
the adaptive against the full softmax (speed, and val bpc after equal time), length-bucketed against random
and packed batches, torch.compile of the head and loss, and torch threads with and without a busy core.

    python scripts/bench_options.py            # about 10 minutes on 2 CPU cores; prints a Markdown table
"""

import os
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

os.environ.setdefault("TANGSHI_ROOT", str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads

import subprocess

import hydra
import torch
from omegaconf import DictConfig
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from tangshi.analysis import split_loss
from tangshi.batches import PoemDataset
from tangshi.bench import alternate, make_batches, plain_step, rate, tokens
from tangshi.config import plain, register_resolvers
from tangshi.datamodule import PoemDataModule
from tangshi.formatting import markdown_table
from tangshi.model import build_model, resolve_budget
from tangshi.vocab import PAD_ID

register_resolvers()


@contextmanager
def busy_core():
    """Another process spinning on one core, as when tests or a second run share the machine."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        yield
    finally:
        proc.kill()
        proc.wait()


@hydra.main(config_path="../conf", config_name="bench", version_base=None)
def main(cfg: DictConfig) -> None:
    dm = PoemDataModule.from_config(plain(cfg.data), cfg.paths.data_dir)
    dm.prepare_data()
    vocab, train = dm.prepared.vocab, dm.prepared.splits["train"]
    model_cfg = resolve_budget({**plain(cfg.model), "cell": cfg.cells[0]})
    ds = PoemDataset(train, vocab)
    batches = make_batches(ds, dm.batch_size, cfg.steps + cfg.warmup)
    randomly = make_batches(ds, dm.batch_size, cfg.steps + cfg.warmup, mode="random")

    def fresh(**changes):
        torch.manual_seed(0)
        return build_model({**model_cfg, **changes}, vocab)

    def packed(model, batch_list):
        """The core over packed sequences (no work on padding) instead of padded ones."""
        opt = torch.optim.AdamW(model.parameters(), 3e-3)

        def step(b):
            lengths = (b["inputs"] != PAD_ID).sum(1).clamp(min=1)
            x = pack_padded_sequence(model.embed(b["inputs"]), lengths, batch_first=True, enforce_sorted=False)
            out, _ = model.core(x)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=b["inputs"].shape[1])
            total, n = model.nll(model.proj(out) if model.proj is not None else out, b["targets"])
            (total / n).backward()
            opt.step()
            opt.zero_grad()

        return rate(step, batch_list, cfg.warmup, "cpu")

    rows = []
    speed = alternate(
        {
            head: lambda head=head: rate(plain_step(fresh(head=head)), batches, cfg.warmup, "cpu")
            for head in ("adaptive", "full")
        },
        cfg.reps,
    )
    quality = {}
    for head in ("adaptive", "full"):
        model, step, steps, start = fresh(head=head), None, 0, time.perf_counter()
        step = plain_step(model)
        while time.perf_counter() - start < 60:
            step(batches[steps % len(batches)])
            steps += 1
        quality[head] = (steps, split_loss(model, vocab, dm.prepared.splits["val"][:512])["bpc"])
    rows.append(
        [
            "full softmax instead of adaptive",
            f"{speed['full']:,.0f} vs {speed['adaptive']:,.0f} tok/s; after 60 s: val bpc {quality['full'][1]:.2f} "
            f"({quality['full'][0]} steps) vs {quality['adaptive'][1]:.2f} ({quality['adaptive'][0]} steps)",
            f"{speed['full'] / speed['adaptive']:.2f}",
        ]
    )
    batching = alternate(
        {
            "bucketed, padded": lambda: rate(plain_step(fresh()), batches, cfg.warmup, "cpu"),
            "random, padded": lambda: rate(plain_step(fresh()), randomly, cfg.warmup, "cpu"),
            "random, packed": lambda: packed(fresh(), randomly),
            "bucketed, packed": lambda: packed(fresh(), batches),
        },
        cfg.reps,
    )
    base = batching["bucketed, padded"]
    rows += [[f"batches {k}", f"{v:,.0f} tok/s", f"{v / base:.2f}"] for k, v in batching.items() if v is not base]
    try:
        model = fresh()
        model.nll = torch.compile(model.nll, dynamic=True)
        rate(plain_step(model), batches[: cfg.warmup + 2], cfg.warmup, "cpu")  # compile once, untimed
        compiled = rate(plain_step(model), batches, cfg.warmup, "cpu")
        rows.append(["torch.compile of the head and loss", f"{compiled:,.0f} tok/s", f"{compiled / base:.2f}"])
    except Exception as e:  # no C++ compiler, or an unsupported op
        rows.append(["torch.compile of the head and loss", f"fails: {type(e).__name__}", "–"])
    n = torch.get_num_threads()
    for label, ctx in (("idle", nullcontext), ("one core busy", busy_core)):
        with ctx():
            for t in sorted({1, n}):
                torch.set_num_threads(t)
                r = rate(plain_step(fresh()), batches, cfg.warmup, "cpu")
                rows.append([f"{t} thread(s), {label}", f"{r:,.0f} tok/s", f"{r / base:.2f}"])
    torch.set_num_threads(n)
    print(f"{sum(tokens(b) for b in batches) / len(batches):.0f} real tokens per batch, {model_cfg['cell']}")
    print("\n".join(markdown_table(["option", "measured", "x default"], rows)))


if __name__ == "__main__":
    main()
