"""scripts/bench.py end to end on the poem fixture, at toy sizes: every measurement runs and is reported.
The figures themselves are benchmark output (README), never asserted as timings."""

import json

from tangshi.bench import forward_flops, make_batches
from tangshi.datamodule import PoemDataset
from tangshi.model import CharLM

from .conftest import FIXTURE, run_script


def test_bench_script_measures_everything(tmp_path):
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
        "cells=[gru,rnn]",
        "steps=3",
        "warmup=1",
        "reps=1",
        "sample_poems=3",
        "budget_s=1",
        "startup_runs=1",
        f"paths.root_dir={tmp_path}",
        f"hydra.run.dir={tmp_path / 'bench'}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "bench" / "bench.json").read_text(encoding="utf-8"))
    assert set(result["cells"]) == {"gru", "rnn"}
    for c in result["cells"].values():
        assert c["plain_tokens_per_s"] > 0 and c["lightning_tokens_per_s"] > 0
        assert 0 < c["fraction_of_mm_peak"] < 1
    assert result["sampling"]["batched_poems_per_s"] > 0
    step_s = result["sampling"]["step_s"]  # per decoding step, at a full batch and at one poem
    assert step_s["one"] > 0 and result["sampling"]["full_batch_speedup"] == 3 * step_s["one"] / step_s["batch"]
    assert result["diagnostics"]["overhead"] > 0 and result["preparation"]["cold_s"] > 0
    options = result["options"]
    assert set(options) >= {"head", "bf16", "compile", "batching", "threads"}
    assert options["head"]["equal_time"]["full"]["steps"] > 0
    assert set(options["batching"]["tokens_per_s"]) == {
        "bucketed, padded",
        "random, padded",
        "random, packed",
        "bucketed, packed",
    }
    assert "| gru |" in out.stdout and "torch.mm peak" in out.stdout
    for c in result["cells"].values():  # one figure per round, three measurements a round
        assert [len(v) for v in c["rounds"].values()] == [1, 1, 1]
    cost = result["lightning_step_cost"]  # Lightning's fixed cost per step, from a tiny model
    assert cost["cost_s"] == cost["lightning_step_s"] - cost["plain_step_s"] and cost["plain_step_s"] > 0
    assert all("lightning_step_cost_share" in c for c in result["cells"].values())
    assert "Lightning's fixed cost per step" in out.stdout
    (run,) = result["startup"]["runs"]  # scripts/train.py on the same data, timed to its first step
    assert 0 < run["launch_s"] < run["total_s"]
    imports = result["startup"]["imports_s"]
    assert list(imports) == ["python", "torch", "torch + lightning"] and imports["python"] < imports["torch"]
    assert "Start-up to the first training step" in out.stdout


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
