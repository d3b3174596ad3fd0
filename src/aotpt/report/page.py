"""The markdown page: everything generated from the runs, plus a discussion block kept across rebuilds.

The page is rebuilt from the runs alone (no dates, no absolute paths, fixed
order), so a committed page can be checked by rebuilding it. Only the text
between the two discussion markers is written by hand; a rebuild copies it
from the existing page.
"""

from __future__ import annotations

import os
import shlex
from collections import Counter
from pathlib import Path

from aotpt.report.tables import (
    chosen_rows,
    chosen_text,
    macro_markdown,
    main_markdown,
    md_table,
    pct,
    value,
)
from aotpt.tasks import TASKS

BEGIN, END = "<!-- discussion:begin -->", "<!-- discussion:end -->"
PLACEHOLDER = (
    "\n_Written by hand: what the numbers say. `python -m aotpt.report` keeps this block "
    "(between the two markers) when it rebuilds the page._\n"
)
REPO = Path(__file__).resolve().parents[3]


def shown_path(path: str | Path) -> str:
    """A path as the page shows it: relative to the repository (or the working folder) when inside it."""
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    for base in (REPO, Path.cwd()):
        try:
            return path.resolve().relative_to(base.resolve()).as_posix()
        except ValueError:
            continue
    return path.as_posix()


def summary_markers(page: Path) -> tuple[str, str]:
    """The lines between which `summary=` writes a page's summary into another file (a README)."""
    name = shown_path(page)
    return f"<!-- summary of {name}: begin -->", f"<!-- summary of {name}: end -->"


def summary(report, page: Path, target: Path, existing: str) -> str:
    """`existing` (a README's text) with the block between `summary_markers(page)` replaced: how much of the sweep
    the page is built from, the averaged scores and the macro figure, linked to the page."""
    begin, end = summary_markers(page)
    link = Path(os.path.relpath(page, target.parent)).as_posix()
    parts = [f"{_built_from(report)}; every number, figure and run: [{shown_path(page)}]({link}).", ""]
    parts += [macro_markdown(report).rstrip(), ""]
    macro = report.out_dir / "figures" / "macro.png"
    if "macro.png" in report.figures:
        parts += [f"![macro scores]({Path(os.path.relpath(macro, target.parent)).as_posix()})", ""]
    head, rest = existing.split(begin, 1)
    return head + begin + "\n" + "\n".join(parts) + end + rest.split(end, 1)[1]


def discussion(existing: str | None) -> str:
    """The hand-written block of an existing page (markers included), or a placeholder."""
    if existing and BEGIN in existing and END in existing.split(BEGIN, 1)[1]:
        return BEGIN + existing.split(BEGIN, 1)[1].split(END, 1)[0] + END
    return BEGIN + PLACEHOLDER + END


def _built_from(report) -> str:
    if report.coverage:
        c = report.coverage
        return f"Built from {c.done} of the {c.jobs} runs of the sweep `{c.sweep}`"
    used = sum(r.state == "included" for r in report.runs)
    return f"Built from {used} of the {len(report.runs)} runs found under `{shown_path(report.runs_dir)}`"


def _provenance(report) -> str:
    states = Counter(r.state for r in report.runs)
    text = _built_from(report)
    text += f" ({len(report.runs)} results found under `{shown_path(report.runs_dir)}`)." if report.coverage else "."
    others = [f"{n} {state}" for state, n in sorted(states.items()) if state != "included"]
    if others:
        text += f" Not used: {', '.join(others)} (listed under [Runs not used](#runs-not-used))."
    return text


def _protocol(report) -> str:
    labels = {b.key: b.label for b in report.selection.benchmarks}
    averaged = [labels[k] for k in ("glue", "superglue") if k in labels]
    text = (
        "Each cell is the configuration (grid point) with the best mean dev score over its seeds, every run at its "
        "best dev epoch; shown as mean ± sample std over seeds, in %. Runs that differ in any setting but the seed "
        "are never pooled. "
    )
    if averaged:
        text += f"{' and '.join(averaged)} average the task scores of their tasks (AX, AX-b, AX-g excluded). "
    if "macro" in labels:
        tasks = report.selection.benchmark("macro").tasks
        text += f"Macro averages the {len(tasks)} tasks the sweep trains ({', '.join(tasks)}). "
    return text + (
        "The std of an average is sqrt(Σσ²)/n. **Bold**: best setup per task; † incomplete grid (reasons under "
        "the table); (k/n): an average over k of its n tasks. params %: trainable parameters as % of the backbone "
        "(median over tasks: heads differ by label count)."
    )


def _figures(report, page_dir: Path) -> str:
    lines = []
    for name in report.figures:
        if name.endswith(".png"):
            link = Path(os.path.relpath(report.out_dir / "figures" / name, page_dir)).as_posix()
            lines.append(f"![{name[:-4]}]({link})")
    return "\n\n".join(lines)


def _chosen(report) -> str:
    parts = []
    for backbone in report.selection.backbones:
        header = ["setup", "task", "chosen", "seeds", "configs", "dev score"]
        parts += [f"### {backbone}\n", md_table(header, chosen_rows(report, backbone), right=3), ""]
    return "\n".join(parts)


