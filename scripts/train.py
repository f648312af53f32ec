"""Train a Tang poem language model.  python scripts/train.py [model.cell=rnn|lstm|gru] [hydra overrides]"""

import time

PROCESS_START = time.time()  # before the heavy imports: start-up time is part of what a user waits for

import os
import sys
from pathlib import Path

os.environ.setdefault("TANGSHI_ROOT", str(Path(__file__).resolve().parents[1]))

import hydra
from omegaconf import DictConfig

from tangshi.config import quote_non_ascii, register_resolvers
from tangshi.errors import reported
from tangshi.report import print_run_summary
from tangshi.train import train

register_resolvers()


@hydra.main(config_path="../conf", config_name="train", version_base=None)
def main(cfg: DictConfig) -> float | None:
    with reported():
        summary = train(cfg, process_start=PROCESS_START)
    print_run_summary(summary)
    return summary.get("best_val_loss")  # what a Hydra sweeper would minimise


if __name__ == "__main__":
    sys.argv = quote_non_ascii(sys.argv)
    main()
