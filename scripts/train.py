"""Train a Tang poem language model.  python scripts/train.py [model.cell=rnn|lstm|gru] [hydra overrides]"""

import time

PROCESS_START = time.time()  # before the heavy imports: start-up time is part of what a user waits for

import math
import os
import sys
from pathlib import Path

os.environ.setdefault("TANGSHI_ROOT", str(Path(__file__).resolve().parents[1]))

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from tangshi.config import quote_non_ascii, register_resolvers
from tangshi.errors import TangshiError, reported
from tangshi.formatting import print_run_summary
from tangshi.train import train

register_resolvers()


@hydra.main(config_path="../conf", config_name="train", version_base=None)
def main(cfg: DictConfig) -> float:
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        # One job of a sweep: a run that fails (diverges, say) is reported and scored as the worst possible,
        # so a search goes on and learns to avoid it; its metrics.json says failed, with the error.
        try:
            summary = train(cfg, process_start=PROCESS_START)
        except TangshiError as e:
            print(f"error: {e}", file=sys.stderr)
            return math.inf
    else:
        with reported():
            summary = train(cfg, process_start=PROCESS_START)
    print_run_summary(summary)
    return summary.get("best_val_bpc", math.inf)  # what a Hydra sweeper (hparams_search) minimises


if __name__ == "__main__":
    sys.argv = quote_non_ascii(sys.argv)
    main()
