"""Backbone + method + task head, in plain PyTorch (Lightning only orchestrates).

ids -> bias source / method modules -> encoder -> first-token state -> head -> logits
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel

from aotpt import __version__
from aotpt.atomic import atomic_open, atomic_path
from aotpt.backbones import count_params, freeze_except, load_backbone
from aotpt.errors import AotptError, ConfigError, unreadable
from aotpt.methods import MethodConfig, method_of


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
) -> TaskModel:
    """Load the backbone, attach the method, freeze all but its parameters and the head."""
    backbone = load_backbone(pretrained, random_init)
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


def save_trained(model: TaskModel, path: Path, metadata: dict) -> None:
    """Write the trained tensors (safetensors) and `metadata` + version beside them (json)."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.trained_state().items()}, str(tmp))
    meta = {**metadata, "aotpt_version": __version__, "trainable": model.trainable}
    with atomic_open(path.with_suffix(".json")) as f:
        json.dump(meta, f, indent=2, default=_jsonable)


def read_run(run_dir: str | Path, option: str) -> tuple[Path, dict]:
    """The trained-tensor file of a finished `aotpt.train` run folder and its metadata.

    `option` names the CLI option that gave the folder, for the error.
    """
    weights = Path(run_dir) / "model" / "trained.safetensors"
    if not weights.is_file() or not weights.with_suffix(".json").is_file():
        raise ConfigError(
            f"{option}={run_dir} has no model/trained.safetensors (+ .json): not a finished python -m aotpt.train run"
        )
    return weights, _read_json(weights.with_suffix(".json"))


def load_trained(model: TaskModel, path: Path) -> dict:
    """Load tensors saved by `save_trained`; refuses a file whose keys are not exactly the model's trainable ones."""
    try:
        state = load_file(str(path))
    except Exception as err:  # safetensors raises its own error type for a bad header or a short file
        raise unreadable(path, "trained-weights file", err) from None
    if sorted(state) != model.trainable:
        missing = sorted(set(model.trainable) - set(state))[:3]
        extra = sorted(set(state) - set(model.trainable))[:3]
        raise AotptError(f"{path}: trained tensors do not match the model (missing {missing}, unexpected {extra})")
    model.load_state_dict(state, strict=False)
    return _read_json(path.with_suffix(".json"))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise unreadable(path, "metadata file", err) from None


def _jsonable(obj):
    if hasattr(obj, "__dataclass_fields__"):
        return {"_name": getattr(type(obj), "name", type(obj).__name__), **asdict(obj)}
    return str(obj)
