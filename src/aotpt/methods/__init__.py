"""The method registry: the only place that lists the methods.

Adding a method = a module here, a `conf/method/<name>.yaml` and one
`_register` line. Nothing under `aotpt.methods` imports Lightning.
"""

from __future__ import annotations

from aotpt.errors import choices
from aotpt.methods import aot, finetune
from aotpt.methods.base import Method, MethodConfig

METHODS: dict[str, Method] = {}


def _register(method: Method) -> None:
    name = method.config.name
    if name in METHODS or name != name.lower():
        raise ValueError(f"method name {name!r} is duplicate or not lower-case")
    METHODS[name] = method


_register(Method(aot.AotConfig, aot.attach))
_register(Method(finetune.FinetuneConfig, finetune.attach))


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise choices("method", name, METHODS)
    return METHODS[name]


def method_of(cfg: MethodConfig) -> Method:
    """The registry entry of a method config object."""
    return get_method(type(cfg).name)


__all__ = ["METHODS", "Method", "MethodConfig", "get_method", "method_of"]
