"""A tiny 2-cell x 2-seed sweep through the real Hydra entry point (two jobs at a time, joblib launcher),
then scripts/compare.py on it."""

import json
import math
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tangshi import figures
from tangshi.atomic import write_json
from tangshi.comparison import best_lr, group_runs, summarise
from tangshi.config import cpu_has_amx, cpu_has_bf16
from tangshi.report import plot, to_markdown
from tangshi.runs import Run, load
from tangshi.stats import fisher_p, holm, mean_std, welch_p, wilson

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
        ms.sort(key=lambda m: m["seed"])
        assert row["runs"] == 2 and row["seeds"] == [0, 1] and row["seeds_are"] == "unknown"
        assert row["values"]["best_val_bpc"] == [m["best_val_bpc"] for m in ms]
        assert row["best_val_bpc"][0] == pytest.approx(sum(m["best_val_bpc"] for m in ms) / 2)
        assert row["core_params"] == ms[0]["params"]["core"]
        assert row["converged"] is False  # 12 steps: every best is the last step
        # rhyme shares: every seed's poems pooled, rhymed of well-formed
        poems = row["poems"]["wuyan_jueju"]
        assert poems["well_formed_n"] == sum(m["poems"]["wuyan_jueju"]["well_formed_n"] for m in ms) == 2 * 20
        assert poems["rhymed"] == sum(m["poems"]["wuyan_jueju"]["rhymed_n"] for m in ms)
    # one pair: Welch's p on the recorded seeds, and Holm over a family of one leaves it as it is
    tests = report["tests"]
    values = {c: report["groups"][c]["values"]["test_bpc"] for c in ("rnn", "gru")}
    assert tests["test_bpc"]["rnn vs gru"]["p"] == pytest.approx(welch_p(values["rnn"], values["gru"]))
    assert tests["test_bpc"]["rnn vs gru"]["holm"] == tests["test_bpc"]["rnn vs gru"]["p"]
    assert set(tests) >= {"best_val_bpc", "test_bpc", "free_rhyme", "wuyan_jueju_rhyme", "qiyan_jueju_rhyme"}
    assert [o["status"] for o in report["not_completed"]] == ["failed"]
    (floor,) = report["ngram"].values()  # the count-based floor on the same split and vocabulary
    assert floor["order"] == 5 and 0 < floor["test_bpc"] < 15
    (refs,) = report["references"].values()  # reference rows, as many poems as a run sampled per set
    assert refs["random characters in form"]["n"] == 20 and refs["real held-out poems"]["well_formed"] == 1.0
    text = (sweep / "report.md").read_text(encoding="utf-8")
    assert "| rnn | 2 |" in text and "crashed" in text and "training diverged" in text
    assert "(not converged: " in text and "| Kneser-Ney 5-gram" in text
    assert "Holm-adjusted" in text and "五绝: rhyme" in text and "Hardware: " in text
    assert "| real held-out poems (" in text and "| random characters in form (" in text
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
    for name in ("gradient_flow.png", "loss_by_position.png", "rhyme_vs_bpc.png"):
        assert (sweep / name).read_bytes()[:4] == b"\x89PNG"
    # without the corpus there are no reference rows, and the report does not speak of them
    bare = run_script("compare.py", str(sweep), "--no-ngram")
    assert bare.returncode == 0, bare.stderr[-3000:]
    text = (sweep / "report.md").read_text(encoding="utf-8")
    assert "| real held-out poems (" not in text and "The reference rows" not in text and "No reference rows" in text


def test_every_run_records_what_it_was(sweep):
    for path in sweep.glob("[0-9]_*/metrics.json"):
        m = json.loads(path.read_text(encoding="utf-8"))
        config, env = m["config"], m["environment"]
        assert config["optim"]["lr"] == 1e-2 and isinstance(config["optim"]["lr"], float)
        assert config["trainer"]["precision"] in ("32-true", "bf16-mixed") and "${" not in json.dumps(config)
        assert config["model"]["hidden_size"] == 64 and config["seed"] == m["seed"]
        # the sweep's command line sets trainer.max_steps, which drops the default 14-minute guard
        assert config["trainer"]["max_time"] is None and m["stopped_by"] == "max_steps"
        assert env["amx"] == cpu_has_amx() and env["hardware"].startswith(env["cpu"]) and env["threads"] >= 1
        assert env["bf16"] == cpu_has_bf16() and env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
        assert len(env["commit"]) == 40 and isinstance(env["dirty"], bool)
        assert env["torch"] == torch.__version__


