"""`run(cfg)`: read the runs, select, and write every output of a report into `out_dir`.

out_dir/report.md            the page (or `page=`): tables, figures, discussion, commands, every run
out_dir/report.tex           the main table, booktabs
out_dir/report.json          everything above, machine-readable
out_dir/tables/*.csv         scores, macro, params, runs (+ pilot, majority)
out_dir/figures/*.png|*.csv  each figure and the numbers it plots
"""

from __future__ import annotations

import json
import shlex
import statistics
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from aotpt.atomic import atomic_open
from aotpt.cli import CONF_DIR
from aotpt.errors import ConfigError
from aotpt.report import figures, page, tables
from aotpt.report.baseline import majority_scores
from aotpt.report.coverage import Coverage, cover, sweep_cells
from aotpt.report.runs import Run, read_runs
from aotpt.report.select import (
    Benchmark,
    PilotRow,
    Selection,
    pilot_rows,
    select,
    standard_benchmark,
    sweep_benchmark,
)
from aotpt.sweeps import Sweep, load_sweep
from aotpt.tasks import TASKS
from aotpt.tasks.spec import BENCHMARKS

UNFINISHED = ("running", "interrupted", "failed")  # states `completed_only=true` leaves out


@dataclass
class Report:
    title: str
    runs_dir: Path
    out_dir: Path
    runs: list[Run]
    selection: Selection
    show: list[str]
    params: dict[tuple[str, str], dict] = field(default_factory=dict)
    backbone_params: dict[str, int] = field(default_factory=dict)
    machines: dict[str, int] = field(default_factory=dict)  # included runs per machine, most first
    majority: dict[str, dict] = field(default_factory=dict)
    pilot: list[PilotRow] = field(default_factory=list)
    coverage: Coverage | None = None
    commands: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)


def _machines(runs: list[Run]) -> dict[str, int]:
    """How many of the selection's runs each machine ran, most first (ties by name): the first is the one
    whose minutes the compute table compares, since a wall time compares only with one from the same machine."""
    counts = Counter(r.machine for r in runs if r.state == "included")
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _params(runs: list[Run], selection: Selection, machines: dict[str, int]) -> dict[tuple[str, str], dict]:
    """Per backbone and setup: trainable parameters of the chosen configs (median over tasks) and compute used.

    `wall_mean_s` is the mean over tasks of the mean wall time of the runs on the machine that ran the most
    runs (the first of `machines`; `wall_tasks` of the setup's `tasks` have one there): setups are compared
    on one machine and one mix of tasks, never a slower CPU read as a slower method. `wall_total_h` counts
    every run, anywhere.
    """
    reference = next(iter(machines), None)
    out = {}
    for backbone in selection.backbones:
        for setup in selection.setups:
            chosen = [r for c in selection.cells if (c.backbone, c.setup) == (backbone, setup) and c.chosen
                      for r in c.chosen.runs]  # fmt: skip
            grid = [r for r in runs if r.state == "included" and (r.backbone, r.setup) == (backbone, setup)]
            if not chosen:
                continue
            trainable = statistics.median_low(r.trainable_params or 0 for r in chosen)
            backbone_size = max(r.backbone_params or 0 for r in chosen)
            by_task = defaultdict(list)
            for r in grid:
                if r.machine == reference and r.wall_time_s is not None:
                    by_task[r.task].append(r.wall_time_s)
            out[(backbone, setup)] = {
                "trainable": trainable,
                "pct": 100 * trainable / backbone_size if backbone_size else 0.0,
                "runs": len(grid),
                "machine": reference,
                "wall_mean_s": statistics.fmean(statistics.fmean(w) for w in by_task.values()) if by_task else None,
                "wall_tasks": len(by_task),
                "tasks": len({r.task for r in grid}),
                "wall_total_h": sum(r.wall_time_s or 0.0 for r in grid) / 3600,
            }
    return out


def _benchmarks(names, sweep: Sweep | None) -> list[Benchmark]:
    """`benchmarks=`: glue, superglue, and `sweep` (the mean over the tasks the sweep's jobs train)."""
    accepted = (*BENCHMARKS, "sweep")
    names = [names] if isinstance(names, str) else list(names or [])
    if wrong := [n for n in names if n not in accepted]:
        raise ConfigError(f"benchmarks={wrong[0]!r} is not a benchmark score; accepted: {', '.join(accepted)}")
    out = []
    for name in names:
        if name != "sweep":
            out.append(standard_benchmark(name))
            continue
        if sweep is None:
            raise ConfigError(
                "benchmarks=[sweep] needs sweep=<a sweeps/*.yaml name>: the macro score is over its tasks"
            )
        out.append(sweep_benchmark([task for _, _, task in sweep_cells(sweep) if task in TASKS]))
    return out


def _check_summary(target: Path, page_path: Path) -> None:
    """`summary=FILE`: FILE must hold the two marker lines the summary goes between."""
    begin, end = page.summary_markers(page_path)
    text = target.read_text() if target.is_file() else None
    if text is None or begin not in text or end not in text.split(begin, 1)[1]:
        where = "is not a file" if text is None else "has no block to fill"
        raise ConfigError(f"summary={target} {where}: it needs the lines {begin} and {end} where the summary goes")


