"""`hydra/sweeper=grids`: Hydra's basic sweeper over a union of cross products.

Hydra only loads sweepers from the `hydra_plugins` namespace package, so this
thin class lives here; the expansion itself is `aotpt.sweeps.grid_jobs`.
Everything else (batches, `multirun.yaml`, validation of each batch, any
launcher: local, submitit/SLURM) is Hydra's `BasicSweeper`, except that a
failed job is raised only after every batch ran, so one failure does not
cancel the rest of a days-long sweep.

No `from __future__ import annotations`: Hydra executes plugin modules before
registering them in sys.modules, where dataclasses look string annotations up.
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobStatus
from omegaconf import OmegaConf

from aotpt.sweeps import grid_jobs


@dataclass
class GridsSweeperConf:
    _target_: str = "hydra_plugins.aotpt_grids.grids_sweeper.GridsSweeper"
    max_batch_size: Any = None  # int or None: jobs handed to the launcher at once
    params: Any = None  # dict: axes crossed with every grid
    grids: Any = None  # list of dicts: one cross product each


log = logging.getLogger(__name__)

ConfigStore.instance().store(group="hydra/sweeper", name="grids", node=GridsSweeperConf, provider="aotpt")


class GridsSweeper(BasicSweeper):
    def __init__(self, max_batch_size: int | None = None, params: dict | None = None, grids: list | None = None):
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.grids = grids

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        jobs = grid_jobs(self.params, self.grids, arguments, config_loader=self.hydra_context.config_loader)
        self.overrides = list(self.split_overrides_to_chunks(jobs, self.max_batch_size))
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns, failed, initial_job_idx = [], [], 0
        while not self.is_done():
            batch = self.get_job_batch()
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=initial_job_idx)
            failed += [r for r in results if r.status == JobStatus.FAILED]
            initial_job_idx += len(batch)
            returns.append(results)
        if failed:  # after every batch ran: one failed job must not cancel a days-long sweep
            log.error("%d of %d jobs failed; the first error follows", len(failed), initial_job_idx)
            _ = failed[0].return_value  # re-raises that job's error
        return returns
