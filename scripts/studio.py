"""The poem studio in the browser.  python scripts/studio.py  (make demo; pip install -e '.[demo]')"""

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves this machine

import hydra
from omegaconf import DictConfig, OmegaConf

from tangshi.config import quote_non_ascii, to_plain
from tangshi.errors import TangshiError, reported
from tangshi.studio import Models, build, launch, model_choices


@hydra.main(config_path="../conf", config_name="studio", version_base=None)
def main(cfg: DictConfig) -> None:
    with reported():
        try:
            import gradio  # noqa: F401
        except ImportError:
            raise TangshiError("the studio needs Gradio: pip install -e '.[demo]' (make demo does it)") from None
        models = Models(model_choices(to_plain(cfg.ckpts), cfg.sweep))
        # the shipped model scripts/sample.py uses (conf/sample.yaml's cell, the best) takes the first column
        best = f"shipped {OmegaConf.load(Path(__file__).resolve().parents[1] / 'conf' / 'sample.yaml').cell}"
        ordered = sorted(models.choices, key=lambda name: name != best)
        default = to_plain(cfg.models) or to_plain(cfg.ckpts) or ordered[:3]
        for name in default:
            models.get(name)  # load once, now: a bad path is one line before the page starts
        app = build(models, default)
    print(f"tangshi studio on http://127.0.0.1:{cfg.port}", flush=True)
    launch(app, cfg.port)


if __name__ == "__main__":
    sys.argv = quote_non_ascii(sys.argv)
    main()
