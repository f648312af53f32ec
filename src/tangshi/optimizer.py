"""The optimiser (``optim.optimizer``): AdamW, or Muon for the core's weight matrices with AdamW for the rest.

Weight decay falls on matrices only: biases and embeddings (the rows of rare characters, the structure
features, the Transformer's learned positions) keep their scale. Muon (``torch.optim.Muon``, Jordan et al.
2024) orthogonalises each update of a 2-D matrix; it is meant for hidden weights, so the embeddings and the
softmax head stay with AdamW. Its rate is scaled to match AdamW's update size (``adjust_lr_fn=
"match_rms_adamw"``, Liu et al. 2025), so one ``optim.lr`` and one ``optim.weight_decay`` serve both.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from tangshi.config import cpu_has_bf16

OPTIMIZERS = ("adamw", "muon")
BETAS = (0.9, 0.99)  # AdamW's, as conf/train.yaml has them (a test keeps the two equal)


def param_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """The parameters weight decay falls on (matrices outside embeddings) and the rest."""
    embedded = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim >= 2 and id(p) not in embedded else no_decay).append(p)
    return decay, no_decay


def orthogonalise(
    g: Tensor, coefficients: tuple[float, float, float], steps: int, eps: float, dtype: torch.dtype
) -> Tensor:
    """``torch.optim.Muon``'s Newton-Schulz iteration (its quintic and coefficients) on ``g``, computed in ``dtype``."""
    a, b, c = coefficients
    x = g.to(dtype)
    if g.size(0) > g.size(1):
        x = x.T
    x = x / x.norm().clamp(min=eps)  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if g.size(0) > g.size(1) else x


def newton_schulz_dtype(device: torch.device, cpu_bf16: bool | None = None) -> torch.dtype:
    """Muon's Newton-Schulz precision on ``device``: bf16, as torch computes it, where the hardware multiplies bf16
    (a GPU, a CPU with AMX or AVX-512 BF16), float32 elsewhere. ``cpu_bf16``: the CPU's answer, if already read."""
    if device.type != "cpu":
        return torch.bfloat16
    return torch.bfloat16 if (cpu_has_bf16() if cpu_bf16 is None else cpu_bf16) else torch.float32


def _closure_loss(closure: Callable[[], Any] | None) -> Any:
    """What ``step(closure)`` returns: the loss ``closure`` computes (with gradients on), or None."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class Muon(torch.optim.Muon):
    """``torch.optim.Muon`` (its settings, state and update) with the Newton-Schulz iteration in bf16, as torch
    computes it, only where the hardware multiplies bf16 (a GPU, a CPU with AMX or AVX-512 BF16), and in float32
    elsewhere: on an AVX2-only EPYC, emulated bf16 ran at a seventh of float32's rate and a Muon run of the
    default LSTM at about a tenth of its speed (2026-12-02, docs/rhyme.md section 2e). ``ns_dtype`` fixes the
    precision instead."""

    def __init__(self, params: Any, lr: float, ns_dtype: torch.dtype | None = None, **kwargs: Any):
        super().__init__(params, lr=lr, adjust_lr_fn="match_rms_adamw", **kwargs)
        self.ns_dtype = ns_dtype
        self._cpu_bf16 = cpu_has_bf16()  # read once: the step asks for every matrix

    def dtype_for(self, p: Tensor) -> torch.dtype:
        """The precision of ``p``'s Newton-Schulz iteration."""
        return self.ns_dtype if self.ns_dtype is not None else newton_schulz_dtype(p.device, self._cpu_bf16)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = _closure_loss(closure)
        for group in self.param_groups:
            lr, decay, momentum = group["lr"], group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = orthogonalise(
                    update, group["ns_coefficients"], group["ns_steps"], group["eps"], self.dtype_for(p)
                )
                p.mul_(1 - lr * decay)
                p.add_(update, alpha=-lr * 0.2 * math.sqrt(max(p.shape[:2])))  # match_rms_adamw
        return loss


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon for ``matrices``, AdamW for ``rest`` (dicts of param groups), seen by Lightning and the rate
    schedule as one optimiser: its ``param_groups`` are the two optimisers' own group dicts, so a schedule
    that sets ``lr`` there sets it for both."""

    def __init__(
        self, matrices: list[dict[str, Any]], rest: list[dict[str, Any]], lr: float, betas: tuple[float, float]
    ):
        self.muon = Muon(matrices, lr=lr)
        self.adamw = torch.optim.AdamW(rest, lr=lr, betas=betas)
        # the base class keeps the very group dicts it is given: a schedule's lr reaches both optimisers
        super().__init__([*self.muon.param_groups, *self.adamw.param_groups], {"lr": lr})

    def _share_groups(self) -> None:
        self.param_groups = [*self.muon.param_groups, *self.adamw.param_groups]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = _closure_loss(closure)
        self.muon.step()
        self.adamw.step()
        return loss

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self._share_groups()  # loading replaced the group dicts


def build_optimizer(model: nn.Module, optim: dict[str, Any]) -> torch.optim.Optimizer:
    """The optimiser ``optim`` describes (``optimizer``, ``lr``, ``weight_decay``, ``betas``) for ``model``."""
    wd = float(optim.get("weight_decay", 0.0))
    lr, betas = float(optim["lr"]), tuple(optim.get("betas", BETAS))
    decay, no_decay = param_groups(model)
    if optim.get("optimizer", "adamw") == "adamw":  # the name is checked with the rest (module.check_optim)
        return torch.optim.AdamW(
            [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas
        )
    hidden = {id(p) for part in (model.core, model.proj) if part is not None for p in part.parameters()}
    matrices = [p for p in decay if id(p) in hidden]
    rest = [{"params": [p for p in decay if id(p) not in hidden], "weight_decay": wd}]
    return MuonWithAdamW(
        [{"params": matrices, "weight_decay": wd}], [*rest, {"params": no_decay, "weight_decay": 0.0}], lr, betas
    )
