"""A tiny 2-cell x 2-seed sweep through the real Hydra entry point, then scripts/compare.py on it."""

import json

import pytest

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
    multirun = run_script("train.py", "-m", "model.cell=rnn,gru", "seed=0,1", *common, f"hydra.sweep.dir={sweep_dir}")
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


def test_compare_with_no_runs_is_one_line(tmp_path):
    out = run_script("compare.py", str(tmp_path))
    assert out.returncode == 2 and out.stderr.strip() == f"error: no runs (folders with .hydra/) under {tmp_path}"
