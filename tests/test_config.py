from tangshi.config import quote_non_ascii

from .conftest import ROOT


def test_non_ascii_override_values_are_quoted_for_hydra():
    argv = ["s.py", "begin=日", "data.path=/d/全唐诗", "n=5", "-m", "begin=春,秋", "x='已引'", "model.cell=gru"]
    assert quote_non_ascii(argv) == [
        "s.py",
        "begin='日'",
        "data.path='/d/全唐诗'",
        "n=5",
        "-m",
        "begin='春','秋'",
        "x='已引'",
        "model.cell=gru",
    ]


def test_two_processes_started_together_get_different_run_dirs():
    """The run dir ends in a per-process tag, so runs started in the same second never share a folder."""
    import subprocess
    import sys

    code = (
        "from hydra import compose, initialize_config_dir; from tangshi.config import register_resolvers;"
        "register_resolvers();"
        f"initialize_config_dir(config_dir={str(ROOT / 'conf')!r}, version_base=None);"
        "c = compose('train', return_hydra_config=True); print(c.hydra.run.dir.split('_')[-1])"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    tags = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(tags) and tags[0] != tags[1]


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    """mkstemp makes private files; results (metrics.json, caches) must be readable like any other file."""
    import os
    import stat

    from tangshi.atomic import atomic_dir, write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "metrics.json", "{}")
        with atomic_dir(tmp_path / "cache") as d:
            (d / "x").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o755
    assert (tmp_path / "metrics.json").read_text() == "{}" and not list(tmp_path.glob(".*tmp"))


def test_one_set_of_sampling_defaults():
    """conf/sampling/default.yaml (the command line, training's samples) and SamplingConfig (library calls)
    hold the same defaults, so a poem sampled one way is the poem sampled the other."""
    import dataclasses

    import yaml

    from tangshi.decoding import SamplingConfig

    yaml_defaults = yaml.safe_load((ROOT / "conf" / "sampling" / "default.yaml").read_text(encoding="utf-8"))
    fields = {f.name: f.default for f in dataclasses.fields(SamplingConfig)}
    assert yaml_defaults == fields
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        train, sample = compose("train"), compose("sample")
    assert train.samples.top_p == sample.top_p == SamplingConfig().top_p  # once 0.95 against 1.0
    assert train.samples.n == 4 and sample.n == SamplingConfig().n


def test_code_defaults_equal_config_defaults():
    """What a library call gets by default is what a run gets from conf/: CharLM's settings, AdamW's betas and
    the gradient-flow interval; and the studio starts at the sampling defaults."""
    import inspect

    import yaml

    from tangshi.callbacks import GradientFlow
    from tangshi.model import CharLM
    from tangshi.optimizer import BETAS

    model_yaml = yaml.safe_load((ROOT / "conf" / "model" / "charlm.yaml").read_text(encoding="utf-8"))
    train_yaml = yaml.safe_load((ROOT / "conf" / "train.yaml").read_text(encoding="utf-8"))
    params = inspect.signature(CharLM).parameters
    for key, value in model_yaml.items():
        if key in params:
            default = params[key].default
            if value is None and key in train_yaml["recipes"]["default"]["model"]:  # a recipe setting
                value = train_yaml["recipes"]["default"]["model"][key]
            if key == "echo_bias" and value is None:  # null: as model.structure
                value = train_yaml["recipes"]["default"]["model"]["structure"]
            assert (list(default) if isinstance(default, tuple) else default) == value, key
    assert {k for k in model_yaml if k not in params} == {"param_budget"}  # build_model resolves it
    assert list(BETAS) == train_yaml["optim"]["betas"]
    callbacks = yaml.safe_load((ROOT / "conf" / "callbacks" / "default.yaml").read_text(encoding="utf-8"))
    flow = inspect.signature(GradientFlow).parameters
    for key in ("every_n_steps", "length", "poems"):
        assert flow[key].default == callbacks["gradient_flow"][key], key
    # settings added after runs began keeping records: an old record takes the default conf/ has
    from tangshi.record import ADDED

    for key, value in ADDED.items():
        group, name = key.split(".")
        default = (model_yaml if group == "model" else train_yaml[group])[name]
        if default is None and name in train_yaml["recipes"]["default"].get(group, {}):  # a recipe setting
            default = train_yaml["recipes"]["default"][group][name]
        if key == "model.echo_bias" and default is None:  # null: as model.structure
            default = train_yaml["recipes"]["default"]["model"]["structure"]
        assert default == value, key
