"""Load a model for inference from a checkpoint alone: no corpus, no training config, any device, no Lightning.

Loading keeps torch's ``weights_only=True``: tangshi stores its settings and vocabulary as plain types, so
a checkpoint cannot run code when opened. The models shipped with the project (``src/tangshi/shipped/``) are
checkpoints of the same layout with half-precision weights, gzip-compressed (:func:`export`): three cells in
under 15 MB, and gzip decompresses a shipped model in well under 0.1 s where xz takes 0.4 s.
"""

from __future__ import annotations

import gzip
import io
import pickle
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tangshi.errors import TangshiError
from tangshi.model import CELLS, CharLM, build_model
from tangshi.vocab import Vocab, VocabError

if TYPE_CHECKING:
    from tangshi.corpus import Prepared


CHECKPOINT_KEY = "tangshi"  # where the vocabulary lives inside a Lightning checkpoint
CHECKPOINT_FORMAT = 1
SHIPPED = Path(__file__).resolve().parent / "shipped"  # one <cell>.ckpt.gz per cell
SHIPPED_SUFFIX = ".ckpt.gz"
GZIP_MAGIC = b"\x1f\x8b"


class CheckpointError(TangshiError):
    """A checkpoint that is missing, unreadable or not a tangshi model."""


@dataclass
class Loaded:
    model: CharLM
    vocab: Vocab
    hparams: dict[str, Any]
    path: Path
    step: int
    info: dict[str, Any] = field(default_factory=dict)  # what an exported checkpoint says of its training


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dictionary on CPU (plain or gzip-compressed, as shipped), or one clear error naming the
    file and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with path.open("rb") as f:
            compressed = f.read(2) == GZIP_MAGIC
        source = io.BytesIO(gzip.decompress(path.read_bytes())) if compressed else path
        ckpt = torch.load(source, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, zlib.error) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"checkpoint {path} is corrupt, truncated or not a PyTorch file: {reason}") from None
    if not isinstance(ckpt, dict) or CHECKPOINT_KEY not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a tangshi checkpoint (no vocabulary or weights in it)")
    return ckpt


def load(path: str | Path, device: str | torch.device = "cpu") -> Loaded:
    """The trained CharLM (in eval mode) and its vocabulary from ``path``."""
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
    info = ckpt[CHECKPOINT_KEY].get("training") or {}
    return Loaded(model.to(device).eval(), vocab, hparams, Path(path), int(ckpt.get("global_step", 0)), info)


def shipped_path(cell: str) -> Path:
    """The checkpoint shipped with the project for ``cell``, or one clear error listing the shipped cells."""
    shipped = shipped_models()
    if cell not in shipped:
        raise CheckpointError(
            f"no shipped model for cell {cell!r}; shipped: {', '.join(shipped) or 'none'} (or pass ckpt=<.ckpt>)"
        )
    return shipped[cell]


def shipped_models() -> dict[str, Path]:
    """The shipped checkpoints by cell, in the order of ``model.CELLS`` (rnn, lstm, gru, …)."""
    paths = {cell: SHIPPED / f"{cell}{SHIPPED_SUFFIX}" for cell in CELLS}
    return {cell: path for cell, path in paths.items() if path.is_file()}


def export(source: str | Path, dest: str | Path, training: dict[str, Any] | None = None) -> Path:
    """A copy of the training checkpoint ``source`` holding what inference needs: the model's weights in half
    precision (bfloat16 where float16 would overflow), its settings and vocabulary, the step, and ``training``
    (how it was trained, as plain types). No optimizer state. gzip-compressed when ``dest`` ends in ``.gz``.
    Written atomically; loads with :func:`load`."""
    from tangshi.atomic import atomic_path

    ckpt = read_checkpoint(source)
    state = {}
    for k, v in ckpt["state_dict"].items():
        if not k.startswith("model."):
            continue
        if v.is_floating_point():
            half = v.half()
            v = half if torch.isfinite(half).all() else v.bfloat16()
        state[k] = v
    slim = {
        "state_dict": state,
        "hyper_parameters": {
            k: ckpt["hyper_parameters"][k] for k in ("model", "data") if k in ckpt["hyper_parameters"]
        },
        CHECKPOINT_KEY: {
            "format": CHECKPOINT_FORMAT,
            "vocab": ckpt[CHECKPOINT_KEY]["vocab"],
            "training": training or {},
        },
        "global_step": int(ckpt.get("global_step", 0)),
    }
    buffer = io.BytesIO()
    torch.save(slim, buffer)
    data = buffer.getvalue()
    if str(dest).endswith(".gz"):
        data = gzip.compress(data, compresslevel=9, mtime=0)  # mtime 0: the same weights give the same bytes
    with atomic_path(dest) as tmp:
        Path(tmp).write_bytes(data)
    return Path(dest)


def prepared_data(loaded: Loaded, data: dict[str, Any] | None, data_dir: str | Path) -> Prepared:
    """The corpus a checkpoint was trained on (its recorded data settings, or ``data`` when given),
    prepared from the cache, with the vocabulary checked against the checkpoint's."""
    from tangshi.corpus import CorpusConfig, prepare

    data = data or loaded.hparams.get("data")
    if not data:
        raise CheckpointError(f"checkpoint {loaded.path} records no data settings; pass data={{source: …, …}}")
    prepared = prepare(CorpusConfig.from_data(data), data_dir)
    loaded.vocab.check_matches(prepared.vocab, f"use {loaded.path} with the data in {prepared.path}")
    return prepared
