"""Benchmark training, sampling and start-up.  python scripts/bench.py  (make bench)

Prints a table and writes bench.json and bench.md into outputs/bench/runs/<time>/.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("TANGSHI_ROOT", str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (tangshi/__init__.py says why)

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from tangshi import bench, checkpoint
from tangshi.atomic import write_json, write_text
from tangshi.config import default_threads, register_resolvers, to_plain
from tangshi.datamodule import PoemDataModule
from tangshi.errors import reported
from tangshi.model import resolve_budget

register_resolvers()


@hydra.main(config_path="../conf", config_name="bench", version_base=None)
def main(cfg: DictConfig) -> None:
    with reported():
        torch.set_num_threads(int(cfg.threads or default_threads(torch.get_num_threads())))
        dm = PoemDataModule.from_config(to_plain(cfg.data), cfg.paths.data_dir)
        dm.prepare_data()
        settings = bench.BenchSettings(
            cells=list(cfg.cells),
            device=cfg.device,
            steps=cfg.steps,
            warmup=cfg.warmup,
            reps=cfg.reps,
            sample_poems=cfg.sample_poems,
            startup_runs=cfg.startup_runs,
            batch_size=dm.batch_size,
        )
        passed_on = [o for o in HydraConfig.get().overrides.task if o.startswith(("data", "model"))]
        ckpt = cfg.ckpt
        if ckpt is None and settings.cells[0] in checkpoint.shipped_models():
            ckpt = checkpoint.shipped_path(settings.cells[0])
        trained = checkpoint.load(ckpt, device=cfg.device) if ckpt else None
        sample_command = ["scripts/sample.py", "n=5", *([f"ckpt={ckpt}"] if cfg.ckpt else [])] if ckpt else None
        result = bench.run(
            settings,
            dm.prepared,  # type: ignore[arg-type]
            resolve_budget(to_plain(cfg.model)),
            dm.corpus,
            Path(cfg.paths.data_dir),
            startup_overrides=passed_on,
            sampler=trained.model if trained else None,
            sampler_vocab=trained.vocab if trained else None,
            sample_command=sample_command,
            log=lambda msg: print(msg, file=sys.stderr, flush=True),
        )
    out = Path(cfg.paths.output_dir)
    write_json(out / "bench.json", result)
    write_text(out / "bench.md", bench.to_markdown(result))
    print(bench.to_markdown(result))
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")


if __name__ == "__main__":
    main()
