"""Backbone + method + task head, in plain PyTorch (Lightning only orchestrates).

ids -> bias source / method modules -> encoder -> first-token state -> head -> logits
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from aotpt.atomic import atomic_path
from aotpt.backbones import count_params, freeze_except, load_backbone, load_tokenizer, tokenizer_fingerprint
from aotpt.errors import AotptError
from aotpt.methods import MethodConfig, method_of
from aotpt.record import RunMeta, read_run, record_path, write_record


class ClassificationHead(nn.Module):
    """dropout -> dense -> tanh -> dropout -> linear on the first token, as RoBERTa's head.

    One head for every family, so methods are compared with the same head.
    """

    def __init__(self, hidden: int, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, num_labels)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = self.dropout(hidden_states[:, 0])  # (B, d)
        x = self.dropout(torch.tanh(self.dense(x)))
        return self.out(x)  # (B, num_labels)


class TaskModel(nn.Module):
    """A backbone with a method attached and a task head; `trainable` names what trains."""

    def __init__(
        self,
        backbone: PreTrainedModel,
        head: nn.Module,
        trainable: dict[str, nn.Parameter],
        changed_modules: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.trainable = sorted(trainable)  # names relative to this module
        self.changed_modules = changed_modules or []  # backbone modules the method added, replaced or hooked

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **inputs)
        return self.head(out.last_hidden_state)

    def trained_state(self) -> dict[str, torch.Tensor]:
        """Only the trained tensors (what checkpoints and artifacts hold)."""
        state = self.state_dict()
        return {name: state[name] for name in self.trainable}


def build_model(
    pretrained: str,
    method: MethodConfig,
    num_labels: int,
    random_init: dict | None = None,
    head_dropout: float = 0.1,
    init_seed: int | None = None,
) -> TaskModel:
    """Load the backbone (a random one drawn with `init_seed`), attach the method, freeze all but its parameters
    and the head."""
    backbone = load_backbone(pretrained, random_init, init_seed)
    before = {name: type(module) for name, module in backbone.named_modules()}
    trainable = method_of(method).attach(backbone, method)
    freeze_except(backbone, trainable)
    head = ClassificationHead(backbone.config.hidden_size, num_labels, head_dropout)
    names = {f"backbone.{n}": p for n, p in trainable.items()}
    names.update({f"head.{n}": p for n, p in head.named_parameters()})
    return TaskModel(backbone, head, names, changed_modules(backbone, before))


def changed_modules(backbone: nn.Module, before: dict[str, type]) -> list[str]:
    """Modules of `backbone` that are new, of another class, or hooked since `before` (for results.json).

    A new module's own children are not listed again.
    """
    changed, new = [], []
    for name, module in backbone.named_modules():
        if any(name.startswith(f"{parent}.") for parent in new):
            continue
        if name not in before:
            new.append(name)
        if before.get(name) is not type(module) or module._forward_pre_hooks or module._forward_hooks:
            changed.append(name or "<root>")
    return changed


def describe(model: TaskModel) -> dict:
    """Parameter counts for logs and results.json."""
    trainable, total = count_params(model)
    backbone_total = sum(p.numel() for p in model.backbone.parameters())
    return {
        "trainable_params": trainable,
        "total_params": total,
        "trainable_pct_of_backbone": 100.0 * trainable / backbone_total,
        "changed_modules": model.changed_modules,
    }


def save_trained(model: TaskModel, path: Path, record: RunMeta) -> None:
    """Write the trained tensors (safetensors) and the run record (`path` with .json) beside them, atomically."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.trained_state().items()}, str(tmp))
    write_record(record.with_(trainable=list(model.trainable)), path.with_suffix(".json"))


def load_trained(model: TaskModel, path: Path) -> None:
    """Load tensors saved by `save_trained`; refuses a file whose keys are not exactly the model's trainable ones."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise AotptError(f"{path}: truncated or corrupt trained tensors ({err})") from None
    if sorted(state) != model.trainable:
        missing = sorted(set(model.trainable) - set(state))[:3]
        extra = sorted(set(state) - set(model.trainable))[:3]
        raise AotptError(f"{path}: trained tensors do not match the model (missing {missing}, unexpected {extra})")
    model.load_state_dict(state, strict=False)


def build_from_record(record: RunMeta, head_dropout: float = 0.0) -> TaskModel:
    """The untrained model a record describes: its backbone (the same random weights, when random), method, head."""
    return build_model(
        record.backbone, record.method_config, record.num_labels, record.random_init, head_dropout, record.init_seed
    )


def load_run(run_dir: str | Path, option: str = "run_dir") -> tuple[TaskModel, RunMeta, PreTrainedTokenizerBase]:
    """A trained run folder as (model in eval mode, its record, its tokenizer).

    Refuses a tokenizer whose vocabulary is not the one the run was trained
    with (the fingerprint), naming both.
    """
    weights, record = read_run(run_dir, option)
    tokenizer = load_tokenizer(record.backbone)
    found = tokenizer_fingerprint(tokenizer)
    if found != record.tokenizer_fingerprint:
        raise AotptError(
            f"{record_path(run_dir)}: trained with tokenizer_fingerprint={record.tokenizer_fingerprint!r}, "
            f"but {record.backbone} now loads a tokenizer with {found!r}"
        )
    model = build_from_record(record)
    load_trained(model, weights)
    return model.eval(), record, tokenizer
