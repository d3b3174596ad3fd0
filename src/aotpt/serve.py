"""Serve AoT tasks over HTTP: one frozen backbone, requests of any tasks batched into one forward (LitServe).

    python -m aotpt.serve artifacts='[rte/table.safetensors,sst2/table.safetensors]' [mode=onthefly] [port=8000]
    python -m aotpt.serve artifacts_dir=tasks/ mode=onthefly      # every *.safetensors there, named by file name

    POST /predict        {"task": "rte", "sentence1": ..., "sentence2": ..., "id": ...} -> {id, task, label, scores,
                         truncated}; a bad request is a 4xx {error, field, accepted}
    GET  /tasks          the served tasks and what each worker holds
    POST /tasks/<name>   {"path": "<artifact>.safetensors"}: serve another task, no restart
    DELETE /tasks/<name> stop serving it
    GET  /health         200 once every worker is ready

The tasks live in `state_dir` (a temporary folder unless given): the same
`state_dir` later, without `artifacts`, serves the tasks the server had.
SIGTERM or Ctrl-C stop the server and every process it started.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from aotpt.backbones import load_tokenizer
from aotpt.cli import CONF_DIR, entry, log, one_line_errors
from aotpt.errors import ConfigError, choices
from aotpt.methods.aot.artifact import Artifact
from aotpt.serving import BARE, DTYPES, MODES
from aotpt.serving.registry import Registry
from aotpt.serving.server import ServeSettings, build_server


def task_paths(cfg: DictConfig) -> dict[str, str]:
    """name -> artifact path: `artifacts` (a list, named by each artifact's task, or a {name: path} map) and
    every .safetensors of `artifacts_dir` (named by file name)."""
    given = OmegaConf.to_container(cfg.artifacts, resolve=True) if cfg.artifacts else []
    paths = dict(given) if isinstance(given, dict) else {}
    for path in given if isinstance(given, list) else []:
        task = Artifact.load(path).task
        if task in paths:
            raise ConfigError(
                f"two artifacts for task {task!r}: {paths[task]} and {path}; name them: artifacts={{name: path}}"
            )
        paths[task] = str(path)
    if cfg.artifacts_dir:
        folder = Path(cfg.artifacts_dir)
        if not folder.is_dir():
            raise ConfigError(f"artifacts_dir={folder} is not a folder")
        for path in sorted(folder.glob("*.safetensors")):
            if path.stem in paths:
                raise ConfigError(f"two artifacts for task {path.stem!r}: {paths[path.stem]} and {path}")
            paths[path.stem] = str(path)
    return paths


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # LitServe shuts its processes down gracefully on KeyboardInterrupt


def _python_defaults() -> None:
    """Forked processes (LitServe's HTTP servers, its manager) keep Python's own handlers, as LitServe expects."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def run(cfg: DictConfig) -> None:
    mode = cfg.mode
    if mode not in (*MODES, BARE):
        raise choices("mode", mode, (*MODES, BARE))
    if cfg.dtype not in DTYPES:
        raise choices("dtype", cfg.dtype, DTYPES)
    paths = task_paths(cfg)
    temporary = not cfg.state_dir
    state_dir = Path(cfg.state_dir or tempfile.mkdtemp(prefix="aotpt-serve-"))
    try:
        if (state_dir / "tasks.json").exists() and not paths:
            registry = Registry(state_dir)  # a server's tasks, served again
            if registry.snapshot().mode != mode:
                raise ConfigError(f"state_dir={state_dir} was served with mode={registry.snapshot().mode}")
        else:
            if not paths:
                raise ConfigError("artifacts=[] is empty; pass one artifact per task (python -m aotpt.export)")
            registry = Registry.create(state_dir, paths, mode)
        serve(cfg, registry)
    finally:
        if temporary:
            shutil.rmtree(state_dir, ignore_errors=True)


def serve(cfg: DictConfig, registry: Registry) -> None:
    now = registry.snapshot()
    registry.clear_reports()
    timeout = cfg.timeout if cfg.timeout and cfg.timeout > 0 else -1
    settings = ServeSettings(
        state_dir=str(registry.dir),
        mode=now.mode,
        dtype=cfg.dtype,
        cache_bytes=cfg.cache_bytes,
        threads=cfg.threads,
        pretrained=cfg.pretrained,
        # a removed task stays until no request accepted before its removal can still be queued
        drain_s=(timeout + cfg.batch_timeout + 5) if timeout > 0 else cfg.drain_s,
    )
    tokenizer = load_tokenizer(cfg.pretrained or now.backbone["backbone"])
    server = build_server(
        settings,
        registry,
        tokenizer,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        workers_per_device=cfg.workers_per_device,
        max_batch_size=cfg.max_batch_size,
        batch_timeout=cfg.batch_timeout,
        timeout=timeout,
        fast_queue=cfg.fast_queue,
    )
    server.uvicorn_graceful_timeout = cfg.shutdown_s  # LitServe waits this long for each API process to stop
    log.info("serving %d tasks (mode=%s) on http://%s:%d", len(now.tasks), now.mode, cfg.host, cfg.port)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the API processes are forked after tokenising
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # a shell starting us in the background ignores SIGINT otherwise
    os.register_at_fork(after_in_child=_python_defaults)
    logging.getLogger("litserve").setLevel(cfg.log_level.upper())
    server.run(
        host=cfg.host,
        port=cfg.port,
        num_api_servers=cfg.api_servers,
        log_level=cfg.log_level,
        generate_client_file=False,
    )


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="serve")
@one_line_errors
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    entry(main)
