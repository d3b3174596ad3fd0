"""Full fine-tuning: every backbone weight the task head depends on trains (the upper baseline)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn
from transformers import PreTrainedModel

from aotpt.methods._shared import used_parameters
from aotpt.methods.base import MethodConfig


@dataclass
class FinetuneConfig(MethodConfig):
    name: ClassVar[str] = "finetune"
    identity_at_init: ClassVar[bool] = True


def attach(backbone: PreTrainedModel, cfg: FinetuneConfig) -> dict[str, nn.Parameter]:
    return used_parameters(backbone)
