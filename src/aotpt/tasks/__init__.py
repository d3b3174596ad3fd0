"""The task registry: one `TASKS` dict, keyed by the `task=` config name.

Adding a task means one `TaskSpec` in `glue.py` or `superglue.py` (plus its
builder if the input is not two plain fields) and fixtures under
tests/fixtures/.
"""

from __future__ import annotations

from aotpt.errors import choices
from aotpt.tasks.glue import GLUE_TASKS
from aotpt.tasks.metrics import METRICS
from aotpt.tasks.spec import Example, TaskSpec, TextFields
from aotpt.tasks.superglue import SUPERGLUE_TASKS

__all__ = ["TASKS", "Example", "TaskSpec", "TextFields", "benchmark_tasks", "diagnostics_of", "get_task"]


def _registry(*specs: TaskSpec) -> dict[str, TaskSpec]:
    """Build the registry, rejecting duplicate names, unknown metrics and diagnostics of unknown tasks."""
    tasks: dict[str, TaskSpec] = {}
    for spec in specs:
        if spec.name in tasks:
            raise ValueError(f"duplicate task name {spec.name!r} in the task registry")
        unknown = set(spec.metrics) - set(METRICS)
        if unknown:
            raise ValueError(f"task {spec.name!r}: unknown metrics {sorted(unknown)}; accepted: {', '.join(METRICS)}")
        tasks[spec.name] = spec
    for spec in tasks.values():
        model = tasks.get(spec.model_task) if spec.model_task else spec
        if model is None or model.label_names != spec.label_names:
            raise ValueError(f"task {spec.name!r}: model_task {spec.model_task!r} is not a task with its labels")
    return tasks


TASKS: dict[str, TaskSpec] = _registry(*GLUE_TASKS, *SUPERGLUE_TASKS)


def get_task(name: str) -> TaskSpec:
    """The spec of task `name`; a ConfigError listing the known tasks otherwise."""
    if name not in TASKS:
        raise choices("task", name, TASKS)
    return TASKS[name]


def benchmark_tasks(benchmark: str) -> list[str]:
    """The tasks whose scores average into the benchmark score (diagnostics are reported beside it)."""
    return [name for name, spec in TASKS.items() if spec.benchmark == benchmark and spec.in_score]


def diagnostics_of(task: str) -> list[str]:
    """The diagnostic tasks that a model trained on `task` predicts (mnli: ax; sg_rte: axb, axg)."""
    return [name for name, spec in TASKS.items() if spec.model_task == task]