def test_runs_made_before_records_are_grouped_from_their_saved_configs(sweep, tmp_path):
    # the same real run dirs with the record taken out of metrics.json, as runs made before it was written:
    # .hydra/config.yaml keeps its interpolations, and what only the run knew comes from metrics.json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(sweep, old, ignore=shutil.ignore_patterns("report*", "*.png"))
    for path in old.glob("*/metrics.json"):
        m = json.loads(path.read_text(encoding="utf-8"))
        write_json(path, {k: v for k, v in m.items() if k not in ("config", "environment")})
    assert "${cpu_precision:}" in (old / "0_rnn_seed0" / ".hydra" / "config.yaml").read_text(encoding="utf-8")
    runs = load([old])
    done = [r for r in runs if r.status == "completed"]
    assert not any(r.recorded for r in runs) and all(r.lr == 1e-2 for r in done)
    assert {r.settings["hardware"] for r in done} == {"unknown"}
    assert {r.settings["trainer.precision"] for r in done} == {r.metrics["precision"] for r in done}  # kept by the run
    assert all(r.settings["model.dropout"] == 0.1 for r in done)  # followed inside the saved config
    groups = summarise(runs)["groups"]
    assert {name: t["seeds"] for name, t in groups.items()} == {"rnn": [0, 1], "gru": [0, 1]}


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


def _run(cell: str, bpc: float | None, seed: int = 0, lr: float | None = 1e-3, core: int = 1000, **config) -> Run:
    """A finished (or, with bpc None, failed) run as report reads it: metrics.json with its record. ``config``
    holds dotted settings (``optim.weight_decay=0.1``) and ``hardware``."""
    metrics = {"status": "failed" if bpc is None else "completed", "cell": cell, "seed": seed}
    if bpc is not None:
        metrics |= {"best_val_bpc": bpc, "params": {"core": core, "total": 2 * core}, "steps": 10, "best_step": 5}
    nested: dict = {"seed": seed, "model": {"cell": cell}, "optim": {"lr": lr}, "trainer": {"precision": "32-true"}}
    for key, value in config.items():
        if key != "hardware":
            group, name = key.split(".", 1)
            nested.setdefault(group, {})[name] = value
    record = {"config": nested, "environment": {"hardware": config.get("hardware", "AMD EPYC (no AMX)")}}
    return Run(Path(f"{cell}-{lr}-{core}-{seed}"), {**metrics, **record}, record)


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


def test_two_rate_grids_of_one_cell_that_differ_in_another_setting_are_both_reported():
    runs = []
    for decay, bpcs in ((0.25, (7.0, 6.9, 7.3)), (0.01, (7.2, 7.1, 7.15))):
        for seed in range(2):
            runs += [
                _run("lstm", b + 0.01 * seed, seed, lr, **{"optim.weight_decay": decay})
                for lr, b in zip((1e-2, 2e-2, 4e-2), bpcs, strict=True)
            ]
    best = best_lr(runs)  # the old code gave both grids the label "lstm": one was silently lost
    assert set(best) == {"weight_decay=0.01", "weight_decay=0.25"}
    assert best["weight_decay=0.25"]["lr"] == 2e-2 and best["weight_decay=0.01"]["lr"] == 2e-2
    assert best["weight_decay=0.25"]["mean_best_val_bpc"] == pytest.approx(6.905)


def test_runs_of_different_sizes_are_never_averaged_together(tmp_path):
    runs = [_run("lstm", 7.0 - 0.1 * s, s, core=200_000, **{"model.param_budget": 200000}) for s in range(2)]
    runs += [_run("lstm", 6.5 - 0.1 * s, s, core=800_000, **{"model.param_budget": 800000}) for s in range(2)]
    runs += [_run("gru", 6.9 - 0.1 * s, s, core=200_000, **{"model.param_budget": 200000}) for s in range(2)]
    summary = summarise(runs)
    assert list(summary["groups"]) == ["gru 200k", "lstm 200k", "lstm 800k"]
    assert summary["groups"]["lstm 800k"]["best_val_bpc"][0] == pytest.approx(6.45)
    assert "gru 200k vs lstm 800k" in summary["tests"]["best_val_bpc"]
    plots = plot(group_runs(runs), {}, tmp_path)
    assert "scaling.png" in plots and (tmp_path / "scaling.png").read_bytes()[:4] == b"\x89PNG"


def test_runs_of_other_precisions_or_machines_are_not_seeds_and_the_label_says_which():
    runs = [_run("gru", 6.9 + 0.01 * s, s) for s in range(2)]
    runs += [_run("gru", 6.8, 2, **{"trainer.precision": "bf16-mixed"})]
    runs += [_run("gru", 6.7, 3, hardware="NVIDIA H200")]
    groups = summarise(runs)["groups"]
    assert {name: t["runs"] for name, t in groups.items()} == {
        "hardware=AMD EPYC (no AMX) precision=32-true": 2,
        "hardware=AMD EPYC (no AMX) precision=bf16-mixed": 1,
        "hardware=NVIDIA H200 precision=32-true": 1,
    }


