"""A tiny 2-cell x 2-seed sweep through the real Hydra entry point (two jobs at a time, joblib launcher),
then scripts/compare.py on it."""

import json
import math
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tangshi.compare import Run, best_lr, group_runs, plot, summarise, to_markdown

from .conftest import ROOT, TINY, run_script


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
    out = run_script("compare.py", str(sweep), "--data-dir", str(sweep.parent / "data"))
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((sweep / "report.json").read_text(encoding="utf-8"))
    runs = {}
    for p in sweep.glob("*/metrics.json"):
        m = json.loads(p.read_text(encoding="utf-8"))
        runs.setdefault(m["cell"], []).append(m)
    for cell in ("rnn", "gru"):
        row, ms = report["groups"][cell], [m for m in runs[cell] if m["status"] == "completed"]
        assert row["runs"] == 2 and row["seeds"] == [0, 1]
        assert row["values"]["best_val_bpc"] == [m["best_val_bpc"] for m in sorted(ms, key=lambda m: m["seed"])]
        assert row["best_val_bpc"][0] == pytest.approx(sum(m["best_val_bpc"] for m in ms) / 2)
        assert row["core_params"] == ms[0]["params"]["core"]
        assert row["converged"] is False  # 12 steps: every best is the last step
    p = report["welch_p"]["rnn vs gru"]["test_bpc"]
    assert 0 <= p <= 1
    assert [o["status"] for o in report["not_completed"]] == ["failed"]
    (floor,) = report["ngram"].values()  # the count-based floor on the same split and vocabulary
    assert floor["order"] == 5 and 0 < floor["test_bpc"] < 15
    text = (sweep / "report.md").read_text(encoding="utf-8")
    assert "| rnn | 2 |" in text and "crashed" in text and "training diverged" in text
    assert "(not converged: " in text and "| Kneser-Ney 5-gram" in text
    equal = report["equal"]  # best val bpc at the step and the training time every run reached
    assert equal["step"] == 12 and equal["seconds"] > 0 and set(equal["by_time"]) == {"rnn", "gru"}
    assert (sweep / "val_bpc_vs_step.png").read_bytes()[:4] == b"\x89PNG"
    assert (sweep / "val_bpc_vs_time.png").stat().st_size > 1000
    assert "| gru | 2 |" in out.stdout
    # diagnostics per cell: rhyme-position losses, gradient-flow ratios and their figures
    for cell in ("rnn", "gru"):
        ms = [m for m in runs[cell] if m["status"] == "completed"]
        rhyme = report["positions"][cell]["rhyme"]["loss"][0]
        assert rhyme == pytest.approx(sum(m["positions"]["rhyme"]["loss"] for m in ms) / 2)
        assert set(report["gradient_flow"][cell]["last"]) == {"layer0_k10", "layer0_k20", "layer0_k40"}
    assert "rhyme loss" in text and "layer0_k20 init" in text
    for name in ("gradient_flow.png", "loss_by_position.png"):
        assert (sweep / name).read_bytes()[:4] == b"\x89PNG"


def test_curves_run_against_time_since_the_first_training_step(sweep):
    from tangshi.compare import find_runs

    for run in find_runs([sweep]):
        if run.status == "completed":
            first_validation_s = run.curve[0][1]
            # the first validation comes after 6 training steps, not at time 0 (the old clock's start)
            assert 0 < first_validation_s < run.metrics["wall_time_s"]


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


def _run(cell: str, bpc: float | None, seed: int = 0, lr: float = 1e-3, core: int = 1000, **config) -> Run:
    """A finished (or, with bpc None, failed) run as compare reads it: metrics.json and the flattened config."""
    metrics = {"status": "failed" if bpc is None else "completed", "cell": cell, "lr": lr, "seed": seed}
    if bpc is not None:
        metrics |= {"best_val_bpc": bpc, "params": {"core": core, "total": 2 * core}, "steps": 10, "best_step": 5}
    return Run(Path(f"{cell}-{lr}-{core}-{seed}"), metrics, {"model.cell": cell, "seed": seed, **config})


def test_learning_rate_is_chosen_by_mean_over_seeds_with_a_stable_rate_above():
    runs = []
    for seed in range(3):
        runs += [_run("rnn", 7.6, seed, 5e-3), _run("rnn", 7.42 + 0.01 * seed, seed, 1e-2)]
        runs.append(_run("rnn", 7.40 if seed else 8.12, seed, 2e-2))  # best two seeds, but one blew up
        runs.append(_run("rnn", None if seed == 2 else 7.9, seed, 4e-2))  # a seed diverged
        runs += [
            _run("gru", 7.1, seed, 1e-2),
            _run("gru", 6.95 + 0.01 * seed, seed, 2e-2),
            _run("gru", 7.0, seed, 4e-2),
        ]
    best = best_lr(runs)
    # rnn: 2e-2 spreads 0.7 bits over its seeds and a seed of 4e-2 failed, so both are unstable; 1e-2 has the
    # lowest stable mean but no margin (2e-2 above it is unstable): 5e-3, below a stable 1e-2, is chosen
    assert (
        best["rnn"]["lr"] == 5e-3 and best["rnn"]["stable"]["0.02"] is False and best["rnn"]["stable"]["0.04"] is False
    )
    assert best["gru"]["lr"] == 2e-2 and best["gru"]["lowest_mean"] == 2e-2  # 4e-2 above it is stable
    assert best["gru"]["seeds"] == {"0.01": 3, "0.02": 3, "0.04": 3}


