"""Benchmarks: where training time goes, how close it runs to the hardware, and which options pay.

The machines this runs on are shared and noisy, so each comparison is a ratio of measurements taken in
the same process on the same batches, alternating the two sides (``reps`` rounds) and keeping the median.
Throughput counts real tokens only (not padding), from the first step after ``warmup`` to the end of the last.
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
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.utils.data import DataLoader

from tangshi import decoding
from tangshi.corpus import CorpusConfig, Prepared, prepare
from tangshi.datamodule import BucketBatchSampler, PoemDataset, collate
from tangshi.diagnostics import gradient_flow, position_losses, probe_batch
from tangshi.errors import TangshiError
from tangshi.evaluate import mean_loss
from tangshi.model import IGNORE_INDEX, CharLM, bits, build_model
from tangshi.module import PoemLM
from tangshi.vocab import PAD_ID, Vocab

Batch = dict[str, Tensor]


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
    """Multiply-adds × 2 of one forward pass over the real tokens of ``targets`` (matrix products only:
    the recurrent gates, the projection and the softmax head; element-wise work is not counted)."""
    n = int((targets != IGNORE_INDEX).sum())
    per_token = model.core.flops_per_token(targets.shape[1])  # type: ignore[operator]
    if model.proj is not None:
        per_token += 2 * model.proj.in_features * model.proj.out_features
    dec = model.decoder
    if isinstance(dec, nn.Linear):
        return n * (per_token + 2 * dec.in_features * dec.out_features)
    total = n * (per_token + 2 * dec.in_features * dec.head.out_features)
    t = targets[targets != IGNORE_INDEX]
    for i, tail in enumerate(dec.tail):  # only tokens of cluster i pay for its two matrices
        count = int(((t >= dec.cutoffs[i]) & (t < dec.cutoffs[i + 1])).sum())
        total += count * sum(2 * m.in_features * m.out_features for m in tail if isinstance(m, nn.Linear))
    return float(total)


def train_flops(model: CharLM, batches: Iterable[Batch]) -> float:
    """Useful FLOPs of training on ``batches``: the backward pass costs two forwards."""
    return 3 * sum(forward_flops(model, b["targets"]) for b in batches)


def mm_peak(device: str = "cpu", seconds: float = 1.0) -> float:
    """FLOP/s of torch.mm on a few large float32 shapes like the model's, best of them: the roofline."""
    best = 0.0
    for m, k, n in ((4096, 256, 1024), (2048, 512, 2048), (1024, 1024, 1024)):
        a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
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
    model: CharLM,
    *,
    lr: float = 3e-3,
    clip: float = 1.0,
    bf16: bool = False,
    packed: bool = False,
    compile_loss: bool = False,
) -> Callable[[Batch], None]:
    """One step of a minimal PyTorch loop: forward, loss, backward, clip, AdamW step."""
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    loss_fn = torch.compile(model.nll, dynamic=True) if compile_loss else model.nll
    model.train()
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    def step(batch: Batch) -> None:
        inputs, targets = batch["inputs"].to(device), batch["targets"].to(device)  # no-op when already there
        with amp:
            feats = _packed_forward(model, inputs) if packed else model(inputs)[0]
            total, count = loss_fn(feats, targets)
        (total / count).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def plain_rate(model: CharLM, batches: list[Batch], warmup: int, **options: Any) -> float:
    """Tokens/s of :func:`plain_step` (``options``: its keyword arguments)."""
    return _rate(plain_step(model, **options), batches, warmup, next(model.parameters()).device.type)


def _packed_forward(model: CharLM, inputs: Tensor) -> Tensor:
    """The core over packed sequences (no work on padding) instead of padded ones."""
    lengths = (inputs != PAD_ID).sum(1).clamp(min=1).cpu()
    packed = pack_padded_sequence(model.drop(model.embed(inputs)), lengths, batch_first=True, enforce_sorted=False)
    out, _ = model.core(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=inputs.shape[1])
    out = model.drop(out)
    return model.proj(out) if model.proj is not None else out


