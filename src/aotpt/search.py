"""Hyperparameter search with Optuna (TPE): `python -m aotpt.search task=rte model=minilm search.n_trials=30`.

Every option of `python -m aotpt.train` works here too; `search.*` says what to
search (`conf/search.yaml`: lr x rank x reparam for AoT by default). Each
trial is one `train.run` whose run folder follows from its settings (under
`logs/search/<study>/runs/`), and the study lives in a local SQLite file
(`logs/search/<study>/study.db`), so the search survives a kill: launched
again with the same command it keeps the finished trials, resumes a trial
that the kill left RUNNING under its own number from its run folder's
`last.ckpt` (`study.tell(number, value)`), and asks new trials only until the
storage holds `n_trials`.

Why not hydra-optuna-sweeper: its latest release (1.3.0) requires
optuna<3.0 (2.10, 2021, which predates SQLAlchemy 2 and current Python), and
its sweeps do not resume: a killed trial stays RUNNING and a re-launch asks
new ones. Optuna's own ask/tell API needs no plugin and gives exactly the
resume semantics above.

A RUNNING trial is taken over only when its worker is gone: the trial records
`host:pid`, and a re-launch resumes the trials of dead processes on its own
host (several workers may share a storage; those on other hosts are left
alone unless `search.resume_other_hosts=true`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import optuna
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from optuna.trial import TrialState

from aotpt.cli import CONF_DIR, entry, log, one_line_errors
from aotpt.errors import AotptError, ConfigError

KINDS = ("float", "int", "categorical")


def _check_space(space: Mapping[str, Any], fixed: list[str]) -> None:
    """One-line errors for a space entry that cannot be sampled, or a searched key also fixed on the command line."""
    fixed_keys = {o.split("=", 1)[0].lstrip("+~") for o in fixed}
    for name, spec in space.items():
        kind = spec.get("type", "categorical" if "choices" in spec else None)
        if kind not in KINDS:
            raise ConfigError(f"search.space.{name}.type={kind!r}; accepted: {', '.join(KINDS)}")
        needed = ("choices",) if kind == "categorical" else ("low", "high")
        if missing := [k for k in needed if k not in spec]:
            raise ConfigError(f"search.space.{name} needs {', '.join(missing)} (type {kind})")
        for key in spec.get("when") or {}:
            if key not in space:
                raise ConfigError(f"search.space.{name}.when names {key!r}; accepted: {', '.join(space)}")
        if (target := spec.get("override", name)) in fixed_keys:
            raise ConfigError(f"{target} is searched (search.space.{name}): drop {target}= from the command line")


def sample(trial: optuna.Trial, space: Mapping[str, Any]) -> list[str]:
    """Define-by-run: the train overrides of one trial (an entry with `when` only if its conditions hold)."""
    overrides, chosen = [], {}
    for name, spec in space.items():
        if any(chosen.get(k) != v for k, v in (spec.get("when") or {}).items()):
            continue
        kind = spec.get("type", "categorical")
        if kind == "categorical":
            value = trial.suggest_categorical(name, list(spec["choices"]))
        elif kind == "int":
            value = trial.suggest_int(name, spec["low"], spec["high"], log=bool(spec.get("log", False)))
        else:
            value = trial.suggest_float(name, spec["low"], spec["high"], log=bool(spec.get("log", False)))
        chosen[name] = value
        overrides.append(f"{spec.get('override', name)}={value!r}" if isinstance(value, float) else
                         f"{spec.get('override', name)}={value}")  # fmt: skip
    return overrides


def replay(params: Mapping[str, Any], space: Mapping[str, Any]) -> list[str] | None:
    """The overrides of a stored trial from its params (None when the kill came before all were sampled)."""
    fixed = optuna.trial.FixedTrial(dict(params))
    try:
        return sample(fixed, space)
    except ValueError:
        return None


def _compose(overrides: list[str]) -> DictConfig:
    """The train config of a trial, as `python -m aotpt.train <overrides>` would resolve it."""
    if GlobalHydra.instance().is_initialized():  # inside `python -m aotpt.search`
        return compose("train", overrides=overrides, return_hydra_config=True)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        try:
            return compose("train", overrides=overrides, return_hydra_config=True)
        finally:
            GlobalHydra.instance().clear()


def train_trial(overrides: list[str], runs_dir: Path, group: str) -> tuple[float | None, dict]:
    """Run `train.run` on the trial's config in its own run folder under `runs_dir`; (metric value, run output)."""
    from aotpt import train

    cfg = _compose(overrides)
    previous = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(cfg)
    try:
        default = Path(cfg.hydra.run.dir)  # <log_dir>/runs/<run name>/<...>: the same folder under runs_dir
        base = Path(cfg.paths.log_dir) / "runs"
        output_dir = runs_dir / (default.relative_to(base) if default.is_relative_to(base) else default.name)
        with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):  # as Hydra's run_job does
            cfg.hydra.runtime.output_dir = str(output_dir.absolute())
        HydraConfig.instance().set_config(cfg)
        with read_write(cfg), open_dict(cfg):
            del cfg["hydra"]
            if cfg.get("logger") and cfg.logger.get("wandb"):
                cfg.logger.wandb.group = group
        out = train.run(cfg)
        metrics = {**out.get("best", {}), **out.get("metrics", {})}
        return metrics.get(cfg.optimized_metric), out
    finally:
        if previous is not None:
            HydraConfig.instance().set_config(previous)


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _orphaned(trial: optuna.trial.FrozenTrial, other_hosts: bool) -> bool:
    """A RUNNING trial whose process is gone (on this host), or any when other hosts' trials may be taken over."""
    host, _, pid = str(trial.user_attrs.get("worker", ":")).rpartition(":")
    if host != socket.gethostname():
        return other_hosts or not host
    if not pid.isdigit() or int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _finish(study: optuna.Study, trial: optuna.Trial, overrides: list[str], runs_dir: Path, group: str) -> None:
    """Train the trial and tell the study its value (or that it failed)."""
    trial.set_user_attr("worker", _worker())
    try:
        value, out = train_trial(overrides, runs_dir, group)
    except AotptError:  # a mistake in the config: every trial would fail the same way
        study.tell(trial, state=TrialState.FAIL)
        raise
    except Exception as err:  # one failed trial (NaN loss, OOM) does not stop the search
        log.warning("trial %d failed: %s", trial.number, f"{type(err).__name__}: {err}".splitlines()[0])
        study.tell(trial, state=TrialState.FAIL)
        return
    trial.set_user_attr("run_dir", out["output_dir"])
    if value is None:
        log.warning("trial %d: optimized_metric was not logged; marked failed", trial.number)
        study.tell(trial, state=TrialState.FAIL)
    else:
        study.tell(trial, float(value))


