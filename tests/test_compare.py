"""A tiny 2-cell x 2-seed sweep through the real Hydra entry point (two jobs at a time, joblib launcher),
then scripts/compare.py on it."""

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tangshi.compare import Run, best_lr, summarise

from .conftest import TINY, run_script


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    sweep_dir = root / "sweep"
    tiny = [o for o in TINY if not o.startswith(("trainer.max_steps", "trainer.val_check_interval"))]
    common = [
        *tiny,
        "trainer.max_steps=12",
        "trainer.val_check_interval=6",
        "final_samples=0",
        "poetics_samples=0",
        f"paths.root_dir={root}",
    ]
    multirun = run_script(
        "train.py",
        "-m",
        "model.cell=rnn,gru",
        "seed=0,1",
        "hydra/launcher=parallel",
        *common,
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert multirun.returncode == 0, multirun.stderr[-3000:]
    crashed = run_script(
        "train.py", *common, "optim.lr=inf", "trainer.gradient_clip_val=null", f"hydra.run.dir={sweep_dir / 'crashed'}"
    )
    assert crashed.returncode == 2 and "training diverged" in crashed.stderr
    return sweep_dir


def test_compare_aggregates_the_sweep_and_lists_the_crash(sweep):
    out = run_script("compare.py", str(sweep))
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((sweep / "report.json").read_text(encoding="utf-8"))
    runs = {}
    for p in sweep.glob("*/metrics.json"):
        m = json.loads(p.read_text(encoding="utf-8"))
        runs.setdefault(m["cell"], []).append(m)
    for cell in ("rnn", "gru"):
        row, ms = report["cells"][cell], [m for m in runs[cell] if m["status"] == "completed"]
        assert row["runs"] == 2 and row["seeds"] == [0, 1]
        mean = sum(m["best_val_bpc"] for m in ms) / 2
        assert row["best_val_bpc"][0] == pytest.approx(mean)
        assert row["core_params"] == [ms[0]["params"]["core"]]
    p = report["welch_p"]["rnn vs gru"]["test_bpc"]
    assert 0 <= p <= 1
    assert [o["status"] for o in report["not_completed"]] == ["failed"]
    text = (sweep / "report.md").read_text(encoding="utf-8")
    assert "| rnn | 2 |" in text and "crashed" in text and "training diverged" in text
    assert (sweep / "val_bpc_vs_step.png").read_bytes()[:4] == b"\x89PNG"
    assert (sweep / "val_bpc_vs_time.png").stat().st_size > 1000
    assert "| gru | 2 |" in out.stdout
    # issue-5 diagnostics per cell: rhyme-position losses, gradient-flow ratios and their figures
    for cell in ("rnn", "gru"):
        ms = [m for m in runs[cell] if m["status"] == "completed"]
        rhyme = report["positions"][cell]["rhyme"]["loss"][0]
        assert rhyme == pytest.approx(sum(m["positions"]["rhyme"]["loss"] for m in ms) / 2)
        assert set(report["gradient_flow"][cell]["last"]) == {"layer0_k10", "layer0_k20", "layer0_k40"}
    assert "rhyme loss" in text and "layer0_k20 init" in text
    for name in ("gradient_flow.png", "loss_by_position.png"):
        assert (sweep / name).read_bytes()[:4] == b"\x89PNG"


def test_jobs_run_in_parallel_never_share_a_directory(sweep):
    dirs = sorted(p.parent.name for p in sweep.glob("*/.hydra"))
    assert dirs == ["0_rnn_seed0", "1_rnn_seed1", "2_gru_seed0", "3_gru_seed1", "crashed"]
    spans = []
    for d in dirs[:4]:
        m = json.loads((sweep / d / "metrics.json").read_text(encoding="utf-8"))
        assert Path(m["run_dir"]).name == d and f"{m['cell']}_seed{m['seed']}" in d
        assert m["threads"] == max(1, torch.get_num_threads() // 2)  # the cores shared by the two jobs
        assert (sweep / d / "checkpoints" / "best.ckpt").exists()
        events = EventAccumulator(str(sweep / d / "tensorboard")).Reload()
        times = [e.wall_time for tag in events.Tags()["scalars"] for e in events.Scalars(tag)]
        spans.append((min(times), max(times)))  # from fit start (params/*) to the test metrics
    # The joblib launcher ran two jobs at the same time. Which two depends on when each worker process
    # finished importing (on a busy CI machine the second one started 3 s late), so any pair counts.
    overlapping = [
        (i, j)
        for i in range(4)
        for j in range(i + 1, 4)
        if max(spans[i][0], spans[j][0]) < min(spans[i][1], spans[j][1])
    ]
    assert overlapping, spans


def test_best_learning_rate_per_cell():
    def run(cell: str, lr: float, bpc: float, seed: int = 0) -> Run:
        metrics = {"status": "completed", "cell": cell, "lr": lr, "seed": seed, "best_val_bpc": bpc}
        return Run(Path(f"{cell}-{lr}-{seed}"), {**metrics, "params": {"core": 1, "total": 2}})

    runs = [run("rnn", 1e-3, 8.0), run("rnn", 1e-2, 7.5), run("gru", 1e-3, 7.0), run("gru", 1e-3, 7.2, seed=1)]
    runs += [run("gru", 1e-2, 7.05), run("gru", 1e-2, 7.25, seed=1)]
    summary = summarise(runs)
    assert list(summary["cells"]) == ["rnn lr=0.001", "rnn lr=0.01", "gru lr=0.001", "gru lr=0.01"]
    assert summary["best_lr"] == {"rnn": 0.01, "gru": 0.001}
    assert list(summary["welch_p"]) == ["gru lr=0.001 vs gru lr=0.01"]  # only groups with two or more seeds
    assert best_lr(summarise(runs[2:4])["cells"]) == {}  # one rate per cell: nothing to choose


def test_compare_with_no_runs_is_one_line(tmp_path):
    out = run_script("compare.py", str(tmp_path))
    assert out.returncode == 2 and out.stderr.strip() == f"error: no runs (folders with .hydra/) under {tmp_path}"
