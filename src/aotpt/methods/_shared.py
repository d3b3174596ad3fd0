"""Helpers more than one method needs: option checks and the parameters the task head depends on."""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedModel

from aotpt.backbones import layout
from aotpt.errors import ConfigError, choices


def at_least(option: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"method.{option}={value} must be >= {low}")


def probability(option: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"method.{option}={value} must be in [0, 1)")


def one_of(option: str, value: str, accepted) -> None:
    if value not in accepted:
        raise choices(f"method.{option}", value, accepted)


def used_parameters(backbone: PreTrainedModel) -> dict[str, nn.Parameter]:
    """Every backbone parameter the task head depends on, by name.

    The head reads the first token's last hidden state, so the pooler (BERT,
    RoBERTa) never receives a gradient: it is neither trained nor counted as
    trained.
    """
    try:
        unused = {id(p) for p in backbone.get_submodule(layout(backbone).pooler).parameters()}
    except AttributeError:  # this family (or this instance) has no pooler
        unused = set()
    return {name: p for name, p in backbone.named_parameters() if id(p) not in unused}
