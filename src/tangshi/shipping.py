"""The models shipped with the project: a run's best checkpoint, slimmed to half-precision safetensors,
with how it was trained and its test bits/char as measured after the slimming (what ``src/tangshi/shipped/``
holds)."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from tangshi import checkpoint
from tangshi.analysis import split_loss
from tangshi.errors import TangshiError


def ship(run_dir: Path, out_dir: Path, data_dir: Path) -> tuple[Path, dict[str, Any]]:
    """Export ``run_dir``'s best checkpoint to ``out_dir/<cell>.safetensors.gz``; returns its path and training
    record."""
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.exists():
        raise TangshiError(f"{run_dir} is not a run dir (no metrics.json)")
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    if metrics.get("status") != "completed":
        raise TangshiError(f"{run_dir} did not complete (status {metrics.get('status')!r})")
    overrides = (run_dir / ".hydra" / "overrides.yaml").read_text(encoding="utf-8")
    import yaml

    training = {
        "cell": metrics["cell"],
        "command": " ".join(["python scripts/train.py", *yaml.safe_load(overrides)]),
        "steps": metrics["steps"],
        "best_step": metrics.get("best_step"),
        "stopped_by": metrics.get("stopped_by"),
        "precision": metrics.get("precision"),
        "train_time_s": metrics.get("train_time_s"),
        "best_val_bpc": metrics["best_val_bpc"],
        "test_bpc_float32": metrics.get("test_bpc"),
        "params": metrics.get("params"),
        "date": datetime.date.today().isoformat(),
    }
    dest = out_dir / f"{metrics['cell']}{checkpoint.SHIPPED_SUFFIX}"
    checkpoint.export(metrics["best_checkpoint"], dest, training)
    loaded = checkpoint.load(dest)
    prepared = checkpoint.prepared_data(loaded, None, data_dir)
    training["test_bpc"] = split_loss(loaded.model, loaded.vocab, prepared.splits["test"])["bpc"]
    checkpoint.export(dest, dest, training)  # now with the test bpc of these weights
    return dest, training
