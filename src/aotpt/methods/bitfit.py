"""BitFit (Ben Zaken, Goldberg & Ravfogel 2022, https://arxiv.org/abs/2106.10199).

    y = W x + b        W frozen, b trained — for every bias of the encoder

Trained: every bias term the task head depends on (attention q/k/v/output,
FFN, LayerNorm, and family extras such as DeBERTa's convolution), plus the head.
As in the paper's code, LayerNorm biases count as bias terms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn
from transformers import PreTrainedModel

from aotpt.methods._shared import used_parameters
from aotpt.methods.base import MethodConfig


@dataclass
class BitfitConfig(MethodConfig):
    name: ClassVar[str] = "bitfit"
    identity_at_init: ClassVar[bool] = True  # nothing changes until a bias moves


def attach(backbone: PreTrainedModel, cfg: BitfitConfig) -> dict[str, nn.Parameter]:
    """The `bias` attribute of every module (by structure, not by parameter name)."""
    used = {id(p) for p in used_parameters(backbone).values()}
    return {
        f"{name}.bias": module.bias
        for name, module in backbone.named_modules()
        if isinstance(getattr(module, "bias", None), nn.Parameter) and id(module.bias) in used
    }
