"""`results.json`: what a run computed, rebuildable into reports without W&B.

Fields: status (running, completed, interrupted, failed) and error; the
resolved config; `identity` (the settings that can change results, see
`aotpt.identity`), `run_id` (its hash, the folder suffix) and `group_id`
(the same without the seed: one setup's seeds share it); parameter counts;
dev metrics per epoch; the best epoch and its scores; `metrics`, every value
logged at the end (what a finished run returns to a sweeper for any
`optimized_metric`); wall time over all attempts of the run, and `machine`
(`aotpt.hardware.machine`: CPU, cores, torch's threads and version, GPUs) of the attempt
that wrote the file last: wall times are comparable only beside it (a run resumed on
another machine adds both attempts' time under the last one's record).

Written after every dev evaluation and once more when the run ends (also on
failure), always atomically, and only by global rank 0. Under ddp_spawn the
epochs are seen by the spawned rank 0, not by the launching process: that
one `reload()`s them from the file before it writes the end of the run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

from aotpt.atomic import write_json_atomic
from aotpt.hardware import machine
from aotpt.identity import group_id, run_id
from aotpt.rundir import is_global_zero

INTERRUPTS = (KeyboardInterrupt, SIGTERMException)  # Ctrl-C, and SLURM's SIGTERM before it kills a job


class ResultsWriter(L.Callback):
    """Keeps per-epoch dev metrics and the best epoch; its state rides in checkpoints so a resumed run loses nothing."""

    def __init__(self, path: Path, config: dict, identity: dict) -> None:
        self.path = Path(path)
        self.config = config
        self.identity = identity
        self.epochs: list[dict] = []
        self.summary: dict = {}
        self.metrics: dict[str, float] = {}
        self.status = "running"
        self.error: str | None = None
        self.writer = is_global_zero()  # in a Trainer: trainer.is_global_zero (see setup)
        self._start = time.monotonic()
        self._elapsed_before = 0.0  # wall time of earlier (killed) attempts of this run

    def wall_time(self) -> float:
        return self._elapsed_before + time.monotonic() - self._start

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.writer = trainer.is_global_zero

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after the module logged its epoch metrics, before the checkpoint callbacks (Lightning runs them last)
        if trainer.sanity_checking:
            return
        self.metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        metrics = {k: v for k, v in self.metrics.items() if k.startswith("val/")}
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step, **metrics}
        self.epochs = [e for e in self.epochs if e["epoch"] != row["epoch"]] + [row]
        self.write()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """Ctrl-C (and SLURM's SIGTERM) interrupt a run that can be resumed; anything else fails it."""
        if isinstance(exception, INTERRUPTS):
            self.status = "interrupted"

    def best(self) -> dict:
        scored = [e for e in self.epochs if "val/score" in e]
        return max(scored, key=lambda e: e["val/score"]) if scored else {}

    def reload(self) -> None:
        """Take the epochs another process (ddp_spawn's rank 0) wrote to the file."""
        if self.path.is_file():
            stored = json.loads(self.path.read_text())
            if len(stored.get("epochs", [])) > len(self.epochs):
                self.epochs, self.metrics = stored["epochs"], stored.get("metrics", {})

    def as_dict(self) -> dict:
        best = self.best()
        return {
            "status": self.status,
            "error": self.error,
            "run_id": run_id(self.identity),
            "group_id": group_id(self.identity),
            "identity": self.identity,
            "config": self.config,
            **self.summary,
            "epochs": self.epochs,
            "best": {"epoch": best.get("epoch"), **{k: v for k, v in best.items() if k.startswith("val/")}},
            "metrics": self.metrics,
            "wall_time_s": round(self.wall_time(), 2),
            "machine": machine(),
        }

    def write(self) -> None:
        if self.writer:
            write_json_atomic(self.path, self.as_dict())

    def table(self) -> str:
        """Per-epoch dev metrics as a fixed-width table, best epoch marked."""
        keys = sorted({k for e in self.epochs for k in e if k.startswith("val/") and k != "val/score_best"})
        best = self.best().get("epoch")
        lines = ["epoch  " + "".join(f"{k[4:]:>14}" for k in keys)]
        for e in self.epochs:
            mark = "*" if e["epoch"] == best else " "
            lines.append(f"{e['epoch']:>4}{mark}  " + "".join(f"{e.get(k, float('nan')):>14.4f}" for k in keys))
        return "\n".join(lines)

    def state_dict(self) -> dict:
        return {"epochs": self.epochs, "metrics": self.metrics, "wall_time_s": self.wall_time()}

    def load_state_dict(self, state: dict) -> None:
        self.epochs, self.metrics = state["epochs"], state.get("metrics", {})
        self._elapsed_before = state["wall_time_s"]
        self._start = time.monotonic()