def _rate(step: Callable[[Batch], None], batches: list[Batch], warmup: int, device: str) -> float:
    on_device = [{k: v.to(device, non_blocking=True) for k, v in b.items()} for b in batches]
    for b in on_device[:warmup]:
        step(b)
    start = _now(device)
    for b in on_device[warmup:]:
        step(b)
    return sum(tokens(b) for b in batches[warmup:]) / (_now(device) - start)


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
    model_cfg: dict[str, Any], vocab: Vocab, batches: list[Batch], warmup: int, device: str, precision: str = "32-true"
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
    model_cfg: dict[str, Any], vocab: Vocab, batches: list[Batch], warmup: int, device: str, reps: int
) -> dict[str, float]:
    """Seconds per step of the plain loop and of Lightning on a model (:data:`TINY`) and batches (two poems)
    so small that their difference, Lightning's fixed cost per step, is most of what is timed: unlike a 1-3 %
    difference between two long timings, it stands out of this machine's noise."""
    cfg = {**model_cfg, **TINY}
    batches = [{k: v[:2] for k, v in b.items()} for b in batches]
    rates = alternate(
        {
            "plain": lambda: plain_rate(build_model(cfg, vocab).to(device), batches, warmup),
            "lightning": lambda: lightning_rate(cfg, vocab, batches, warmup, device),
        },
        reps,
    )
    per_batch = mean_tokens(batches[warmup:])  # of the two-poem batches
    plain, lit = per_batch / rates["plain"], per_batch / rates["lightning"]
    return {"plain_step_s": plain, "lightning_step_s": lit, "cost_s": lit - plain}


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


def sampling_rates(model: CharLM, vocab: Vocab, n: int) -> dict[str, float]:
    """Poems/s for ``n`` poems sampled in one batch and one at a time."""
    decoding.sample(model, vocab, decoding.SamplingConfig(n=2, seed=0))  # warm-up
    start = time.perf_counter()
    decoding.sample(model, vocab, decoding.SamplingConfig(n=n, seed=0))
    batched = n / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(n):
        decoding.sample(model, vocab, decoding.SamplingConfig(n=1, seed=i))
    single = n / (time.perf_counter() - start)
    # A regular form ends every poem at the same step, so no poem leaves the batch early: the cost of one
    # step at n rows against one row bounds what batching can gain.
    step_s = {}
    for rows in (1, n):
        cfg = decoding.SamplingConfig(n=rows, seed=0, form="wuyan_jueju")
        start = time.perf_counter()
        decoding.sample(model, vocab, cfg)
        step_s[rows] = (time.perf_counter() - start) / (cfg.max_chars + 1)
    return {
        "batched_poems_per_s": batched,
        "single_poems_per_s": single,
        "speedup": batched / single,
        "step_s": {"one": step_s[1], "batch": step_s[n]},
        "full_batch_speedup": n * step_s[1] / step_s[n],
    }


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


def startup_seconds(overrides: list[str], runs: int = 3) -> list[dict[str, float]]:
    """Seconds from launching ``scripts/train.py`` to its first training step (warm cache), each run fresh:
    ``total_s``, and ``launch_s`` of it before ``train()`` was entered (imports and Hydra's composition)."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "train.py"
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
                "~callbacks.progress_bar",
                f"hydra.run.dir={tmp}",
            ]
            done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, check=False)
            if done.returncode:
                raise TangshiError(f"scripts/train.py {' '.join(args)} failed: {done.stderr.strip().splitlines()[-1:]}")
            metrics = json.loads((Path(tmp) / "metrics.json").read_text(encoding="utf-8"))
            out.append({"total_s": metrics["startup_s"], "launch_s": metrics["launch_s"]})
    return out


IMPORTS = {"python": "pass", "torch": "import torch", "torch + lightning": "import torch, lightning"}


def import_seconds(runs: int = 3) -> dict[str, float]:
    """Best-of-``runs`` wall seconds of a fresh interpreter that only imports each of :data:`IMPORTS`: the
    floor under start-up that this project's code does not control."""
    out = {}
    for name, code in IMPORTS.items():
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            times.append(time.perf_counter() - start)
        out[name] = min(times)
    return out


