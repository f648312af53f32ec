"""Benchmark training, sampling and start-up, and the options that trade speed.  python scripts/bench.py

Prints a table and writes bench.json and bench.md into outputs/bench/runs/<time>/.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("TANGSHI_ROOT", str(Path(__file__).resolve().parents[1]))

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from tangshi import bench, checkpoint
from tangshi.atomic import write_json, write_text
from tangshi.config import default_threads, plain, register_resolvers
from tangshi.datamodule import PoemDataModule
from tangshi.errors import reported
from tangshi.model import resolve_budget

register_resolvers()


@hydra.main(config_path="../conf", config_name="bench", version_base=None)
def main(cfg: DictConfig) -> None:
    with reported():
        torch.set_num_threads(int(cfg.threads or default_threads(torch.get_num_threads())))
        dm = PoemDataModule.from_config(plain(cfg.data), cfg.paths.data_dir)
        dm.prepare_data()
        passed_on = [o for o in HydraConfig.get().overrides.task if o.startswith(("data", "model"))]
        trained = checkpoint.load(cfg.ckpt, device=cfg.device) if cfg.ckpt else None
        result = bench.run(
            dm.prepared,  # type: ignore[arg-type]
            resolve_budget(plain(cfg.model)),
            corpus=dm.corpus,
            data_dir=Path(cfg.paths.data_dir),
            cells=list(cfg.cells),
            batch_size=dm.batch_size,
            steps=cfg.steps,
            warmup=cfg.warmup,
            reps=cfg.reps,
            device=cfg.device,
            sample_poems=cfg.sample_poems,
            budget_s=cfg.budget_s,
            startup_overrides=passed_on,
            startup_runs=cfg.startup_runs,
            options=cfg.options,
            log=lambda msg: print(msg, file=sys.stderr, flush=True),
            sampler=trained.model if trained else None,
            sampler_vocab=trained.vocab if trained else None,
        )
    out = Path(cfg.paths.output_dir)
    write_json(out / "bench.json", result)
    write_text(out / "bench.md", bench.to_markdown(result))
    print(bench.to_markdown(result))
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")


if __name__ == "__main__":
    main()
