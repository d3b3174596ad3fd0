"""The report's tables as markdown, CSV, LaTeX (booktabs) and plain terminal text.

Fixed formats so a rebuilt report is byte-identical: scores in % with one
decimal in markdown/LaTeX and three in CSV, rows in registry order (setups
as `aotpt.methods` names them, tasks as `aotpt.tasks` orders them), smallest
backbone first. A dagger marks a cell or benchmark score whose grid is not
complete; the reasons are listed under the table.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import dataclass
from typing import Any

from aotpt.report.select import Benchmark, Cell

DAGGER = "†"


def pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f}"


def value(v: Any) -> str:
    """A setting's value as shown: 0.005 -> 5e-3 style via %g, lists as compact JSON."""
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, dict)) or v is None:
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def labels(keys: list[str]) -> dict[str, str]:
    """Short names for settings (`optim.lr` -> `lr`), the full key where two would clash."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


def chosen_text(values: dict[str, Any]) -> str:
    names = labels(list(values))
    return ", ".join(f"{names[k]}={value(v)}" for k, v in values.items()) or "—"


def backbone_title(report, backbone: str) -> str:
    size = report.backbone_params.get(backbone)
    return f"{backbone} ({size / 1e6:.1f}M parameters)" if size else backbone


def md_table(header: list[str], rows: list[list[str]], right: int = 1) -> str:
    """A markdown table; columns from index `right` on are right-aligned (numbers)."""
    align = ["---" if i < right else "---:" for i in range(len(header))]
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def csv_text(header: list[str], rows: list[list[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


# -- the main table: setups x tasks + benchmark scores, per backbone ---------------------------------


@dataclass(frozen=True)
class Score:
    """One cell of the main table before formatting."""

    mean: float | None = None  # None: an empty cell
    std: float | None = None
    best: bool = False  # the best mean of its column within the backbone
    marked: bool = False  # incomplete grid
    count: str = ""  # "(7/9)": a benchmark score over part of its tasks

    def markdown(self) -> str:
        if self.mean is None:
            return DAGGER if self.marked else ""
        text = f"**{pct(self.mean)}**" if self.best else pct(self.mean)
        text += "" if self.std is None else f" ± {pct(self.std)}"
        return text + (f" {self.count}" if self.count else "") + (f" {DAGGER}" if self.marked else "")

    def latex(self) -> str:
        if self.mean is None:
            return r"$^\dagger$" if self.marked else ""
        text = rf"\textbf{{{pct(self.mean)}}}" if self.best else pct(self.mean)
        text += "" if self.std is None else rf"$_{{\pm {pct(self.std)}}}$"
        return text + (rf"\,{self.count}" if self.count else "") + (r"$^\dagger$" if self.marked else "")


def _columns(report) -> tuple[list[str], list[Benchmark]]:
    tasks = report.selection.tasks
    benchmarks = [b for b in report.selection.benchmarks if any(t in b.tasks for t in tasks)]
    return tasks, benchmarks


def _count(done: int, of: int) -> str:
    return "" if done == of else f"({done}/{of})"


def majority_tasks(report, benchmark: Benchmark) -> list[str]:
    """The benchmark's tasks in the report that have a majority-class score (STS-B, a regression, has none)."""
    return [t for t in report.selection.tasks if t in benchmark.tasks and t in report.majority]


def majority_score(report, benchmark: Benchmark) -> Score:
    tasks = majority_tasks(report, benchmark)
    if not tasks:
        return Score()
    mean = statistics.fmean(report.majority[t]["score"] for t in tasks)
    return Score(mean, count=_count(len(tasks), len(benchmark.tasks)))


def _setup_scores(report, backbone: str, setup: str, tasks: list[str], benchmarks: list[Benchmark]) -> list[Score]:
    sel = report.selection
    scores = []
    for task in tasks:
        cell = sel.cell(backbone, setup, task)
        if cell is None or cell.chosen is None:
            scores.append(Score(marked=cell is not None))
            continue
        mean, std = cell.chosen.stat()
        best = max(c.chosen.stat()[0] for c in sel.cells if (c.backbone, c.task) == (backbone, task) and c.chosen)
        scores.append(Score(mean, std, best=mean == best, marked=not cell.complete))
    for benchmark in benchmarks:
        m = sel.macro(backbone, setup, benchmark.key)
        if m is None:
            scores.append(Score())
            continue
        count = _count(len(m.tasks), len(m.tasks) + len(m.missing))
        scores.append(Score(m.mean, m.std, marked=bool(m.incomplete), count=count))
    return scores


