"""LoRA (Hu et al. 2021, https://arxiv.org/abs/2106.09685), injected by PEFT.

    h = W x + (alpha / r) · B A dropout(x)      W frozen, A (r×d) random, B (d×r) = 0

B = 0 at init, so a fresh model computes what the frozen backbone computes.
The target modules come from the backbone family's row in
`aotpt.backbones.LAYOUTS` (the paper's W_q and W_v by default), named in full
for every layer so nothing is matched by accident.

PEFT's tuner object (`LoraModel`) is kept as `tuner(backbone)`: mixed-task
batches (`adapter_names=`) reach the LoRA layers only through its
`_enable_peft_forward_hooks`, which the serving baseline needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from peft import LoraConfig as PeftLoraConfig
from peft.tuners.lora import LoraLayer, LoraModel
from torch import nn
from transformers import PreTrainedModel

from aotpt.backbones import encoder_layers, layout
from aotpt.errors import choices
from aotpt.methods._shared import at_least, probability
from aotpt.methods.base import MethodConfig

ADAPTER = "default"  # PEFT's adapter name for the single task a training run learns
_TUNER_ATTR = "peft_lora_tuner"


@dataclass
class LoraConfig(MethodConfig):
    name: ClassVar[str] = "lora"
    identity_at_init: ClassVar[bool] = True  # B = 0
    rank: int = 8  # r
    alpha: float = 8.0  # the update is scaled by alpha / r (the paper: r = alpha = 8 for RoBERTa)
    dropout: float = 0.0  # on the LoRA branch's input
    targets: tuple[str, ...] | None = None  # module names inside the self-attention; None: the family's default

    def __post_init__(self) -> None:
        at_least("rank", self.rank, 1)
        probability("dropout", self.dropout)
        if self.targets is not None:
            self.targets = tuple(self.targets)


def target_names(backbone: PreTrainedModel, cfg: LoraConfig) -> list[str]:
    """Full module names of every targeted linear layer, e.g. `encoder.layer.3.attention.self.query`."""
    where = layout(backbone)
    targets = cfg.targets or where.lora_targets
    attention = backbone.get_submodule(f"{where.layers}.0.{where.self_attention}")
    linear = [name for name, module in attention.named_children() if isinstance(module, nn.Linear)]
    for target in targets:
        if target not in linear:
            raise choices("method.targets entry", target, linear)
    return [
        f"{where.layers}.{index}.{where.self_attention}.{target}"
        for index in range(len(encoder_layers(backbone)))
        for target in targets
    ]


def attach(backbone: PreTrainedModel, cfg: LoraConfig) -> dict[str, nn.Parameter]:
    peft_config = PeftLoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=target_names(backbone, cfg)
    )
    lora = LoraModel(backbone, peft_config, ADAPTER)  # wraps the targets in place
    # Kept beside the module tree, not inside it: the tuner holds the backbone, so a child would be a cycle.
    backbone.__dict__[_TUNER_ATTR] = lora
    trained: dict[str, nn.Parameter] = {}
    for module_name, module in backbone.named_modules():
        if isinstance(module, LoraLayer):
            for branch in ("lora_A", "lora_B"):
                trained.update(getattr(module, branch)[ADAPTER].named_parameters(f"{module_name}.{branch}.{ADAPTER}"))
    return trained


def tuner(backbone: PreTrainedModel) -> LoraModel:
    """PEFT's tuner of a backbone that `attach` changed, in the backbone's train/eval mode.

    The tuner sits outside the module tree, so `.eval()` on the model never
    reaches it; PEFT refuses `adapter_names` while it believes it is training.
    """
    lora = backbone.__dict__[_TUNER_ATTR]
    lora.training = backbone.training
    return lora
