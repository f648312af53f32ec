"""Analyse a checkpoint: test loss, rhyme positions, gradient flow, poetics.  python scripts/analyse.py ckpt=<.ckpt>

Prints the report and writes analysis.md, analysis.json and PNG figures into <run dir>/analysis/.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("TANGSHI_ROOT", str(Path(__file__).resolve().parents[1]))

import hydra
from omegaconf import DictConfig

from tangshi import checkpoint
from tangshi.analysis import analyse, to_markdown, write_report
from tangshi.config import quote_non_ascii, to_plain
from tangshi.errors import reported
from tangshi.gradflow import read_history


def default_out_dir(ckpt: Path, log_dir: Path) -> Path:
    """``<run dir>/analysis`` for a run's checkpoint; ``outputs/analysis/<name>`` for any other file (a shipped
    model), never beside it in the package."""
    if ckpt.parent.name == "checkpoints" and (ckpt.parent.parent / "metrics.json").exists():
        return ckpt.parent.parent / "analysis"
    return log_dir / "analysis" / ckpt.name.split(".")[0]


@hydra.main(config_path="../conf", config_name="analyse", version_base=None)
def main(cfg: DictConfig) -> None:
    with reported():
        loaded = checkpoint.load(cfg.ckpt, device=cfg.device)
        prepared = checkpoint.prepared_data(loaded, to_plain(cfg.data), cfg.paths.data_dir)
        result = analyse(
            loaded,
            prepared,
            n=cfg.n,
            seed=cfg.seed,
            length=cfg.length,
            poems=cfg.poems,
            poem_sets=cfg.poem_sets,
        )
    ckpt = Path(cfg.ckpt).resolve()
    run_dir = ckpt.parent.parent
    history = read_history(run_dir / "diagnostics" / "gradient_flow.json")
    written = write_report(result, history, Path(cfg.out_dir or default_out_dir(ckpt, Path(cfg.paths.log_dir))))
    print(to_markdown(result, history).split("\n## ")[0])
    print("wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    sys.argv = quote_non_ascii(sys.argv)
    main()