def main_rows(report, backbone: str) -> list[tuple[str, str, list[Score]]]:
    """(label, trainable % of the backbone, scores) per row of one backbone: the majority class, then each setup."""
    tasks, benchmarks = _columns(report)
    rows = []
    if report.majority:
        scores = [Score(report.majority[t]["score"]) if t in report.majority else Score() for t in tasks]
        rows.append(("majority class", "", scores + [majority_score(report, b) for b in benchmarks]))
    for setup in report.selection.setups:
        scores = _setup_scores(report, backbone, setup, tasks, benchmarks)
        if any(sc.mean is not None or sc.marked for sc in scores):
            params = report.params.get((backbone, setup))
            rows.append((setup, f"{params['pct']:.2f}" if params else "", scores))
    return rows


def problems(report, backbone: str) -> list[str]:
    """Why cells of this backbone are marked: one line per set of cells naming them ("every cell", or per setup
    "on every task" or its tasks) and every reason that marks exactly those cells, so a grid with one seed of three
    in says so once, not once per cell or once per reason; then one line per set of missing benchmark tasks."""
    tasks = report.selection.tasks
    cells = [cell for cell in report.selection.cells if cell.backbone == backbone]
    where: dict[str, dict[str, list[str]]] = {}  # reason -> setup -> its tasks, in table order
    for cell in cells:
        for reason in cell.problems:
            where.setdefault(reason, {}).setdefault(cell.setup, []).append(cell.task)
    reasons: dict[tuple, list[str]] = {}  # the same cells marked for several reasons: one line, its reasons
    for reason, marked in where.items():
        reasons.setdefault(tuple((setup, tuple(ts)) for setup, ts in marked.items()), []).append(reason)
    lines = []
    for marked, why in reasons.items():
        if sum(len(ts) for _, ts in marked) == len(cells):
            lines.append(f"every cell: {'; '.join(why)}")
            continue
        parts = [f"{setup} on {'every task' if len(ts) == len(tasks) else ', '.join(ts)}" for setup, ts in marked]
        lines.append(f"{'; '.join(parts)}: {'; '.join(why)}")
    missing: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for m in report.selection.macros:
        if m.backbone == backbone and m.missing:
            missing.setdefault((m.benchmark, tuple(m.missing)), []).append(m.setup)
    for (benchmark, absent), setups in missing.items():
        label = report.selection.benchmark(benchmark).label
        lines.append(f"{label} of {', '.join(setups)}: no score for {', '.join(absent)}")
    return lines


def macro_markdown(report) -> str:
    """The averaged columns alone (Macro, GLUE, SuperGLUE as asked), a table per backbone: the short version of the
    main table that a README shows."""
    tasks, benchmarks = _columns(report)
    header = ["setup", "params %", *(b.label for b in benchmarks)]
    parts = []
    for backbone in report.selection.backbones:
        rows = [[label, params, *(s.markdown() for s in scores[len(tasks) :])]
                for label, params, scores in main_rows(report, backbone)]  # fmt: skip
        if len(report.selection.backbones) > 1:
            parts.append(f"**{backbone_title(report, backbone)}**\n")
        parts += [md_table(header, rows), ""]
    return "\n".join(parts).rstrip() + "\n"


def main_markdown(report) -> str:
    tasks, benchmarks = _columns(report)
    header = ["setup", "params %", *tasks, *(b.label for b in benchmarks)]
    parts = []
    for backbone in report.selection.backbones:
        rows = [
            [label, params, *(s.markdown() for s in scores)] for label, params, scores in main_rows(report, backbone)
        ]
        parts += [f"### {backbone_title(report, backbone)}\n", md_table(header, rows)]
        notes = problems(report, backbone)
        if notes:
            parts.append("\n" + "\n".join(f"- {DAGGER} {line}" for line in notes))
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def _tex(text: str) -> str:
    return text.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")


def main_latex(report) -> str:
    """One booktabs table: a block per backbone, the best mean per task in bold, the std as a subscript."""
    tasks, benchmarks = _columns(report)
    header = ["Setup", r"Params (\%)", *map(_tex, tasks), *(b.label for b in benchmarks)]
    width = len(header)
    lines = [r"\begin{table*}[t]", r"\centering", r"\small", r"\begin{tabular}{l" + "r" * (width - 1) + "}"]
    lines += [r"\toprule", " & ".join(header) + r" \\"]
    for backbone in report.selection.backbones:
        title = _tex(backbone_title(report, backbone))
        lines += [r"\midrule", rf"\multicolumn{{{width}}}{{l}}{{\textit{{{title}}}}} \\"]
        for label, params, scores in main_rows(report, backbone):
            lines.append(" & ".join([_tex(label), params, *(s.latex() for s in scores)]) + r" \\")
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        r"\caption{Dev scores in \% (mean $\pm$ sample std over seeds) of the configuration with the best mean dev "
        r"score per task; benchmark scores average the task scores (diagnostics excluded). "
        r"$^\dagger$: incomplete grid; ($k$/$n$): benchmark score over $k$ of its $n$ tasks.}",
        r"\label{tab:aotpt-results}",
        r"\end{table*}",
    ]
    return "\n".join(lines) + "\n"