def build(cfg: DictConfig) -> Report:
    runs_dir = Path(cfg.runs_dir)
    if not runs_dir.is_dir():
        raise ConfigError(f"runs_dir={runs_dir} is not a folder")
    sweep = None
    if cfg.get("sweep"):
        given = cfg.get("sweep_overrides") or []
        arguments = shlex.split(given) if isinstance(given, str) else list(given)
        sweep = load_sweep(cfg.sweep, arguments)
    benchmarks = _benchmarks(cfg.get("benchmarks", list(BENCHMARKS)), sweep)
    if cfg.get("summary"):
        _check_summary(Path(cfg.summary), Path(cfg.page) if cfg.get("page") else Path(cfg.out_dir) / "report.md")
    runs = read_runs(runs_dir)
    if cfg.get("completed_only"):
        runs = [r for r in runs if r.state not in UNFINISHED]
    coverage = None
    if sweep is not None:
        runs, coverage = cover(runs, sweep)
    if not any(r.state == "included" for r in runs):
        states = ", ".join(sorted({f"{r.state}" for r in runs})) or "none"
        raise ConfigError(f"runs_dir={runs_dir}: no results.json of a finished, identified run (found: {states})")
    selection = select(runs, coverage, benchmarks)
    show = list(cfg.get("show") or [])
    machines = _machines(runs)
    report = Report(
        title=cfg.title,
        runs_dir=runs_dir,
        out_dir=Path(cfg.out_dir),
        runs=runs,
        selection=selection,
        show=show,
        params=_params(runs, selection, machines),
        machines=machines,
        backbone_params={b: max(r.backbone_params or 0 for r in runs if r.backbone == b) for b in selection.backbones},
        majority=majority_scores(selection.tasks, cfg.data_dir) if cfg.get("data_dir") else {},
        coverage=coverage,
    )
    if cfg.get("pilot_dir"):
        report.pilot = pilot_rows(read_runs(Path(cfg.pilot_dir)), show)
    defaults = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "report.yaml"))
    options = {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "hydra"}
    report.commands = [*(cfg.get("commands") or []), page.report_command(options, defaults)]
    return report


def _json(report: Report) -> dict:
    sel = report.selection
    return {
        "title": report.title,
        "cells": [
            {
                "backbone": c.backbone,
                "setup": c.setup,
                "task": c.task,
                "score": c.chosen.stat() if c.chosen else None,
                "seeds": c.chosen.seeds if c.chosen else [],
                "chosen": c.shown(report.show),
                "configs": [{"settings": k.settings, "score": k.stat(), "seeds": k.seeds} for k in c.configs],
                "problems": c.problems,
            }
            for c in sel.cells
        ],
        "macros": [asdict(m) for m in sel.macros],
        "params": [{"backbone": b, "setup": s, **p} for (b, s), p in report.params.items()],
        "majority": report.majority,
        "pilot": [asdict(p) | {"mean": p.mean} for p in report.pilot],
        "coverage": None
        if report.coverage is None
        else {"sweep": report.coverage.sweep, "jobs": report.coverage.jobs, "done": report.coverage.done},  # fmt: skip
        "runs": [{k: v for k, v in asdict(r).items() if k != "config"} for r in report.runs],
    }


def outputs(report: Report, cfg: DictConfig, draw: bool = True) -> dict[Path, str]:
    """Every text the report consists of, by path (figures are drawn into out_dir/figures when `draw`)."""
    out = report.out_dir
    sink = figures.Sink(out / "figures", list(cfg.get("figure_formats") or []), draw)
    figures.write_figures(report, sink)
    report.figures = sink.images
    files = {
        "tables/scores.csv": tables.scores_csv(report),
        "tables/macro.csv": tables.macro_csv(report),
        "tables/params.csv": tables.params_csv(report),
        "tables/runs.csv": tables.runs_csv(report.runs),
        "report.tex": tables.main_latex(report),
        "report.json": json.dumps(_json(report), indent=2, default=str),
        **sink.texts,
    }
    if report.majority:
        rows = [[t, tables.pct(m["score"], 3)] for t, m in report.majority.items()]
        files["tables/majority.csv"] = tables.csv_text(["task", "score"], rows)
    if report.pilot:
        rows = [[p.backbone, p.setup, tables.chosen_text(p.values), json.dumps(p.scores, sort_keys=True),
                 tables.pct(p.mean, 3), int(p.picked)] for p in report.pilot]  # fmt: skip
        files["tables/pilot.csv"] = tables.csv_text(["backbone", "setup", "config", "scores", "mean", "picked"], rows)
    texts = {out / name: text for name, text in files.items()}
    page_path = Path(cfg.page) if cfg.get("page") else out / "report.md"
    texts[page_path] = page.render(report, page_path, page_path.read_text() if page_path.is_file() else None)
    if cfg.get("summary"):
        target = Path(cfg.summary)
        texts[target] = page.summary(report, page_path, target, target.read_text())
    return texts


def write(report: Report, cfg: DictConfig) -> None:
    for path, text in outputs(report, cfg).items():
        with atomic_open(path) as f:
            f.write(text)


def stale(report: Report, cfg: DictConfig) -> list[Path]:
    """The report's files that differ from what the runs give now (images are not compared: they depend on
    the matplotlib version; the CSV beside each figure holds its numbers). Writes nothing."""
    return [path for path, text in outputs(report, cfg, draw=False).items()
            if not path.is_file() or path.read_text() != text]  # fmt: skip


def run(cfg: DictConfig) -> Report:
    """Build the report of `cfg.runs_dir` and write it to `cfg.out_dir`; with `check=true` only compare.

    A committed report stays tied to its runs: `check=true` raises a one-line
    error naming every file that a rebuild would change.
    """
    report = build(cfg)
    if cfg.get("check"):
        if differ := stale(report, cfg):
            names = ", ".join(page.shown_path(p) for p in differ)
            raise ConfigError(f"check=true: rebuilding the report changes {names}; run it without check=true")
        return report
    write(report, cfg)
    return report
