"""End to end through the real configs, the real Trainer and the real scripts, on the poem fixture."""

import gzip
import itertools
import json
import logging
import math
import os
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from tangshi import checkpoint
from tangshi.batches import collate
from tangshi.checkpoint import CheckpointError
from tangshi.config import to_plain
from tangshi.datamodule import PoemDataModule
from tangshi.errors import TangshiError
from tangshi.model import CELLS
from tangshi.module import PoemLM, resolve_lr
from tangshi.train import train

from .conftest import ROOT, TINY, run_script


def _initial_val_loss(cfg) -> float:
    """Validation loss of the freshly initialised model, built as train() builds it."""
    dm = PoemDataModule.from_config(to_plain(cfg.data), cfg.paths.data_dir, seed=cfg.seed)
    dm.prepare_data()
    dm.setup("fit")
    L.seed_everything(cfg.seed)
    module = PoemLM(to_plain(cfg.model), to_plain(cfg.optim), dm.vocab.to_dict())
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    return trainer.validate(module, datamodule=dm, verbose=False)[0]["val/loss"]


@pytest.mark.parametrize("cell", list(CELLS))
def test_fit_lowers_val_loss_and_writes_the_run_dir(compose_train, cell):
    cfg = compose_train(f"model.cell={cell}")
    before = _initial_val_loss(cfg)
    summary = train(cfg)
    run = Path(cfg.paths.output_dir)

    assert summary["status"] == "completed" and summary["cell"] == cell
    assert summary["best_val_loss"] < before - 0.08, (before, summary["best_val_loss"])
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
    assert set(on_disk["positions"]) == {"rhyme", "line_start", "other", "punct"}
    assert on_disk["stopped_by"] == "max_steps"
    if cell == "transformer":  # not recurrent: no h_t to measure gradient flow through
        assert "gradient_flow" not in on_disk
        return
    flow = json.loads((run / "diagnostics" / "gradient_flow.json").read_text(encoding="utf-8"))
    assert [m["step"] for m in flow["measurements"]] == [0, 40] and len(flow["measurements"][0]["norms"][0]) == 48
    assert on_disk["gradient_flow"]["first_step"] == 0 and set(on_disk["gradient_flow"]["last"]) == {
        "layer0_k10",
        "layer0_k20",
        "layer0_k40",
    }

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
        "time/train_s",
        "poems/free/rhyme",
        "poems/wuyan_jueju/rhyme",
        "poems/qiyan_jueju/well_formed",
    } <= tags
    # what the run wrote: three poem sets of 20 (TINY), form masks make every 五绝 and 七绝 well-formed
    poems = on_disk["poems"]
    assert [poems[s]["n"] for s in ("free", "wuyan_jueju", "qiyan_jueju")] == [20, 20, 20]
    assert poems["wuyan_jueju"]["well_formed"] == 1.0 and poems["qiyan_jueju"]["well_formed_n"] == 20
    lo, hi = poems["wuyan_jueju"]["rhyme_ci"]
    assert lo <= poems["wuyan_jueju"]["rhyme"] <= hi and 0 < poems["seconds"] < on_disk["wall_time_s"]
    assert events.Scalars("poems/wuyan_jueju/rhyme")[-1].value == pytest.approx(poems["wuyan_jueju"]["rhyme"])
    assert "samples/text_summary" in events.Tags()["tensors"]
    assert "gradflow/curve" in events.Tags()["images"]
    # one hparams entry listing what tells runs of a sweep apart, with the final metrics
    hparams = HParamsPluginData.FromString(events.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    recorded = hparams.session_start_info.hparams
    assert recorded["cell"].string_value == cell and recorded["hidden_size"].number_value == 64
    assert {"seed", "lr", "core_params"} <= set(recorded)
    assert events.Scalars("hparams/best_val_bpc")[-1].value == pytest.approx(summary["best_val_bpc"], rel=1e-5)


def _composed(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose("train", overrides=list(overrides))


def test_each_cell_takes_its_recipe_and_an_explicit_value_wins():
    from tangshi.config import apply_recipe

    # the recipes' values, written here as docs/search.md (2026-11-29 searches) and docs/rhyme.md (structure,
    # 2026-12-01; Muon and 1,600 steps, 2026-12-02; the rate 0.02, 2026-12-03) state them
    lstm = _composed()
    assert apply_recipe(lstm) == {
        "optim.optimizer": "muon",
        "optim.lr": 0.02,
        "optim.weight_decay": 0.25,
        "optim.warmup_steps": 100,
        "model.dropout": 0.0,
        "model.structure": True,
        "model.echo_bias": True,
        "data.batch_size": 128,
        "trainer.max_steps": 1600,
    }
    assert (lstm.optim.lr, lstm.data.batch_size) == (0.02, 128)
    # the echo bias follows the structure it reads, unless set: the plain LSTM is one override away
    plain = _composed("model.structure=false")
    assert apply_recipe(plain)["model.echo_bias"] is False
    ablated = _composed("model.echo_bias=false")
    assert "model.echo_bias" not in apply_recipe(ablated) and ablated.model.structure is True
    gru = _composed("model.cell=gru", "optim.lr=0.002")
    taken = apply_recipe(gru)
    assert gru.optim.lr == 0.002 and "optim.lr" not in taken and taken["data.batch_size"] == 64
    assert taken["optim.optimizer"] == "adamw"
    mingru = _composed("model.cell=mingru")  # no recipe of its own: the default one
    assert apply_recipe(mingru)["optim.lr"] == 3e-3 and mingru.trainer.max_steps == 2000
    # an experiment's per-cell rate, its other settings explicit: compare_cells_quick at the rates of lr_search
    for cell, lr in (("rnn", 5e-3), ("gru", 2e-2), ("lstm", 2e-2)):
        quick = _composed("experiment=compare_cells_quick", f"model.cell={cell}")
        assert apply_recipe(quick) == {"optim.lr": lr, "model.echo_bias": False}
        assert (quick.optim.weight_decay, quick.data.batch_size, quick.model.dropout) == (0.01, 64, 0.1)
        assert quick.model.structure is False  # the quick comparison is of the plain cells
    with pytest.raises(TangshiError, match=r"optim\.lr left at null and model\.cell=gru has no recipe for it"):
        apply_recipe(_composed("model.cell=gru", "recipes.gru.optim.lr=null", "recipes.default=null"))


def test_a_run_prints_and_records_the_recipe_it_took(compose_train, caplog):
    caplog.set_level(logging.INFO, logger="tangshi.train")
    summary = train(compose_train("recipes={gru: {optim: {lr: 0.005}}}", "model.cell=gru", "optim.lr=null"))
    assert summary["lr"] == 0.005 and summary["config"]["optim"]["lr"] == 0.005
    assert "recipe of gru: optim.lr 0.005" in caplog.text and "learning rate: 0.005" in caplog.text
    caplog.clear()
    train(
        compose_train(
            "recipes={lstm: {optim: {optimizer: muon}, model: {structure: true}}}",
            "optim.optimizer=null",
            "model.structure=null",
        )
    )
    # a name reads as itself and a switch as one, not as 1
    assert "recipe of lstm: optim.optimizer muon, model.structure true" in caplog.text


def test_resume_continues_from_the_saved_step(compose_train, tmp_path):
    first = train(compose_train())
    last = Path(first["last_checkpoint"])
    assert torch.load(last, weights_only=True)["global_step"] == 40
    resumed = train(compose_train("trainer.max_steps=60", f"ckpt_path={last}", f"paths.output_dir={tmp_path / 'r2'}"))
    assert resumed["steps"] == 60
    assert torch.load(tmp_path / "r2" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 60


def test_last_checkpoint_follows_every_validation_not_only_the_best(compose_train):
    # At a rate of 1e-30 the updates are far too small to change the loss, so no validation beats the first
    # (asserted): best.ckpt stays at step 10, and last.ckpt must still be the step-40 state, or
    # ckpt_path=last would go back to the best step and lose the steps after it (Lightning writes save_last's
    # copy only where it writes a new best).
    run = train(compose_train("optim.lr=1e-30", "trainer.val_check_interval=10"))
    assert run["best_step"] == 10 and run["steps"] == 40
    assert torch.load(run["last_checkpoint"], weights_only=True)["global_step"] == 40


def test_a_run_loads_the_lightning_way(compose_train):
    # PoemLM.load_from_checkpoint: the old code raised TypeError (missing 'vocab'), though it travels inside
    summary = train(compose_train("trainer.max_steps=2", "trainer.val_check_interval=2"))
    module = PoemLM.load_from_checkpoint(summary["best_checkpoint"])
    loaded = checkpoint.load(summary["best_checkpoint"])
    assert module.vocab.itos == loaded.vocab.itos and module.hparams.optim["lr"] == summary["lr"]
    for (name, a), (_, b) in zip(module.model.state_dict().items(), loaded.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


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
        ["trainer=gpu"],
        ["trainer=ddp"],
        ["trainer=ddp_cpu"],
        ["data=regular"],
        ["experiment=quick"],
        ["experiment=compare_cells"],
        ["experiment=compare_cells_quick"],
        ["experiment=lr_search"],
        ["experiment=compare_cells_extended"],
        ["experiment=converge"],
        ["experiment=scaling"],
        ["hparams_search=lstm_optuna"],
        ["hparams_search=gru_optuna"],
        ["hparams_search=rnn_optuna"],
        ["model.cell=gru", "model.head=full", "model.tie_weights=true"],
        ["model.cell=transformer", "model.positions=rotary"],
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
        for name in ("analyse", "studio", "ship", "bench"):
            compose(name, overrides=["+run=x"] if name == "ship" else [])
    if overrides[0].startswith(("experiment=compare_cells_", "experiment=lr_search", "experiment=scaling")):
        assert cfg.model.param_budget == 200000 and cfg.trainer.max_time is None
        assert "model.cell" in cfg.hydra.sweeper.params
    if overrides == ["experiment=compare_cells"]:  # the chapter's: each cell's own recipe, without and with structure
        assert cfg.model.param_budget is None and cfg.optim.lr is None and cfg.trainer.max_time is None
        assert set(str(cfg.hydra.sweeper.params["model.structure"]).split(",")) == {"false", "true"}
    if overrides[0] in ("experiment=compare_cells_quick", "experiment=compare_cells_extended"):
        swept = str(cfg.hydra.sweeper.params["model.cell"]).split(",")
        assert all(cfg.recipes[c].optim.lr for c in swept)  # a rate for every cell the sweep runs
    if overrides[0] in ("experiment=converge", "experiment=scaling"):
        assert cfg.callbacks.early_stopping.monitor == "val/loss" and cfg.trainer.max_steps == -1
        assert cfg.trainer.max_epochs > 0 and cfg.trainer.max_time is None
    if overrides[0].startswith("hparams_search="):
        assert cfg.hydra.sweeper.storage.endswith("/optuna.db") and cfg.hydra.sweeper.n_trials >= 12
        assert cfg.trainer.max_time is None
    if overrides in (["data=regular"], ["experiment=quick"], ["experiment=compare_cells_quick"]):
        assert list(cfg.data.forms) == ["wuyan_jueju", "qiyan_jueju", "wuyan_lvshi", "qiyan_lvshi"]
        # data=regular alone keeps the default cell's recipe (null: filled at the start of a run); the
        # experiments set one batch size for every cell
        assert cfg.data.batch_size == (None if overrides == ["data=regular"] else 64)


def test_scaling_carries_each_cells_rate_to_larger_cores_by_its_own_rule():
    """The rates experiment=scaling trains with, per cell and core size (README, Convergence and scale): at 800k
    the gated cells' rate unchanged, the RNN's halved, as lr_search found there."""
    from tangshi.config import apply_recipe

    expected = {200_000: {"rnn": 5e-3, "lstm": 2e-2, "gru": 1e-2}, 800_000: {"rnn": 2.5e-3, "lstm": 2e-2, "gru": 1e-2}}
    for budget, rates in expected.items():
        for cell, lr in rates.items():
            cfg = _composed("experiment=scaling", f"model.cell={cell}", f"model.param_budget={budget}")
            apply_recipe(cfg)
            assert resolve_lr(to_plain(cfg.optim), cell, budget)["lr"] == pytest.approx(lr)
    cfg = _composed("experiment=scaling", "model.cell=mingru")
    apply_recipe(cfg)
    with pytest.raises(TangshiError, match=r"model\.cell=mingru has no size rule: set recipes\.mingru"):
        resolve_lr(to_plain(cfg.optim), "mingru", 800_000)


def test_scripts_train_then_sample_in_fresh_processes(tmp_path):
    """The user's path: scripts/train.py writes a run dir; scripts/sample.py needs only the checkpoint."""
    overrides = [o for o in TINY if not o.startswith("trainer.max_steps")]
    proc = run_script("train.py", *overrides, "trainer.max_steps=20", "model.cell=gru", f"paths.root_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "outputs" / "train" / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.split("_")[2] == "gru"
    assert {p.name for p in runs[0].iterdir()} >= {".hydra", "tensorboard", "checkpoints", "metrics.json"}
    assert "val bpc:" in proc.stdout and "samples:" in proc.stdout
    assert "  free: rhymes " in proc.stdout and "  wuyan_jueju: rhymes " in proc.stdout  # the run's end says it
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

    # shipping it: half-precision safetensors, gzip-compressed, the command that trained it, the test bpc of
    # those weights, the vocabulary and settings in the metadata
    shipped = tmp_path / "shipped"
    out = run_script("ship.py", f"run={runs[0]}", f"out_dir={shipped}", f"paths.root_dir={tmp_path}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    dest = shipped / "gru.safetensors.gz"
    assert dest.read_bytes()[:2] == checkpoint.GZIP_MAGIC and dest.stat().st_size < 0.6 * ckpt.stat().st_size
    raw, meta = checkpoint.read_weights(dest)
    assert {v.dtype for v in raw.values() if v.is_floating_point()} == {torch.float16}
    assert meta["vocab"]["itos"] == loaded.vocab.itos and meta["model"]["cell"] == "gru"
    plain = tmp_path / "gru.safetensors"  # gunzipped, it is a plain safetensors file that loads the same
    plain.write_bytes(gzip.decompress(dest.read_bytes()))
    assert run_script("sample.py", f"ckpt={plain}", "n=2", "seed=0", cwd=tmp_path).returncode == 0
    info = checkpoint.load(dest).info
    assert info["command"].startswith("python scripts/train.py") and "model.cell=gru" in info["command"]
    metrics = json.loads((runs[0] / "metrics.json").read_text(encoding="utf-8"))
    assert info["test_bpc"] == pytest.approx(metrics["test_bpc"], abs=0.02)  # fp16 weights, same test split
    truncated = tmp_path / "truncated.safetensors.gz"
    truncated.write_bytes(dest.read_bytes()[:4000])
    with pytest.raises(CheckpointError, match="is corrupt, truncated or not safetensors"):
        checkpoint.load(truncated)


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
    proc = run_script("train.py", "model.cell=xlstm", f"paths.root_dir={tmp_path}")
    assert proc.returncode == 2
    allowed = "rnn, lstm, gru, mingru, minlstm, transformer"
    assert proc.stderr.strip().splitlines()[-1] == f"error: unknown model.cell 'xlstm'; allowed: {allowed}"
    assert not (tmp_path / "data").exists()  # failed before touching the corpus


@pytest.mark.parametrize("head", ["full", "adaptive"])
def test_bf16_mixed_precision_trains_both_heads(compose_train, head):
    """The autocast code path of trainer=gpu and of CPUs with AMX, on any CPU."""
    summary = train(
        compose_train("model.cell=rnn", f"model.head={head}", "trainer.precision=bf16-mixed", "trainer.max_steps=20")
    )
    assert summary["status"] == "completed" and math.isfinite(summary["best_val_loss"])
    assert summary["precision"] == "bf16-mixed"


def test_cpu_precision_follows_the_hardware(compose_train, tmp_path):
    from tangshi.config import cpu_precision

    # two CPUs described by hand, /proc/cpuinfo style: a Sapphire Rapids core with AMX, an EPYC without
    amx, epyc = tmp_path / "amx", tmp_path / "epyc"
    amx.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f amx_bf16 amx_tile amx_int8\n", encoding="utf-8")
    epyc.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n", encoding="utf-8")
    assert cpu_precision(str(amx)) == "bf16-mixed" and cpu_precision(str(epyc)) == "32-true"
    assert cpu_precision(str(tmp_path / "missing")) == "32-true"
    # and a run trains in the precision its config names, and records the one Lightning ran
    summary = train(compose_train("trainer.max_steps=2"))
    assert summary["config"]["trainer"]["precision"] == summary["precision"] == cpu_precision()


@pytest.mark.slow
def test_ddp_cpu_trains_two_processes_into_one_run_dir(tmp_path):
    """trainer=ddp_cpu: two gloo processes (Lightning relaunches the Hydra script), one run dir, rank 0 writes."""
    overrides = [o for o in TINY if not o.startswith("trainer.max_steps")]
    proc = run_script(
        "train.py",
        "trainer=ddp_cpu",
        *overrides,
        "trainer.max_steps=10",
        "trainer.val_check_interval=10",
        "trainer.precision=32-true",  # float32 on both sides of the comparison below
        f"paths.root_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["status"] == "completed" and metrics["steps"] == 10
    assert (run / "train_ddp_process_1.log").exists()  # the second rank ran, in the same run dir
    # Each rank scored half the validation and test poems; the losses reduced across ranks must be the
    # single-process token-weighted losses of the same weights on the same poems.
    from tangshi.analysis import split_loss

    loaded = checkpoint.load(metrics["best_checkpoint"])
    prepared = checkpoint.prepared_data(loaded, None, tmp_path / "data")
    assert metrics["best_val_loss"] == pytest.approx(
        split_loss(loaded.model, loaded.vocab, prepared.splits["val"])["loss"], rel=1e-5
    )
    assert metrics["test_loss"] == pytest.approx(
        split_loss(loaded.model, loaded.vocab, prepared.splits["test"])["loss"], rel=1e-5
    )


def test_divergence_stops_the_run_and_marks_it_failed(compose_train):
    cfg = compose_train("optim.lr=inf", "trainer.gradient_clip_val=null", "optim.warmup_steps=1")
    with pytest.raises(TangshiError, match=r"training diverged: the loss is nan at step \d+; lower optim.lr"):
        train(cfg)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["status"] == "failed" and "training diverged" in metrics["error"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.cell=lstmm", "unknown model.cell 'lstmm'; allowed: rnn, lstm, gru, mingru"),
        ("model.hidden_size=0", "model.hidden_size must be a positive integer, got 0"),
        ("model.num_layers=-2", "model.num_layers must be a positive integer, got -2"),
        ("model.dropout=1.5", r"model.dropout must be in \[0, 1\), got 1.5"),
        ("data.forms=[sonnet]", "unknown form 'sonnet' in data.forms; allowed: wuyan_jueju"),
        ("data.source=hf", "unknown data.source 'hf'; allowed: npm, chinese_poetry, poems_txt, jsonl"),
        ("data.path=/no/such/folder", "data.path /no/such/folder does not exist"),
        ("data.batch_size=0", "data.batch_size must be a positive integer, got 0"),
        ("data.min_len=1000", r"need 1 <= data.min_len <= data.max_len, got 1000 and 128"),
        ("optim.scheduler=linear", "unknown optim.scheduler 'linear'; allowed: cosine, wsd, constant"),
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
    with pytest.raises(TangshiError, match="a split is empty after filtering"):
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


@pytest.mark.parametrize(("clip", "share"), [(1e-4, 1.0), (1e9, 0.0)])
def test_the_recorded_gradient_norm_is_the_one_before_clipping(compose_train, clip, share):
    """Clipped at 1e-4, every step counts as clipped and the norms recorded are the raw ones, far above it; at
    1e9 none is clipped. The norms in TensorBoard and the record agree."""
    cfg = compose_train(f"trainer.gradient_clip_val={clip}", "trainer.log_every_n_steps=1")
    summary = train(cfg)
    norms = _scalars(Path(cfg.paths.output_dir), "train/grad_norm")
    assert len(norms) == 40 and min(norms.values()) > 1e-2
    assert summary["clip_share"] == share
    assert summary["grad_norm_max"] == pytest.approx(max(norms.values()), rel=1e-5)
    assert summary["grad_norm_mean"] == pytest.approx(sum(norms.values()) / 40, rel=1e-5)


# -- schedule, parameter groups, stopping rules ---------------------------------------------------------


def _scalars(run_dir: Path, tag: str) -> dict[int, float]:
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    return {e.step: e.value for e in events.Scalars(tag)}


def test_learning_rate_warms_up_as_configured_then_decays_to_the_floor(compose_train):
    # 20 warm-up steps of 40: the old code cut warm-up to a tenth of the run (4 steps) without a word.
    cfg = compose_train("optim.lr=0.01", "optim.warmup_steps=20", "trainer.log_every_n_steps=1")
    train(cfg)
    lr = _scalars(Path(cfg.paths.output_dir), "train/lr")
    assert lr[0] == pytest.approx(0.01 / 20) and lr[9] == pytest.approx(0.01 * 10 / 20)
    assert lr[19] == pytest.approx(0.01) and max(lr.values()) == pytest.approx(0.01)
    after = [lr[s] for s in sorted(lr) if s >= 19]
    assert all(a >= b for a, b in itertools.pairwise(after)) and after[-1] > 0.001  # cosine toward 0.1 x lr
    assert 0.001 <= lr[39] < 0.0011  # the last step nearly at the floor, 0.1 x lr, reached at step 40


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
@pytest.mark.parametrize(
    ("cell", "embeddings"),
    [
        ("lstm", {"embed.weight"}),
        ("transformer", {"embed.weight", "core.pos.weight"}),
        ("gru", {"embed.weight", "structure.table.weight"}),
    ],
)
def test_weight_decay_skips_biases_and_embeddings(prepared, cell, embeddings, optimizer):
    # With zero gradients a step is decay alone (AdamW's and Muon's alike): weight matrices shrink by lr x wd,
    # the rest stays. The Transformer's learned positions and the structure features are embeddings too.
    optim = {"lr": 0.1, "weight_decay": 0.5, "scheduler": "constant", "optimizer": optimizer}
    model = {"cell": cell, "embed_dim": 8, "hidden_size": 16, "num_layers": 1, "heads": 2, "structure": cell == "gru"}
    module = PoemLM(model, optim, prepared.vocab.to_dict())
    optimizer = module.configure_optimizers()
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    assert embeddings <= set(before)
    for p in module.model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in module.model.named_parameters():
        matrix = p.ndim >= 2 and name not in embeddings
        expected = before[name] * (1 - 0.1 * 0.5) if matrix else before[name]
        assert torch.allclose(p.detach(), expected), name
    assert any(n.startswith("core.") and p.ndim >= 2 for n, p in before.items())


def test_muon_takes_the_cores_matrices_and_trains_resumes_and_extends(compose_train, prepared):
    from tangshi.optimizer import MuonWithAdamW

    model = {"cell": "gru", "embed_dim": 8, "hidden_size": 16, "num_layers": 1, "head": "adaptive"}
    module = PoemLM(model, {"lr": 0.01, "optimizer": "muon", "scheduler": "constant"}, prepared.vocab.to_dict())
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, MuonWithAdamW)
    muon = {id(p) for g in optimizer.muon.param_groups for p in g["params"]}
    names = {n for n, p in module.model.named_parameters() if id(p) in muon}
    assert names == {"core.weight_ih_l0", "core.weight_hh_l0"}, names  # not the embedding, not the head
    # one step on a real batch: Muon's update of a matrix is orthogonalised, its singular values near-equal
    batch = collate([torch.tensor(prepared.vocab.encode(b)) for b in prepared.splits["train"][:16]])
    w = module.model.core.weight_hh_l0
    start = w.detach().clone()
    module._step(batch)[0].backward()
    grad = torch.linalg.svdvals(w.grad.double())
    optimizer.step()
    update = torch.linalg.svdvals((w.detach() - start).double())
    # the middle of the spectrum: within a factor 2 of the top for the update, far below it for the gradient
    assert update.median() > 0.5 * update.max() and grad.median() < 0.2 * grad.max(), (update, grad)

    muon_run = ("model.cell=gru", "optim.optimizer=muon")
    cfg = compose_train(*muon_run)
    before = _initial_val_loss(cfg)
    first = train(cfg)
    assert first["status"] == "completed" and first["best_val_loss"] < before - 0.05, (before, first["best_val_loss"])
    longer = train(compose_train(*muon_run, "ckpt_path=last", "trainer.max_steps=60"))
    assert longer["status"] == "completed" and longer["steps"] == 60  # both optimisers' states loaded back


def test_an_extended_run_continues_its_schedule_without_a_jump(compose_train, tmp_path):
    cfg = compose_train("optim.lr=0.01", "optim.warmup_steps=5", "trainer.log_every_n_steps=1")
    first = train(cfg)
    longer = compose_train(
        "optim.lr=0.01",
        "optim.warmup_steps=5",
        "trainer.log_every_n_steps=1",
        "trainer.max_steps=80",
        f"ckpt_path={first['last_checkpoint']}",
        f"paths.output_dir={tmp_path / 'longer'}",
    )
    second = train(longer)
    assert second["steps"] == 80
    before, after = _scalars(Path(cfg.paths.output_dir), "train/lr"), _scalars(tmp_path / "longer", "train/lr")
    # the rate at step 40 continues from step 39's, then decays to the floor at the new end
    assert after[40] == pytest.approx(before[39], rel=0.02) and after[40] <= before[39]
    assert 0.001 <= after[79] < 0.0011
    steps = sorted(after)
    assert all(after[a] >= after[b] for a, b in itertools.pairwise(steps))


def test_a_finished_run_extended_in_place_trains_on_at_the_peak_rate(compose_train):
    # warmup-stable-decay: the cool-down of the first 40 steps starts at step 32, where stable.ckpt is kept
    wsd = ("optim.scheduler=wsd", "optim.lr=0.01", "optim.warmup_steps=5", "trainer.log_every_n_steps=1")
    wsd += ("callbacks.gradient_flow.every_n_steps=10",)
    first = train(compose_train(*wsd))
    run = Path(first["run_dir"])
    assert (
        first["steps"] == 40 and torch.load(run / "checkpoints" / "stable.ckpt", weights_only=True)["global_step"] == 32
    )
    before = _scalars(run, "train/lr")
    assert before[31] == pytest.approx(0.01) and before[39] < 0.0025  # cooled down to near the floor
    flow_before = [
        m["step"] for m in json.loads((run / "diagnostics" / "gradient_flow.json").read_text())["measurements"]
    ]
    # resumed in place with a larger budget: the old code returned the old summary and trained nothing
    second = train(compose_train(*wsd, "ckpt_path=last", "trainer.max_steps=80"))
    assert (
        second["status"] == "completed"
        and second["steps"] == 80
        and second["config"]["ckpt_path"].endswith("stable.ckpt")
    )
    after = _scalars(run, "train/lr")
    assert all(after[s] == pytest.approx(0.01) for s in range(32, 64))  # the stable phase goes on from step 32
    assert after[79] < 0.0015
    # the gradient-flow history keeps its points up to the resume step (the old code kept step 0 only)
    flow = [m["step"] for m in json.loads((run / "diagnostics" / "gradient_flow.json").read_text())["measurements"]]
    assert flow[: len([s for s in flow_before if s <= 32])] == [s for s in flow_before if s <= 32] and flow[-1] == 80
    # the time axis goes on from the resumed checkpoint's seconds of training, never back to zero
    seconds = _scalars(run, "time/train_s")
    assert sorted(seconds) == [19, 39, 59, 79] and all(
        a < b for a, b in itertools.pairwise(seconds[k] for k in sorted(seconds))
    )
    assert second["train_time_s"] == pytest.approx(seconds[79])
    # asked again for the same budget, the finished run is left as it is
    assert train(compose_train(*wsd, "ckpt_path=last", "trainer.max_steps=80"))["wall_time_s"] == second["wall_time_s"]


def test_resuming_in_place_without_the_runs_own_settings_is_one_line(compose_train):
    # the old README's resume command dropped the run's overrides: a GRU run came back composed as an LSTM
    first = train(compose_train("model.cell=gru", "trainer.max_steps=4", "trainer.val_check_interval=4"))
    with pytest.raises(
        TangshiError, match=r"resuming .* in place with other settings than it ran with \(model\.cell 'lstm', was 'gru'"
    ):
        train(compose_train("ckpt_path=last", "trainer.max_steps=8"))
    resumed = train(compose_train("model.cell=gru", "ckpt_path=last", "trainer.max_steps=8"))
    assert resumed["steps"] == 8 and resumed["run_dir"] == first["run_dir"]
    # a run recorded before model.structure existed ran without it: resumed with it off, it goes on; with it
    # on, that is another setting, refused in the same line
    metrics = Path(first["run_dir"]) / "metrics.json"
    saved = json.loads(metrics.read_text(encoding="utf-8"))
    del saved["config"]["model"]["structure"]
    metrics.write_text(json.dumps(saved), encoding="utf-8")
    with pytest.raises(TangshiError, match=r"model\.structure True, was False"):
        train(compose_train("model.cell=gru", "model.structure=true", "ckpt_path=last", "trainer.max_steps=12"))
    older = train(compose_train("model.cell=gru", "ckpt_path=last", "trainer.max_steps=12"))
    assert older["steps"] == 12


def test_a_time_limited_run_stops_validated_and_resumes_for_more_steps(tmp_path):
    # trainer.max_time counts this process only: resumed with more steps, a run goes on (Lightning's own
    # timer would restore the time spent and stop at once), and the step it stops at is validated.
    overrides = [o for o in TINY if not o.startswith("trainer.max_steps")]
    base = [*overrides, "model.hidden_size=256", "trainer.val_check_interval=1000", f"paths.root_dir={tmp_path}"]
    proc = run_script(
        "train.py",
        *base,
        "trainer.max_time=00:00:00:04",
        "trainer.max_steps=100000",
        "hydra.run.dir=" + str(tmp_path / "a"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = json.loads((tmp_path / "a" / "metrics.json").read_text(encoding="utf-8"))
    assert first["stopped_by"] == "max_time" and 0 < first["steps"] < 100000
    assert first["best_step"] == first["steps"]  # validated where it stopped, not at a val_check_interval
    proc = run_script(
        "train.py",
        *base,
        "trainer.max_time=00:00:00:04",
        f"trainer.max_steps={first['steps'] + 100000}",
        f"ckpt_path={tmp_path / 'a' / 'checkpoints' / 'last.ckpt'}",
        "hydra.run.dir=" + str(tmp_path / "b"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = json.loads((tmp_path / "b" / "metrics.json").read_text(encoding="utf-8"))
    assert second["status"] == "completed" and second["stopped_by"] == "max_time"
    assert second["steps"] > first["steps"] + 10


def test_the_steps_a_time_limit_allows_and_the_schedule_moved_there_worked_by_hand():
    from tangshi.schedule import Schedule, steps_in_time

    # 50 steps in 75 s (1.5 s a step) of a 14-minute limit less 3 %: 814.8 - 75 = 739.8 s left, 493 more steps
    assert steps_in_time(50, 1.5, 75.0, 840.0, 1600) == 543
    assert steps_in_time(50, 1.5, 75.0, 840.0, 500) == 500  # never past the configured steps
    assert steps_in_time(550, 1.5, 900.0, 840.0, 1600) == 551  # out of time already: the next step
    # moved within its warm-up (100 steps): the same warm-up, then a cosine to the floor at the new end
    early = Schedule("cosine", 100, 1600, 0.1).extended(50, 540)
    assert early(49) == pytest.approx(0.5) and early(99) == pytest.approx(1.0)
    assert early(320) == pytest.approx(0.55) and early(540) == pytest.approx(0.1)  # half-way: 0.1 + 0.9 / 2
    # moved after it: on from the multiplier it has, 0.1 + 0.45 (1 + cos 48°) = 0.8511 at step 500 of 100-1600
    late = Schedule("cosine", 100, 1600, 0.1).extended(500, 900)
    assert late(500) == pytest.approx(0.8511, abs=1e-4) and late(900) == pytest.approx(0.1)
    # and it keeps its place on the curve: 48° at step 500, the other 132° over 400 steps, so step 700 is at
    # 48 + 66 = 114°: 0.1 + 0.45 (1 + cos 114°) = 0.3670 (a fresh cosine from 0.8511 would read 0.4756 there)
    assert late(700) == pytest.approx(0.3670, abs=1e-4)
    # a cosine to the floor 0 over 1,000 steps, at a quarter (45°, 0.8536) moved to end at 1,750: its last three
    # quarters now take 1,500 steps, so the curve's half-way point (0.5) falls at 750 and its 135° (0.1464) at 1,250;
    # moved back to 1,250 at step 750, the rest (90° to 180°) takes 500 steps: 135° at 1,000
    stretched = Schedule("cosine", 0, 1000, 0.0).extended(250, 1750)
    assert stretched(250) == pytest.approx(0.8536, abs=1e-4) and stretched(750) == pytest.approx(0.5)
    assert stretched(1250) == pytest.approx(0.1464, abs=1e-4) and stretched(1750) == pytest.approx(0.0)
    squeezed = stretched.extended(750, 1250)
    assert squeezed(700) == stretched(700) and squeezed(1000) == pytest.approx(0.1464, abs=1e-4)
    assert squeezed(1250) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("fit", [True, False])
def test_a_run_the_time_limit_stops_early_still_ends_cooled_down(compose_train, fit):
    # 100,000 steps in 15 seconds: cut by the clock, the old run stopped at nearly the peak rate; fitted, its
    # cosine ends at the step the clock allows, at the floor (0.1 x 0.01), its warm-up as configured
    cfg = compose_train(
        "trainer.max_steps=100000",
        "trainer.max_time=00:00:00:15",
        "trainer.val_check_interval=60",  # each validation measures the pace again
        "trainer.log_every_n_steps=1",
        "optim.lr=0.01",
        "optim.warmup_steps=5",
        "callbacks.gradient_flow.every_n_steps=1000",
        f"fit_schedule_to_time={str(fit).lower()}",
    )
    summary = train(cfg)
    lr = _scalars(Path(cfg.paths.output_dir), "train/lr")
    last = lr[max(lr)]
    assert summary["stopped_by"] == "max_time" and 50 < summary["steps"] < 100000, summary["steps"]
    assert lr[0] == pytest.approx(0.01 / 5) and lr[4] == pytest.approx(0.01)
    if fit:
        assert summary["schedule_fitted"]["of"] == 100000 and summary["schedule_fitted"]["steps"] >= summary["steps"]
        assert last < 0.002, last
        steps = sorted(lr)[4:]
        assert all(lr[a] >= lr[b] for a, b in itertools.pairwise(steps))
    else:
        assert summary["schedule_fitted"] is None and last > 0.0099, last


def test_a_machine_that_speeds_up_late_gets_the_steps_its_time_allows(compose_train, monkeypatch):
    """The fitted end is measured again every 100 steps, not only at validations. A clock of 1 s a step for 100
    steps, then 0.5 s, under a 400 s limit less 3 % (388 s), no validation before the end; worked by hand:
    step 50: 50 + 338 / 1 = 388; step 100: 388, unmoved; 200 (150 s, 0.75 s a step): 200 + 238 / 0.75 = 517;
    300 (200 s): 300 + 188 / (2/3) = 582; 400 (250 s): 400 + 138 / 0.625 = 620; 500 (300 s): 500 + 88 / 0.6 = 646;
    600 (350 s): 600 + 38 / (7/12) = 665, reached at 382.5 s. Fitted once, it stopped at 388 with 144 s unused."""
    from types import SimpleNamespace

    from tangshi import callbacks
    from tangshi.callbacks import StoppingRule

    step = {"n": 0}
    fake_time = SimpleNamespace(
        monotonic=lambda: step["n"] * 1.0 if step["n"] <= 100 else 100 + (step["n"] - 100) * 0.5,
        perf_counter=callbacks.time.perf_counter,
        time=callbacks.time.time,
    )
    monkeypatch.setattr(callbacks, "time", fake_time)
    batch_end = StoppingRule.on_train_batch_end

    def at_step(self, trainer, *args):  # the clock reads the step the rule is about to judge
        step["n"] = trainer.global_step
        batch_end(self, trainer, *args)

    monkeypatch.setattr(StoppingRule, "on_train_batch_end", at_step)
    summary = train(
        compose_train(
            "trainer.max_steps=10000",
            "trainer.max_time=00:00:06:40",
            "trainer.val_check_interval=100000",
            "callbacks.gradient_flow.every_n_steps=100000",
            "test_after_fit=false",
        )
    )
    assert summary["stopped_by"] == "max_time"
    assert summary["steps"] == 665 and summary["schedule_fitted"]["steps"] == 665


def _stopping_rule_line(*args: str) -> str:
    """The 'stopping rule:' line scripts/train.py logs at start (the run is stopped once it is printed)."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "train.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
    )
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if "stopping rule:" in line:
                return line.split("stopping rule:", 1)[1].strip()
        raise AssertionError("no stopping rule printed")
    finally:
        proc.kill()
        proc.wait()


def test_an_explicit_max_steps_wins_over_the_default_time_guard(tmp_path):
    # the LSTM's recipe sets the steps; the guard is the trainer's default
    overrides = [o for o in TINY if not o.startswith(("trainer.max_steps", "recipes"))] + [f"paths.root_dir={tmp_path}"]
    assert _stopping_rule_line(*overrides) == (
        "1600 steps (trainer.max_steps) or 14 min of training in this process (trainer.max_time), whichever comes "
        "first; if the time comes first, the schedule ends with it (fit_schedule_to_time)"
    )
    assert _stopping_rule_line(*overrides, "trainer.max_steps=5000") == "5000 steps (trainer.max_steps)"
    assert "3 min" in _stopping_rule_line(*overrides, "trainer.max_steps=5000", "trainer.max_time=00:00:03:00")


def test_progress_bar_off_needs_no_other_setting(tmp_path):
    overrides = [o for o in TINY if o != "~callbacks.progress_bar" and not o.startswith("trainer.max_steps")]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(
            "train",
            overrides=[
                *overrides,
                "trainer.max_steps=4",
                f"paths.root_dir={tmp_path}",
                f"paths.output_dir={tmp_path / 'run'}",
            ],
        )
    assert cfg.callbacks.progress_bar is not None and cfg.trainer.enable_progress_bar is False
    assert train(cfg)["status"] == "completed"


def test_a_corpus_without_regular_verse_finishes_and_skips_rhyme_positions(tmp_path, compose_train, caplog):
    # 词-like poems: lines of uneven length, so no 绝句 or 律诗 anywhere, validation included
    import random

    rng = random.Random(0)
    pool = "春夏秋冬山水风花雪月江河湖海天地日星云雨人心梦酒茶诗书琴剑松竹梅兰舟桥楼台烟柳"
    rows = []
    for _ in range(60):
        body = "".join("".join(rng.choices(pool, k=n)) + p for n, p in zip((3, 5, 7, 4), "，，。。", strict=True))
        rows.append({"title": "", "author": "", "body": body})
    corpus = tmp_path / "ci.jsonl"
    corpus.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    cfg = compose_train("data.source=jsonl", f"data.path={corpus}", "data.val_frac=0.3", "data.test_frac=0.2")
    with caplog.at_level(logging.INFO, logger="tangshi.train"):
        summary = train(cfg)
    assert summary["status"] == "completed" and "positions" not in summary
    assert "rhyme-position losses skipped: the validation split holds no regular verse" in caplog.text
