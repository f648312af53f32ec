"""Muon's Newton-Schulz precision: torch's own update where bf16 is used, float32 where bf16 would be emulated."""

import torch

from tangshi.config import cpu_has_bf16
from tangshi.optimizer import Muon, orthogonalise


def _matrices() -> list[torch.nn.Parameter]:
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(48, 16) * 0.2), torch.nn.Parameter(torch.randn(16, 40) * 0.2)]


def test_muon_in_bf16_is_torchs_muon_step_for_step():
    ours, theirs = _matrices(), _matrices()
    mine = Muon(ours, lr=0.02, weight_decay=0.1, ns_dtype=torch.bfloat16)
    torchs = torch.optim.Muon(theirs, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    for step in range(3):  # momentum carries over: the state is torch's too
        torch.manual_seed(step)
        for a, b in zip(ours, theirs, strict=True):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        mine.step()
        torchs.step()
        for a, b in zip(ours, theirs, strict=True):
            assert torch.equal(a, b), step
    assert mine.state_dict()["state"][0]["momentum_buffer"].equal(torchs.state_dict()["state"][0]["momentum_buffer"])


def test_float32_newton_schulz_is_the_same_map_computed_more_exactly():
    torch.manual_seed(0)
    g = torch.randn(512, 128)  # tall, as an LSTM's stacked gates are
    args = ((3.4445, -4.7750, 2.0315), 5, 1e-7)
    exact = orthogonalise(g.double(), *args, torch.float64)
    bf16 = orthogonalise(g, *args, torch.bfloat16).double()
    fp32 = orthogonalise(g, *args, torch.float32).double()
    # the same quintic map: bf16 lands within 2 % of float64's result, float32 a hundred times closer
    assert (bf16 - exact).norm() < 0.02 * exact.norm()
    assert (fp32 - exact).norm() < 0.01 * (bf16 - exact).norm()


def test_newton_schulz_precision_follows_the_cpu(tmp_path):
    # /proc/cpuinfo flags written by hand: an AVX2-only EPYC (this project's machine on 2026-12-02), a Zen 4
    # EPYC with AVX-512 BF16, a Sapphire Rapids core with AMX
    cpus = {
        "avx2": ("fpu sse2 avx2 fma", False),
        "zen4": ("fpu sse2 avx2 avx512f avx512_bf16", True),
        "spr": ("fpu sse2 avx512f amx_bf16 amx_tile", True),
    }
    for name, (flags, native) in cpus.items():
        path = tmp_path / name
        path.write_text(f"processor\t: 0\nflags\t\t: {flags}\n", encoding="utf-8")
        assert cpu_has_bf16(str(path)) == native, name
    assert not cpu_has_bf16(str(tmp_path / "missing"))
    muon = Muon(_matrices(), lr=0.02)
    p = muon.param_groups[0]["params"][0]
    assert muon.dtype_for(p) == (torch.bfloat16 if cpu_has_bf16() else torch.float32)
    muon._cpu_bf16 = False
    assert muon.dtype_for(p) == torch.float32
    assert Muon(_matrices(), lr=0.02, ns_dtype=torch.bfloat16).dtype_for(p) == torch.bfloat16
