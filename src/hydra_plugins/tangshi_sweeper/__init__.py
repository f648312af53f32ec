"""tangshi's Hydra plugins: the resumable Optuna sweeper (hydra/sweeper=resumable_optuna)."""
