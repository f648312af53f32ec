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

try:  # light imports only: Hydra imports every plugin module at start-up, even to sample a poem
    from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # the optuna extra is not installed: this sweeper is simply not offered
    OptunaSweeper = None  # type: ignore[assignment,misc]


def _resume(sweeper: Any, arguments: list[str]) -> None:
    """Before the stock sweep: fail the trials a killed search left running, shrink ``n_trials`` to the trials
    still missing, and number new jobs after the old ones."""
    import optuna

    if sweeper.storage and str(sweeper.storage).startswith("sqlite:///"):
        Path(str(sweeper.storage)[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    if not sweeper.storage:
        return
    try:
        study = optuna.load_study(study_name=sweeper.study_name, storage=sweeper.storage)
    except KeyError:  # no such study yet: a new search
        return
    states = optuna.trial.TrialState
    for trial in study.get_trials(deepcopy=False, states=(states.RUNNING,)):
        study._storage.set_trial_state(trial._trial_id, states.FAIL)
    done = len(study.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED)))
    log.info("resuming study %s: %d of %d trials done", sweeper.study_name, done, sweeper.n_trials)
    sweeper.n_trials = max(0, sweeper.n_trials - done)
    sweeper.job_idx = len(study.trials)  # new jobs get new directories


if OptunaSweeper is not None:

    class ResumableOptunaSweeper(OptunaSweeper):
        """:class:`OptunaSweeper` whose study resumes where a killed search stopped."""

        def sweep(self, arguments: list[str]) -> None:
            _resume(self.sweeper, arguments)
            return super().sweep(arguments)

    @dataclass
    class ResumableOptunaSweeperConf(OptunaSweeperConf):
        _target_: str = "hydra_plugins.tangshi_sweeper.resumable_optuna.ResumableOptunaSweeper"

    ConfigStore.instance().store(
        group="hydra/sweeper", name="resumable_optuna", node=ResumableOptunaSweeperConf, provider="tangshi"
    )
