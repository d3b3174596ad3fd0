"""Train one method on one task: `python -m aotpt.train task=rte model=minilm method=aot reparam=kron`.

`run(cfg)` is a plain function (tests call it); `main` is the thin Hydra CLI.
The run folder gets `results.json`, checkpoints (trained tensors only) and
`model/trained.safetensors` with the best dev epoch's weights and metadata.

A run, in order: check the config (one line per mistake) -> a finished run
with this identity returns its stored result, touching nothing -> a run not
finished does not start while the file $AOTPT_DRAIN_FILE exists (a sweep
stops as interrupted: `make study-drain`) -> lock the
folder -> read and tokenise the data -> build the model -> loggers and
trainer -> fit (resuming last.ckpt) -> save the best epoch's weights. Each
step can only fail on what the earlier ones did not check, and from the
folder lock on every failure is recorded in results.json and W&B.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf

from aotpt.backbones import load_tokenizer, tokenizer_fingerprint
from aotpt.checks import check_config
from aotpt.cli import CONF_DIR, entry, log
from aotpt.data.datamodule import TaskDataModule
from aotpt.errors import AotptError, ConfigError
from aotpt.identity import identity, register_resolvers
from aotpt.loggers import build_loggers
from aotpt.methods import method_config, options_of
from aotpt.model import save_trained
from aotpt.module import TaskModule
from aotpt.record import RunMeta
from aotpt.results import ResultsWriter
from aotpt.resume import AtomicCheckpointIO, ExactResume, resume_path
from aotpt.rundir import RunLock, stored_result

register_resolvers()  # ${aotpt.run_subdir:} in conf/hydra: the run folder, computed (and checked) before it exists


def _datamodule(cfg: DictConfig, tokenizer) -> TaskDataModule:
    """The task's data, read and tokenised now: a bad file fails before any model is loaded."""
    datamodule = TaskDataModule(
        task=cfg.task.name,
        tokenizer=tokenizer,
        data_dir=cfg.data_dir,
        max_length=cfg.data.max_length,
        batch_size=cfg.data.batch_size,
        eval_batch_size=cfg.data.eval_batch_size,
        num_workers=cfg.data.num_workers,
        cache_dir=cfg.paths.cache_dir,
        limit_examples=cfg.data.limit_examples,
        seed=cfg.seed,
        group_by_length=cfg.data.get("group_by_length", False),
    )
    datamodule.setup("fit")
    return datamodule


def _module(cfg: DictConfig) -> TaskModule:
    module = TaskModule(
        model={**OmegaConf.to_container(cfg.model, resolve=True), "init_seed": cfg.seed},
        method=OmegaConf.to_container(cfg.method, resolve=True),
        task=cfg.task.name,
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
    )
    summary = module.summary()
    log.info(
        "trainable parameters: %s of %s (%.3f%% of the backbone)",
        f"{summary['trainable_params']:,}",
        f"{summary['total_params']:,}",
        summary["trainable_pct_of_backbone"],
    )
    return module


def _save_best(trainer: L.Trainer, module: TaskModule, tokenizer, cfg: DictConfig, results: ResultsWriter) -> Path:
    """Write the best dev epoch's trained tensors + metadata to `model/trained.safetensors`.

    The best epoch comes from results.json, not from `module`: under ddp_spawn
    this process's module has the last weights but not the workers' counters.
    """
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state, strict=False)
    path = results.path.parent / "model" / "trained.safetensors"
    save_trained(module.net, path, run_record(cfg, module, tokenizer, results.best()))
    return path


# Trainer and data settings that shorten a run; the record keeps those set (reports tell such runs apart).
LIMITS = {
    "trainer": (
        "limit_train_batches",
        "limit_val_batches",
        "limit_test_batches",
        "max_steps",
        "fast_dev_run",
        "overfit_batches",
    ),
    "data": ("limit_examples",),
}
_NOT_LIMITING = (None, False, -1, 0, 1.0)


def run_record(cfg: DictConfig, module: TaskModule, tokenizer, best: dict) -> RunMeta:
    """The record of this run (`aotpt.record.RunMeta`): what export, predict, submit, serve and bench read.

    `best` is the best dev epoch's row of results.json (`ResultsWriter.best`).
    """
    config = module.net.backbone.config
    limits = {
        f"{group}.{key}": cfg[group].get(key)
        for group, keys in LIMITS.items()
        for key in keys
        if cfg[group].get(key) not in _NOT_LIMITING or cfg[group].get(key) is True
    }
    try:
        choices = OmegaConf.to_container(HydraConfig.get().runtime.choices)
    except ValueError:  # HydraConfig not set (a caller composed the config itself)
        choices = {}
    random_init = OmegaConf.to_container(cfg.model.random_init) if cfg.model.random_init else None
    return RunMeta(
        backbone=cfg.model.pretrained,
        random_init=random_init,
        init_seed=cfg.seed if random_init else None,
        model_type=config.model_type,
        num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        vocab_size=module.net.backbone.get_input_embeddings().num_embeddings,
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        task=module.spec.name,
        label_names=list(module.spec.label_names),
        metrics=list(module.spec.metrics),
        method=options_of(method_config(OmegaConf.to_container(cfg.method, resolve=True))),
        max_length=cfg.data.max_length,
        choices={k: v for k, v in choices.items() if not k.startswith("hydra")},
        limits=limits,
        best_epoch=best.get("epoch"),
        best_score=best.get("val/score"),
    )


