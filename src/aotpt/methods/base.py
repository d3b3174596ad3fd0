"""What every method declares: a config dataclass and an `attach` function; and how configs meet names.

`attach(backbone, cfg)` changes the backbone in place (hooks, wrapped or new
modules) and returns the parameters it trains, by name relative to the
backbone. The caller freezes everything else (`backbones.freeze_except`), so
no method matches parameter names by substring.

Configs travel as plain options — `{"name": "aot", "reparam": {"name": "kron",
"rank": 16}}` — in YAML, results.json, run records and artifacts. Names, not
Python class paths: renaming a class must never orphan what users saved.
`build_config` turns options into a config, rejecting unknown keys from the
dataclass's own fields; `options_of` is its inverse.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn
from transformers import PreTrainedModel

from aotpt.errors import ConfigError


@dataclass
class MethodConfig:
    """Base of every method's config; `conf/method/<name>.yaml` names a subclass by its registry name."""

    name: ClassVar[str]
    # Does attaching the method leave the encoder's hidden states unchanged?
    # Read by the shared tests instead of isinstance checks.
    identity_at_init: ClassVar[bool]


Attach = Callable[[PreTrainedModel, MethodConfig], dict[str, nn.Parameter]]


@dataclass(frozen=True)
class Method:
    config: type[MethodConfig]
    attach: Attach


def option_names(cls: type) -> list[str]:
    """The options a config dataclass takes (its init fields)."""
    return sorted(f.name for f in dataclasses.fields(cls) if f.init)


def build_config(cls: type, options: Mapping[str, Any], group: str, path: str) -> Any:
    """`cls(**options)`, refusing an option `cls` has not in one line, e.g.
    `reparam=kron has no option method.reparam.rnak; its options: dropout, rank` (group, then the option's path)."""
    unknown = sorted(set(options) - set(option_names(cls)))
    if unknown:
        accepted = ", ".join(option_names(cls)) or "none"
        raise ConfigError(f"{group}={cls.name} has no option {path}.{unknown[0]}; its options: {accepted}")
    return cls(**options)


def options_of(cfg: Any) -> dict[str, Any]:
    """A config as plain options, `name` first; nested configs (AoT's reparam) likewise."""
    out: dict[str, Any] = {"name": type(cfg).name}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            value = options_of(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out
