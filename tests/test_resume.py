"""Kill a training process with SIGKILL mid-epoch, resume it with ckpt_path=last, and get the uninterrupted
run's final metrics: the loader's place in the epoch and the dropout RNG travel in the checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .conftest import ROOT, TINY, run_script

# 16-poem batches: an epoch of the fixture is 18 steps; validation (and last.ckpt) every 7 steps.
RUN = [o for o in TINY if not o.startswith(("trainer.max_steps", "trainer.val_check_interval"))]
RUN += ["trainer.max_steps=60", "trainer.val_check_interval=7", "model.dropout=0.3", "trainer.deterministic=true"]


def _start(run_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "train.py"), *RUN, f"hydra.run.dir={run_dir}", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    root = [f"paths.root_dir={tmp_path}"]
    whole = _start(tmp_path / "whole", *root)
    assert whole.wait(timeout=300) == 0, whole.stderr.read()[-3000:]

    killed = _start(tmp_path / "killed", *root)
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    step = 0
    while time.time() < deadline and killed.poll() is None:
        if last.exists():
            try:
                step = torch.load(last, weights_only=True)["global_step"]
            except Exception:  # being replaced at this instant: read it again
                step = 0
            if step >= 21:  # 21 = 7 * 3 steps: mid-way through the second epoch
                killed.send_signal(signal.SIGKILL)
                break
        time.sleep(0.02)
    killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert step % 18 != 0 and _metrics(tmp_path / "killed")["status"] == "running"

    resumed = _start(tmp_path / "killed", *root, "ckpt_path=last")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-3000:]
    a, b = _metrics(tmp_path / "whole"), _metrics(tmp_path / "killed")
    assert b["status"] == "completed" and b["steps"] == a["steps"] == 60
    for key in ("best_val_loss", "test_loss", "best_step"):
        assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-6), key

    # resuming a finished run (a sweep resumed job by job) does no work
    again = _start(tmp_path / "killed", *root, "ckpt_path=last")
    assert again.wait(timeout=300) == 0
    assert _metrics(tmp_path / "killed") == b


@pytest.mark.slow
def test_a_resumed_sweep_skips_finished_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "model.cell=rnn,gru",
        *RUN[:-4],
        "trainer.max_steps=8",
        "trainer.val_check_interval=4",
        f"paths.root_dir={tmp_path}",
        f"hydra.sweep.dir={sweep}",
    ]
    first = run_script("train.py", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0_rnn_seed0", "1_gru_seed0"]
    before = {p.name: (_metrics(p), (p / "checkpoints" / "last.ckpt").stat().st_mtime_ns) for p in jobs}
    again = run_script("train.py", *args, "ckpt_path=last")
    assert again.returncode == 0, again.stderr[-3000:]
    after = {p.name: (_metrics(p), (p / "checkpoints" / "last.ckpt").stat().st_mtime_ns) for p in jobs}
    assert after == before  # nothing retrained, nothing rewritten