@contextmanager
def busy_core() -> Any:
    """Another process spinning on one core, as when tests or a second run share the machine."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        yield
    finally:
        proc.kill()
        proc.wait()


@contextmanager
def threads(n: int) -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_for(model: CharLM, batches: list[Batch], seconds: float) -> int:
    """Train for a wall-clock budget, cycling through ``batches``; returns the steps taken."""
    step = plain_step(model)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step(batches[steps % len(batches)])
        steps += 1
    return steps


# -- the whole benchmark ----------------------------------------------------------------------------------


def run(
    prepared: Prepared,
    model_cfg: dict[str, Any],
    *,
    corpus: CorpusConfig,
    data_dir: Path,
    cells: list[str],
    batch_size: int = 64,
    steps: int = 40,
    warmup: int = 5,
    reps: int = 2,
    device: str = "cpu",
    sample_poems: int = 100,
    budget_s: float = 60.0,
    startup_overrides: list[str] | None = None,
    startup_runs: int = 3,
    options: bool = True,
    diag_every: int = 100,
    diag_steps: int = 2000,
    log: Callable[[str], None] = print,
    sampler: CharLM | None = None,
    sampler_vocab: Vocab | None = None,
) -> dict[str, Any]:
    """Every measurement of the benchmark; see the README's Performance section for what each means.
    ``sampler`` (a trained model, with its vocabulary) is what sampling speed is measured on."""
    vocab = prepared.vocab
    train_ds = PoemDataset(prepared.splits["train"], vocab)
    val_ds = PoemDataset(prepared.splits["val"][:512], vocab)  # enough to rank the heads, quick to score
    batches = make_batches(train_ds, batch_size, steps + warmup)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "model": {k: v for k, v in model_cfg.items() if k != "cell"},
    }

    def fresh(cell: str, **changes: Any) -> CharLM:
        torch.manual_seed(0)
        return build_model({**model_cfg, "cell": cell, **changes}, vocab).to(device)

    result["cells"] = {}
    for cell in cells:
        log(f"{cell}: Lightning vs plain loop …")
        cfg = {**model_cfg, "cell": cell}
        # Ratios are taken within a round (measurements seconds apart), then the median over rounds: on a
        # shared machine the speed drifts by more than the overhead being measured.
        r = rounds(
            {
                "peak": lambda: mm_peak(device),
                "plain": lambda cell=cell: plain_rate(fresh(cell), batches, warmup),
                "lightning": lambda cfg=cfg: lightning_rate(cfg, vocab, batches, warmup, device),
            },
            reps,
        )
        model = fresh(cell)
        flops_per_token = train_flops(model, batches) / sum(tokens(b) for b in batches)
        med = statistics.median
        result["cells"][cell] = {
            "plain_tokens_per_s": med(r["plain"]),
            "lightning_tokens_per_s": med(r["lightning"]),
            "lightning_overhead": med(1 - lit / pl for lit, pl in zip(r["lightning"], r["plain"], strict=True)),
            "train_flops_per_token": flops_per_token,
            "useful_flops": med(r["lightning"]) * flops_per_token,
            "mm_peak_flops": med(r["peak"]),
            "fraction_of_mm_peak": med(
                lit * flops_per_token / pk for lit, pk in zip(r["lightning"], r["peak"], strict=True)
            ),
            "rounds": r,
            "params": model.param_counts(),
        }
    log("Lightning's fixed cost per step …")
    cost = result["lightning_step_cost"] = lightning_step_cost(model_cfg, vocab, batches, warmup, device, reps)
    per_batch = mean_tokens(batches[warmup:])
    for c in result["cells"].values():  # that cost against each cell's own step time
        c["lightning_step_cost_share"] = cost["cost_s"] / (per_batch / c["lightning_tokens_per_s"])
    cell = cells[0]
    log("sampling …")
    if sampler is None:  # an untrained model never writes <eos>: every poem runs to max_len
        sampler, sampler_vocab, source = fresh(cell).eval(), vocab, f"untrained {cell}"
    else:
        sampler_vocab, source = sampler_vocab or vocab, "trained checkpoint"
    result["sampling"] = {"poems": sample_poems, "model": source}
    result["sampling"].update(sampling_rates(sampler.to(device).eval(), sampler_vocab, sample_poems))
    log("diagnostics overhead …")
    result["diagnostics"] = diagnostics_overhead(fresh(cell), prepared, batches, warmup, diag_every, diag_steps)
    log("corpus preparation, start-up …")
    result["preparation"] = preparation_times(corpus, data_dir)
    if startup_runs:
        result["startup"] = {
            "runs": startup_seconds(startup_overrides or [], startup_runs),
            "imports_s": import_seconds(startup_runs),
        }
    if options:
        result["options"] = measure_options(
            fresh, cell, batches, train_ds, val_ds, batch_size, steps, warmup, reps, device, budget_s, log
        )
    return result


def diagnostics_overhead(
    model: CharLM, prepared: Prepared, batches: list[Batch], warmup: int, every: int, steps: int
) -> dict[str, float]:
    """Time of the diagnostics as a share of a default run's training time: a gradient-flow measurement
    every ``every`` steps, and the position losses once at the end, against ``steps`` training steps."""
    device = next(model.parameters()).device.type
    rate = plain_rate(model, batches, warmup)
    step_s = mean_tokens(batches) / rate
    probe = probe_batch(prepared.splits["val"], prepared.vocab).to(device)
    gradient_flow(model, probe)  # warm-up
    start = _now(device)
    for _ in range(3):
        gradient_flow(model, probe)
    flow_s = (_now(device) - start) / 3
    start = _now(device)
    position_losses(model, prepared.vocab, prepared.splits["val"])
    positions_s = _now(device) - start
    train_s = steps * step_s
    return {
        "step_s": step_s,
        "gradient_flow_s": flow_s,
        "position_losses_s": positions_s,
        "every_n_steps": every,
        "run_steps": steps,
        "overhead": (flow_s * (steps // every + 1) + positions_s) / train_s,
    }


def measure_options(
    fresh: Callable[..., CharLM],
    cell: str,
    batches: list[Batch],
    train_ds: PoemDataset,
    val_ds: PoemDataset,
    batch_size: int,
    steps: int,
    warmup: int,
    reps: int,
    device: str,
    budget_s: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Each option against the default, as tokens/s ratios (and, for the head, val bpc at equal time)."""
    out: dict[str, Any] = {}
    log("option: adaptive vs full softmax …")
    speed = alternate(
        {
            "adaptive": lambda: plain_rate(fresh(cell, head="adaptive"), batches, warmup),
            "full": lambda: plain_rate(fresh(cell, head="full"), batches, warmup),
        },
        reps,
    )
    quality = {}
    for head in ("adaptive", "full"):
        model = fresh(cell, head=head)
        steps_done = train_for(model, batches, budget_s)
        quality[head] = {"steps": steps_done, "val_bpc": bits(mean_loss(model, val_ds, 128))}
    out["head"] = {"tokens_per_s": speed, "speedup": speed["adaptive"] / speed["full"], "equal_time": quality}
    out["head"]["equal_time"]["seconds"] = budget_s

    log("option: bf16 autocast …")
    out["bf16"] = {"unsupported": {}}
    for c in dict.fromkeys([cell, "rnn"]):  # oneDNN builds without bf16 LSTM/GRU kernels: fall back to rnn
        try:
            bf16 = alternate(
                {
                    "float32": lambda c=c: plain_rate(fresh(c), batches, warmup),
                    "bf16": lambda c=c: plain_rate(fresh(c), batches, warmup, bf16=True),
                },
                reps,
            )
        except RuntimeError as e:
            out["bf16"]["unsupported"][c] = str(e).splitlines()[0]
            continue
        out["bf16"].update(cell=c, tokens_per_s=bf16, speedup=bf16["bf16"] / bf16["float32"])
        break

    log("option: torch.compile of the head and loss …")
    try:
        plain_rate(fresh(cell), batches[: warmup + 2], warmup, compile_loss=True)  # compile once, untimed
        comp = alternate(
            {
                "eager": lambda: plain_rate(fresh(cell), batches, warmup),
                "compiled": lambda: plain_rate(fresh(cell), batches, warmup, compile_loss=True),
            },
            reps,
        )
        out["compile"] = {"tokens_per_s": comp, "speedup": comp["compiled"] / comp["eager"]}
    except Exception as e:  # no C++ compiler, or an unsupported op: report it, do not stop the benchmark
        out["compile"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}

    if device == "cpu" and (os.cpu_count() or 1) > 1:
        log("option: threads, idle and with a busy core …")
        n = torch.get_num_threads()
        out["threads"] = {}
        for label, ctx in (("idle", nullcontext), ("one core busy", busy_core)):
            with ctx():
                for t in sorted({1, n}):
                    with threads(t):
                        out["threads"][f"{t} thread{'s' if t > 1 else ''}, {label}"] = plain_rate(
                            fresh(cell), batches, warmup
                        )

    log("option: batching …")
    random_batches = make_batches(train_ds, batch_size, steps + warmup, mode="random")
    batching = alternate(
        {
            "bucketed, padded": lambda: plain_rate(fresh(cell), batches, warmup),
            "random, padded": lambda: plain_rate(fresh(cell), random_batches, warmup),
            "random, packed": lambda: plain_rate(fresh(cell), random_batches, warmup, packed=True),
            "bucketed, packed": lambda: plain_rate(fresh(cell), batches, warmup, packed=True),
        },
        reps,
    )
    out["batching"] = {"tokens_per_s": batching}
    return out