def run(cfg: DictConfig, overrides: list[str] | None = None) -> optuna.Study:
    """Run (or resume) the study of `cfg.search` on the train config given by `overrides`."""
    s = cfg.search
    overrides = list(overrides or [])
    space = OmegaConf.to_container(s.space, resolve=True)
    _check_space(space, overrides)
    folder = Path(s.dir)
    folder.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = s.storage or f"sqlite:///{(folder / 'study.db').absolute()}"
    study = optuna.create_study(study_name=s.study, storage=storage, direction=s.direction, load_if_exists=True)
    # A resumed search samples as a fresh sampler seeded by (seed, trials so far): reproducible from its storage.
    study.sampler = optuna.samplers.TPESampler(seed=int(s.seed) + len(study.trials), n_startup_trials=s.startup_trials)
    runs_dir = folder / "runs"
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _orphaned(trial, bool(s.resume_other_hosts)):
            log.info("trial %d runs in %s: left to it", trial.number, trial.user_attrs.get("worker"))
            continue
        replayed = replay(trial.params, space)
        if replayed is None:
            study.tell(trial.number, state=TrialState.FAIL)
            continue
        log.info("resuming trial %d (%s)", trial.number, " ".join(replayed))
        # the live handle of the stored RUNNING trial (FrozenTrial keeps its storage id as _trial_id)
        _finish(study, optuna.trial.Trial(study, trial._trial_id), overrides + replayed, runs_dir, s.study)
    while len(study.trials) < s.n_trials:
        trial = study.ask()
        trial.set_user_attr("worker", _worker())  # before sampling: a kill from here on leaves a resumable trial
        sampled = sample(trial, space)
        log.info("trial %d: %s", trial.number, " ".join(sampled))
        _finish(study, trial, overrides + sampled, runs_dir, s.study)
    return study


def summary(study: optuna.Study) -> str:
    """One line per trial, then the best."""
    lines = [f"study {study.study_name}: {len(study.trials)} trials"]
    for t in study.trials:
        value = "" if t.value is None else f"{t.value:.4f}"
        params = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        lines.append(f"  #{t.number:<3} {t.state.name:<8} {value:>8}  {params}")
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if done:
        lines.append(f"best: #{study.best_trial.number} {study.best_value:.4f} {study.best_trial.params}")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="search")
@one_line_errors
def main(cfg: DictConfig) -> None:
    task_overrides = [
        o for o in HydraConfig.get().overrides.task if not o.lstrip("+~").startswith(("search.", "hydra"))
    ]
    study = run(cfg, task_overrides)
    print(summary(study))


if __name__ == "__main__":
    entry(main)
