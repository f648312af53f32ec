"""Benchmarks: where training time goes, how close it runs to the hardware, sampling and start-up.

The machines this runs on are shared and noisy, so each comparison is a ratio of measurements taken in the
same process on the same batches, alternating the sides (``reps`` rounds) and keeping the median. Throughput
counts real tokens only (not padding), from the first step after ``warmup`` to the end of the last.
``scripts/bench.py`` runs :func:`run`.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from tangshi import decoding
from tangshi.analysis import position_losses
from tangshi.batches import BucketBatchSampler, PoemDataset, collate
from tangshi.config import cpu_precision
from tangshi.corpus import CorpusConfig, Prepared, prepare
from tangshi.errors import TangshiError
from tangshi.formatting import markdown_table
from tangshi.gradflow import gradient_flow, probe_batch
from tangshi.model import IGNORE_INDEX, CharLM, build_model
from tangshi.module import PoemLM
from tangshi.optimizer import build_optimizer
from tangshi.vocab import Vocab

Batch = dict[str, Tensor]
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class BenchSettings:
    """What ``conf/bench.yaml`` asks for (see the comments there)."""

    cells: list[str] = field(default_factory=lambda: ["lstm", "gru", "rnn"])
    device: str = "cpu"
    steps: int = 40
    warmup: int = 5
    reps: int = 2
    sample_poems: int = 100
    startup_runs: int = 3
    batch_size: int = 64

    @property
    def precision(self) -> str:
        """The training precision of the device, as the trainer configs choose it."""
        return "bf16-mixed" if self.device.startswith("cuda") else cpu_precision()


# -- batches and FLOPs ------------------------------------------------------------------------------------


def make_batches(ds: PoemDataset, batch_size: int, n: int, mode: str = "bucketed", seed: int = 0) -> list[Batch]:
    """``n`` training batches as the trainer sees them (``bucketed``), or of poems drawn at random (``random``)."""
    if mode == "bucketed":
        index = list(BucketBatchSampler(ds.lengths, batch_size, seed=seed))
    else:
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed)).tolist()
        index = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    index = [b for b in index if len(b) == batch_size] or index  # full batches: equal work per step
    return [collate([ds[i] for i in b]) for b in (index * (n // len(index) + 1))[:n]]


def tokens(batch: Batch) -> int:
    return int((batch["targets"] != IGNORE_INDEX).sum())


def mean_tokens(batches: list[Batch]) -> float:
    """Real tokens per batch: divided by a tokens/s rate, the seconds a step takes."""
    return sum(tokens(b) for b in batches) / len(batches)


def forward_flops(model: CharLM, targets: Tensor) -> float:
    """Multiply-adds × 2 of one forward pass over the real tokens of ``targets`` (matrix products only: the
    core's (``flops_per_token``), the projection and the softmax head; element-wise work is not counted)."""
    n = int((targets != IGNORE_INDEX).sum())
    per_token = model.core.flops_per_token(targets.shape[1])  # type: ignore[operator]
    if model.proj is not None:
        per_token += 2 * model.proj.in_features * model.proj.out_features
    dec = model.decoder
    if isinstance(dec, torch.nn.Linear):
        return n * (per_token + 2 * dec.in_features * dec.out_features)
    total = n * (per_token + 2 * dec.in_features * dec.head.out_features)
    t = targets[targets != IGNORE_INDEX]
    for i, tail in enumerate(dec.tail):  # only tokens of cluster i pay for its two matrices
        count = int(((t >= dec.cutoffs[i]) & (t < dec.cutoffs[i + 1])).sum())
        total += count * sum(2 * m.in_features * m.out_features for m in tail if isinstance(m, torch.nn.Linear))
    return float(total)


def train_flops(model: CharLM, batches: Iterable[Batch]) -> float:
    """Useful FLOPs of training on ``batches``: the backward pass costs two forwards."""
    return 3 * sum(forward_flops(model, b["targets"]) for b in batches)


def mm_peak(device: str = "cpu", dtype: torch.dtype = torch.float32, seconds: float = 1.0) -> float:
    """FLOP/s of torch.mm on a few large shapes like the model's, in ``dtype`` (the training precision's
    matrix type), best of them: the roofline."""
    best = 0.0
    for m, k, n in ((4096, 256, 1024), (2048, 512, 2048), (1024, 1024, 1024)):
        a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
        for _ in range(3):
            torch.mm(a, b)
        reps, start = 0, _now(device)
        while _now(device) - start < seconds / 3:
            torch.mm(a, b)
            reps += 1
        best = max(best, 2 * m * k * n * reps / (_now(device) - start))
    return best


def _now(device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter()


# -- training-step throughput -----------------------------------------------------------------------------


def plain_step(
    model: CharLM, *, lr: float = 3e-3, clip: float = 1.0, bf16: bool = False, optimizer: str = "adamw"
) -> Callable[[Batch], None]:
    """One step of a minimal PyTorch loop: forward, loss, backward, clip, and the step of the optimiser
    training uses (``optim.optimizer``: AdamW, or Muon for the core's matrices)."""
    device = next(model.parameters()).device
    opt = build_optimizer(model, {"optimizer": optimizer, "lr": lr, "weight_decay": 0.01})
    model.train()
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    def step(batch: Batch) -> None:
        inputs, targets = batch["inputs"].to(device), batch["targets"].to(device)  # no-op when already there
        with amp:
            total, count = model.loss(inputs, targets)
        (total / count).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def rate(step: Callable[[Batch], None], batches: list[Batch], warmup: int, device: str) -> float:
    """Tokens/s of ``step`` over ``batches`` after ``warmup`` untimed steps."""
    on_device = [{k: v.to(device, non_blocking=True) for k, v in b.items()} for b in batches]
    for b in on_device[:warmup]:
        step(b)
    start = _now(device)
    for b in on_device[warmup:]:
        step(b)
    return sum(tokens(b) for b in batches[warmup:]) / (_now(device) - start)


def plain_rate(model: CharLM, batches: list[Batch], warmup: int, bf16: bool = False, optimizer: str = "adamw") -> float:
    """Tokens/s of :func:`plain_step`."""
    step = plain_step(model, bf16=bf16, optimizer=optimizer)
    return rate(step, batches, warmup, next(model.parameters()).device.type)


class _Clock(L.Callback):
    def __init__(self, warmup: int, device: str):
        self.warmup, self.device = warmup, device
        self.start = self.end = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.warmup:
            self.start = _now(self.device)

    def on_train_batch_end(self, *args: Any) -> None:
        self.end = _now(self.device)


def lightning_rate(
    model_cfg: dict[str, Any], vocab: Vocab, batches: list[Batch], warmup: int, device: str, precision: str
) -> float:
    """Tokens/s of the real PoemLM under a Lightning Trainer (logging every step as in training)."""
    torch.manual_seed(0)
    module = PoemLM(
        model=model_cfg, optim={"lr": 3e-3, "weight_decay": 0.01, "warmup_steps": 10}, vocab=vocab.to_dict()
    )
    clock = _Clock(warmup, device)
    trainer = L.Trainer(
        accelerator="gpu" if device.startswith("cuda") else "cpu",
        devices=1,
        precision=precision,  # type: ignore[arg-type]
        max_steps=len(batches),
        gradient_clip_val=1.0,
        logger=False,
        callbacks=[clock],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None, pin_memory=device != "cpu"))
    return sum(tokens(b) for b in batches[warmup:]) / (clock.end - clock.start)


TINY = {"embed_dim": 8, "hidden_size": 8, "param_budget": None, "num_layers": 1, "head": "full", "out_dim": None}


def lightning_step_cost(
    model_cfg: dict[str, Any], vocab: Vocab, batches: list[Batch], settings: BenchSettings
) -> dict[str, float]:
    """Seconds per step of the plain loop and of Lightning on a model (:data:`TINY`) and batches (two poems)
    so small that their difference, Lightning's fixed cost per step, is most of what is timed: unlike a 1-3 %
    difference between two long timings, it stands out of this machine's noise. Float32 on both sides."""
    cfg = {**model_cfg, **TINY}
    batches = [{k: v[:2] for k, v in b.items()} for b in batches]
    device, warmup = settings.device, settings.warmup
    rates = alternate(
        {
            "plain": lambda: plain_rate(build_model(cfg, vocab).to(device), batches, warmup),
            "lightning": lambda: lightning_rate(cfg, vocab, batches, warmup, device, "32-true"),
        },
        settings.reps,
    )
    per_batch = mean_tokens(batches[warmup:])  # of the two-poem batches
    return {"plain_step_s": per_batch / rates["plain"], "lightning_step_s": per_batch / rates["lightning"]}


def rounds(measure: dict[str, Callable[[], float]], reps: int) -> dict[str, list[float]]:
    """Each measurement once per round, in turn, for ``reps`` rounds, so slow spells hit every side."""
    values: dict[str, list[float]] = {k: [] for k in measure}
    for _ in range(reps):
        for name, fn in measure.items():
            values[name].append(fn())
    return values


def alternate(measure: dict[str, Callable[[], float]], reps: int) -> dict[str, float]:
    """The median of each measurement over :func:`rounds`."""
    return {k: statistics.median(v) for k, v in rounds(measure, reps).items()}


# -- other timings ----------------------------------------------------------------------------------------


def sampling_rates(model: CharLM, vocab: Vocab, n: int) -> dict[str, Any]:
    """Poems/s for ``n`` poems sampled in one batch and one at a time, and the cost of one decoding step with
    the batch kept full (a regular form ends every poem at the same step) against one poem."""
    decoding.sample(model, vocab, decoding.SamplingConfig(n=2, seed=0))  # warm-up
    start = time.perf_counter()
    decoding.sample(model, vocab, decoding.SamplingConfig(n=n, seed=0))
    batched = n / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(n):
        decoding.sample(model, vocab, decoding.SamplingConfig(n=1, seed=i))
    single = n / (time.perf_counter() - start)
    step_s = {}
    for rows in (1, n):
        cfg = decoding.SamplingConfig(n=rows, seed=0, form="wuyan_jueju")
        start = time.perf_counter()
        decoding.sample(model, vocab, cfg)
        step_s["one" if rows == 1 else "batch"] = (time.perf_counter() - start) / (cfg.max_chars + 1)
    return {"batched_poems_per_s": batched, "single_poems_per_s": single, "step_s": step_s}


def diagnostics_overhead(model: CharLM, prepared: Prepared, batches: list[Batch], warmup: int) -> dict[str, float]:
    """Seconds of a gradient-flow measurement (the callback's, every 100 steps by default) and of the position
    losses at the end of a run, and of one training step, to set against a run's length."""
    device = next(model.parameters()).device.type
    step_s = mean_tokens(batches) / plain_rate(model, batches, warmup)
    probe = probe_batch(prepared.splits["val"], prepared.vocab).to(device)
    gradient_flow(model, probe)  # warm-up
    start = _now(device)
    for _ in range(3):
        gradient_flow(model, probe)
    flow_s = (_now(device) - start) / 3
    start = _now(device)
    position_losses(model, prepared.vocab, prepared.splits["val"])
    return {"step_s": step_s, "gradient_flow_s": flow_s, "position_losses_s": _now(device) - start}


def preparation_times(corpus: CorpusConfig, data_dir: Path) -> dict[str, float]:
    """Seconds to prepare the corpus into an empty cache (download already cached) and from the cache."""
    with tempfile.TemporaryDirectory() as tmp:
        if (data_dir / "raw").is_dir():
            (Path(tmp) / "raw").symlink_to((data_dir / "raw").resolve())
        start = time.perf_counter()
        prepare(corpus, tmp)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        prepare(corpus, tmp)
        warm = time.perf_counter() - start
    return {"cold_s": cold, "warm_s": warm}


def startup_seconds(overrides: list[str], runs: int) -> list[dict[str, float]]:
    """Seconds from launching ``scripts/train.py`` to its first training step (warm cache), each run fresh:
    ``total_s``, and ``launch_s`` of it before ``train()`` was entered (imports and Hydra's composition)."""
    out = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            args = [
                *overrides,
                "trainer.max_steps=1",
                "test_after_fit=false",
                "final_samples=0",
                "poetics_samples=0",
                "position_losses=false",
                "trainer.enable_progress_bar=false",
                f"hydra.run.dir={tmp}",
            ]
            done = subprocess.run(
                [sys.executable, str(ROOT / "scripts" / "train.py"), *args], capture_output=True, text=True, check=False
            )
            if done.returncode:
                raise TangshiError(f"scripts/train.py {' '.join(args)} failed: {done.stderr.strip().splitlines()[-1:]}")
            metrics = json.loads((Path(tmp) / "metrics.json").read_text(encoding="utf-8"))
            out.append({"total_s": metrics["startup_s"], "launch_s": metrics["launch_s"]})
    return out


def command_seconds(args: list[str], runs: int) -> list[float]:
    """Wall seconds of a fresh ``python <args>``, ``runs`` times (it must succeed)."""
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, *args], capture_output=True, text=True, check=False, cwd=ROOT)
        out.append(time.perf_counter() - start)
        if done.returncode:
            raise TangshiError(f"python {' '.join(args)} failed: {done.stderr.strip().splitlines()[-1:]}")
    return out


