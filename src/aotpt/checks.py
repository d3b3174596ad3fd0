"""Every mistake the config alone reveals, as one line, before anything is loaded or created.

`check_config(cfg)` runs when Hydra asks for the run folder (see
`identity.register_resolvers`), so a bad value leaves no folder behind, and
again at the start of `train.run` for in-process callers. It reads only
configs: conf/train.yaml (the accepted `data.*` and `optim.*` keys), the
signatures of the classes `_target_` nodes name (Trainer, loggers,
callbacks), the method's config dataclass, and the backbone's config.json for
its position limit, never the weights.

Keys a user may add with `+` are exactly the arguments of what reads them:
`+trainer.<any lightning.pytorch.Trainer argument>`, `+logger.wandb.<any
WandbLogger or wandb.init argument>`, `+callbacks.<name>={_target_: ...}`.
Anything else (`+optim.lrr=1e-3`, `+trainer.bogus=1`) is refused by name,
with the nearest accepted key.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math

import yaml
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from aotpt.cli import CONF_DIR
from aotpt.errors import ConfigError

# The config groups that hold a top-level node of their own (the others write into these: `_global_` or method.reparam).
GROUP_NODES = ("model", "task", "method", "trainer", "callbacks", "logger", "paths", "hydra")
# Trainer arguments the run passes itself; the config must not set them.
RUN_OWNED = {"callbacks": "the callbacks group", "logger": "the logger group", "plugins": "aotpt.train"}


@functools.cache
def recipe_keys() -> dict[str, set[str]]:
    """The keys conf/train.yaml defines: top level (plus its groups) and under data/optim."""
    recipe = yaml.safe_load((CONF_DIR / "train.yaml").read_text())
    return {
        "": (set(recipe) - {"defaults"}) | set(GROUP_NODES),
        "data": set(recipe["data"]),
        "optim": set(recipe["optim"]),
        # the keys any conf/model file has (name, pretrained, random_init, architecture)
        "model": set().union(*(yaml.safe_load(p.read_text()) or {} for p in (CONF_DIR / "model").glob("*.yaml"))),
        "task": {"name"},
    }


def _unknown(where: str, key: str, accepted) -> ConfigError:
    close = difflib.get_close_matches(key, accepted, n=1)
    hint = f" (did you mean {where}{close[0]}?)" if close else ""
    return ConfigError(f"unknown key {where}{key}{hint}; accepted: {', '.join(sorted(accepted))}")


def check_keys(cfg: DictConfig) -> None:
    """Refuse keys nothing reads (a typo, or a `+` addition the code would silently ignore)."""
    keys = recipe_keys()
    for section, accepted in keys.items():
        node = cfg if not section else cfg.get(section)
        for key in node or {}:
            if key not in accepted:
                raise _unknown(f"{section}." if section else "", key, accepted)
    _check_target(cfg.trainer, "trainer")
    for group in ("logger", "callbacks"):
        for name, node in (cfg.get(group) or {}).items():
            if node is not None:
                _check_target(node, f"{group}.{name}")


def _check_target(node: DictConfig, where: str) -> None:
    """Keys of a `_target_` node must be arguments of the class it names."""
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ConfigError(f"{where} must be a config with a _target_ class, got {OmegaConf.to_yaml(node).strip()!r}")
    try:
        cls = get_class(node._target_)
    except Exception:
        raise ConfigError(f"{where}._target_={node._target_}: no such class") from None
    accepted = _arguments(cls)
    if accepted is None:
        return  # takes **kwargs that nothing documents: cannot be checked by name
    for key in node:
        if key == "_target_":
            continue
        if where == "trainer" and key in RUN_OWNED:
            raise ConfigError(f"trainer.{key} cannot be set: it comes from {RUN_OWNED[key]}")
        if key not in accepted:
            raise _unknown(f"{where}.", key, accepted - set(RUN_OWNED) if where == "trainer" else accepted)


@functools.cache
def _arguments(cls: type) -> frozenset[str] | None:
    """The keyword arguments `cls(...)` accepts, following **kwargs up to the base classes that take them;
    None when they end up nowhere documented."""
    from lightning.pytorch.loggers import WandbLogger

    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is object:
            break
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters
        names |= {n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            return frozenset(names)
        if klass is WandbLogger:  # it passes its **kwargs to wandb.init
            import wandb

            return frozenset(names | set(inspect.signature(wandb.init).parameters))
    return None


def unknown_key_message(key: str) -> str:
    """For Hydra's "Could not override 'key'": the nearest key, or how to add one that may be added."""
    from lightning.pytorch import Trainer

    section, _, name = key.rpartition(".")
    accepted = recipe_keys().get(section)
    if section == "trainer":
        accepted = _arguments(Trainer) - set(RUN_OWNED)
    if accepted is None:
        return f"unknown key {key}; see the settings with: python -m aotpt.train --cfg job"
    if name in accepted:
        return f"{key} is not in the config: add it with +{key}=<value>"
    return str(_unknown(f"{section}." if section else "", name, accepted))


