"""Hydra/OmegaConf glue: resolvers the configs use, and conversion to the plain types checkpoints need."""

from __future__ import annotations

import os
import secrets
from typing import Any

from omegaconf import DictConfig, OmegaConf

# One tag per process: two runs started in the same second (a sweep launched twice, two terminals) get
# distinct run dirs, while every interpolation within one process agrees on the name.
RUN_TAG = f"{os.getpid():x}{secrets.token_hex(2)}"


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``); empty where that cannot be read."""
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def cpu_has_amx(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has AMX bf16 tile instructions (flag ``amx_bf16``)."""
    return "amx_bf16" in cpu_flags(cpuinfo)


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX, or AVX-512 BF16 dot products). Elsewhere
    torch emulates them: on an AVX2-only EPYC a bf16 matmul ran at a seventh of float32's rate (2026-12-02)."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags(cpuinfo))


def cpu_precision(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU training precision that measured fastest at an equal loss per step: bf16 autocast where the CPU
    has AMX (docs/performance.md: 1.48x for the LSTM), float32 elsewhere (bf16 was slower without AMX)."""
    return "bf16-mixed" if cpu_has_amx(cpuinfo) else "32-true"


def register_resolvers() -> None:
    """Make ``${run_tag:}``, ``${cpu_precision:}`` and ``${floordiv:a,b}`` available; call before Hydra composes
    a config (this module calls it at import)."""
    if not OmegaConf.has_resolver("run_tag"):
        OmegaConf.register_new_resolver("run_tag", lambda: RUN_TAG)
    if not OmegaConf.has_resolver("cpu_precision"):
        OmegaConf.register_new_resolver("cpu_precision", cpu_precision)
    if not OmegaConf.has_resolver("floordiv"):
        OmegaConf.register_new_resolver("floordiv", lambda a, b: int(a) // int(b))


register_resolvers()


def command_line_keys() -> set[str]:
    """The keys this job's command line (or sweep) set, e.g. ``{"trainer.max_steps"}``; empty outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    return {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}


def to_plain(cfg: DictConfig | Any) -> Any:
    """A resolved copy made of dicts, lists and scalars (a DictConfig inside a checkpoint breaks weights_only)."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def quote_non_ascii(argv: list[str]) -> list[str]:
    """Quote override values that hold non-ASCII text, which Hydra's grammar rejects unquoted.

    ``begin=日`` becomes ``begin='日'`` and ``data.path=/data/全唐诗`` likewise; a comma-separated sweep
    (``begin=春,秋``) has each choice quoted, so it stays a sweep.
    """
    out = argv[:1]
    for arg in argv[1:]:
        key, sep, value = arg.partition("=")
        if sep and not key.startswith("-") and not value.isascii() and value[:1] not in "'\"[{":
            value = ",".join("'" + v.replace("'", "\\'") + "'" for v in value.split(","))
        out.append(key + sep + value)
    return out


def parallel_jobs() -> int:
    """How many jobs of this sweep run at once: ``n_jobs`` of the joblib launcher, else 1."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return 1
    launcher = HydraConfig.get().launcher
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return 1
    n = int(launcher.get("n_jobs") or 1)
    return n if n > 0 else os.cpu_count() or 1  # joblib's -1: one job per core


def default_threads(cores: int, processes: int = 1) -> int:
    """Torch threads for one process: ``cores`` (torch's own default, taken before any change) shared among the
    jobs running at once and the ``processes`` of each (CPU data parallelism); oversubscribed cores make every
    job several times slower than an idle core would."""
    return max(1, cores // parallel_jobs() // max(1, processes))


def apply_recipe(cfg: DictConfig) -> dict[str, Any]:
    """Fill every setting left at null with the value of ``model.cell``'s recipe (``recipes.<cell>``, else
    ``recipes.default``); a value already set, on the command line or by an experiment, stays. Returns what was
    taken from the recipe, flattened (``{"optim.lr": 0.03, …}``), for the run to print. A setting that stays null
    is one line naming it. ``model.echo_bias`` left at null follows ``model.structure``, which it reads."""
    from tangshi.errors import TangshiError

    recipes = cfg.get("recipes") or {}
    cell = cfg.model.cell
    recipe = recipes.get(cell) if cell in recipes else recipes.get("default")
    raw = OmegaConf.to_container(cfg, resolve=False)  # interpolations count as set: they are not resolved here
    taken = {}
    for key, value in flatten(OmegaConf.to_container(recipe, resolve=True) if recipe else {}).items():
        if _raw(raw, key) is None and value is not None:
            OmegaConf.update(cfg, key, value, merge=False)
            taken[key] = value
    unset = [k for k in RECIPE_KEYS if _raw(raw, k) is None and k not in taken]
    if unset:
        raise TangshiError(
            f"{', '.join(unset)} left at null and model.cell={cell} has no recipe for "
            f"{'it' if len(unset) == 1 else 'them'}: set {'it' if len(unset) == 1 else 'them'}, or recipes.{cell}"
        )
    if "model" in cfg and cfg.model.get("echo_bias", False) is None:  # null: with the structure it reads
        OmegaConf.update(cfg, "model.echo_bias", bool(cfg.model.structure), merge=False)
        taken["model.echo_bias"] = bool(cfg.model.structure)
    return taken


# The settings a recipe decides (null in conf/: the cell's recipe fills them).
RECIPE_KEYS = (
    "optim.optimizer",
    "optim.lr",
    "optim.weight_decay",
    "optim.warmup_steps",
    "model.dropout",
    "model.structure",
    "data.batch_size",
    "trainer.max_steps",
)


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; lists stay values."""
    if not isinstance(d, dict):
        return {prefix[:-1]: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}."))
    return out


def _raw(container: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(container, dict) or part not in container:
            return None
        container = container[part]
    return container
