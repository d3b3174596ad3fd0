"""Helpers shared by test modules (fixtures stay in conftest.py): run folders with known weights, batches, texts."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from aotpt.backbones import load_tokenizer, tokenizer_fingerprint
from aotpt.cli import CONF_DIR
from aotpt.methods import method_config, options_of
from aotpt.model import TaskModel, build_model, save_trained
from aotpt.record import RunMeta
from aotpt.tasks import get_task
from conftest import model_conf

REPARAMS = {
    "kron": {"name": "kron", "rank": 4, "dropout": 0.0},
    "fc": {"name": "fc", "rank": 8, "activation": "gelu", "dropout": 0.0},
    "dense": {"name": "dense", "dropout": 0.0},
}
BACKBONE_SEED = 0  # every tiny backbone of these helpers is drawn with this seed, and its record says so
TEXTS = [("A man is playing a guitar.", "Someone plays music."), ("The cat sat.", "A dog ran away quickly today.")]


def record_for(tm: TaskModel, task: str, method: dict, model: str = "tiny_bert", random_init: dict | None = None):
    """The run record `aotpt.train` would write for `tm`, a model of `model` (its random backbone drawn with
    BACKBONE_SEED) trained on `task` with `method` (registry options)."""
    conf, spec = model_conf(model), get_task(task)
    config = tm.backbone.config
    return RunMeta(
        backbone=conf["pretrained"],
        random_init=random_init or conf["random_init"],
        init_seed=BACKBONE_SEED,
        model_type=config.model_type,
        num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        vocab_size=tm.backbone.get_input_embeddings().num_embeddings,
        tokenizer_fingerprint=tokenizer_fingerprint(load_tokenizer(conf["pretrained"])),
        task=task,
        label_names=list(spec.label_names),
        metrics=list(spec.metrics),
        method=options_of(method_config(method)),
        best_epoch=0,
        best_score=0.5,
    )


def make_run(
    root: Path,
    task: str,
    reparam: str | None = "kron",
    weights_seed: int = 1,
    model: str = "tiny_bert",
    random_init: dict | None = None,
) -> tuple[Path, TaskModel]:
    """A run folder holding model/trained.safetensors + its record, with random non-zero AoT weights (std 0.5) so
    the bias matters (reparam None: full fine-tuning, untrained); returns (run_dir, the TaskModel in eval mode).

    `random_init` replaces the model config's architecture (other shapes than the tiny ones)."""
    conf = model_conf(model)
    random_init = random_init or conf["random_init"]
    method = {"name": "finetune"} if reparam is None else {"name": "aot", "reparam": REPARAMS[reparam]}
    spec = get_task(task)
    tm = build_model(conf["pretrained"], method_config(method), spec.num_labels, random_init, init_seed=BACKBONE_SEED)
    tm.eval()
    g = torch.Generator().manual_seed(weights_seed)
    with torch.no_grad():
        for name in tm.trainable if reparam else []:
            tm.get_parameter(name).copy_(torch.randn(tm.get_parameter(name).shape, generator=g) * 0.5)
    run_dir = root / f"{task}-{reparam}-{weights_seed}"
    save_trained(tm, run_dir / "model" / "trained.safetensors", record_for(tm, task, method, model, random_init))
    return run_dir, tm


def plain_backbone(tm: TaskModel):
    """The trained model's backbone without its AoT hooks: the frozen backbone a server loads."""
    backbone = copy.deepcopy(tm.backbone)
    backbone.aot.remove()
    del backbone.aot
    return backbone.eval()


def batch(tokenizer, texts):
    features = [tokenizer(a, b, truncation="longest_first", max_length=64) for a, b in texts]
    return tokenizer.pad(features, return_tensors="pt")


def bench_cfg(*overrides: str):
    """conf/bench.yaml composed with `overrides`, as `python -m aotpt.bench` would (Hydra left clear)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("bench", overrides=list(overrides))
    GlobalHydra.instance().clear()
    return cfg
