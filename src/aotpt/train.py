"""Train one method on one task: `python -m aotpt.train task=rte model=minilm method=aot reparam=kron`.

`run(cfg)` is a plain function (tests call it); `main` is the thin Hydra CLI.
The run folder gets `results.json`, checkpoints (trained tensors only) and
`model/trained.safetensors` with the best dev epoch's weights and metadata.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from aotpt.backbones import load_tokenizer, tokenizer_fingerprint
from aotpt.cli import CONF_DIR, entry, log, one_line_errors
from aotpt.data.datamodule import TaskDataModule
from aotpt.errors import ConfigError
from aotpt.loggers import build_loggers
from aotpt.methods import method_config, options_of
from aotpt.model import save_trained
from aotpt.module import TaskModule
from aotpt.record import RunMeta
from aotpt.results import ResultsWriter
from aotpt.resume import AtomicCheckpointIO, EpochSeed, resume_path
from aotpt.tasks import get_task


def _build(cfg: DictConfig, output_dir: Path):
    get_task(cfg.task.name)  # unknown task: fail before loading anything
    tokenizer = load_tokenizer(cfg.model.pretrained)
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
    )
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
    return tokenizer, datamodule, module


def _save_best(trainer: L.Trainer, module: TaskModule, tokenizer, cfg: DictConfig, output_dir: Path) -> Path | None:
    """Write the best dev epoch's trained tensors + metadata to `model/trained.safetensors`."""
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state, strict=False)
    path = output_dir / "model" / "trained.safetensors"
    save_trained(module.net, path, run_record(cfg, module, tokenizer))
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


def run_record(cfg: DictConfig, module: TaskModule, tokenizer) -> RunMeta:
    """The record of this run (`aotpt.record.RunMeta`): what export, predict, submit, serve and bench read."""
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
        best_epoch=module.best_epoch,
        best_score=module.best_score,
    )


def _finish_wandb() -> None:
    """Close the W&B run even when training failed, so the next multirun job starts clean."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=0)


def run(cfg: DictConfig) -> dict:
    """Fit on the task's train split, evaluate every epoch, keep the best dev epoch."""
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = resume_path(cfg.ckpt_path, output_dir)
    tokenizer, datamodule, module = _build(cfg, output_dir)

    results = ResultsWriter(output_dir / "results.json", OmegaConf.to_container(cfg, resolve=True))
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values() if c] + [results, EpochSeed(cfg.seed)]
    loggers = build_loggers(cfg.logger)
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        results.status = "interrupted" if trainer.interrupted else "completed"
    except BaseException as err:
        results.status, results.error = "failed", f"{type(err).__name__}: {err}"
        raise
    finally:
        results.write()
        _finish_wandb()
    if trainer.is_global_zero and results.status == "completed" and not trainer.fast_dev_run:
        _save_best(trainer, module, tokenizer, cfg, output_dir)
        log.info("dev metrics per epoch (* = best):\n%s\nrun folder: %s", results.table(), output_dir)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return {"metrics": metrics, "best": results.best(), "output_dir": str(output_dir), "status": results.status}


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
@one_line_errors
def main(cfg: DictConfig) -> float | None:
    out = run(cfg)
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in out["metrics"]:
        raise ConfigError(f"optimized_metric={name!r} was not logged; logged: {', '.join(sorted(out['metrics']))}")
    return out["metrics"][name]


if __name__ == "__main__":
    entry(main)
