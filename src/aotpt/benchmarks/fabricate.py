"""Run folders as `aotpt.train` writes them, with random trained weights: benchmarks time export and serving of
any backbone shape without training it (or downloading it)."""

from __future__ import annotations

from pathlib import Path

import torch

from aotpt.methods import method_config, options_of
from aotpt.model import build_model, save_trained
from aotpt.record import RunMeta
from aotpt.tasks import get_task

# The backbone name of randomly initialised backbones: they are built from `random_init` alone (no hub).
RANDOM_BACKBONE = "random-init"
# Random backbones have no tokenizer; artifacts and predictors only compare this string.
RANDOM_FINGERPRINT = "random-vocabulary"


def random_run(
    run_dir: Path, backbone: dict, task: str, method: dict, weights_seed: int, backbone_seed: int = 0
) -> RunMeta:
    """Write `run_dir/model/trained.safetensors` + its record: a random backbone (drawn with `backbone_seed`, so
    every run of one benchmark shares it) and trained tensors drawn with `weights_seed` (std 0.02)."""
    spec = get_task(task)
    cfg = method_config(method)
    model = build_model(RANDOM_BACKBONE, cfg, spec.num_labels, backbone, init_seed=backbone_seed)
    generator = torch.Generator().manual_seed(weights_seed)
    with torch.no_grad():
        for name in model.trainable:
            param = model.get_parameter(name)
            param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    config = model.backbone.config
    record = RunMeta(
        backbone=RANDOM_BACKBONE,
        random_init=backbone,
        init_seed=backbone_seed,
        model_type=config.model_type,
        num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        vocab_size=model.backbone.get_input_embeddings().num_embeddings,
        tokenizer_fingerprint=RANDOM_FINGERPRINT,
        task=task,
        label_names=list(spec.label_names),
        metrics=list(spec.metrics),
        method=options_of(cfg),
    )
    save_trained(model, run_dir / "model" / "trained.safetensors", record)
    return record
