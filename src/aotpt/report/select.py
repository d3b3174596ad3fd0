"""Best-by-dev selection as in the literature, and the benchmark scores built from it.

For every backbone x setup x task (a *cell*) the included runs are grouped by
their identity without the seed: a *config* is one point of the grid, and
only its seeds are pooled. The chosen config is the one with the best mean
dev score over its seeds (each run at its best dev epoch); only configs with
as many seeds as the most complete one in the cell compete, so a lucky run
of a half-finished config cannot win. The chosen config's mean ± sample std
is the cell's score.

GLUE and SuperGLUE scores are the mean of the chosen task scores over the
benchmark's tasks (diagnostics excluded, `aotpt.tasks.benchmark_tasks`), with
std = sqrt(sum of task variances) / number of tasks (tasks are independent
runs); a sweep's macro score (`benchmarks=[sweep]`) is the same over the tasks
the sweep trains. Anything short of the full grid is marked, not passed off as complete:
uneven seeds, failed or unfinished runs, missing tasks.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from aotpt.methods import METHODS, REPARAMS
from aotpt.report.runs import Run
from aotpt.tasks import TASKS, benchmark_tasks
from aotpt.tasks.spec import BENCHMARKS

UNFINISHED = ("failed", "interrupted", "running")


@dataclass(frozen=True)
class Benchmark:
    """A score averaged over tasks: GLUE, SuperGLUE, or a sweep's macro score over the tasks it trains."""

    key: str  # glue | superglue | macro (macros.csv, report.json)
    label: str  # the column's name: GLUE | SuperGLUE | Macro
    tasks: tuple[str, ...]


def standard_benchmark(name: str) -> Benchmark:
    return Benchmark(name, {"glue": "GLUE", "superglue": "SuperGLUE"}[name], tuple(benchmark_tasks(name)))


def sweep_benchmark(tasks: list[str]) -> Benchmark:
    """The macro score of a sweep: the mean over the tasks its jobs train, in registry order."""
    return Benchmark("macro", "Macro", tuple(sorted(set(tasks), key=list(TASKS).index)))


def setup_order() -> list[str]:
    """Setups in registry order, AoT split by reparam: aot/kron, aot/fc, aot/dense, finetune, ..."""
    return [s for name in METHODS for s in ([f"aot/{r}" for r in REPARAMS] if name == "aot" else [name])]


def _rank(order: list[str], name: str) -> tuple[int, str]:
    return (order.index(name) if name in order else len(order), name)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass
class Config:
    """One grid point of a cell: its settings (identity without seed) and its runs, one per seed."""

    settings: dict[str, Any]
    runs: list[Run]

    @property
    def key(self) -> str:
        return json.dumps(self.settings, sort_keys=True, default=str)

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def seeds(self) -> list:
        return [r.seed for r in self.runs]

    def stat(self, metric: str = "score") -> tuple[float, float] | None:
        values = [r.metrics[metric] for r in self.runs if metric in r.metrics]
        return mean_std(values) if len(values) == self.n else None


@dataclass
class Cell:
    backbone: str
    setup: str
    task: str
    configs: list[Config]
    chosen: Config | None = None
    varying: list[str] = field(default_factory=list)  # settings that differ between the configs
    problems: list[str] = field(default_factory=list)  # why the cell is not a complete grid
    unfinished: list[Run] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.problems

    def shown(self, always: list[str]) -> dict[str, Any]:
        """The chosen config's values of the settings that vary in the grid, plus `always` (e.g. optim.lr)."""
        if self.chosen is None:
            return {}
        keys = [k for k in always if k in self.chosen.settings] + [k for k in self.varying if k not in always]
        return {k: self.chosen.settings[k] for k in keys}


@dataclass
class Macro:
    backbone: str
    setup: str
    benchmark: str
    mean: float
    std: float
    tasks: list[str]
    missing: list[str]
    incomplete: list[str]  # tasks whose cell is marked

    @property
    def complete(self) -> bool:
        return not self.missing and not self.incomplete


@dataclass
class Selection:
    cells: list[Cell]
    macros: list[Macro]
    backbones: list[str]
    setups: list[str]
    tasks: list[str]
    expected_seeds: int
    benchmarks: list[Benchmark] = field(default_factory=list)

    def benchmark(self, key: str) -> Benchmark:
        return next(b for b in self.benchmarks if b.key == key)

    def cell(self, backbone: str, setup: str, task: str) -> Cell | None:
        return next((c for c in self.cells if (c.backbone, c.setup, c.task) == (backbone, setup, task)), None)

    def macro(self, backbone: str, setup: str, benchmark: str) -> Macro | None:
        return next(
            (m for m in self.macros if (m.backbone, m.setup, m.benchmark) == (backbone, setup, benchmark)), None
        )


def _backbone_order(runs: list[Run]) -> list[str]:
    """Smallest backbone first (parameter count from results.json), then by name."""
    size: dict[str, int] = {}
    for r in runs:
        size[r.backbone] = max(size.get(r.backbone, 0), r.backbone_params or 0)
    return sorted(size, key=lambda b: (size[b], b))


def _configs(runs: list[Run]) -> list[Config]:
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        groups[run.settings_key].append(run)
    configs = [Config(runs[0].settings, sorted(runs, key=lambda r: (str(r.seed), r.path))) for runs in groups.values()]
    return sorted(configs, key=lambda c: c.key)