def _params(report) -> str:
    rows = []
    for (backbone, setup), p in report.params.items():
        mean_min = "" if p["wall_mean_s"] is None else f"{p['wall_mean_s'] / 60:.1f}"
        if p["wall_mean_s"] is not None and p["wall_tasks"] < p["tasks"]:
            mean_min += f" ({p['wall_tasks']}/{p['tasks']})"
        rows.append([backbone, setup, f"{p['trainable']:,}", f"{p['pct']:.2f}", str(p["runs"]), mean_min])
        rows[-1].append(f"{p['wall_total_h']:.2f}")
    header = ["backbone", "setup", "trainable params", "% of backbone", "runs", "min per run", "hours in all"]
    machines = list(report.machines.items())
    (reference, n), others = machines[0], machines[1:]
    note = (
        f"min per run: the mean over tasks of the mean wall time of the setup's runs on {reference}, the machine "
        f"that ran {n} of the {sum(report.machines.values())} runs; (k/n): over the k of its n tasks run there. "
    )
    if others:
        where = "; ".join(f"{name}: {count}" for name, count in others)
        note += (
            "A wall time compares only with one from the same machine, so the runs on others "
            f"({where}) count only in hours in all. "
        )
    note += "hours in all: every run of the setup."
    return md_table(header, rows, right=2) + "\n\n" + note


def _pilot(report) -> str:
    tasks = sorted({t for row in report.pilot for t in row.scores}, key=list(TASKS).index)
    rows = []
    for row in report.pilot:
        cells = [f"{pct(row.scores[t])}" if t in row.scores else "" for t in tasks]
        mark = "**picked**" if row.picked else ""
        rows.append([row.backbone, row.setup, chosen_text(row.values), *cells, pct(row.mean), mark])
    header = ["backbone", "setup", "config", *tasks, "mean", ""]
    text = (
        "A pilot grid, reported apart and never part of the selection above: per setup the configuration with the "
        "best mean over the pilot's tasks is picked.\n\n"
    )
    return text + md_table(header, rows, right=3)


def _not_used(report) -> str:
    rows = [
        [r.state, f"`{r.path}`", r.setup, r.task, value(r.seed), r.reason.replace("|", "\\|")]
        for r in report.runs
        if r.state != "included"
    ]
    return md_table(["state", "run", "setup", "task", "seed", "why"], rows, right=6) if rows else "None."


def _all_runs(report) -> str:
    sel = report.selection
    rank = {(c.backbone, c.setup, c.task): i for i, c in enumerate(sel.cells)}
    used = [r for r in report.runs if r.state == "included"]
    rows = []
    for r in sorted(used, key=lambda r: (rank[(r.backbone, r.setup, r.task)], r.settings_key, str(r.seed), r.path)):
        cell = sel.cell(r.backbone, r.setup, r.task)
        keys = [k for k in report.show if k in r.settings] + [k for k in cell.varying if k not in report.show]
        wall = "" if r.wall_time_s is None else f"{r.wall_time_s / 60:.1f}"
        best = f"{r.best_epoch + 1}/{r.epochs}" if r.best_epoch is not None else ""
        config = chosen_text({k: r.settings.get(k) for k in keys})
        rows.append(
            [
                r.backbone,
                r.setup,
                r.task,
                config,
                value(r.seed),
                pct(r.score),
                best,
                wall,
                r.machine,
            ]
        )
    header = ["backbone", "setup", "task", "config", "seed", "dev score", "best epoch", "minutes", "machine"]
    return md_table(header, rows, right=4)


def render(report, page: Path, existing: str | None) -> str:
    """The whole page; `existing` is the current page, whose discussion block is kept."""
    sections = [
        "<!-- generated by `python -m aotpt.report` from the runs: edit only the discussion block -->",
        f"# {report.title}",
        _provenance(report),
        _protocol(report),
        "## Results",
        main_markdown(report).rstrip(),
    ]
    figures = _figures(report, page.parent)
    if figures:
        sections += ["## Figures", figures]
    sections += ["## Discussion", discussion(existing), "## Chosen configurations", _chosen(report).rstrip()]
    sections += ["## Trainable parameters and compute", _params(report)]
    if report.pilot:
        sections += ["## Pilot", _pilot(report)]
    sections += ["## Runs not used", _not_used(report)]
    sections += ["## Commands", "```bash\n" + "\n".join(report.commands) + "\n```"]
    used = sum(r.state == "included" for r in report.runs)
    sections += [
        "## All runs",
        f"<details><summary>The {used} runs of the selection (minutes: wall time per run; machine: the CPU and "
        "torch's CPU threads, or the GPU, it ran on, as recorded in results.json)</summary>\n\n"
        + _all_runs(report)
        + "\n\n</details>",
    ]
    return "\n\n".join(sections) + "\n"


def report_command(options: dict, defaults: dict) -> str:
    """`python -m aotpt.report k=v ...` for the options that differ from conf/report.yaml, paths as shown."""
    parts = ["python -m aotpt.report"]
    for key, given in options.items():
        if key in ("commands", "check") or given == defaults.get(key) or given in (None, [], ""):
            continue
        if key.endswith("_dir") or key in ("page", "summary"):
            given = shown_path(given)
        text = f"[{','.join(map(str, given))}]" if isinstance(given, list) else str(given)
        parts.append(shlex.quote(f"{key}={text}"))
    return " ".join(parts)
