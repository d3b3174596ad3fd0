"""The report's figures (matplotlib), each written with the CSV of exactly the numbers it plots.

- macro: benchmark score per setup with error bars, one panel per backbone;
- params: benchmark score against trainable parameters (log scale);
- backbones: benchmark score against backbone size per setup, the AoT paper's
  Figure 1 (only with two or more backbones);
- tasks_<backbone>: per-task bars per setup, the majority class as a dashed line.

Figures use `matplotlib.figure.Figure` directly (no pyplot state, no display
backend) and a fixed colour per setup (registry order), so every figure of
every report shows a method in the same colour. PNGs carry no software or
date metadata; their CSVs are the part a test can compare byte for byte.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from aotpt.report.select import setup_order
from aotpt.report.tables import csv_text, majority_score, majority_tasks, pct

PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]
MARKERS = "osD^vP*X"
METADATA = {"png": {"Software": None}, "pdf": {"Creator": None, "Producer": None, "CreationDate": None}}


def color(setup: str) -> str:
    order = setup_order()
    return PALETTE[(order.index(setup) if setup in order else len(order)) % len(PALETTE)]


class Sink:
    """Where figures go: each one's data as CSV text (always) and its image files (only when drawing)."""

    def __init__(self, folder: Path, formats: list[str], draw: bool = True) -> None:
        self.folder, self.formats, self.draw = folder, formats, draw
        self.texts: dict[str, str] = {}  # figures/<name>.csv -> its text
        self.images: list[str] = []  # <name>.<format>

    def add(self, fig: Figure, name: str, header: list[str], rows: list[list]) -> None:
        self.texts[f"figures/{name}.csv"] = csv_text(header, rows)
        self.images += [f"{name}.{fmt}" for fmt in self.formats]
        if self.draw:
            self.folder.mkdir(parents=True, exist_ok=True)
            fig.tight_layout()
            for fmt in self.formats:
                fig.savefig(self.folder / f"{name}.{fmt}", dpi=150, metadata=METADATA.get(fmt, {}))


