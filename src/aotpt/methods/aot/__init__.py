"""AoT P-Tuning (Ahead-of-Time P-Tuning, Balagansky & Gavrilov 2023, https://arxiv.org/abs/2305.10835).

    H_l = Layer_l(H_{l-1} + P_l[x]),  l = 1..L,   P = [P_1 | ... | P_L] (|V| x L*d)

The backbone is frozen; only the reparameterisation of P trains (`reparam.py`).
After training P is computed once, ahead of time, and inference is a gather and
an add per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn
from transformers import PreTrainedModel

from aotpt.backbones import encoder_layers, layout
from aotpt.errors import ConfigError
from aotpt.methods.aot.hooks import AotHooks
from aotpt.methods.aot.reparam import KronConfig, ReparamConfig
from aotpt.methods.base import MethodConfig


@dataclass
class AotConfig(MethodConfig):
    name: ClassVar[str] = "aot"
    identity_at_init: ClassVar[bool] = True  # every reparam starts at P = 0
    reparam: ReparamConfig = field(default_factory=KronConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.reparam, ReparamConfig):
            raise ConfigError(f"method=aot needs a reparam (kron, fc or dense), got {self.reparam!r}")


def attach(backbone: PreTrainedModel, cfg: AotConfig) -> dict[str, nn.Parameter]:
    """Hook a zero-initialised bias into every layer; the hooks module becomes `backbone.aot`."""
    word_embeddings = backbone.get_submodule(layout(backbone).word_embeddings)
    source = cfg.reparam.build(
        len(encoder_layers(backbone)), backbone.config.hidden_size, word_embeddings.num_embeddings, word_embeddings
    )
    backbone.add_module("aot", AotHooks(backbone, source))
    return {f"aot.{name}": p for name, p in backbone.aot.named_parameters()}
