"""scripts/bench.py end to end on the poem fixture, at toy sizes: every measurement runs and is reported.
The figures themselves are benchmark output (README), never asserted as timings."""

import json

import pytest
import torch

from tangshi.batches import PoemDataset
from tangshi.bench import forward_flops, make_batches, plain_step
from tangshi.model import CharLM

from .conftest import FIXTURE, run_script


def test_bench_script_measures_everything(tmp_path, tiny_checkpoint):
    out = run_script(
        "bench.py",
        "data.source=chinese_poetry",
        f"data.path={FIXTURE}",
        "data.min_freq=1",
        "data.val_frac=0.1",
        "data.test_frac=0.1",
        "data.batch_size=16",
        "model.embed_dim=32",
        "model.hidden_size=48",
        "model.num_layers=1",
        "cells=[gru,mingru,transformer]",
        "steps=3",
        "warmup=1",
        "reps=1",
        "sample_poems=3",
        "startup_runs=2",
        f"ckpt={tiny_checkpoint}",
        f"paths.root_dir={tmp_path}",
        f"hydra.run.dir={tmp_path / 'bench'}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "bench" / "bench.json").read_text(encoding="utf-8"))
    assert list(result["cells"]) == ["gru", "mingru", "transformer"]
    bf16 = result["precision"] == "bf16-mixed"
    for c in result["cells"].values():
        assert c["plain_tokens_per_s"] > 0 and c["lightning_tokens_per_s"] > 0
        assert 0 < c["fraction_of_mm_peak"] < 1
        assert [len(v) for v in c["rounds"].values()] == [1] * (5 if bf16 else 4)  # one figure per round
        assert c["muon_tokens_per_s"] > 0 and c["muon_vs_adamw"] > 0  # which is faster: the bench's job
        assert ("bf16_speedup" in c) == bf16
    # cores of different work per token: the transformer's attention and MLP cost more than the GRU's gates
    assert result["cells"]["transformer"]["train_flops_per_token"] != result["cells"]["gru"]["train_flops_per_token"]
    sampling = result["sampling"]
    assert sampling["model"] == "trained checkpoint" and sampling["batched_poems_per_s"] > 0
    assert sampling["step_s"]["one"] > 0 and sampling["step_s"]["batch"] > 0  # which is faster: the bench's job
    cost = result["lightning_step_cost"]  # Lightning's fixed cost per step, from a tiny model
    assert cost["lightning_step_s"] > 0 and cost["plain_step_s"] > 0  # no ordering: timings on a shared machine
    assert result["diagnostics"]["cell"] == "gru" and result["preparation"]["cold_s"] > 0
    runs = result["startup"]["runs"]  # scripts/train.py on the same data, timed to its first step
    assert len(runs) == 2 and all(0 < r["launch_s"] < r["total_s"] for r in runs)
    imports = result["startup"]["imports_s"]
    assert list(imports) == ["python", "torch", "torch + lightning"] and imports["python"] < imports["torch"]
    sample = result["startup"]["sample"]  # scripts/sample.py n=5, end to end in fresh processes
    assert sample["command"].startswith("python scripts/sample.py n=5 ckpt=") and len(sample["runs_s"]) == 2
    for text in (
        "| gru |",
        "Muon vs AdamW",
        "| transformer |",
        "Lightning's fixed cost per step",
        "Start-up to the first",
        "sample.py n=5",
    ):
        assert text in out.stdout, text


def test_scripts_set_the_thread_policy_before_torch_loads(tmp_path):
    # Run as a user would, without OMP_WAIT_POLICY in the environment: tangshi warns if torch came first.
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    scripts = sorted((FIXTURE.parents[2] / "scripts").glob("*.py"))
    assert {p.name for p in scripts} >= {"train.py", "sample.py", "analyse.py", "compare.py", "bench.py", "studio.py"}
    for path in scripts:
        script = path.name
        done = subprocess.run(
            [sys.executable, str(path), "--help"], capture_output=True, text=True, env=env, cwd=tmp_path
        )
        assert "torch was imported before tangshi" not in done.stderr, script


def test_flops_count_the_matrix_products_of_real_tokens(prepared):
    model = CharLM(len(prepared.vocab), cell="gru", embed_dim=8, hidden_size=16, num_layers=1, head="full")
    batch = make_batches(PoemDataset(prepared.splits["train"], prepared.vocab), 4, 1)[0]
    n = int((batch["targets"] != -100).sum())
    core = 2 * 3 * 16 * (8 + 16)  # three gate blocks, each (16 x 8) and (16 x 16)
    per_token = core + 2 * 16 * len(prepared.vocab)
    assert forward_flops(model, batch["targets"]) == n * per_token
    padded = batch["targets"].clone()
    padded[0, 0] = -100  # padding costs nothing useful
    assert forward_flops(model, padded) == (n - 1) * per_token


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_the_plain_loop_steps_with_the_optimiser_it_names(prepared, optimizer):
    # Muon's update of a matrix is orthogonalised (its middle singular values near the top); AdamW's update
    # of a fresh GRU's recurrent matrix is not. The benchmark's Muon figure is only Muon's if this holds.
    torch.manual_seed(0)
    model = CharLM(len(prepared.vocab), cell="gru", embed_dim=8, hidden_size=16, num_layers=1, head="full")
    batch = make_batches(PoemDataset(prepared.splits["train"], prepared.vocab), 16, 1)[0]
    w = model.core.weight_hh_l0
    start = w.detach().clone()
    plain_step(model, optimizer=optimizer)(batch)
    update = torch.linalg.svdvals((w.detach() - start).double())
    orthogonal = bool(update.median() > 0.3 * update.max())  # seeds 0-2: AdamW 0.07-0.10, Muon 0.58-0.66
    assert orthogonal == (optimizer == "muon"), update