# ---- values ------------------------------------------------------------------------------------------------------
def number(name: str, value, low: float, high: float = math.inf, low_open: bool = False, example: str = "") -> None:
    """A real number within [low, high] (or (low, high] with `low_open`), or a one-line error saying so."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bound = f"> {low}" if low_open else f">= {low}"
        bound += f" and <= {high}" if high != math.inf else ""
        raise ConfigError(f"{name}={value!r} must be a number {bound}{f' (e.g. {example})' if example else ''}")


def integer(name: str, value, low: int = 1, null: bool = False) -> None:
    """An integer >= low (or null when allowed), or a one-line error saying so."""
    if value is None and null:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{name}={value!r} must be an integer >= {low}{' or null' if null else ''}")


def boolean(name: str, value) -> None:
    """true or false, or a one-line error saying so (`=no` would arrive as a string, and a string counts as true)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} must be true or false")


def check_values(cfg: DictConfig) -> None:
    integer("seed", cfg.seed, low=0)
    if cfg.seed >= 2**32:
        raise ConfigError(f"seed={cfg.seed} must be < 2**32 (numpy's limit)")
    optim = cfg.optim
    number("optim.lr", optim.lr, 0, low_open=True, example="optim.lr=1e-3")
    number("optim.weight_decay", optim.weight_decay, 0)
    number("optim.warmup_ratio", optim.warmup_ratio, 0, 1)
    number("optim.head_dropout", optim.head_dropout, 0, 1)
    data = cfg.data
    for key in ("max_length", "batch_size"):
        integer(f"data.{key}", data[key])
    integer("data.eval_batch_size", data.eval_batch_size, null=True)
    integer("data.limit_examples", data.limit_examples, null=True)
    integer("data.num_workers", data.num_workers, low=0)
    boolean("data.group_by_length", data.get("group_by_length", False))


def check_devices(cfg: DictConfig) -> None:
    """A GPU asked for on a machine without one fails here, not after the model has loaded."""
    import torch

    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    mps = accelerator == "gpu" and torch.backends.mps.is_available()  # Lightning's "gpu" is CUDA or Apple's MPS
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available() and not mps:
        raise ConfigError(
            f"trainer.accelerator={accelerator} but this machine has no GPU (torch.cuda.is_available() is False); "
            "use trainer=cpu, or trainer.accelerator=auto"
        )


def check_task(cfg: DictConfig) -> None:
    from aotpt.tasks import get_task

    spec = get_task(cfg.task.name)
    if not spec.trainable:
        raise ConfigError(
            f"task={spec.name} has no training split: it is predicted by a model trained on "
            f"task={spec.model_task} (python -m aotpt.submit runs=[<that run folder>])"
        )


def check_max_length(cfg: DictConfig) -> None:
    """data.max_length (+ a soft prompt's positions) within the backbone's position limit, read from its config."""
    from aotpt.backbones import load_config, position_limit
    from aotpt.methods import method_config

    method = method_config(OmegaConf.to_container(cfg.method, resolve=True))
    random_init = cfg.model.get("random_init")
    config = load_config(cfg.model.pretrained, OmegaConf.to_container(random_init) if random_init else None)
    limit = position_limit(config)
    # P-Tuning v1 inserts its prompt into the input, so the sequence grows by its length.
    extra = method.length if type(method).name == "ptuning_v1" else 0
    if limit is not None and cfg.data.max_length + extra > limit:
        with_prompt = f" + method.length={extra}" if extra else ""
        raise ConfigError(
            f"data.max_length={cfg.data.max_length}{with_prompt} exceeds the {limit} positions of "
            f"{cfg.model.pretrained} ({config.model_type}); use data.max_length<={limit - extra}"
        )


def check_config(cfg: DictConfig) -> None:
    """All of the above, cheapest first."""
    check_keys(cfg)
    check_values(cfg)
    check_devices(cfg)
    check_task(cfg)
    check_max_length(cfg)