def to_markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# Benchmark: {r['device']}, torch {r['torch']}, {r['threads']} threads, batch {r['batch_size']}",
        "",
        "Medians over rounds; the overhead and the share of the torch.mm peak (float32) are taken within a round.",
        "",
        "| cell | plain loop tok/s | Lightning tok/s | Lightning overhead | useful GFLOP/s | mm peak GFLOP/s "
        "| of mm peak |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for cell, c in r["cells"].items():
        lines.append(
            f"| {cell} | {c['plain_tokens_per_s']:,.0f} | {c['lightning_tokens_per_s']:,.0f} | "
            f"{c['lightning_overhead']:+.1%} | {c['useful_flops'] / 1e9:.1f} | {c['mm_peak_flops'] / 1e9:.0f} | "
            f"{c['fraction_of_mm_peak']:.0%} |"
        )
    cost = r["lightning_step_cost"]
    lines += [
        "",
        f"Lightning's fixed cost per step ({TINY['hidden_size']} hidden units, two poems a batch): "
        f"{cost['lightning_step_s'] * 1e3:.1f} ms vs {cost['plain_step_s'] * 1e3:.1f} ms in the plain loop, "
        f"{cost['cost_s'] * 1e3:.1f} ms, which is "
        + ", ".join(f"{c['lightning_step_cost_share']:.1%} of a {name} step" for name, c in r["cells"].items())
        + ".",
    ]
    s = r["sampling"]
    d = r["diagnostics"]
    p = r["preparation"]
    lines += [
        "",
        f"Sampling {s['poems']} poems ({s.get('model', 'untrained')}): {s['batched_poems_per_s']:.1f} poems/s batched, "
        f"{s['single_poems_per_s']:.2f} poems/s one at a time ({s['speedup']:.0f}×). A sampling step (wuyan_jueju, "
        f"no poem ends early): {s['step_s']['batch'] * 1e3:.2f} ms for {s['poems']} poems, "
        f"{s['step_s']['one'] * 1e3:.2f} ms for one, so a full batch is at most {s['full_batch_speedup']:.0f}× "
        "one poem's rate.",
        f"Diagnostics: gradient flow {d['gradient_flow_s'] * 1e3:.0f} ms per measurement (every "
        f"{d['every_n_steps']} steps), position losses {d['position_losses_s']:.1f} s once: "
        f"{d['overhead']:.1%} of a {d['run_steps']}-step run ({d['step_s'] * 1e3:.0f} ms/step).",
        f"Corpus preparation: {p['cold_s']:.1f} s cold (download cached), {p['warm_s']:.2f} s warm.",
    ]
    if "startup" in r:
        runs, imports = r["startup"]["runs"], r["startup"]["imports_s"]
        lines.append(
            "Start-up to the first training step (warm cache): "
            + ", ".join(f"{u['total_s']:.1f} s (imports and Hydra {u['launch_s']:.1f} s)" for u in runs)
            + ". A fresh interpreter that only imports: "
            + ", ".join(f"{name} {v:.1f} s" for name, v in imports.items())
            + "."
        )
    o = r.get("options")
    if o:
        h = o["head"]
        eq = h["equal_time"]
        lines += [
            "",
            "| option | measured | ratio to the default |",
            "| --- | --- | ---: |",
            f"| full softmax instead of adaptive | {h['tokens_per_s']['full']:,.0f} vs "
            f"{h['tokens_per_s']['adaptive']:,.0f} tok/s; after {eq['seconds']:.0f} s: val bpc "
            f"{eq['full']['val_bpc']:.2f} ({eq['full']['steps']} steps) vs {eq['adaptive']['val_bpc']:.2f} "
            f"({eq['adaptive']['steps']} steps) | {1 / h['speedup']:.2f} |",
        ]
        b = o["bf16"]
        for c, err in b["unsupported"].items():
            lines.append(f"| bf16 autocast, {c} | fails: {err[:70]} | – |")
        if "speedup" in b:
            lines.append(
                f"| bf16 autocast, {b['cell']} | {b['tokens_per_s']['bf16']:,.0f} vs "
                f"{b['tokens_per_s']['float32']:,.0f} tok/s | {b['speedup']:.2f} |"
            )
        c = o["compile"]
        if "error" in c:
            lines.append(f"| torch.compile (head and loss) | failed: {c['error']} | – |")
        else:
            lines.append(
                f"| torch.compile (head and loss) | {c['tokens_per_s']['compiled']:,.0f} vs "
                f"{c['tokens_per_s']['eager']:,.0f} tok/s | {c['speedup']:.2f} |"
            )
        base = o["batching"]["tokens_per_s"]["bucketed, padded"]
        for name, v in o["batching"]["tokens_per_s"].items():
            if name != "bucketed, padded":
                lines.append(f"| batches {name} (default: bucketed, padded) | {v:,.0f} tok/s | {v / base:.2f} |")
        if "threads" in o:
            ref = o["threads"].get(f"{r['threads']} threads, idle") or next(iter(o["threads"].values()))
            for name, v in o["threads"].items():
                lines.append(f"| {name} | {v:,.0f} tok/s | {v / ref:.2f} |")
    return "\n".join(lines) + "\n"
