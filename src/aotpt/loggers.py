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
