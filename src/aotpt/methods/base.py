"""What every method declares: a config dataclass and an `attach` function.

`attach(backbone, cfg)` changes the backbone in place (hooks, wrapped or new
modules) and returns the parameters it trains, by name relative to the
backbone. The caller freezes everything else (`backbones.freeze_except`), so
no method matches parameter names by substring.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from torch import nn
from transformers import PreTrainedModel


@dataclass
class MethodConfig:
    """Base of every method's config; `conf/method/<name>.yaml` targets a subclass."""

    name: ClassVar[str]
    # Does attaching the method leave the encoder's hidden states unchanged?
    # Read by the shared tests instead of isinstance checks.
    identity_at_init: ClassVar[bool]


Attach = Callable[[PreTrainedModel, MethodConfig], dict[str, nn.Parameter]]


@dataclass(frozen=True)
class Method:
    config: type[MethodConfig]
    attach: Attach
