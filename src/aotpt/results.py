"""`results.json`: what a run computed, rebuildable into reports without W&B.

Written after every dev evaluation and once more when the run ends (also on
failure), always atomically: a kill mid-write leaves the previous file.
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L

from aotpt.atomic import write_json_atomic


class ResultsWriter(L.Callback):
    """Keeps per-epoch dev metrics and the best epoch; its state rides in checkpoints so a resumed run loses nothing."""

    def __init__(self, path: Path, config: dict) -> None:
        self.path = Path(path)
        self.config = config
        self.epochs: list[dict] = []
        self.summary: dict = {}
        self.status = "running"
        self.error: str | None = None
        self._start = time.monotonic()
        self._elapsed_before = 0.0  # wall time of earlier (killed) attempts of this run

    def wall_time(self) -> float:
        return self._elapsed_before + time.monotonic() - self._start

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.summary = pl_module.summary()
        self.write()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after the module logged its epoch metrics, before ModelCheckpoint (Lightning runs it last) saves this state
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step, **metrics}
        self.epochs = [e for e in self.epochs if e["epoch"] != row["epoch"]] + [row]
        self.write()

    def best(self) -> dict:
        scored = [e for e in self.epochs if "val/score" in e]
        return max(scored, key=lambda e: e["val/score"]) if scored else {}

    def write(self) -> None:
        best = self.best()
        write_json_atomic(
            self.path,
            {
                "status": self.status,
                "error": self.error,
                "config": self.config,
                **self.summary,
                "epochs": self.epochs,
                "best": {"epoch": best.get("epoch"), **{k: v for k, v in best.items() if k.startswith("val/")}},
                "wall_time_s": round(self.wall_time(), 2),
            },
        )

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
        return {"epochs": self.epochs, "wall_time_s": self.wall_time()}

    def load_state_dict(self, state: dict) -> None:
        self.epochs = state["epochs"]
        self._elapsed_before = state["wall_time_s"]
        self._start = time.monotonic()