# -- CSV tables --------------------------------------------------------------------------------------


def scores_csv(report) -> str:
    rows = []
    for c in report.selection.cells:
        mean, std = c.chosen.stat() if c.chosen else (None, None)
        rows.append(
            [
                c.backbone,
                c.setup,
                c.task,
                "" if mean is None else pct(mean, 3),
                "" if std is None else pct(std, 3),
                c.chosen.n if c.chosen else 0,
                len(c.configs),
                chosen_text(c.shown(report.show)),
                int(c.complete),
                "; ".join(c.problems),
            ]
        )
    header = ["backbone", "setup", "task", "score", "std", "seeds", "configs", "chosen", "complete", "problems"]
    return csv_text(header, rows)


def macro_csv(report) -> str:
    rows = [
        [m.backbone, m.setup, m.benchmark, pct(m.mean, 3), pct(m.std, 3), len(m.tasks), len(m.tasks) + len(m.missing)]
        + [" ".join(m.missing), int(m.complete)]
        for m in report.selection.macros
    ]
    return csv_text(["backbone", "setup", "benchmark", "score", "std", "tasks", "of", "missing", "complete"], rows)


def params_csv(report) -> str:
    rows = [
        [b, s, p["trainable"], f"{p['pct']:.4f}", p["runs"], p["machine"], p["wall_tasks"], p["tasks"]]
        + ["" if p["wall_mean_s"] is None else f"{p['wall_mean_s']:.1f}", f"{p['wall_total_h']:.2f}"]
        for (b, s), p in report.params.items()
    ]
    header = ["backbone", "setup", "trainable_params", "pct_of_backbone", "runs", "machine", "machine_tasks", "tasks"]
    header += ["wall_time_mean_s", "wall_time_h"]
    return csv_text(header, rows)


def runs_csv(runs) -> str:
    header = ["path", "state", "reason", "backbone", "setup", "task", "seed", "run_id", "score", "best_epoch"]
    header += ["epochs", "wall_time_s", "threads", "machine", "trainable_params"]
    rows = [
        [r.path, r.state, r.reason, r.backbone, r.setup, r.task, r.seed, r.run_id or ""]
        + ["" if r.score is None else pct(r.score, 3), "" if r.best_epoch is None else r.best_epoch, r.epochs]
        + ["" if r.wall_time_s is None else f"{r.wall_time_s:.1f}", r.threads or "", r.machine]
        + [r.trainable_params or ""]
        for r in runs
    ]
    return csv_text(header, rows)


def chosen_rows(report, backbone: str) -> list[list[str]]:
    rows = []
    for c in report.selection.cells:
        if c.backbone != backbone:
            continue
        score = "" if c.chosen is None else f"{pct(c.chosen.stat()[0])} ± {pct(c.chosen.stat()[1])}"
        seeds = "" if c.chosen is None else str(c.chosen.n)
        rows.append([c.setup, c.task, chosen_text(c.shown(report.show)), seeds, str(len(c.configs)), score])
    return rows


def terminal(report) -> str:
    """The plain table printed by the CLI: one line per chosen cell, then the benchmark scores."""
    lines = []
    sel = report.selection
    for backbone in sel.backbones:
        for setup in sel.setups:
            cells: list[Cell] = [c for c in sel.cells if (c.backbone, c.setup) == (backbone, setup)]
            if not cells:
                continue
            lines.append(f"== {backbone} {setup}")
            for c in cells:
                if c.chosen is None:
                    lines.append(f"  {c.task:<8} no finished run  [{'; '.join(c.problems)}]")
                    continue
                mean, std = c.chosen.stat()
                note = "" if c.complete else f"  [{'; '.join(c.problems)}]"
                lines.append(
                    f"  {c.task:<8} {pct(mean, 2):>6} ± {pct(std, 2):>5}  (n={c.chosen.n})  "
                    f"{chosen_text(c.shown(report.show))}{note}"
                )
            for m in sel.macros:
                if (m.backbone, m.setup) == (backbone, setup):
                    of = len(m.tasks) + len(m.missing)
                    lines.append(f"  {m.benchmark} {pct(m.mean, 2)} ± {pct(m.std, 2)} over {len(m.tasks)}/{of} tasks")
    return "\n".join(lines)
