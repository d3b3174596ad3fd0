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


def synthetic_tasks(
    folder: Path,
    model: dict,
    method: dict,
    kinds: list[str],
    count: int,
    table: bool = False,
    dtype: str = "fp16",
    seed: int = 0,
) -> list[Path]:
    """`count` AoT artifacts for the backbone of `model` (a conf/model entry: `pretrained`, `random_init`), written
    as `folder/t0000.safetensors`, ... with random trained weights, without training or building a TaskModel.

    Task i is of kind kinds[i % len(kinds)] (its TaskSpec: fields, labels); its reparameterisation (`method`,
    e.g. kron) and head are drawn from seed + i, its rows through `compile_tensors` as export computes them.
    `table=False` writes weights-only artifacts (a MiniLM kron task: ~3 MB, so 1,000 of them fit on a small disk);
    the same seed gives task i the same weights either way. The backbone is built once, for its config and its
    word embeddings (fc).
    """
    from aotpt.backbones import layout, load_backbone, load_tokenizer, tokenizer_fingerprint
    from aotpt.export import write_artifact
    from aotpt.methods.aot.artifact import DTYPES, compile_tensors
    from aotpt.model import ClassificationHead

    pretrained, random_init = model["pretrained"], model.get("random_init")
    backbone = load_backbone(pretrained, random_init, seed=0)
    config = backbone.config
    embeddings = backbone.get_submodule(layout(backbone).word_embeddings)
    fingerprint = tokenizer_fingerprint(load_tokenizer(pretrained))
    cfg = method_config(method)
    paths = []
    for i in range(count):
        spec = get_task(kinds[i % len(kinds)])
        generator = torch.Generator().manual_seed(seed + i)
        source = cfg.reparam.build(config.num_hidden_layers, config.hidden_size, embeddings.num_embeddings, embeddings)
        head = ClassificationHead(config.hidden_size, spec.num_labels)
        with torch.no_grad():
            for module in (source, head):
                for param in module.parameters():
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
        record = RunMeta(
            backbone=pretrained,
            random_init=random_init,
            init_seed=0,
            model_type=config.model_type,
            num_layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
            vocab_size=embeddings.num_embeddings,
            tokenizer_fingerprint=fingerprint,
            task=spec.name,
            label_names=list(spec.label_names),
            metrics=list(spec.metrics),
            method=options_of(cfg),
        )
        tensors = compile_tensors(source.eval(), head.state_dict(), DTYPES[dtype], 4096, table)
        path = folder / f"t{i:04d}.safetensors"
        write_artifact(path, tensors, record, dtype, {"synthetic_seed": seed + i})
        paths.append(path)
    return paths
