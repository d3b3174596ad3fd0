"""Every `results.json` under a folder, read once and sorted into what a report may use.

A run enters the selection only when it is a finished, full-length run of a
known task whose results.json names its identity. Everything else is counted
and listed with the reason, never silently dropped:

- excluded: debug runs (`run_name` starting with `debug-`) and runs shortened
  by `trainer.limit_*_batches`, `max_steps`, `max_time`, `fast_dev_run`,
  `overfit_batches` or `data.limit_examples` (a one-batch run is no score);
- failed / interrupted / running: not finished (a failure's error is kept);
- unidentified: made before results.json named the run identity, so the
  report cannot tell which runs differ only by seed: never pooled;
- unreadable: not JSON, or naming an unknown method.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aotpt.errors import AotptError
from aotpt.methods import setup_name
from aotpt.tasks import TASKS

SPLITS = ("train", "val", "test", "predict")

# Lightning options that cut a run short, each with the test of a value that does (None never does).
SHORTENING = {
    # an int is a number of batches (1 = one batch), a float a fraction (1.0 = all)
    **{f"limit_{split}_batches": lambda v: not (isinstance(v, float) and v == 1.0) for split in SPLITS},
    "max_steps": lambda v: v != -1,
    "max_time": lambda v: True,
    "fast_dev_run": bool,
    "overfit_batches": lambda v: v != 0,
}


@dataclass(frozen=True)
class Run:
    """One results.json: where it is, what it is, and what it scored at its best dev epoch."""

    path: str  # the run folder, relative to the folder that was read (posix)
    state: str  # included | excluded | failed | interrupted | running | unidentified | unreadable
    reason: str = ""  # why a run is not included (the error of a failed run)
    backbone: str = "?"
    setup: str = "?"
    task: str = "?"
    seed: Any = None
    settings: dict[str, Any] = field(default_factory=dict)  # the identity without the seed, flattened
    run_id: str | None = None
    score: float | None = None  # best["val/score"]
    metrics: dict[str, float] = field(default_factory=dict)  # the best epoch's val/* metrics, without "val/"
    best_epoch: int | None = None
    epochs: int = 0  # dev evaluations recorded
    wall_time_s: float | None = None
    threads: int | None = None  # torch's CPU threads (results.json `machine`; absent in older records)
    machine: str = ""  # where wall_time_s was measured (`machine_label`): minutes compare only on one machine
    trainable_params: int | None = None
    backbone_params: int | None = None
    config: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def settings_key(self) -> str:
        """The settings as one sortable, comparable string: runs with equal keys differ only by seed."""
        return json.dumps(self.settings, sort_keys=True, default=str)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1e-3}} -> {"optim.lr": 1e-3}; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(
            flatten(value, f"{prefix}{key}.") if isinstance(value, dict) and value else {f"{prefix}{key}": value}
        )
    return flat


def shortened_by(config: dict) -> list[str]:
    """The options (`trainer.limit_train_batches=4`, ...) that made this run shorter than its schedule."""
    trainer = config.get("trainer") or {}
    found = [
        f"trainer.{k}={trainer[k]}" for k, cuts in SHORTENING.items() if trainer.get(k) is not None and cuts(trainer[k])
    ]
    limit = (config.get("data") or {}).get("limit_examples")
    return found + ([f"data.limit_examples={limit}"] if limit is not None else [])


def machine_label(machine: dict | None) -> str:
    """results.json's `machine` as one short name: the GPU(s) a run used, else the CPU and torch's threads."""
    if not machine:
        return "not recorded"
    if machine.get("gpu"):
        gpus = machine.get("gpus") or 1
        return machine["gpu"] + (f" x{gpus}" if gpus > 1 else "")
    threads = machine.get("threads")
    return f"{machine.get('cpu') or 'CPU'}" + (f", {threads} thread{'s' * (threads != 1)}" if threads else "")


def _backbone_params(result: dict) -> int | None:
    trainable, pct = result.get("trainable_params"), result.get("trainable_pct_of_backbone")
    return round(100 * trainable / pct) if trainable and pct else None


def read_run(path: Path, root: Path) -> Run:
    folder = path.parent.relative_to(root).as_posix()
    try:
        result = json.loads(path.read_text())
        config = result["config"]
        base = {
            "path": folder,
            "backbone": (config.get("model") or {}).get("name", "?"),
            "setup": setup_name(config["method"]),
            "task": (config.get("task") or {}).get("name", "?"),
            "seed": config.get("seed"),
            "config": config,
        }
    except (ValueError, KeyError, TypeError, AotptError) as err:
        return Run(path=folder, state="unreadable", reason=f"{type(err).__name__}: {err}".splitlines()[0])
    best = result.get("best") or {}
    metrics = {k.removeprefix("val/"): v for k, v in best.items() if k.startswith("val/") and k != "val/score_best"}
    identity = result.get("identity")
    base |= {
        "settings": {k: v for k, v in flatten(identity).items() if k != "seed"} if isinstance(identity, dict) else {},
        "run_id": result.get("run_id"),
        "score": metrics.get("score"),
        "metrics": metrics,
        "best_epoch": best.get("epoch"),
        "epochs": len(result.get("epochs") or []),
        "wall_time_s": result.get("wall_time_s"),
        "threads": (result.get("machine") or {}).get("threads"),
        "machine": machine_label(result.get("machine")),
        "trainable_params": result.get("trainable_params"),
        "backbone_params": _backbone_params(result),
    }
    status = result.get("status", "?")
    if str(config.get("run_name", "")).startswith("debug-"):
        return Run(state="excluded", reason=f"debug run ({config['run_name']})", **base)
    if shortened := shortened_by(config):
        return Run(state="excluded", reason=f"shortened: {', '.join(shortened)}", **base)
    if status != "completed":
        state = status if status in ("failed", "interrupted", "running") else "running"
        return Run(state=state, reason=str(result.get("error") or status).splitlines()[0], **base)
    if base["task"] not in TASKS:
        return Run(state="unreadable", reason=f"unknown task {base['task']!r}", **base)
    if not isinstance(identity, dict):
        return Run(state="unidentified", reason="results.json has no identity (made before run identities)", **base)
    if base["score"] is None:
        return Run(state="unreadable", reason="no val/score at the best epoch", **base)
    return Run(state="included", **base)


def read_runs(root: Path) -> list[Run]:
    """Every results.json under `root`, in a fixed order (by folder)."""
    root = Path(root)
    return [read_run(path, root) for path in sorted(root.rglob("results.json"))]
