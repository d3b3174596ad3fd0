"""The method registry: the only place that lists the methods.

Adding a method = a module here, a `conf/method/<name>.yaml` and one
`_register` line. Nothing under `aotpt.methods` imports Lightning.
"""

from __future__ import annotations

from aotpt.errors import choices
from aotpt.methods import adapter, aot, bitfit, finetune, lora, ptuning_v1, ptuning_v2
from aotpt.methods.base import Method, MethodConfig

METHODS: dict[str, Method] = {}


def _register(method: Method) -> None:
    name = method.config.name
    if name in METHODS or name != name.lower():
        raise ValueError(f"method name {name!r} is duplicate or not lower-case")
    METHODS[name] = method


_register(Method(aot.AotConfig, aot.attach))
_register(Method(finetune.FinetuneConfig, finetune.attach))
_register(Method(bitfit.BitfitConfig, bitfit.attach))
_register(Method(lora.LoraConfig, lora.attach))
_register(Method(adapter.AdapterConfig, adapter.attach))
_register(Method(ptuning_v2.PtuningV2Config, ptuning_v2.attach))
_register(Method(ptuning_v1.PtuningV1Config, ptuning_v1.attach))


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise choices("method", name, METHODS)
    return METHODS[name]


def method_of(cfg: MethodConfig) -> Method:
    """The registry entry of a method config object."""
    return get_method(type(cfg).name)


__all__ = ["METHODS", "Method", "MethodConfig", "get_method", "method_of"]
