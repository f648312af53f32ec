"""Shared fixtures: a few hundred real Tang poems (traditional characters, the package's JSON format),
prepared once per session, and Hydra configs composed from the real conf/ tree with tiny sizes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from tangshi.corpus import CorpusConfig, Prepared, prepare

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "data" / "quantangshi"

# Small enough for a 2-core CI machine, big enough that a few dozen steps visibly lower the loss.
TINY = [
    "recipes=null",  # no cell's default-size recipe: every setting it would fill is given below
    "data.source=chinese_poetry",
    f"data.path={FIXTURE}",
    "data.min_freq=1",
    "data.batch_size=16",
    "data.eval_batch_size=64",
    "data.val_frac=0.1",
    "data.test_frac=0.1",
    "model.embed_dim=32",
    "model.hidden_size=64",
    "model.num_layers=1",
    "model.head=full",
    "trainer.max_steps=40",
    "trainer.val_check_interval=20",
    "trainer.enable_model_summary=false",
    "trainer.enable_progress_bar=false",
    "~callbacks.progress_bar",
    "optim.optimizer=adamw",
    "optim.lr=1e-2",
    "optim.warmup_steps=5",
    "optim.weight_decay=0.01",
    "model.dropout=0.1",
    "model.structure=false",
    "final_samples=3",
    "samples.n=2",
    "poetics_samples=8",
    "poem_sets=20",
]


@pytest.fixture(scope="session")
def corpus_config() -> CorpusConfig:
    return CorpusConfig(source="chinese_poetry", path=str(FIXTURE), min_freq=1, val_frac=0.1, test_frac=0.1)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory, corpus_config: CorpusConfig) -> Prepared:
    return prepare(corpus_config, tmp_path_factory.mktemp("data"))


def compose_tiny(root: Path, *overrides: str) -> DictConfig:
    """Compose conf/train.yaml as Hydra would, with TINY and the given overrides, writing under ``root``."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose(
            "train", overrides=[*TINY, f"paths.root_dir={root}", f"paths.output_dir={root / 'run'}", *overrides]
        )


@pytest.fixture
def compose_train(tmp_path: Path) -> Callable[..., DictConfig]:
    return lambda *overrides: compose_tiny(tmp_path, *overrides)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GRU trained for 120 steps on the fixture: enough to write poem-like text for decoding tests."""
    from tangshi.train import train

    root = tmp_path_factory.mktemp("tiny")
    summary = train(
        compose_tiny(
            root,
            "model.cell=gru",
            "model.hidden_size=96",
            "trainer.max_steps=120",
            "trainer.val_check_interval=60",
            "test_after_fit=false",
            "final_samples=0",
        )
    )
    return Path(summary["best_checkpoint"])


def run_script(script: str, *args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``scripts/<script>`` in a fresh interpreter, as a user would."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or ROOT,
        env=env,
        check=False,
    )