def macro_figure(report, sink: Sink) -> None:
    sel = report.selection
    benchmarks = [b.key for b in sel.benchmarks if any(m.benchmark == b.key for m in sel.macros)]
    if not benchmarks:
        return
    cols = min(2, len(sel.backbones))
    nrows = -(-len(sel.backbones) // cols)
    fig = Figure(figsize=(max(4.0, 0.9 * len(sel.setups)) * cols, 3.6 * nrows))
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax in axes[len(sel.backbones) :]:
        ax.set_visible(False)
    rows = []
    width = 0.8 / len(benchmarks)
    for ax, backbone in zip(axes, sel.backbones, strict=False):
        for j, benchmark in enumerate(benchmarks):
            xs, means, stds = [], [], []
            for i, setup in enumerate(sel.setups):
                m = sel.macro(backbone, setup, benchmark)
                if m is not None:
                    xs.append(i + (j - (len(benchmarks) - 1) / 2) * width)
                    means.append(100 * m.mean)
                    stds.append(100 * m.std)
                    of = len(m.tasks) + len(m.missing)
                    rows.append([backbone, setup, benchmark, pct(m.mean, 3), pct(m.std, 3), len(m.tasks), of])
                    if len(m.tasks) < of:  # an average over fewer tasks than the others may have: say so on the bar
                        where = (xs[-1], means[-1] + stds[-1])
                        ax.annotate(f"{len(m.tasks)}/{of}", where, xytext=(0, 2), textcoords="offset points",
                                    ha="center", va="bottom", fontsize="x-small")  # fmt: skip
            hatch = None if j == 0 else "//"
            ax.bar(
                xs,
                means,
                width,
                yerr=stds,
                capsize=3,
                label=sel.benchmark(benchmark).label,
                hatch=hatch,
                color=[color(s) for s in sel.setups if sel.macro(backbone, s, benchmark)],
                edgecolor="black",
            )
        for j, benchmark in enumerate(benchmarks):  # what a constant prediction scores, averaged the same way
            bench = sel.benchmark(benchmark)
            majority = majority_score(report, bench)
            if majority.mean is not None:  # over the tasks that have one (STS-B has no majority class)
                done = len(majority_tasks(report, bench))
                count = f"{done}/{len(bench.tasks)} tasks" if done < len(bench.tasks) else ""
                label = ", ".join(filter(None, [bench.label if len(benchmarks) > 1 else "", count]))
                label = f"majority class ({label})" if label else "majority class"
                ax.axhline(100 * majority.mean, color="black", linestyle=("--", ":")[j % 2], linewidth=1, label=label)
                rows.append([backbone, "majority class", benchmark, pct(majority.mean, 3), "", done, len(bench.tasks)])
        ax.set_xticks(range(len(sel.setups)), sel.setups, rotation=30, ha="right")
        ax.set_title(backbone)
        ax.set_ylabel("dev score (%)")
        ax.margins(y=0.1)  # room for the k/n labels
        ax.legend(fontsize="small")
    sink.add(fig, "macro", ["backbone", "setup", "benchmark", "score", "std", "tasks", "of"], rows)


def params_figure(report, sink: Sink) -> None:
    sel = report.selection
    benchmarks = [b.key for b in sel.benchmarks if any(m.benchmark == b.key for m in sel.macros)]
    if not benchmarks:
        return
    fig = Figure(figsize=(4.8 * len(benchmarks), 3.8))
    axes = fig.subplots(1, len(benchmarks), squeeze=False)[0]
    rows = []
    for ax, benchmark in zip(axes, benchmarks, strict=True):
        for b, backbone in enumerate(sel.backbones):
            for setup in sel.setups:
                m, p = sel.macro(backbone, setup, benchmark), report.params.get((backbone, setup))
                if m is None or p is None:
                    continue
                marker = MARKERS[b % len(MARKERS)]
                ax.errorbar(p["trainable"], 100 * m.mean, yerr=100 * m.std, fmt=marker, color=color(setup), capsize=3)
                rows.append([benchmark, backbone, setup, p["trainable"], pct(m.mean, 3), pct(m.std, 3)])
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel(f"{sel.benchmark(benchmark).label} dev score (%)")
        # one legend entry per setup (colour) and per backbone (marker), not per pair
        handles = [Line2D([], [], color=color(s), marker="o", linestyle="", label=s) for s in sel.setups]
        if len(sel.backbones) > 1:
            hollow = {"color": "black", "markerfacecolor": "none", "linestyle": ""}
            handles += [Line2D([], [], marker=MARKERS[i % len(MARKERS)], label=b, **hollow)
                        for i, b in enumerate(sel.backbones)]  # fmt: skip
        ax.legend(handles=handles, fontsize="x-small")
    header = ["benchmark", "backbone", "setup", "trainable_params", "score", "std"]
    sink.add(fig, "params", header, rows)


def backbones_figure(report, sink: Sink) -> None:
    sel = report.selection
    sized = [b for b in sel.backbones if report.backbone_params.get(b)]
    benchmarks = [b.key for b in sel.benchmarks if any(m.benchmark == b.key for m in sel.macros)]
    if len(sized) < 2 or not benchmarks:
        return
    fig = Figure(figsize=(4.8 * len(benchmarks), 3.8))
    axes = fig.subplots(1, len(benchmarks), squeeze=False)[0]
    rows = []
    for ax, benchmark in zip(axes, benchmarks, strict=True):
        for setup in sel.setups:
            points = [(b, sel.macro(b, setup, benchmark)) for b in sized]
            points = [(b, m) for b, m in points if m is not None]
            if not points:
                continue
            xs = [report.backbone_params[b] for b, _ in points]
            ax.errorbar(
                xs,
                [100 * m.mean for _, m in points],
                yerr=[100 * m.std for _, m in points],
                marker="o",
                color=color(setup),
                capsize=3,
                label=setup,
            )
            rows += [[benchmark, setup, b, report.backbone_params[b], pct(m.mean, 3), pct(m.std, 3)] for b, m in points]
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(
            [report.backbone_params[b] for b in sized], [f"{b}\n{report.backbone_params[b] / 1e6:.0f}M" for b in sized]
        )
        ax.set_xlabel("backbone parameters")
        ax.set_ylabel(f"{sel.benchmark(benchmark).label} dev score (%)")
        ax.legend(fontsize="x-small")
    header = ["benchmark", "setup", "backbone", "backbone_params", "score", "std"]
    sink.add(fig, "backbones", header, rows)


def tasks_figure(report, backbone: str, sink: Sink) -> None:
    sel = report.selection
    tasks = [t for t in sel.tasks if any(c.chosen for c in sel.cells if (c.backbone, c.task) == (backbone, t))]
    if not tasks:
        return
    cols = min(4, len(tasks))
    nrows = (len(tasks) + cols - 1) // cols
    fig = Figure(figsize=(3.2 * cols, 2.8 * nrows))
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    rows = []
    for ax, task in zip(axes, tasks, strict=False):
        cells = [c for s in sel.setups if (c := sel.cell(backbone, s, task)) and c.chosen]
        stats = [c.chosen.stat() for c in cells]
        ax.bar(
            range(len(cells)),
            [100 * m for m, _ in stats],
            yerr=[100 * s for _, s in stats],
            capsize=3,
            color=[color(c.setup) for c in cells],
            edgecolor="black",
        )
        if task in report.majority:
            ax.axhline(100 * report.majority[task]["score"], color="black", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(cells)), [c.setup for c in cells], rotation=45, ha="right", fontsize="small")
        ax.set_title(task)
        rows += [[task, c.setup, pct(m, 3), pct(s, 3), c.chosen.n] for c, (m, s) in zip(cells, stats, strict=True)]
    for ax in axes[len(tasks) :]:
        ax.set_visible(False)
    fig.suptitle(f"{backbone}: dev score (%) per task" + (", dashed: majority class" if report.majority else ""))
    sink.add(fig, f"tasks_{backbone}", ["task", "setup", "score", "std", "seeds"], rows)


def write_figures(report, sink: Sink) -> None:
    """Every figure the report's data allows, into `sink` (nothing without formats)."""
    if not sink.formats:
        return
    macro_figure(report, sink)
    params_figure(report, sink)
    backbones_figure(report, sink)
    for backbone in report.selection.backbones:
        tasks_figure(report, backbone, sink)
