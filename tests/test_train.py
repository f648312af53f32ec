"""End to end through the real configs, the real Trainer and the real scripts, on the poem fixture."""

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from tangshi import checkpoint
from tangshi.checkpoint import CheckpointError
from tangshi.config import plain
from tangshi.datamodule import PoemDataModule, PoemDataset, collate
from tangshi.errors import TangshiError
from tangshi.module import PoemLM
from tangshi.train import train

from .conftest import ROOT, TINY, run_script


def _initial_val_loss(cfg) -> float:
    """Validation loss of the freshly initialised model, built as train() builds it."""
    dm = PoemDataModule.from_config(plain(cfg.data), cfg.paths.data_dir, seed=cfg.seed)
    dm.prepare_data()
    dm.setup("fit")
    L.seed_everything(cfg.seed)
    module = PoemLM(plain(cfg.model), plain(cfg.optim), dm.vocab.to_dict())
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    return trainer.validate(module, datamodule=dm, verbose=False)[0]["val/loss"]


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_fit_lowers_val_loss_and_writes_the_run_dir(compose_train, cell):
    cfg = compose_train(f"model.cell={cell}")
    before = _initial_val_loss(cfg)
    summary = train(cfg)
    run = Path(cfg.paths.output_dir)

    assert summary["status"] == "completed" and summary["cell"] == cell
    assert summary["best_val_loss"] < before - 0.15, (before, summary["best_val_loss"])
    assert summary["steps"] == 40
    on_disk = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    for key in (
        "best_val_loss",
        "best_val_bpc",
        "test_loss",
        "test_bpc",
        "test_ppl",
        "params",
        "tokens_per_s",
        "wall_time_s",
        "steps",
        "best_step",
        "epochs",
        "cell",
        "seed",
    ):
        assert on_disk[key] == summary[key], key
    assert abs(on_disk["test_ppl"] - torch.exp(torch.tensor(on_disk["test_loss"])).item()) < 1e-3 * on_disk["test_ppl"]
    assert on_disk["params"]["core"] < on_disk["params"]["total"]
    assert 0 < on_disk["startup_s"] < on_disk["wall_time_s"]
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    assert len(summary["samples"]) == 3 and (run / "samples.txt").exists()
    # diagnostics: gradient flow at initialisation and at the end, clipping, rhyme-position loss
    assert 0 <= on_disk["clip_share"] <= 1 and on_disk["grad_norm_max"] >= on_disk["grad_norm_mean"] > 0
    flow = json.loads((run / "diagnostics" / "gradient_flow.json").read_text(encoding="utf-8"))
    assert [m["step"] for m in flow["measurements"]] == [0, 40] and len(flow["measurements"][0]["norms"][0]) == 48
    assert on_disk["gradient_flow"]["first_step"] == 0 and set(on_disk["gradient_flow"]["last"]) == {
        "layer0_k10",
        "layer0_k20",
        "layer0_k40",
    }
    assert set(on_disk["positions"]) == {"rhyme", "line_start", "other", "punct"}

    events = EventAccumulator(str(run / "tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "train/loss",
        "train/bpc",
        "train/lr",
        "train/grad_norm",
        "train/tokens_per_s",
        "val/loss",
        "val/bpc",
        "val/ppl",
        "test/loss",
        "test/bpc",
        "test/ppl",
        "params/core",
        "params/total",
        "poetics/well_formed",
        "poetics/rhyme",
        "poetics/distinct_2",
        "train/clip_share",
        "gradflow/layer0_k10",
        "gradflow/layer0_k40",
    } <= tags
    assert "samples/text_summary" in events.Tags()["tensors"]
    assert "gradflow/curve" in events.Tags()["images"]
    # one hparams entry listing what tells runs of a sweep apart, with the final metrics
    hparams = HParamsPluginData.FromString(events.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    recorded = hparams.session_start_info.hparams
    assert recorded["cell"].string_value == cell and recorded["hidden_size"].number_value == 64
    assert {"seed", "lr", "core_params"} <= set(recorded)
    assert events.Scalars("hparams/best_val_bpc")[-1].value == pytest.approx(summary["best_val_bpc"], rel=1e-5)


def test_lr_by_cell_gives_each_cell_its_own_rate(compose_train):
    cfg = compose_train("model.cell=gru", "optim.lr_by_cell={rnn: 0.02, gru: 0.005}", "trainer.max_steps=2")
    assert train(cfg)["lr"] == 0.005
    with pytest.raises(TangshiError, match=r"optim\.lr_by_cell has no rate for cell 'lstm'; it has: rnn, gru"):
        train(compose_train("model.cell=lstm", "optim.lr_by_cell={rnn: 0.02, gru: 0.005}"))


def test_resume_continues_from_the_saved_step(compose_train, tmp_path):
    first = train(compose_train())
    last = Path(first["last_checkpoint"])
    assert torch.load(last, weights_only=True)["global_step"] == 40
    resumed = train(compose_train("trainer.max_steps=60", f"ckpt_path={last}", f"paths.output_dir={tmp_path / 'r2'}"))
    assert resumed["steps"] == 60
    assert torch.load(tmp_path / "r2" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 60


def test_resume_with_another_vocabulary_is_refused(compose_train, tmp_path):
    first = train(compose_train())
    with pytest.raises(
        ValueError, match=r"cannot resume from this checkpoint: the checkpoint's vocabulary .* differs from the data's"
    ):
        train(
            compose_train(
                "data.min_freq=2", f"ckpt_path={first['last_checkpoint']}", f"paths.output_dir={tmp_path / 'r2'}"
            )
        )


@pytest.mark.parametrize(
    "overrides",
    [
        ["trainer=cpu"],
        ["trainer=gpu"],
        ["trainer=ddp"],
        ["trainer=ddp_cpu"],
        ["data=regular"],
        ["experiment=quick"],
        ["experiment=compare_cells"],
        ["experiment=compare_cells_quick"],
        ["experiment=lr_search"],
        ["model.cell=gru", "model.head=full", "model.tie_weights=true"],
    ],
)
def test_every_config_group_composes(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
        assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
        assert cfg.trainer.use_distributed_sampler is False
        assert OmegaConf.to_container(cfg.logger)["save_dir"] == "${paths.output_dir}"
        assert cfg.callbacks.model_checkpoint.monitor == "val/loss"
        sample_cfg = compose("sample", overrides=["ckpt=x.ckpt"])
        assert sample_cfg.ckpt == "x.ckpt"
    if overrides[0].startswith("experiment=compare") or overrides[0] == "experiment=lr_search":
        assert cfg.model.param_budget in (200000, 700000) and cfg.trainer.max_time is None
        assert "model.cell" in cfg.hydra.sweeper.params
    if overrides in (["data=regular"], ["experiment=quick"], ["experiment=compare_cells_quick"]):
        assert list(cfg.data.forms) == ["wuyan_jueju", "qiyan_jueju", "wuyan_lvshi", "qiyan_lvshi"]
        assert cfg.data.batch_size == 64  # inherited from data/tang


def test_scripts_train_then_sample_in_fresh_processes(tmp_path):
    """The user's path: scripts/train.py writes a run dir; scripts/sample.py needs only the checkpoint."""
    overrides = [o for o in TINY if not o.startswith("trainer.max_steps")]
    proc = run_script("train.py", *overrides, "trainer.max_steps=20", "model.cell=gru", f"paths.root_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "outputs" / "train" / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.split("_")[2] == "gru"
    assert {p.name for p in runs[0].iterdir()} >= {".hydra", "tensorboard", "checkpoints", "metrics.json"}
    assert "val bpc:" in proc.stdout and "samples:" in proc.stdout
    ckpt = runs[0] / "checkpoints" / "best.ckpt"

    # from a folder with no corpus, no configs of the run: the checkpoint alone
    loaded = checkpoint.load(ckpt)
    begin = loaded.vocab.itos[10]
    args = [f"ckpt={ckpt}", f"begin={begin}", "n=5", "temperature=0.8", "top_k=0", "seed=0"]
    out = run_script("sample.py", *args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    poems = out.stdout.strip().splitlines()
    assert len(poems) == 5 and all(p.startswith(begin) for p in poems)
    assert poems == run_script("sample.py", *args, cwd=tmp_path).stdout.strip().splitlines()
    assert not (tmp_path / "outputs" / "sample").exists() and not (tmp_path / ".hydra").exists()


def test_sample_errors_are_one_line(tmp_path, compose_train):
    missing = run_script("sample.py", f"ckpt={tmp_path / 'nope.ckpt'}")
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"error: checkpoint {tmp_path / 'nope.ckpt'} does not exist"

    summary = train(compose_train())
    bad_begin = run_script("sample.py", f"ckpt={summary['best_checkpoint']}", "begin=龘")
    assert bad_begin.returncode == 2
    assert bad_begin.stderr.strip().startswith("error: begin character '龘' is not in the model's vocabulary")

    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(Path(summary["best_checkpoint"]).read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=f"checkpoint {corrupt} is corrupt, truncated or not a PyTorch file"):
        checkpoint.load(corrupt)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="is not a tangshi checkpoint"):
        checkpoint.load(foreign)


def test_unknown_cell_fails_at_start_with_the_allowed_values(tmp_path):
    proc = run_script("train.py", "model.cell=transformer", f"paths.root_dir={tmp_path}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: unknown model.cell 'transformer'; allowed: rnn, lstm, gru"
    assert not (tmp_path / "data").exists()  # failed before touching the corpus


@pytest.mark.parametrize("head", ["full", "adaptive"])
def test_bf16_mixed_precision_trains_both_heads(compose_train, head):
    """The autocast code path of trainer=gpu, on the CPU: rnn, as oneDNN here has no bf16 LSTM/GRU primitive."""
    summary = train(
        compose_train("model.cell=rnn", f"model.head={head}", "trainer.precision=bf16-mixed", "trainer.max_steps=20")
    )
    assert summary["status"] == "completed" and math.isfinite(summary["best_val_loss"])


@pytest.mark.slow
def test_ddp_cpu_trains_two_processes_into_one_run_dir(tmp_path):
    """trainer=ddp_cpu: two gloo processes (Lightning relaunches the Hydra script), one run dir, rank 0 writes."""
    overrides = [o for o in TINY if not o.startswith("trainer.max_steps")]
    proc = run_script("train.py", "trainer=ddp_cpu", *overrides, "trainer.max_steps=10", f"paths.root_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["status"] == "completed" and metrics["steps"] == 10
    assert (run / "train_ddp_process_1.log").exists()  # the second rank ran, in the same run dir


def test_divergence_stops_the_run_and_marks_it_failed(compose_train):
    cfg = compose_train("optim.lr=inf", "trainer.gradient_clip_val=null", "optim.warmup_steps=1")
    with pytest.raises(TangshiError, match=r"training diverged: the loss is nan at step \d+; lower optim.lr"):
        train(cfg)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["status"] == "failed" and "training diverged" in metrics["error"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.cell=lstmm", "unknown model.cell 'lstmm'; allowed: rnn, lstm, gru"),
        ("model.hidden_size=0", "model.hidden_size must be a positive integer, got 0"),
        ("model.num_layers=-2", "model.num_layers must be a positive integer, got -2"),
        ("model.dropout=1.5", r"model.dropout must be in \[0, 1\), got 1.5"),
        ("data.forms=[sonnet]", "unknown form 'sonnet' in data.forms; allowed: wuyan_jueju"),
        ("data.source=hf", "unknown data.source 'hf'; allowed: npm, chinese_poetry, poems_txt, jsonl"),
        ("data.path=/no/such/folder", "data.path /no/such/folder does not exist"),
        ("data.batch_size=0", "data.batch_size must be a positive integer, got 0"),
        ("data.min_len=1000", r"need 1 <= data.min_len <= data.max_len, got 1000 and 128"),
        ("optim.scheduler=linear", "unknown optim.scheduler 'linear'; allowed: constant, cosine"),
        ("optim.lr=-1", "optim.lr must be a positive number, got -1"),
    ],
)
def test_bad_overrides_fail_with_one_line_before_heavy_work(compose_train, tmp_path, override, message):
    cfg = compose_train(override)
    with pytest.raises(TangshiError, match=message) as err:
        train(cfg)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert not (tmp_path / "data" / "prepared").exists()  # the corpus was not touched


def test_empty_corpus_after_filtering_is_one_line(compose_train):
    with pytest.raises(TangshiError, match="the corpus is empty after filtering"):
        train(compose_train("data.min_len=1000", "data.max_len=2000"))


def test_param_budget_sets_the_hidden_size_recorded_in_the_checkpoint(compose_train):
    summary = train(
        compose_train(
            "model.cell=gru",
            "model.param_budget=30000",
            "trainer.max_steps=4",
            "trainer.val_check_interval=4",
            "final_samples=1",
        )
    )
    loaded = checkpoint.load(summary["best_checkpoint"])
    assert loaded.hparams["model"]["hidden_size"] == summary["hidden_size"] != 64
    assert "param_budget" not in loaded.hparams["model"]
    assert abs(summary["params"]["core"] - 30000) <= 600


def test_clipping_uses_the_global_norm_it_records(prepared):
    """One norm computation serves the log and the clipping: after clipping at a tenth of the norm, the
    gradient's global norm is that tenth, and the step counts as clipped."""
    model_cfg = {"cell": "gru", "embed_dim": 8, "hidden_size": 16, "num_layers": 1}
    module = PoemLM(model_cfg, {"lr": 1e-3}, prepared.vocab.to_dict())
    optimizer = torch.optim.AdamW(module.parameters())
    ds = PoemDataset(prepared.splits["train"][:8], prepared.vocab)
    batch = collate([ds[i] for i in range(8)])
    loss, _ = module._step(batch)
    loss.backward()
    before = torch.nn.utils.get_total_norm([p.grad for p in module.parameters()]).item()
    module.configure_gradient_clipping(optimizer, gradient_clip_val=before / 10)
    after = torch.nn.utils.get_total_norm([p.grad for p in module.parameters()]).item()
    assert after == pytest.approx(before / 10, rel=1e-4)
    assert module.grad_summary() == pytest.approx(
        {"grad_norm_mean": before, "grad_norm_max": before, "clip_share": 1.0}
    )