IMPORTS = {"python": "pass", "torch": "import torch", "torch + lightning": "import torch, lightning"}


# -- the whole benchmark ----------------------------------------------------------------------------------


def run(
    settings: BenchSettings,
    prepared: Prepared,
    model_cfg: dict[str, Any],
    corpus: CorpusConfig,
    data_dir: Path,
    *,
    startup_overrides: list[str] | None = None,
    sampler: CharLM | None = None,
    sampler_vocab: Vocab | None = None,
    sample_command: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every measurement of the benchmark; see the README's Performance section for what each means.
    ``sampler`` (a trained model, with its vocabulary) is what sampling speed is measured on; ``sample_command``
    (``scripts/sample.py`` and its arguments) is timed end to end in fresh processes."""
    vocab, device = prepared.vocab, settings.device
    batches = make_batches(
        PoemDataset(prepared.splits["train"], vocab), settings.batch_size, settings.steps + settings.warmup
    )
    bf16 = settings.precision == "bf16-mixed"
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch_size": settings.batch_size,
        "tokens_per_batch": mean_tokens(batches[settings.warmup :]),
        "precision": settings.precision,
        "model": {k: v for k, v in model_cfg.items() if k != "cell"},
        "cells": {},
    }

    def fresh(cell: str) -> CharLM:
        torch.manual_seed(0)
        return build_model({**model_cfg, "cell": cell}, vocab).to(device)

    for cell in settings.cells:
        log(f"{cell}: Lightning vs plain loop, {settings.precision} against float32 …")
        cfg = {**model_cfg, "cell": cell}
        # Ratios are taken within a round (measurements seconds apart), then the median over rounds: on a
        # shared machine the speed drifts by more than the overhead being measured.
        measure = {
            "peak": lambda: mm_peak(device, torch.bfloat16 if bf16 else torch.float32),
            "plain": lambda cell=cell: plain_rate(fresh(cell), batches, settings.warmup, bf16),
            "plain_muon": lambda cell=cell: plain_rate(fresh(cell), batches, settings.warmup, bf16, "muon"),
            "lightning": lambda cfg=cfg: lightning_rate(
                cfg, vocab, batches, settings.warmup, device, settings.precision
            ),
        }
        if bf16:
            measure["plain_float32"] = lambda cell=cell: plain_rate(fresh(cell), batches, settings.warmup)
        r = rounds(measure, settings.reps)
        model = fresh(cell)
        flops_per_token = train_flops(model, batches) / sum(tokens(b) for b in batches)
        med = statistics.median
        result["cells"][cell] = {
            "plain_tokens_per_s": med(r["plain"]),
            "lightning_tokens_per_s": med(r["lightning"]),
            "lightning_overhead": med(1 - lit / pl for lit, pl in zip(r["lightning"], r["plain"], strict=True)),
            "muon_tokens_per_s": med(r["plain_muon"]),
            # Muon's Newton-Schulz iterations against AdamW's elementwise update, in the plain loop
            "muon_vs_adamw": med(mu / pl for mu, pl in zip(r["plain_muon"], r["plain"], strict=True)),
            "train_flops_per_token": flops_per_token,
            "useful_flops": med(r["lightning"]) * flops_per_token,
            "mm_peak_flops": med(r["peak"]),
            "fraction_of_mm_peak": med(
                lit * flops_per_token / pk for lit, pk in zip(r["lightning"], r["peak"], strict=True)
            ),
            "rounds": r,
            "params": model.param_counts(),
        }
        if bf16:
            result["cells"][cell]["bf16_speedup"] = med(
                b / f for b, f in zip(r["plain"], r["plain_float32"], strict=True)
            )
    log("Lightning's fixed cost per step …")
    result["lightning_step_cost"] = lightning_step_cost(model_cfg, vocab, batches, settings)
    cell = settings.cells[0]
    log("sampling …")
    if sampler is None:  # an untrained model never writes <eos>: every poem runs to max_len
        sampler, sampler_vocab, source = fresh(cell).eval(), vocab, f"untrained {cell}"
    else:
        sampler_vocab, source = sampler_vocab or vocab, "trained checkpoint"
    result["sampling"] = {"poems": settings.sample_poems, "model": source}
    result["sampling"].update(sampling_rates(sampler.to(device).eval(), sampler_vocab, settings.sample_poems))
    recurrent = next((c for c in settings.cells if getattr(fresh(c).core, "recurrent", False)), None)
    if recurrent:
        log("diagnostics …")
        result["diagnostics"] = {
            "cell": recurrent,
            **diagnostics_overhead(fresh(recurrent), prepared, batches, settings.warmup),
        }
    log("corpus preparation, start-up …")
    result["preparation"] = preparation_times(corpus, data_dir)
    if settings.startup_runs:
        result["startup"] = {
            "runs": startup_seconds(startup_overrides or [], settings.startup_runs),
            "imports_s": {k: min(command_seconds(["-c", code], settings.startup_runs)) for k, code in IMPORTS.items()},
        }
        if sample_command:
            result["startup"]["sample"] = {
                "command": " ".join(["python", *sample_command]),
                "runs_s": command_seconds(sample_command, settings.startup_runs),
            }
    return result


def to_markdown(r: dict[str, Any]) -> str:
    bf16 = r["precision"] == "bf16-mixed"
    columns = ["cell", "plain loop tok/s", "Lightning tok/s", "Lightning overhead", "Muon vs AdamW", "useful GFLOP/s"]
    columns += ["mm peak GFLOP/s", "of mm peak"] + (["bf16 vs float32"] if bf16 else [])
    rows = [
        [
            cell,
            f"{c['plain_tokens_per_s']:,.0f}",
            f"{c['lightning_tokens_per_s']:,.0f}",
            f"{c['lightning_overhead']:+.1%}",
            f"{c['muon_vs_adamw']:.2f}x",
            f"{c['useful_flops'] / 1e9:.1f}",
            f"{c['mm_peak_flops'] / 1e9:.0f}",
            f"{c['fraction_of_mm_peak']:.0%}",
            *([f"{c['bf16_speedup']:.2f}x"] if bf16 else []),
        ]
        for cell, c in r["cells"].items()
    ]
    lines = [
        f"# Benchmark: {r['device']}, torch {r['torch']}, {r['threads']} threads, batch {r['batch_size']}, "
        f"{r['precision']}",
        "",
        f"Medians over rounds; the overhead and the share of the torch.mm peak ({'bf16' if bf16 else 'float32'}, "
        "the training precision) are taken within a round.",
        "",
        *markdown_table(columns, rows),
    ]
    cost = r["lightning_step_cost"]
    extra = cost["lightning_step_s"] - cost["plain_step_s"]
    lines += [
        "",
        f"Lightning's fixed cost per step ({TINY['hidden_size']} hidden units, two poems a batch, float32): "
        f"{cost['lightning_step_s'] * 1e3:.1f} ms vs {cost['plain_step_s'] * 1e3:.1f} ms in the plain loop, "
        f"{extra * 1e3:.1f} ms, which is "
        + ", ".join(
            f"{extra * c['lightning_tokens_per_s'] / r['tokens_per_batch']:.1%} of a {name} step"
            for name, c in r["cells"].items()
        )
        + ".",
    ]
    s, p = r["sampling"], r["preparation"]
    full_batch = s["poems"] * s["step_s"]["one"] / s["step_s"]["batch"]
    speedup = s["batched_poems_per_s"] / s["single_poems_per_s"]
    lines += [
        "",
        f"Sampling {s['poems']} poems ({s['model']}): {s['batched_poems_per_s']:.1f} poems/s batched, "
        f"{s['single_poems_per_s']:.2f} poems/s one at a time ({speedup:.0f}x). A decoding step (wuyan_jueju, no "
        f"poem ends early): {s['step_s']['batch'] * 1e3:.2f} ms for {s['poems']} poems, {s['step_s']['one'] * 1e3:.2f} "
        f"ms for one, so a full batch is at most {full_batch:.0f}x one poem's rate.",
    ]
    if "diagnostics" in r:
        d = r["diagnostics"]
        lines.append(
            f"Diagnostics ({d['cell']}): gradient flow {d['gradient_flow_s'] * 1e3:.0f} ms per measurement, position "
            f"losses {d['position_losses_s']:.1f} s once; a training step {d['step_s'] * 1e3:.0f} ms."
        )
    lines.append(f"Corpus preparation: {p['cold_s']:.1f} s cold (download cached), {p['warm_s']:.2f} s warm.")
    if "startup" in r:
        st = r["startup"]
        lines.append(
            "Start-up to the first training step (warm cache): "
            + ", ".join(f"{u['total_s']:.1f} s (imports and Hydra {u['launch_s']:.1f} s)" for u in st["runs"])
            + ". A fresh interpreter that only imports: "
            + ", ".join(f"{name} {v:.1f} s" for name, v in st["imports_s"].items())
            + "."
        )
        if "sample" in st:
            runs = st["sample"]["runs_s"]
            lines.append(
                f"`{st['sample']['command']}`: median {statistics.median(runs):.2f} s wall over {len(runs)} runs "
                f"({', '.join(f'{x:.2f}' for x in runs)})."
            )
    return "\n".join(lines) + "\n"
