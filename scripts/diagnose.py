"""Gradient flow and rhyme-position diagnostics of one checkpoint.  python scripts/diagnose.py ckpt=<.ckpt>

Prints the tables and writes diagnose.md, diagnose.json and PNG figures into <run dir>/diagnostics/.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("TANGSHI_ROOT", str(Path(__file__).resolve().parents[1]))

import hydra
from omegaconf import DictConfig

from tangshi import checkpoint, diagnostics
from tangshi.config import plain, quote_non_ascii
from tangshi.errors import reported


@hydra.main(config_path="../conf", config_name="diagnose", version_base=None)
def main(cfg: DictConfig) -> None:
    with reported():
        loaded = checkpoint.load(cfg.ckpt, device=cfg.device)
        prepared = checkpoint.prepared_data(loaded, plain(cfg.data), cfg.paths.data_dir)
        result = diagnostics.diagnose(loaded.model, loaded.vocab, prepared.splits["val"], cfg.length, cfg.poems)
        result["checkpoint"], result["step"] = str(loaded.path), loaded.step
    out_dir = Path(cfg.out_dir or Path(cfg.ckpt).resolve().parent.parent / "diagnostics")
    history = diagnostics.read_history(out_dir / "gradient_flow.json")
    written = diagnostics.write_report(result, history, out_dir)
    print(diagnostics.to_markdown(result, history))
    print("wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    sys.argv = quote_non_ascii(sys.argv)
    main()
