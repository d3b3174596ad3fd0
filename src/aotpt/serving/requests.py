"""One prediction request, as `aotpt.predict` reads a JSONL line and the server reads a POST body.

    {"task": <served task>, <the task's hub field names>: "...", "id": <optional>}

The task's own `TaskSpec.build` turns the fields into model text (text_a,
text_b), exactly as in training. A bad request is a `RequestError` naming the
field and what it accepts, so the server can answer it alone (a 4xx) and
`predict` can name path:line.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from aotpt.errors import DataError
from aotpt.tasks import get_task


class RequestError(DataError):
    """A request that cannot be predicted: `field` is wrong, `accepted` is what it takes."""

    def __init__(self, message: str, field: str | None = None, accepted: Any = None, status: int = 422) -> None:
        super().__init__(message)
        self.field, self.accepted, self.status = field, accepted, status


class _Fields(dict):
    """A row that answers every field it is asked for and remembers which (to learn what `build` reads)."""

    def __init__(self) -> None:
        super().__init__(idx=0, label=None)
        self.asked: list[str] = []

    def __missing__(self, key: str) -> str:
        self.asked.append(key)
        return "x"


@functools.cache
def fields(kind: str) -> tuple[str, ...]:
    """The fields a request of task `kind` must give (those its `TaskSpec.build` reads), in the order read (as
    far as a row of placeholder strings gets it: WSC reads integer spans)."""
    row = _Fields()
    try:
        get_task(kind).build(row)
    except (TypeError, ValueError):
        pass
    return tuple(dict.fromkeys(row.asked))


def one_row(kind: str) -> bool:
    """Does one request of task `kind` make one model row? (COPA, MultiRC and ReCoRD make one per choice.)"""
    return get_task(kind).grouping in (None, "pair")


def request_texts(row: Any, kinds: Mapping[str, str]) -> tuple[str, str, str | None]:
    """(task, text_a, text_b) of a request; `kinds` maps each served task name to its TaskSpec name."""
    if not isinstance(row, dict) or row.get("task") not in kinds:
        task = row.get("task") if isinstance(row, dict) else None
        shown = ", ".join(list(kinds)[:20]) + (f", ... ({len(kinds)} tasks)" if len(kinds) > 20 else "")
        raise RequestError(f"task={task!r} is not loaded; accepted: {shown}", "task", list(kinds))
    task, kind = row["task"], kinds[row["task"]]
    if not one_row(kind):
        raise RequestError(f"task {task} ({kind}) makes several rows per request; the server and predict take one")
    try:
        example = get_task(kind).build({**row, "idx": 0, "label": None})
    except KeyError as err:
        raise RequestError(f"task {task} needs field {err.args[0]!r}", err.args[0], list(fields(kind))) from None
    except (TypeError, ValueError) as err:
        raise RequestError(f"task {task}: {err}") from None
    texts = (example["text_a"], example["text_b"])
    if not all(isinstance(t, str) for t in texts if t is not None):
        bad = next((name for name in fields(kind) if not isinstance(row.get(name), str)), None)
        raise RequestError(f"the text fields of task {task} must be strings ({bad!r} is not)", bad, "a string")
    return task, example["text_a"], example["text_b"]
