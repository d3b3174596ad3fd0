"""The method registry: the only place that lists the methods, and the one that builds their configs.

Adding a method = a module here, a `conf/method/<name>.yaml` (`method.name:
<name>` plus its options) and one `_register` line. Nothing under
`aotpt.methods` imports Lightning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aotpt.errors import ConfigError, choices
from aotpt.methods import adapter, aot, bitfit, finetune, lora, ptuning_v1, ptuning_v2
from aotpt.methods.aot.reparam import REPARAMS
from aotpt.methods.base import Method, MethodConfig, build_config, options_of

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


# Python class paths that the first artifact format (and run folders of that time) stored instead of names.
_LEGACY_TARGETS = {
    **{f"{m.config.__module__}.{m.config.__qualname__}": name for name, m in METHODS.items()},
    **{f"{cls.__module__}.{cls.__qualname__}": name for name, cls in REPARAMS.items()},
}


def _named(options: Mapping[str, Any], what: str) -> dict[str, Any]:
    """Options with `name`; a legacy `_target_` class path is translated to its registry name."""
    options = dict(options)
    target = options.pop("_target_", None)
    if "name" not in options and target is not None:
        if target not in _LEGACY_TARGETS:
            raise ConfigError(f"{what}: unknown class {target!r}; accepted names: {', '.join(sorted(METHODS))}")
        options["name"] = _LEGACY_TARGETS[target]
    return options


def method_config(options: Mapping[str, Any]) -> MethodConfig:
    """The config of the method named `options["name"]`, built from the other options.

    `{"name": "aot", "reparam": {"name": "fc", "rank": 64}}` -> AotConfig(reparam=FcConfig(rank=64)).
    An unknown option is a one-line ConfigError listing the accepted ones.
    """
    options = _named(options, "method")
    method = get_method(options.pop("name", None))
    if "reparam" in options:
        if method.config is not aot.AotConfig:
            if options["reparam"] is None:
                del options["reparam"]
            else:
                raise ConfigError(
                    f"reparam= only applies to method=aot, not method={method.config.name}; drop reparam="
                )
        else:
            options["reparam"] = reparam_config(options["reparam"])
    return build_config(method.config, options, "method", "method")


def reparam_config(options: Mapping[str, Any] | None):
    """The AoT reparameterisation named `options["name"]` (kron, fc, dense), built from the other options."""
    if options is None:
        raise ConfigError(f"method=aot needs a reparam; accepted: {', '.join(sorted(REPARAMS))}")
    options = _named(options, "method.reparam")
    name = options.pop("name", None)
    if name not in REPARAMS:
        raise choices("reparam", name, REPARAMS)
    return build_config(REPARAMS[name], options, "reparam", "method.reparam")


def setup_name(options: Mapping[str, Any]) -> str:
    """How reports and benchmarks name a method setup: `aot/kron`, `lora`."""
    options = _named(options, "method")
    reparam = options.get("reparam")
    return f"{options['name']}/{_named(reparam, 'method.reparam')['name']}" if reparam else options["name"]


__all__ = [
    "METHODS",
    "REPARAMS",
    "Method",
    "MethodConfig",
    "get_method",
    "method_config",
    "method_of",
    "options_of",
    "reparam_config",
    "setup_name",
]
