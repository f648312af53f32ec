"""Load a model for inference from a checkpoint alone: no corpus, no training config, any device, no Lightning.

Two kinds of file load through :func:`load`:

- a training run's Lightning checkpoint (``.ckpt``), read with torch's ``weights_only=True``: tangshi stores its
  settings and vocabulary as plain types, so a checkpoint cannot run code when opened;
- a shipped model (``src/tangshi/shipped/<cell>.safetensors.gz``, :func:`export`): safetensors, the format for
  shared weights (no pickle at all), holding the weights in half precision, with the model and data settings,
  the vocabulary, the step and how it was trained as JSON in its metadata. Three cells take 15.9 MB as plain
  safetensors, over the project's 15 MB budget for shipped models, so the file is gzip-compressed (14.7 MB;
  it decompresses in well under 0.1 s); ``gunzip`` gives a plain ``.safetensors`` file, which loads too.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import struct
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
SHIPPED = Path(__file__).resolve().parent / "shipped"  # one <cell>.safetensors.gz per cell
SHIPPED_SUFFIX = ".safetensors.gz"
WEIGHTS_SUFFIXES = (".safetensors", ".safetensors.gz")
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
    """A run's checkpoint dictionary on CPU (plain or gzip-compressed), or one clear error naming the file and
    what is wrong with it."""
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


def is_weights_file(path: str | Path) -> bool:
    """Whether ``path`` names a safetensors weights file (a shipped model) rather than a run's checkpoint."""
    return str(path).endswith(WEIGHTS_SUFFIXES)


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the decoded metadata of a safetensors weights file (plain or gzip-compressed), or one
    clear error naming the file and what is wrong with it."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_tensors

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        data = path.read_bytes()
        if data[:2] == GZIP_MAGIC:
            data = gzip.decompress(data)
        (size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + size])
        metadata = {k: json.loads(v) for k, v in header.get("__metadata__", {}).items()}
        tensors = load_tensors(data)
    except (OSError, EOFError, zlib.error, struct.error, ValueError, SafetensorError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"weights file {path} is corrupt, truncated or not safetensors: {reason}") from None
    if not {"vocab", "model"} <= set(metadata):
        raise CheckpointError(f"{path} is not a tangshi model (no vocabulary or settings in its metadata)")
    return tensors, metadata


def load(path: str | Path, device: str | torch.device = "cpu") -> Loaded:
    """The trained CharLM (in eval mode) and its vocabulary from ``path``: a run's ``.ckpt`` or a shipped
    ``.safetensors[.gz]``."""
    if is_weights_file(path):
        state, meta = read_weights(path)
        vocab_dict, hparams = meta["vocab"], {"model": meta["model"], "data": meta.get("data")}
        step, info = int(meta.get("step", 0)), meta.get("training") or {}
    else:
        ckpt = read_checkpoint(path)
        vocab_dict, hparams = ckpt[CHECKPOINT_KEY].get("vocab"), ckpt.get("hyper_parameters")
        prefix = "model."
        state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
        step, info = int(ckpt.get("global_step", 0)), ckpt[CHECKPOINT_KEY].get("training") or {}
    try:
        vocab = Vocab.from_dict(vocab_dict)
        model = build_model(hparams["model"], vocab, init_bias=False)
        model.load_state_dict(state)
    except (KeyError, TypeError, VocabError, RuntimeError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path} does not hold a usable tangshi model: {reason}") from None
    return Loaded(model.to(device).eval(), vocab, hparams, Path(path), step, info)


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
    """The model of the checkpoint ``source`` as a safetensors file ``dest``: its weights in half precision
    (bfloat16 where float16 would overflow); in the metadata, its settings, vocabulary and step, and
    ``training`` (how it was trained, as plain types). No optimizer state. gzip-compressed when ``dest`` ends
    in ``.gz``. Written atomically; loads with :func:`load`."""
    from safetensors.torch import save

    from tangshi.atomic import atomic_path

    if not is_weights_file(dest):
        raise CheckpointError(f"export writes safetensors: {dest} must end in {' or '.join(WEIGHTS_SUFFIXES)}")
    if is_weights_file(source):
        state, meta = read_weights(source)
        meta = {**meta, "training": training if training is not None else meta.get("training", {})}
    else:
        ckpt = read_checkpoint(source)
        state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
        hp = ckpt["hyper_parameters"]
        meta = {
            "format": CHECKPOINT_FORMAT,
            "model": hp["model"],
            "data": hp.get("data"),
            "vocab": ckpt[CHECKPOINT_KEY]["vocab"],
            "step": int(ckpt.get("global_step", 0)),
            "training": training or {},
        }
    slim = {}
    for k, v in state.items():
        if v.is_floating_point():
            half = v.half()
            v = half if torch.isfinite(half).all() else v.bfloat16()
        slim[k] = v.contiguous().clone()  # a tied matrix is saved under each name: safetensors shares nothing
    data = save(slim, metadata={k: json.dumps(v, ensure_ascii=False) for k, v in meta.items()})
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
