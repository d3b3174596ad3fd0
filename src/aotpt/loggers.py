"""Loggers from config, with W&B that never stops a run.

No API key: W&B logs offline (sync later with `wandb sync <run>/wandb/offline-run-*`).
A key but no route to the W&B server: a warning, then offline logging, and
training goes on. Tests set WANDB_MODE=disabled.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch import loggers as pl_loggers
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from aotpt.cli import log

WANDB_DEFAULT_URL = "https://api.wandb.ai"


class WandbLogger(pl_loggers.WandbLogger):
    """Lightning's WandbLogger without its `anonymous=None`, which makes wandb >= 0.19 warn on every run
    ("The anonymous setting has no effect and will be removed"): wandb warns whenever the key is passed."""

    def __init__(self, *args, anonymous: bool | None = None, **kwargs) -> None:
        super().__init__(*args, anonymous=anonymous, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)


def _has_wandb_key() -> bool:
    netrc = Path.home() / ".netrc"
    return bool(os.environ.get("WANDB_API_KEY")) or (netrc.exists() and "api.wandb.ai" in netrc.read_text())


def wandb_reachable(timeout_s: float = 3.0) -> bool:
    """Can a TCP connection to the W&B server (WANDB_BASE_URL or the cloud) be opened?"""
    url = urlparse(os.environ.get("WANDB_BASE_URL", WANDB_DEFAULT_URL))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def choose_wandb_mode() -> str:
    """Set and return WANDB_MODE: the user's choice, else online only with a key and a route."""
    mode = os.environ.get("WANDB_MODE") or None  # an empty value means unset
    if mode in (None, "online", "run"):
        if not _has_wandb_key():
            mode = "offline"
        elif not wandb_reachable():
            log.warning("W&B server unreachable: logging offline; `wandb sync` the run folder later")
            mode = "offline"
        else:
            mode = "online"
    os.environ["WANDB_MODE"] = mode
    return mode


def build_loggers(cfg: DictConfig | None) -> list[Logger]:
    """Instantiate `cfg.logger.*`; a W&B logger that fails to start is recreated offline."""
    loggers: list[Logger] = []
    for name, conf in (cfg or {}).items():
        if not conf:
            continue
        logger = instantiate(conf)
        if isinstance(logger, pl_loggers.WandbLogger):
            # the mode goes to wandb.init explicitly: wandb reads its environment only once per process
            logger = instantiate(conf, mode=choose_wandb_mode())
            try:
                logger.experiment  # noqa: B018 - starts the W&B run now, not mid-training
            except Exception as err:  # wandb raises many types (CommError, UsageError, timeouts)
                message = str(err).splitlines()[0]
                log.warning("W&B logger %r failed to start (%s): logging offline instead", name, message)
                os.environ["WANDB_MODE"] = "offline"
                logger = instantiate(conf, mode="offline")
        loggers.append(logger)
    return loggers


class WandbSummary(L.Callback):
    """Puts the dev results in the W&B run summary, where a workspace can sort, filter and compare runs.

    After every epoch and at the end of fit: the best dev epoch's metrics as
    `best/epoch`, `best/val/<metric>`, and the per-epoch dev table (as in
    results.json) as the table `dev/epochs`. Reads them from the run's
    `ResultsWriter`, so a resumed run's summary includes its earlier epochs.
    Does nothing without a W&B logger.
    """

    def _update(self, trainer: L.Trainer) -> None:
        import wandb

        from aotpt.results import ResultsWriter

        run = next((lg.experiment for lg in trainer.loggers if isinstance(lg, pl_loggers.WandbLogger)), None)
        results = next((c for c in trainer.callbacks if isinstance(c, ResultsWriter)), None)
        if run is None or results is None or not trainer.is_global_zero or not results.epochs:
            return
        best = results.best()
        run.summary.update({"best/epoch": best.get("epoch"), **{f"best/{k}": v for k, v in best.items() if "/" in k}})
        columns = ["epoch", *sorted({k for e in results.epochs for k in e if k.startswith("val/")})]
        rows = [[e.get(c) for c in columns] for e in results.epochs]
        run.log({"dev/epochs": wandb.Table(columns=columns, data=rows)})

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._update(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._update(trainer)