def test_runs_of_different_sizes_are_never_averaged_together(tmp_path):
    runs = [_run("lstm", 7.0 - 0.1 * s, s, core=200_000, **{"model.param_budget": 200000}) for s in range(2)]
    runs += [_run("lstm", 6.5 - 0.1 * s, s, core=800_000, **{"model.param_budget": 800000}) for s in range(2)]
    runs += [_run("gru", 6.9 - 0.1 * s, s, core=200_000, **{"model.param_budget": 200000}) for s in range(2)]
    summary = summarise(runs)
    assert list(summary["groups"]) == ["gru 200k", "lstm 200k", "lstm 800k"]
    assert summary["groups"]["lstm 800k"]["best_val_bpc"][0] == pytest.approx(6.45)
    assert "gru 200k vs lstm 800k" in summary["welch_p"]
    plots = plot(group_runs(runs), {}, tmp_path)
    assert "scaling.png" in plots and (tmp_path / "scaling.png").read_bytes()[:4] == b"\x89PNG"


def test_scaling_runs_are_told_apart_by_the_rate_they_used_and_a_diverged_run_is_marked():
    # runs of experiment=scaling made before and after its rate settings changed: the rate each used tells them
    # apart, not the rates configured for other cells or sizes
    old = {"optim.lr_by_cell.gru": 2e-2, "optim.lr_by_size_exponent": 0.5}
    new = {"optim.lr_by_cell.gru": 1e-2, "optim.lr_by_size_exponent.rnn": 0.5, "optim.lr_by_size_exponent.gru": 0.0}
    runs = [_run("lstm", 6.37, lr=2e-2, core=200_000, **old), _run("lstm", 6.2, lr=2e-2, core=800_000, **new)]
    runs += [_run("gru", 7.29, lr=2e-2, core=200_000, **old), _run("gru", 6.4, seed=1, lr=1e-2, core=200_000, **new)]
    runs[2].curve = [(250, 60.0, 7.55), (1000, 240.0, 7.29), (1750, 420.0, 9.11)]  # blew up after its best
    runs[3].curve = [(250, 60.0, 7.55), (1000, 240.0, 6.4), (1750, 420.0, 6.45)]  # overfitted a little
    runs += [
        _run("rnn", 6.7, lr=5e-3, core=200_000, **new, **{"model.param_budget": 200_000}),
        _run("rnn", 6.6, lr=2.5e-3, core=800_000, **new, **{"model.param_budget": 800_000}),
    ]
    # a rate per size is no grid: only the GRU, at two rates at 200k, gets a rate chosen
    assert list(best_lr(runs)) == ["gru"]
    runs = runs[:4]
    table = summarise(runs)["groups"]
    assert list(table) == ["gru 200k lr 0.01", "gru 200k lr 0.02", "lstm 200k lr 0.02", "lstm 800k lr 0.02"]
    assert table["gru 200k lr 0.02"]["unstable"] and not table["gru 200k lr 0.01"]["unstable"]
    runs[1].curve = [(2000, 60.0, 6.5), (8000, 240.0, 6.3), (10000, 300.0, 6.25)]  # still improving at the end
    runs[1].metrics |= {"steps": 10000, "best_step": 10000}
    text = to_markdown(summarise(runs), [])
    assert text.count("(unstable)") == 1
    # best by step 8,000 (the last fifth starts there) was 6.3, the end 6.25
    assert "10000/10000 (not converged: 0.050 bits gained in the last fifth)" in text


def test_compare_with_no_runs_is_one_line(tmp_path):
    out = run_script("compare.py", str(tmp_path))
    assert out.returncode == 2 and out.stderr.strip() == f"error: no runs (folders with .hydra/) under {tmp_path}"


def test_the_slurm_launcher_settings_run_through_submitits_local_executor(tmp_path):
    """hydra/launcher=slurm needs a cluster; its settings (all but the GPU request, as there is none here) run
    through the same plugin and submitit code path with submitit's local executor: jobs pickled, started as
    processes, results collected."""
    import yaml

    slurm = yaml.safe_load((ROOT / "conf" / "hydra" / "launcher" / "slurm.yaml").read_text(encoding="utf-8"))
    resources = [f"hydra.launcher.{k}={v}" for k, v in slurm.items() if k not in ("defaults", "gpus_per_node")]
    tiny = [o for o in TINY if not o.startswith("trainer.max_steps")]
    done = run_script(
        "train.py",
        "-m",
        "hydra/launcher=submitit_local",
        *resources,
        "hydra.launcher.cpus_per_task=1",
        "model.cell=gru,rnn",
        *tiny,
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "final_samples=0",
        "poetics_samples=0",
        f"paths.root_dir={tmp_path}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for job in ("0_gru_seed0", "1_rnn_seed0"):
        assert (
            json.loads((tmp_path / "sweep" / job / "metrics.json").read_text(encoding="utf-8"))["status"] == "completed"
        )
    assert list((tmp_path / "sweep" / ".submitit").iterdir())  # submitit's own job folders


def test_mean_and_deviation_survive_a_run_without_a_finite_value():
    from tangshi.compare import mean_std

    assert mean_std([7.0, 7.2]) == pytest.approx((7.1, 0.2 / math.sqrt(2)))
    mean, std = mean_std([7.0, math.inf])  # a diverged seed: the group's mean says so; no deviation
    assert mean == math.inf and math.isnan(std)
    assert all(math.isnan(v) for v in mean_std([]))
