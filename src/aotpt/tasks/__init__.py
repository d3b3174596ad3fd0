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

__all__ = ["TASKS", "Example", "TaskSpec", "TextFields", "get_task"]


def _registry(*specs: TaskSpec) -> dict[str, TaskSpec]:
    """Build the registry, rejecting duplicate names and metrics that `compute_metrics` does not know."""
    tasks: dict[str, TaskSpec] = {}
    for spec in specs:
        if spec.name in tasks:
            raise ValueError(f"duplicate task name {spec.name!r} in the task registry")
        unknown = set(spec.metrics) - set(METRICS)
        if unknown:
            raise ValueError(f"task {spec.name!r}: unknown metrics {sorted(unknown)}; accepted: {', '.join(METRICS)}")
        tasks[spec.name] = spec
    return tasks


TASKS: dict[str, TaskSpec] = _registry(*GLUE_TASKS, *SUPERGLUE_TASKS)


def get_task(name: str) -> TaskSpec:
    """The spec of task `name`; a ConfigError listing the known tasks otherwise."""
    if name not in TASKS:
        raise choices("task", name, TASKS)
    return TASKS[name]
