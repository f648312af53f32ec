"""hparams_search: a real Optuna search (Hydra's sweeper) on tiny settings, its stored study, a resume, and
compare.py's report of it."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from .conftest import ROOT, TINY, run_script


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    sweep = root / "search"
    searched = ("optim.lr", "optim.weight_decay", "model.dropout")  # TINY's values would fix them
    tiny = [o for o in TINY if not o.startswith(("trainer.max_steps", "trainer.val_check_interval", *searched))]
    args = [
        "hparams_search=gru_optuna",
        *tiny,
        "search_poems=320",  # 20 steps of 16 poems, 10 of 32, 5 of 64
        "trainer.val_check_interval=4",
        "hydra.sweeper.sampler.n_startup_trials=2",
        f"paths.root_dir={root}",
        f"hydra.sweep.dir={sweep}",
    ]
    done = run_script("train.py", *args, "hydra.sweeper.n_trials=3")
    assert done.returncode == 0, done.stderr[-3000:]
    return sweep, args


def _study(sweep):
    import optuna

    return optuna.load_study(study_name="search_gru", storage=f"sqlite:///{sweep / 'optuna.db'}")


def test_a_search_stores_its_trials_and_best_in_the_sweep_dir(search):
    sweep, _ = search
    study = _study(sweep)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    trials = {}
    for t in study.trials:  # each trial is a run dir whose metrics.json holds the objective the study recorded
        metrics = json.loads((sweep / f"{t.number}_gru" / "metrics.json").read_text(encoding="utf-8"))
        assert metrics["best_val_bpc"] == pytest.approx(t.value)
        assert metrics["lr"] == pytest.approx(t.params["optim.lr"])  # the trial's rate, not lr_by_cell's
        trials[t.number] = t.value
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text(encoding="utf-8"))
    assert best["best_value"] == pytest.approx(min(trials.values()))
    # TINY sets data.batch_size and optim.warmup_steps on the command line, which fixes them for the search
    assert set(best["best_params"]) == {"optim.lr", "optim.weight_decay", "model.dropout"}


def test_a_search_rerun_with_more_trials_runs_only_the_missing_ones(search):
    sweep, args = search
    # the same command with the same sweep dir: the study is loaded, only the missing trial runs, in a new dir
    done = run_script("train.py", *args, "hydra.sweeper.n_trials=4")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming study search_gru: 3 of 4 trials done" in done.stderr + done.stdout
    assert [t.state.name for t in _study(sweep).trials] == ["COMPLETE"] * 4
    assert sorted(p.name for p in sweep.glob("*_gru")) == ["0_gru", "1_gru", "2_gru", "3_gru"]


def test_a_killed_search_resumes_from_its_study(tmp_path):
    # kill -9 the search while its second trial trains: the study is left with that trial RUNNING for ever
    sweep = tmp_path / "search"
    searched = ("optim.lr", "optim.weight_decay", "model.dropout")  # TINY's values would fix them
    tiny = [o for o in TINY if not o.startswith(("trainer.max_steps", "trainer.val_check_interval", *searched))]
    args = [
        "hparams_search=gru_optuna",
        *tiny,
        "search_poems=1600",  # 100 steps of 16 poems: long enough to be killed in the middle
        "trainer.val_check_interval=50",
        "hydra.sweeper.sampler.n_startup_trials=2",
        "hydra.sweeper.n_trials=3",
        f"paths.root_dir={tmp_path}",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "train.py"), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
    )
    try:
        deadline = time.time() + 240
        while not (sweep / "1_gru" / "metrics.json").exists():
            assert proc.poll() is None and time.time() < deadline, "the search ended before its second trial"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert [t.state.name for t in _study(sweep).trials] == ["COMPLETE", "RUNNING"]
    # rerun as it was: the interrupted trial is marked failed, and the two missing trials run in new dirs
    done = run_script("train.py", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming study search_gru: 1 of 3 trials done" in done.stderr + done.stdout
    assert [t.state.name for t in _study(sweep).trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert sorted(p.name for p in sweep.glob("*_gru")) == ["0_gru", "1_gru", "2_gru", "3_gru"]


def test_compare_reports_the_trials_and_the_best_settings(search):
    sweep, _ = search
    out = run_script("compare.py", str(sweep), "--no-ngram")
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((sweep / "report.json").read_text(encoding="utf-8"))
    (study,) = report["searches"].values()
    values = [t["best_val_bpc"] for t in study["trials"]]
    assert study["best"]["best_val_bpc"] == min(values) and len(values) >= 3
    assert study["params"] == ["optim.lr", "optim.weight_decay", "model.dropout"]  # TINY fixes the other two
    assert report["groups"] == {}  # trials are not averaged as if they were seeds
    assert (sweep / "search_0.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Search" in out.stdout and "Best of" in out.stdout