def _varying(configs: list[Config]) -> list[str]:
    keys = sorted({k for c in configs for k in c.settings})
    missing = object()
    return [k for k in keys if len({json.dumps(c.settings.get(k, missing), default=str) for c in configs}) > 1]


def _cell(backbone: str, setup: str, task: str, runs: list[Run], unfinished: list[Run], expected: int) -> Cell:
    cell = Cell(backbone, setup, task, _configs(runs), unfinished=unfinished)
    cell.varying = _varying(cell.configs)
    if cell.configs:
        most = max(c.n for c in cell.configs)
        eligible = [c for c in cell.configs if c.n == most]
        cell.chosen = max(eligible, key=lambda c: c.stat()[0])  # first of equals in key order
        fewer = [c for c in cell.configs if c.n < expected]
        if fewer:
            cell.problems.append(f"{len(fewer)} of {len(cell.configs)} configs have fewer than {expected} seeds")
    if unfinished:
        counts = defaultdict(int)
        for run in unfinished:
            counts[run.state] += 1
        cell.problems.append(", ".join(f"{n} {state}" for state, n in sorted(counts.items())) + " run(s)")
    if not cell.configs:
        cell.problems.append("no finished run")
    return cell


def _macros(cells: list[Cell], backbone: str, setup: str, benchmarks: list[Benchmark]) -> list[Macro]:
    macros = []
    by_task = {c.task: c for c in cells if c.chosen is not None}
    for benchmark in benchmarks:
        members = benchmark.tasks
        present = [t for t in members if t in by_task]
        if not present:
            continue
        stats = [by_task[t].chosen.stat() for t in present]
        mean = statistics.fmean(m for m, _ in stats)
        std = math.sqrt(sum(s * s for _, s in stats)) / len(stats)
        missing = [t for t in members if t not in by_task]
        incomplete = [t for t in present if not by_task[t].complete]
        macros.append(Macro(backbone, setup, benchmark.key, mean, std, present, missing, incomplete))
    return macros


def select(runs: list[Run], coverage=None, benchmarks: list[Benchmark] | None = None) -> Selection:
    """Cells (chosen configs) and benchmark scores from the included runs; unfinished runs mark their cells.

    With a sweep's `coverage` (`aotpt.report.coverage`), a cell whose sweep
    runs have not all finished is marked as well. `benchmarks`: the scores
    averaged over tasks (GLUE and SuperGLUE by default).
    """
    if benchmarks is None:
        benchmarks = [standard_benchmark(b) for b in BENCHMARKS]
    included = [r for r in runs if r.state == "included"]
    unfinished = [r for r in runs if r.state in UNFINISHED]
    counted = included + unfinished
    backbones = _backbone_order(counted)
    order = setup_order()
    setups = sorted({r.setup for r in counted}, key=lambda s: _rank(order, s))
    tasks = sorted({r.task for r in counted if r.task in TASKS}, key=list(TASKS).index)
    expected = max((c.n for runs_ in _by_cell(included).values() for c in _configs(runs_)), default=0)
    cells, macros = [], []
    done, open_ = _by_cell(included), _by_cell(unfinished)
    for backbone in backbones:
        for setup in setups:
            row = [
                _cell(backbone, setup, task, done.get(k, []), open_.get(k, []), expected)
                for task in tasks
                if (k := (backbone, setup, task)) in done or k in open_
            ]
            for cell in row:
                if coverage is not None and (missing := coverage.missing(backbone, setup, cell.task)):
                    cell.problems.append(missing)
            cells += row
            macros += _macros(row, backbone, setup, benchmarks)
    return Selection(cells, macros, backbones, setups, tasks, expected, list(benchmarks))


def _by_cell(runs: list[Run]) -> dict[tuple[str, str, str], list[Run]]:
    cells: dict[tuple[str, str, str], list[Run]] = defaultdict(list)
    for run in runs:
        cells[(run.backbone, run.setup, run.task)].append(run)
    return cells


@dataclass
class PilotRow:
    """One grid point of a pilot: its values and its mean dev score per task; `picked` = best mean over the tasks."""

    backbone: str
    setup: str
    values: dict[str, Any]
    scores: dict[str, float]
    picked: bool = False

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores.values())


def pilot_rows(runs: list[Run], always: list[str]) -> list[PilotRow]:
    """A pilot grid across tasks: per backbone and setup, the grid point with the best mean over the pilot's tasks.

    Grid points are told apart by the settings that vary within some task's
    grid (plus `always`), since other settings (epochs, data) follow the task.
    Only points run on every pilot task can be picked.
    """
    sel = select(runs)
    rows: list[PilotRow] = []
    for backbone in sel.backbones:
        for setup in sel.setups:
            cells = [c for c in sel.cells if (c.backbone, c.setup) == (backbone, setup) and c.configs]
            keys = [k for k in always if any(k in c.settings for cell in cells for c in cell.configs)]
            keys += sorted({k for c in cells for k in c.varying} - set(keys))
            points: dict[str, PilotRow] = {}
            for cell in cells:
                for config in cell.configs:
                    values = {k: config.settings.get(k) for k in keys}
                    key = json.dumps(values, sort_keys=True, default=str)
                    points.setdefault(key, PilotRow(backbone, setup, values, {})).scores[cell.task] = config.stat()[0]
            full = [p for p in points.values() if len(p.scores) == len(cells)]
            if full:
                max(full, key=lambda p: p.mean).picked = True
            rows += sorted(points.values(), key=lambda p: json.dumps(p.values, sort_keys=True, default=str))
    return rows