def test_scaling_runs_are_told_apart_by_the_rate_they_used_and_a_diverged_run_is_marked():
    # the rate each run used (its record) tells runs apart, whatever settings produced it
    runs = [_run("lstm", 6.37, lr=2e-2, core=200_000, **{"model.param_budget": 200_000})]
    runs += [_run("lstm", 6.2, lr=2e-2, core=800_000, **{"model.param_budget": 800_000})]
    runs += [_run("gru", 7.29, lr=2e-2, core=200_000, **{"model.param_budget": 200_000})]
    runs += [_run("gru", 6.4, seed=1, lr=1e-2, core=200_000, **{"model.param_budget": 200_000})]
    runs[2].curve = [(250, 60.0, 7.55), (1000, 240.0, 7.29), (1750, 420.0, 9.11)]  # blew up after its best
    runs[3].curve = [(250, 60.0, 7.55), (1000, 240.0, 6.4), (1750, 420.0, 6.45)]  # overfitted a little
    rnn = [
        _run("rnn", 6.7, lr=5e-3, core=200_000, **{"model.param_budget": 200_000}),
        _run("rnn", 6.6, lr=2.5e-3, core=800_000, **{"model.param_budget": 800_000}),
    ]
    # a rate per size is no grid: only the GRU, at two rates at 200k, gets a rate chosen
    assert list(best_lr(runs + rnn)) == ["gru"]
    table = summarise(runs)["groups"]
    assert list(table) == ["gru 200k lr 0.01", "gru 200k lr 0.02", "lstm 200k lr 0.02", "lstm 800k lr 0.02"]
    assert table["gru 200k lr 0.02"]["unstable"] and not table["gru 200k lr 0.01"]["unstable"]
    runs[1].curve = [(2000, 60.0, 6.5), (8000, 240.0, 6.3), (10000, 300.0, 6.25)]  # still improving at the end
    runs[1].metrics |= {"steps": 10000, "best_step": 10000}
    text = to_markdown(summarise(runs), [])
    assert text.count("(unstable)") == 1
    # best by step 8,000 (the last fifth starts there) was 6.3, the end 6.25
    assert "10000/10000 (not converged: 0.050 bits gained in the last fifth)" in text


def test_a_run_that_failed_before_recording_its_rate_does_not_break_the_report(tmp_path):
    # a run made before records, that crashed before it wrote its rate: its config holds the unresolved
    # interpolation, which the old code put into the rate column, and sorting rates then raised TypeError
    crashed = tmp_path / "sweep" / "3_rnn_seed0"
    (crashed / ".hydra").mkdir(parents=True)
    (crashed / ".hydra" / "config.yaml").write_text(
        "seed: 0\nmodel: {cell: rnn}\noptim: {lr: '${oc.select:tuned.${model.cell}.lr,3.0e-3}'}\n"
        "trainer: {precision: '${cpu_precision:}'}\ntuned: null\n",
        encoding="utf-8",
    )
    write_json(crashed / "metrics.json", {"status": "failed", "cell": "rnn", "seed": 0, "error": "killed"})
    (run,) = load([tmp_path / "sweep"])
    assert not run.recorded and run.lr is None and run.settings["trainer.precision"] == "unknown"
    runs = [run, *(_run("rnn", 7.4 + 0.01 * s, s, lr) for s in range(2) for lr in (5e-3, 1e-2))]
    summary = summarise(runs)
    assert set(best_lr(runs)) == {"rnn"} and summary["not_completed"][0]["error"] == "killed"
    assert "killed" in to_markdown(summary, [])


def test_holm_adjustment_matches_a_hand_worked_case():
    # sorted: d 0.005 x4 = 0.02; a 0.01 x3 = 0.03; c 0.03 x2 = 0.06; b 0.04 x1 = 0.04, raised to 0.06 (monotone)
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005, "e": math.nan})
    assert adjusted == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06, "d": 0.02, "e": math.nan}, nan_ok=True)
    assert holm({"a": 0.6, "b": 0.5}) == {"a": 1.0, "b": 1.0}


def test_share_tests_match_published_values():
    # Fisher's lady tasting tea: 3 of 4 cups right against 1 of 4, two-sided p = 34/70
    assert fisher_p(3, 4, 1, 4) == pytest.approx(34 / 70)
    # Wilson 95 % intervals (Newcombe 1998, table I): 0/10 → 0–0.2775, 1/29 → 0.0061–0.1718
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(1, 29) == pytest.approx((0.0061, 0.1718), abs=1e-4)
    assert all(math.isnan(v) for v in wilson(0, 0))


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
    assert mean_std([7.0, 7.2]) == pytest.approx((7.1, 0.2 / math.sqrt(2)))
    mean, std = mean_std([7.0, math.inf])  # a diverged seed: the group's mean says so; no deviation
    assert mean == math.inf and math.isnan(std)
    assert all(math.isnan(v) for v in mean_std([]))


def test_long_legend_labels_sit_below_the_curves_short_ones_inside(tmp_path):
    curve = [[(0.0, 7.0), (1.0, 6.5)]]
    long = {f"lstm lr 0.03 batch_size=128 dropout=0.{i} structure=True weight_decay=0.25": curve for i in range(3)}
    fig = figures.mean_band(long, "step", "validation bits per character")
    fig.tight_layout()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (below,) = fig.legends
    assert fig.axes[0].get_legend() is None
    assert below.get_window_extent(renderer).y1 <= fig.axes[0].get_tightbbox(renderer).y0  # under the x label
    figures.save_png(fig, tmp_path / "long.png")
    short = figures.mean_band({"lstm": curve, "gru": curve}, "step", "validation bits per character")
    assert short.axes[0].get_legend() is not None and not short.legends
    figures.save_png(short, tmp_path / "short.png")
