"""Benchmark scores from run folders: `python -m aotpt.report runs_dir=logs/runs`.

Reads every `results.json` under runs_dir and groups runs by setup (model,
method, reparam) and task. A run counts with its best dev epoch (`best` in
results.json: the protocol keeps the best epoch); seeds of one setup and
task give mean ± std (sample std, 0 for one seed). A task's score is the mean
of its metrics (as computed by the run); the GLUE and SuperGLUE scores are
the mean over the benchmark's tasks of their mean scores. Diagnostics (AX,
AX-b, AX-g) are not part of either score, as on the leaderboards, and a
benchmark score over fewer tasks than the benchmark has is marked with the
count (e.g. "glue 3/9") rather than passed off as complete.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

import hydra
from omegaconf import DictConfig

from aotpt.atomic import write_json_atomic
from aotpt.cli import CONF_DIR, entry, one_line_errors
from aotpt.errors import ConfigError
from aotpt.methods import setup_name
from aotpt.tasks import TASKS, benchmark_tasks


def setup_of(config: dict) -> str:
    """`model method[/reparam]`, e.g. `minilm aot/kron` (names from the method registry)."""
    return f"{config.get('model', {}).get('name', '?')} {setup_name(config['method'])}"


def collect(runs_dir: Path, status: str | None = "completed") -> dict[str, dict[str, list[dict]]]:
    """setup -> task -> the best dev metrics of each run (with its seed)."""
    found: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(runs_dir.rglob("results.json")):
        result = json.loads(path.read_text())
        if status and result.get("status") != status:
            continue
        config = result.get("config", {})
        best = {k.removeprefix("val/"): v for k, v in result.get("best", {}).items() if k.startswith("val/")}
        task = config.get("task", {}).get("name")
        if task not in TASKS or "score" not in best:
            continue
        found[setup_of(config)][task].append({"seed": config.get("seed"), "run": str(path.parent), **best})
    return found


def _mean_std(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def summarise(found: dict[str, dict[str, list[dict]]]) -> dict:
    """Per setup: each task's metrics as mean/std/n over seeds, and the benchmark scores."""
    report = {}
    for setup, tasks in sorted(found.items()):
        task_rows = {}
        for task, runs in tasks.items():
            metrics = [m for m in TASKS[task].metrics if all(m in r for r in runs)] + ["score"]
            task_rows[task] = {m: _mean_std([r[m] for r in runs]) for m in metrics}
        benchmarks = {}
        for benchmark in ("glue", "superglue"):
            members = benchmark_tasks(benchmark)
            present = [t for t in members if t in task_rows]
            if present:
                benchmarks[benchmark] = {
                    "score": statistics.fmean(task_rows[t]["score"]["mean"] for t in present),
                    "tasks": len(present),
                    "of": len(members),
                    "missing": [t for t in members if t not in task_rows],
                }
        report[setup] = {"tasks": task_rows, "benchmarks": benchmarks}
    return report


def table(report: dict) -> str:
    """A readable table: one line per setup and task, then the benchmark scores (scores in %)."""
    lines = []
    for setup, entry_ in report.items():
        lines.append(f"== {setup}")
        for task, metrics in sorted(entry_["tasks"].items(), key=lambda kv: list(TASKS).index(kv[0])):
            cells = [
                f"{name} {100 * m['mean']:.2f}±{100 * m['std']:.2f}" for name, m in metrics.items() if name != "score"
            ]
            score = metrics["score"]
            lines.append(
                f"  {task:<8} score {100 * score['mean']:6.2f} ± {100 * score['std']:5.2f}  "
                f"(n={score['n']})  {'  '.join(cells)}"
            )
        for benchmark, b in entry_["benchmarks"].items():
            lines.append(f"  {benchmark} score {100 * b['score']:.2f} over {b['tasks']}/{b['of']} tasks")
    return "\n".join(lines)


def run(cfg: DictConfig) -> dict:
    runs_dir = Path(cfg.runs_dir)
    if not runs_dir.is_dir():
        raise ConfigError(f"runs_dir={runs_dir} is not a folder")
    report = summarise(collect(runs_dir, cfg.get("status")))
    if not report:
        raise ConfigError(f"runs_dir={runs_dir}: no results.json of a finished run with a dev score")
    write_json_atomic(Path(cfg.out) if cfg.get("out") else runs_dir / "report.json", report)
    return report


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="report")
@one_line_errors
def main(cfg: DictConfig) -> None:
    print(table(run(cfg)))


if __name__ == "__main__":
    entry(main)