def _finish_wandb(failed: bool) -> None:
    """Close the W&B run, marked failed unless the run completed, so the next multirun job starts clean."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)


DRAIN_FILE = "AOTPT_DRAIN_FILE"  # while the file it names exists, no run starts (the ones training go on)


def _drained(output_dir: Path) -> None:
    """Raise KeyboardInterrupt (a sweep stops as interrupted) if $AOTPT_DRAIN_FILE names a file that exists."""
    drain = os.environ.get(DRAIN_FILE)
    if drain and Path(drain).exists():
        log.warning("%s exists (%s): not starting %s", drain, DRAIN_FILE, output_dir)
        raise KeyboardInterrupt


def run(cfg: DictConfig) -> dict:
    """Fit on the task's train split, evaluate every epoch, keep the best dev epoch.

    Returns {"metrics", "best", "output_dir", "status"}; a run already
    completed with this identity returns its stored values (and "stored": True).
    """
    check_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    ident = identity(cfg)
    if (stored := stored_result(output_dir, ident)) is not None:
        log.info("%s: finished run, returning its stored result (delete its results.json to train again)", output_dir)
        return stored
    _drained(output_dir)
    with RunLock(output_dir):
        if (stored := stored_result(output_dir, ident)) is not None:  # finished while we waited for the lock
            return stored
        return _train(cfg, output_dir, ident)


def _train(cfg: DictConfig, output_dir: Path, ident: dict) -> dict:
    results = ResultsWriter(output_dir / "results.json", OmegaConf.to_container(cfg, resolve=True), ident)
    try:
        L.seed_everything(cfg.seed, workers=True)
        ckpt_path = resume_path(cfg.ckpt_path, output_dir)
        tokenizer = load_tokenizer(cfg.model.pretrained)
        datamodule = _datamodule(cfg, tokenizer)
        callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values() if c] + [results, ExactResume(cfg.seed)]
        module = _module(cfg)
        results.summary = module.summary()
        results.write()
        loggers = build_loggers(cfg.logger)
        if not loggers:  # it only logs, and Lightning refuses it without a logger (logger=none)
            callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()])
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        except SystemExit:
            # Lightning turns Ctrl-C into sys.exit(1), and SIGTERM into SIGTERMException (a SystemExit)
            if results.status == "interrupted":
                raise KeyboardInterrupt from None
            raise
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores Ctrl-C after the first
        results.reload()
        results.status = "completed"
        # what was logged last; a run resumed from its final checkpoint logs nothing new and keeps the stored ones
        results.metrics = {**results.metrics, **{k: float(v) for k, v in trainer.callback_metrics.items()}}
        if trainer.is_global_zero and not trainer.fast_dev_run:
            _save_best(trainer, module, tokenizer, cfg, results)
            log.info("dev metrics per epoch (* = best):\n%s\nrun folder: %s", results.table(), output_dir)
    except KeyboardInterrupt:
        results.status = "interrupted"
        raise
    except BaseException as err:
        results.status, results.error = "failed", f"{type(err).__name__}: {err}".replace("\n", " ")
        raise
    finally:
        results.write()
        _finish_wandb(failed=results.status != "completed")
    return {"metrics": results.metrics, "best": results.best(), "output_dir": str(output_dir), "status": results.status}


def optimized_value(out: dict, name: str) -> float:
    """The value of `optimized_metric` among a run's final metrics, or a one-line error listing them."""
    if name not in out["metrics"]:
        logged = ", ".join(sorted(out["metrics"])) or "nothing"
        raise ConfigError(f"optimized_metric={name!r} was not logged; logged: {logged}")
    return out["metrics"][name]


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        out = run(cfg)  # an interrupted run raises KeyboardInterrupt: it stops a sweep
        name = cfg.get("optimized_metric")
        return optimized_value(out, name) if name else None
    except AotptError as err:
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # the sweep goes on; say which job failed and why
            log.error("error: %s", str(err).replace("\n", " "))
        raise


if __name__ == "__main__":
    entry(main, interrupted="interrupted: run the same command again to resume")
