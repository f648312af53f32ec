"""Evaluate a checkpoint: test loss and poetics metrics.  python scripts/evaluate.py ckpt=<.ckpt>"""

import os
import sys
from pathlib import Path

os.environ.setdefault("TANGSHI_ROOT", str(Path(__file__).resolve().parents[1]))

import hydra
from omegaconf import DictConfig

from tangshi import checkpoint
from tangshi.config import plain, quote_non_ascii
from tangshi.errors import reported
from tangshi.evaluate import evaluate, to_markdown, write_report


@hydra.main(config_path="../conf", config_name="evaluate", version_base=None)
def main(cfg: DictConfig) -> None:
    with reported():
        loaded = checkpoint.load(cfg.ckpt, device=cfg.device)
        prepared = checkpoint.prepared_data(loaded, plain(cfg.data), cfg.paths.data_dir)
        result = evaluate(loaded, prepared, n=cfg.n, seed=cfg.seed)
    out_dir = cfg.out_dir or Path(cfg.ckpt).resolve().parent.parent / "eval"
    json_path, md_path = write_report(result, out_dir)
    print(to_markdown(result).split("\n## ")[0])
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    sys.argv = quote_non_ascii(sys.argv)
    main()
