"""Sample poems.  python scripts/sample.py [ckpt=<.ckpt>] begin=日 n=5 form=wuyan_jueju

Without ``ckpt`` the model shipped with the project for ``cell`` (lstm by default) writes them. Imports torch,
not Lightning: a checkpoint and the decoder are all it needs.
"""

import sys

import hydra
from omegaconf import DictConfig

from tangshi import checkpoint
from tangshi.config import quote_non_ascii, to_plain
from tangshi.decoding import SamplingConfig, sample
from tangshi.errors import TangshiError, reported
from tangshi.formatting import format_samples

OWN_KEYS = ("ckpt", "cell", "device", "format")


@hydra.main(config_path="../conf", config_name="sample", version_base=None)
def main(cfg: DictConfig) -> None:
    with reported():
        if cfg.format not in ("text", "json"):
            raise TangshiError(f"unknown format {cfg.format!r}; allowed: text, json")
        settings = SamplingConfig(**{k: v for k, v in to_plain(cfg).items() if k not in OWN_KEYS})
        path = cfg.ckpt or checkpoint.shipped_path(cfg.cell)
        loaded = checkpoint.load(path, device=cfg.device)
        poems = sample(loaded.model, loaded.vocab, settings)
    print(format_samples(poems, settings, cfg.format, checkpoint=str(path)))


if __name__ == "__main__":
    sys.argv = quote_non_ascii(sys.argv)
    main()
