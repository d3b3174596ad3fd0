"""Which job of a sweep each run is, and how much of the sweep has finished.

With `sweep=<name>` the report reads the sweep's job list (`aotpt.sweeps`),
matches every run to a job by the job's overrides and the settings the sweep
file fixes for all jobs (`data.max_length: 128`): each must equal the run's
resolved config. It excludes runs that are no job of the sweep,
and says per cell how many of the sweep's runs have not finished: "built from
160 of the sweep's 168 runs" is then a count, not a guess.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass, field

from hydra.core.override_parser.overrides_parser import OverridesParser

from aotpt.cli import GROUPS
from aotpt.identity import LATER_DEFAULTS, NEUTRAL, lookup
from aotpt.report.runs import Run
from aotpt.sweeps import Sweep

# Group choices that name what a run is, and where its config keeps the name.
NAMED = {"task": ("task", "name"), "model": ("model", "name"), "method": ("method", "name")}
# Overrides that do not change what a run computes, or are checked through its identity.
IGNORED = ("data_dir", "paths.", "hydra.", "hydra/", "logger", "callbacks", "ckpt_path", "run_name")


@dataclass
class Coverage:
    sweep: str
    jobs: int
    done: int = 0
    cells: dict[tuple[str, str, str], list[int]] = field(default_factory=dict)  # cell -> [jobs, done]

    def missing(self, backbone: str, setup: str, task: str) -> str | None:
        expected, done = self.cells.get((backbone, setup, task), (0, 0))
        return f"{expected - done} of {expected} runs of the sweep not finished" if done < expected else None


def _lookup(config: dict, path: tuple[str, ...]):
    """The run's value at `path`; a setting added after the run was recorded reads as the value it ran with."""
    return lookup(config, path, LATER_DEFAULTS.get(".".join(path), KeyError))


def _unchecked(key: str) -> bool:
    """A setting that does not change what a run computes, by whole dotted parts (`model.name`, not `model.names`)."""
    parts = key.split(".")
    return any(parts[: len(p)] == p for p in (k.rstrip("./").split(".") for k in IGNORED + NEUTRAL))


def _job(job: list[str], parser: OverridesParser, sweep: Sweep) -> tuple[dict, tuple[str, str, str]]:
    """The job's checks (config path -> value: the sweep file's fixed settings, then the job's) and its cell."""
    checks: dict[tuple[str, ...], object] = {
        tuple(key.split(".")): value for key, value in sweep.fixed.items() if not _unchecked(key)
    }
    chosen = dict(sweep.defaults)
    for override in parser.parse_overrides(job):
        key = override.key_or_group.lstrip("+")
        if override.is_delete() or key.startswith(IGNORED):
            continue
        if key == "reparam":
            chosen["reparam"] = override.value()
            checks[("method", "reparam", "name")] = override.value()
        elif key in NAMED:
            chosen[key] = override.value()
            checks[NAMED[key]] = override.value()
        elif key not in GROUPS:
            checks[tuple(key.split("."))] = override.value()
    method = chosen["method"]
    setup = f"aot/{chosen['reparam'] or 'kron'}" if method == "aot" else method
    return checks, (chosen["model"], setup, chosen["task"])


def sweep_cells(sweep: Sweep) -> list[tuple[str, str, str]]:
    """(model, setup, task) of each of the sweep's jobs, as `cover` matches runs to them."""
    parser = OverridesParser.create()
    return [_job(job, parser, sweep)[1] for job in sweep.jobs]


def cover(runs: list[Run], sweep: Sweep) -> tuple[list[Run], Coverage]:
    """The runs, those outside the sweep excluded, and how many of its jobs have an included run."""
    parser = OverridesParser.create()
    jobs = [_job(job, parser, sweep) for job in sweep.jobs]
    coverage = Coverage(sweep.name, len(jobs))
    by_task = defaultdict(list)
    for i, (_, cell) in enumerate(jobs):
        by_task[cell[2]].append(i)
        coverage.cells.setdefault(cell, [0, 0])[0] += 1
    done: set[int] = set()
    out = []
    for run in runs:
        match = next(
            (i for i in by_task.get(run.task, []) if all(_lookup(run.config, p) == v for p, v in jobs[i][0].items())),
            None,
        )
        if match is None and run.state != "unreadable":
            run = dataclasses.replace(run, state="excluded", reason=f"not a job of sweep {sweep.name}")
        elif match is not None and run.state == "included" and match not in done:
            done.add(match)
            coverage.cells[jobs[match][1]][1] += 1
        out.append(run)
    coverage.done = len(done)
    return out, coverage
