"""Load a model for inference from a Lightning checkpoint alone: no corpus, no training config, any device.

Loading keeps torch's ``weights_only=True``: tangshi stores its settings and vocabulary as plain types, so
a checkpoint cannot run code when opened.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tangshi.errors import TangshiError
from tangshi.model import CharRNN
from tangshi.module import CHECKPOINT_KEY, build_model
from tangshi.vocab import Vocab, VocabError

if TYPE_CHECKING:
    from tangshi.corpus import Prepared


class CheckpointError(TangshiError):
    """A checkpoint that is missing, unreadable or not a tangshi model."""


@dataclass
class Loaded:
    model: CharRNN
    vocab: Vocab
    hparams: dict[str, Any]
    path: Path
    step: int


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dictionary on CPU, or one clear error naming the file and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"checkpoint {path} is corrupt, truncated or not a PyTorch file: {reason}") from None
    if not isinstance(ckpt, dict) or CHECKPOINT_KEY not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a tangshi checkpoint (no vocabulary or weights in it)")
    return ckpt


def load(path: str | Path, device: str | torch.device = "cpu") -> Loaded:
    """The trained CharRNN (in eval mode) and its vocabulary from ``path``."""
    ckpt = read_checkpoint(path)
    try:
        vocab = Vocab.from_dict(ckpt[CHECKPOINT_KEY]["vocab"])
        hparams = ckpt["hyper_parameters"]
        model = build_model(hparams["model"], vocab, init_bias=False)
        prefix = "model."
        state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
        model.load_state_dict(state)
    except (KeyError, TypeError, VocabError, RuntimeError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"checkpoint {path} does not hold a usable tangshi model: {reason}") from None
    return Loaded(model.to(device).eval(), vocab, hparams, Path(path), int(ckpt.get("global_step", 0)))


def prepared_data(loaded: Loaded, data: dict[str, Any] | None, data_dir: str | Path) -> Prepared:
    """The corpus a checkpoint was trained on (its recorded data settings, or ``data`` when given),
    prepared from the cache, with the vocabulary checked against the checkpoint's."""
    from tangshi.corpus import prepare
    from tangshi.datamodule import PoemDataModule

    data = data or loaded.hparams.get("data")
    if not data:
        raise CheckpointError(f"checkpoint {loaded.path} records no data settings; pass data={{source: …, …}}")
    prepared = prepare(PoemDataModule.from_config(data, data_dir).corpus, data_dir)
    loaded.vocab.check_matches(prepared.vocab, f"use {loaded.path} with the data in {prepared.path}")
    return prepared
