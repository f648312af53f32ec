"""What a run was: its resolved settings and the environment it ran in, as written into ``metrics.json``.

Hydra's ``.hydra/config.yaml`` keeps interpolations (``${oc.select:…}``, ``${cpu_precision:}``) unresolved, and
the rate and core size a run used are computed from several settings. The record holds the values actually
used, so a reader of runs reads them and never rebuilds them:

* ``config``: the whole config with every interpolation resolved, and the model, optimiser and trainer settings
  replaced by what the run used (the cell's recipe filled in, the rate after the size rule, the hidden size a parameter
  budget chose, the precision Lightning ran).
* ``environment``: Python, torch and Lightning versions, the CPU and whether it has AMX, threads, the GPU, and
  the git commit with whether the tree was dirty.

:func:`experiment` is the one definition of what tells runs apart (what a comparison groups by).
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from tangshi.config import cpu_has_amx, cpu_has_bf16, flatten

# What a run *is*: the settings that change what is trained and how it is scored. Everything else in the config
# (paths, task and run names, logging, callbacks, the poems sampled for people, the recipe table `recipes`, whose
# chosen values already stand in model/optim/data/trainer) never tells two runs apart.
EXPERIMENT_GROUPS = ("model", "optim", "data", "trainer")
# trainer settings that only change what is shown while training
DISPLAY = ("enable_progress_bar", "enable_model_summary", "log_every_n_steps")


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what the platform says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(accelerator: str | None = None) -> dict[str, Any]:
    """The software and hardware of this process. ``gpu`` is the card's name when ``accelerator`` is a GPU."""
    import lightning

    commit = _git("rev-parse", "HEAD")
    gpu = torch.cuda.get_device_name(0) if accelerator in ("gpu", "cuda") and torch.cuda.is_available() else None
    amx = cpu_has_amx()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "cpu": cpu_model(),
        "amx": amx,
        "bf16": cpu_has_bf16(),  # bf16 matrix products in hardware (AMX or AVX-512 BF16): Muon's precision follows
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the vector ISA torch's kernels use: AVX2, AVX512
        "threads": torch.get_num_threads(),
        "gpu": gpu,
        "hardware": gpu or f"{cpu_model()}{' (AMX)' if amx else ' (no AMX)'}",
        "commit": commit,
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")) if commit else None,
        "argv": sys.argv[1:],
    }


def experiment(record: dict[str, Any]) -> dict[str, Any]:
    """The settings that tell runs apart, flattened (``optim.lr``), the seed aside: the resolved config's
    experiment groups, and the hardware it ran on (a precision and a kind of machine are not seeds)."""
    config = record.get("config") or {}
    kept = {group: config.get(group) for group in EXPERIMENT_GROUPS if group in config}
    if isinstance(kept.get("trainer"), dict):
        kept["trainer"] = {k: v for k, v in kept["trainer"].items() if k not in DISPLAY}
    flat = flat_settings(kept)
    flat["hardware"] = (record.get("environment") or {}).get("hardware", UNKNOWN)
    return flat


def flat_settings(groups: dict[str, Any]) -> dict[str, Any]:
    """Config groups flattened (``optim.lr``), with each setting added later (:data:`ADDED`) at the default an
    earlier run trained with where the record lacks it: what grouping and the resume check compare."""
    flat = flatten(groups)
    for key, value in ADDED.items():
        if key.split(".")[0] in groups:
            flat.setdefault(key, value)
    return flat


UNKNOWN = "unknown"  # what a run made before records were written did not record
# Settings added after runs began keeping records, with the default every earlier run trained with (a test keeps
# them equal to conf/'s defaults): a record without one groups with the runs that set it to that default.
ADDED = {
    "model.structure": False,
    "model.echo_bias": False,
    "model.chrono_span": None,
    "optim.optimizer": "adamw",
    "optim.lr_by_size_exponent": None,
    "optim.lr_reference_budget": None,
}
