"""Houlsby adapters (Houlsby et al. 2019, https://arxiv.org/abs/1902.00751).

    a(z) = z + W_up f(W_down z)        W_down d×m, W_up m×d (zero at init)

One adapter after the attention's output projection and one after the FFN's,
each right after that sublayer's dropout and before its residual LayerNorm:
    h = LayerNorm(x + a(Dropout(Dense(·))))
Trained: the adapters, the LayerNorms (as in the paper) and the head. With
W_up = 0 a fresh model computes what the frozen backbone computes.

In-house because the `adapters` library requires transformers 4.x. The
adapter is a forward hook on the sublayer's dropout module, so no model code
is forked and every family in `aotpt.backbones.LAYOUTS` works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN

from aotpt.backbones import encoder_layers, layout
from aotpt.methods._shared import at_least, one_of
from aotpt.methods.base import MethodConfig

INIT_STD = 1e-2  # the paper: near-identity init, zero-mean Gaussian truncated at two standard deviations


@dataclass
class AdapterConfig(MethodConfig):
    name: ClassVar[str] = "adapter"
    identity_at_init: ClassVar[bool] = True  # W_up = 0
    size: int = 64  # m, the bottleneck width (the paper searches 8, 64, 256)
    activation: str = "gelu"  # f, any name in transformers.activations.ACT2FN
    train_layer_norm: bool = True  # the paper also trains the LayerNorm parameters

    def __post_init__(self) -> None:
        at_least("size", self.size, 1)
        one_of("activation", self.activation, ACT2FN)


class Bottleneck(nn.Module):
    """a(z) = z + W_up f(W_down z), W_up = 0 at init."""

    def __init__(self, hidden: int, size: int, activation: str) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, size)
        self.act = ACT2FN[activation]
        self.up = nn.Linear(size, hidden)
        nn.init.trunc_normal_(self.down.weight, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.up(self.act(self.down(z)))  # (B, n, d)

    def after(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        """Forward hook: replace the hooked module's output by a(output)."""
        return self(output)


def attach(backbone: PreTrainedModel, cfg: AdapterConfig) -> dict[str, nn.Parameter]:
    """Add an adapter to both sublayer outputs of every layer (as `<sublayer>.adapter`)."""
    where = layout(backbone)
    trained: dict[str, nn.Parameter] = {}
    for index, layer in enumerate(encoder_layers(backbone)):
        for sublayer in (where.attention_output, where.ffn_output):
            output = layer.get_submodule(sublayer)
            output.add_module("adapter", Bottleneck(backbone.config.hidden_size, cfg.size, cfg.activation))
            output.get_submodule(where.output_dropout).register_forward_hook(output.adapter.after)
            prefix = f"{where.layers}.{index}.{sublayer}"
            trained.update(output.adapter.named_parameters(f"{prefix}.adapter"))
            if cfg.train_layer_norm:
                trained.update(
                    output.get_submodule(where.output_norm).named_parameters(f"{prefix}.{where.output_norm}")
                )
    return trained
