"""Run folders as `aotpt.train` writes them, with random trained weights: benchmarks time export and serving of
any backbone shape without training it (or downloading it)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

from aotpt.backbones import layout
from aotpt.errors import ConfigError
from aotpt.methods import method_config, options_of
from aotpt.methods.aot.artifact import Artifact
from aotpt.methods.aot.reparam import FcConfig, KronConfig
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


@dataclass(frozen=True)
class MemoryArtifact(Artifact):
    """A compiled task held in memory: random reparam weights, its table computed chunk by chunk from them
    whenever a serving source reads it, never written or held whole.

    Benchmarks serve T = 64 MiniLM tasks (9 GB of tables per mode) this way
    without writing 9 GB of files first; the sources cannot tell the difference.
    Each chunk is one matrix product (export computes rows in blocks of
    `ROW_BLOCK` so that on-the-fly rows match it bit for bit; timing needs no
    such match, and one product is ~10x faster), so a table's rows may differ
    from `mode=onthefly`'s in the last bit.
    """

    weights: dict[str, torch.Tensor] = field(default_factory=dict)  # "reparam.*"
    word_embeddings: nn.Embedding | None = None  # the backbone's (fc reads them; they also give the device)

    def check_file(self) -> None:
        pass

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) + 1 :]: v for k, v in self.weights.items() if k.startswith(prefix + ".")}

    @torch.no_grad()
    def table_chunks(self, chunk_rows: int = 4096) -> Iterator[tuple[int, torch.Tensor]]:
        source = self.reparam(self.word_embeddings)
        device = self.word_embeddings.weight.device
        for start in range(0, self.vocab_size, chunk_rows):
            ids = torch.arange(start, min(start + chunk_rows, self.vocab_size), device=device)
            yield start, source.rows(ids).to(self.dtype)  # (N, L*d)


# Random AoT rows get this standard deviation: a bias that moves the hidden states (LayerNorm outputs, ~1)
# visibly, so T tasks give T different outputs, as trained tables do.
ROW_STD = 0.1


def _random_reparam(cfg, backbone: PreTrainedModel, seed: int) -> nn.Module:
    """The reparameterisation of `cfg` with random weights: its own init (seeded), then the parameters that
    start at zero (kron's W_R, fc's W2 and b2; the rows are linear in them) drawn and scaled to rows of
    std ROW_STD."""
    config, word_embeddings = backbone.config, backbone.get_submodule(layout(backbone).word_embeddings)
    vocab, device = word_embeddings.num_embeddings, word_embeddings.weight.device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        source = cfg.build(config.num_hidden_layers, config.hidden_size, vocab, word_embeddings).eval()
        zero = [p for p in source.parameters() if not p.any()]
        with torch.no_grad():
            for p in zero:
                p.normal_()
            scale = ROW_STD / float(source.to(device).rows(torch.randint(0, vocab, (256,), device=device)).std())
            for p in zero:
                p.mul_(scale)
    return source


def memory_artifacts(backbone: PreTrainedModel, method: dict, count: int, dtype: str) -> list[MemoryArtifact]:
    """`count` distinct tasks for `backbone` (random reparam weights drawn with seeds 0, 1, ...; rows of std
    ROW_STD), tables in `dtype` (fp16 or bf16)."""
    cfg = method_config(method)
    if not isinstance(cfg.reparam, (KronConfig, FcConfig)):
        raise ConfigError(f"reparam={cfg.reparam.name} for benchmark tables; accepted: fc, kron")
    word_embeddings = backbone.get_submodule(layout(backbone).word_embeddings)
    config, vocab = backbone.config, word_embeddings.num_embeddings
    meta = {"dtype": dtype, "table_shape": [vocab, config.num_hidden_layers * config.hidden_size]}
    out = []
    for task in range(count):
        source = _random_reparam(cfg.reparam, backbone, seed=task)
        weights = {f"reparam.{name}": tensor.detach().cpu() for name, tensor in source.state_dict().items()}
        record = RunMeta(
            backbone=RANDOM_BACKBONE,
            model_type=config.model_type,
            num_layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
            vocab_size=vocab,
            tokenizer_fingerprint=RANDOM_FINGERPRINT,
            task=f"task{task}",
            label_names=["0", "1"],
            metrics=["accuracy"],
            method=options_of(cfg),
        )
        out.append(MemoryArtifact(Path(f"<memory:task{task}>"), meta, record, weights, word_embeddings))
    return out


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
