"""Hydra's Optuna sweeper (hydra-optuna-sweeper), made resumable: ``hydra/sweeper=resumable_optuna``.

The stock sweeper reloads a stored study (``load_if_exists``) but then runs ``n_trials`` more trials, numbers
its jobs from 0 again (so they overwrite the first jobs' directories) and leaves the trials that a killed
search was running marked RUNNING for ever. Here ``n_trials`` is the study's total: a rerun with the same
``hydra.sweep.dir`` marks the interrupted trials failed, runs only the trials still missing, and numbers the
new jobs after the old ones. Installed with the ``optuna`` extra (``pip install -e '.[optuna]'``).
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore

log = logging.getLogger(__name__)

try:
    import optuna
    from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl
    from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # the optuna extra is not installed: this sweeper is simply not offered
    OptunaSweeper = None  # type: ignore[assignment,misc]


if OptunaSweeper is not None:

    class _ResumableImpl(OptunaSweeperImpl):
        def sweep(self, arguments: list[str]) -> None:
            if self.storage and str(self.storage).startswith("sqlite:///"):
                Path(str(self.storage)[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
            if self.storage:
                try:
                    study = optuna.load_study(study_name=self.study_name, storage=self.storage)
                except KeyError:  # no such study yet: a new search
                    study = None
                if study is not None:
                    states = optuna.trial.TrialState
                    for trial in study.get_trials(deepcopy=False, states=(states.RUNNING,)):
                        study._storage.set_trial_state(trial._trial_id, states.FAIL)
                    done = len(study.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED)))
                    log.info("resuming study %s: %d of %d trials done", self.study_name, done, self.n_trials)
                    self.n_trials = max(0, self.n_trials - done)
                    self.job_idx = len(study.trials)  # new jobs get new directories
                    if self.n_trials == 0:
                        log.info("nothing left to run")
            super().sweep(arguments)

    class ResumableOptunaSweeper(OptunaSweeper):
        """:class:`OptunaSweeper` whose study resumes where a killed search stopped."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.sweeper.__class__ = _ResumableImpl

    @dataclass
    class ResumableOptunaSweeperConf(OptunaSweeperConf):
        _target_: str = "hydra_plugins.tangshi_sweeper.resumable_optuna.ResumableOptunaSweeper"

    ConfigStore.instance().store(
        group="hydra/sweeper", name="resumable_optuna", node=ResumableOptunaSweeperConf, provider="tangshi"
    )
