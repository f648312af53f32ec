"""Ship a trained model with the project.  python scripts/ship.py run=<run dir>

Writes src/tangshi/shipped/<cell>.safetensors.gz: the run's best weights in half precision (safetensors,
gzip-compressed), with its settings, vocabulary, and how it was trained (command, steps, val bpc, and the test
bpc re-measured with the half-precision weights).
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("TANGSHI_ROOT", str(Path(__file__).resolve().parents[1]))

import hydra
from omegaconf import DictConfig

from tangshi.config import quote_non_ascii
from tangshi.errors import reported
from tangshi.shipping import ship


@hydra.main(config_path="../conf", config_name="ship", version_base=None)
def main(cfg: DictConfig) -> None:
    with reported():
        path, training = ship(Path(cfg.run), Path(cfg.out_dir), Path(cfg.paths.data_dir))
    print(
        f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): {training['cell']}, {training['steps']} steps, "
        f"test {training['test_bpc']:.3f} bits/char"
    )


if __name__ == "__main__":
    sys.argv = quote_non_ascii(sys.argv)
    main()
