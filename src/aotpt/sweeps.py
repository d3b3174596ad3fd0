"""Sweep grids: the jobs a `sweeps/*.yaml` file launches, as lists of overrides.

Hydra's basic sweeper crosses every axis with every other. The protocol of
the literature is not one cross product: each method has its own learning
rate grid (prefix methods 5e-3..1e-2, full fine-tuning 1e-5..5e-5), and
`reparam` only exists for AoT. A sweep file therefore lists a *union of
cross products* (the form of scikit-learn's `ParameterGrid` over a list of
dicts and of W&B grid sweeps):

    hydra:
      sweeper:
        params:            # crossed with every grid below
          task: rte,cb
          seed: 1,2,3
        grids:
          - {method: aot, reparam: "kron,fc", optim.lr: "1e-3,5e-3"}
          - {method: finetune, optim.lr: "1e-5,2e-5,3e-5"}

A grid's axis replaces a common axis of the same key. On the command line,
a key that grids set narrows them (`task=rte method=lora` runs that part of
a paper sweep), `++key=value` sets a key in every job (`++trainer.max_epochs=1`),
and any other override applies to every job (`data_dir=...`). Jobs that two
grids share are launched once. `GridsSweeper`
(`hydra_plugins/aotpt_grids`) launches these jobs with any Hydra launcher;
the report counts a sweep's runs from the same list (`sweep_jobs`).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, ListConfig, OmegaConf

from aotpt.errors import ConfigError

SWEEPS_DIR = Path(__file__).resolve().parents[2] / "sweeps"


def _axes(overrides: Sequence[str], parser: OverridesParser) -> dict[str, list[tuple[str, object]]]:
    """Bare key (no +, ++, ~) -> its values as (`key=value` text, parsed value), several for `a,b,c` or `range()`."""
    return {o.key_or_group: _values(o) for o in parser.parse_overrides(list(overrides))}


def _values(override: Override) -> list[tuple[str, object]]:
    key = override.get_key_element()
    if not override.is_sweep_override():
        return [(f"{key}={override.get_value_element_as_str()}", override.value())]
    if not override.is_discrete_sweep():
        raise ConfigError(f"{key}: only lists (a,b,c), range() and glob() can be swept in a grid")
    texts, values = list(override.sweep_string_iterator()), list(override.sweep_iterator())
    return [(f"{key}={text}", value) for text, value in zip(texts, values, strict=True)]


def grid_jobs(
    params: Mapping[str, object] | None,
    grids: Sequence[Mapping[str, object]] | None,
    arguments: Sequence[str] = (),
    config_loader=None,
) -> list[list[str]]:
    """The jobs of `params` x each grid (or `params` alone without grids), with the command line's `arguments`.

    A command-line key that a grid sets narrows that grid to the values given
    (`task=rte` keeps each grid's RTE jobs; a grid without RTE contributes
    none); a grid that does not set it is left alone if other grids do
    (`reparam=kron` does not touch the baselines) and otherwise gets it as
    Hydra would (a common axis is replaced, a new key added); `++key=value`
    sets the key in every job (`++trainer.max_epochs=1` for a quick pass).
    Each job is a list of `key=value` overrides in a fixed order (common axes,
    the grid's own, then the command line's), so the list is the same on every
    machine and for every reader.
    """
    parser = OverridesParser.create(config_loader=config_loader)
    common = _axes([f"{k}={v}" for k, v in (params or {}).items()], parser)
    given = _axes(arguments, parser)
    forced = {o.key_or_group for o in parser.parse_overrides(list(arguments)) if o.is_force_add()}
    grids = [_axes([f"{k}={v}" for k, v in grid.items()], parser) for grid in grids or [{}]]
    in_grids = {key for own in grids for key in own}
    jobs: list[list[str]] = []
    seen: set[frozenset[str]] = set()
    for own in grids:
        axes = {**common, **own}
        for key, values in given.items():
            if key in own and key not in forced:
                wanted = [value for _, value in values]
                axes[key] = [(text, value) for text, value in own[key] if value in wanted]
            elif key in forced or key in common or key not in in_grids:
                axes[key] = values
        for job in itertools.product(*axes.values()):
            texts = [text for text, _ in job]
            if frozenset(texts) not in seen:
                seen.add(frozenset(texts))
                jobs.append(texts)
    return jobs


@dataclass(frozen=True)
class Sweep:
    """A sweep file's jobs, the group choices its jobs start from (model, task, method, reparam names), and the
    settings its file fixes for every job (`fixed`: dotted key -> value, e.g. `data.max_length: 128`)."""

    name: str
    jobs: list[list[str]]
    defaults: dict[str, str | None]
    fixed: dict[str, object] = field(default_factory=dict)


def _fixed(body: DictConfig, composed: DictConfig, prefix: str = "") -> dict[str, object]:
    """The settings a sweep file sets outside `defaults` and `hydra`: their keys from the file, their values
    from the composed config (resolved; a value that cannot be resolved outside a run is left out)."""
    out: dict[str, object] = {}
    for key in body:
        if not prefix and key in ("defaults", "hydra"):
            continue
        path = f"{prefix}{key}"
        if isinstance(body._get_node(key), DictConfig) and not OmegaConf.is_interpolation(body, key):
            out.update(_fixed(body[key], composed, f"{path}."))
            continue
        try:
            value = OmegaConf.select(composed, path, throw_on_missing=True)
        except Exception:  # noqa: BLE001 - ${hydra:...}, ${now:...}, ???: not a setting a stored config can be held to
            continue
        out[path] = OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value
    return out


def load_sweep(name: str, arguments: Sequence[str] = (), sweeps_dir: Path = SWEEPS_DIR) -> Sweep:
    """What `python -m aotpt.train -m --config-dir <sweeps_dir> --config-name <name> <arguments>` launches."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from aotpt.cli import CONF_DIR

    if not (sweeps_dir / f"{name}.yaml").is_file():
        accepted = sorted(p.stem for p in sweeps_dir.glob("*.yaml") if not p.stem.startswith("wandb_"))
        raise ConfigError(f"unknown sweep={name!r}; accepted: {', '.join(accepted)} (files in {sweeps_dir})")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(sweeps_dir), version_base="1.3"):
            cfg = compose(name, overrides=[f"hydra.searchpath=[file://{CONF_DIR}]"], return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    sweeper = cfg.hydra.sweeper
    choices = cfg.hydra.runtime.choices
    defaults = {"model": choices.model, "task": choices.task, "method": choices.method, "reparam": choices.reparam}
    fixed = _fixed(OmegaConf.load(sweeps_dir / f"{name}.yaml"), cfg)
    return Sweep(name, grid_jobs(sweeper.get("params"), sweeper.get("grids"), arguments), defaults, fixed)


def sweep_jobs(name: str, arguments: Sequence[str] = (), sweeps_dir: Path = SWEEPS_DIR) -> list[list[str]]:
    """The jobs (lists of overrides) that the sweep `name` launches."""
    return load_sweep(name, arguments, sweeps_dir).jobs
