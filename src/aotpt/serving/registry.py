"""The served tasks, shared by every process of a server: one JSON file in a state folder.

LitServe runs API-server processes (forked: they validate and tokenise
requests, and take task changes) and inference-worker processes (spawned:
they hold the model), and none of them shares memory with another. So the set
of tasks lives on disk, where all of them read it:

    <state_dir>/tasks.json          {"generation": g, "mode", "backbone": {...}, "tasks": {name: entry}}
    <state_dir>/workers/<id>.json   what each worker has loaded (its generation, tasks, bytes held, batches)

Every change (`add`, `remove`, under an exclusive lock) rewrites tasks.json
atomically with the next generation; readers re-read it only when the file
changed (`snapshot`: one stat per call). The API stamps each request with the
generation it was checked against, so a worker that sees a newer stamp than
its own loads the change before predicting it, and a task removed after a
request was accepted still answers that request (the worker keeps it until no
such request can be waiting). The folder also lets a restarted server
come back with the tasks it had (`state_dir=` the same folder).
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from aotpt.atomic import write_json_atomic
from aotpt.errors import AotptError
from aotpt.methods.aot.artifact import Artifact
from aotpt.serving.requests import fields, one_row

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # a task name that is one URL path segment
BACKBONE_KEYS = ("backbone", "model_type", "num_layers", "hidden_size", "vocab_size", "tokenizer_fingerprint", "dtype")


class TaskConflict(AotptError):
    """A task name already served (a 409, not a 422)."""


class UnknownTask(AotptError):
    """A task name not served (a 404)."""


@dataclass(frozen=True)
class TaskEntry:
    """One served task: its artifact and what requests for it need to know (no artifact is read to check them)."""

    name: str
    path: str
    generation: int  # the registry generation that added it
    kind: str  # the TaskSpec it was trained on
    label_names: list[str]
    max_length: int
    truncation: str
    setup: str  # e.g. aot/kron
    dtype: str
    table: bool  # the compiled table is stored (else weights only)
    fields: list[str]  # what a request gives


@dataclass(frozen=True)
class Snapshot:
    generation: int
    mode: str
    backbone: dict
    tasks: dict[str, TaskEntry]

    @functools.cached_property
    def kinds(self) -> dict[str, str]:
        """Served name -> TaskSpec name (every request reads it: built once per snapshot)."""
        return {name: entry.kind for name, entry in self.tasks.items()}


def backbone_of(artifact: Artifact) -> dict:
    """What every task of one server shares: the backbone it was compiled for and the table dtype."""
    record = artifact.record
    return {
        "backbone": record.backbone,
        "model_type": record.model_type,
        "num_layers": record.num_layers,
        "hidden_size": record.hidden_size,
        "vocab_size": artifact.vocab_size,
        "tokenizer_fingerprint": record.tokenizer_fingerprint,
        "dtype": artifact.meta["dtype"],
        "random_init": record.random_init,
        "init_seed": record.init_seed,
    }


def entry_for(name: str, artifact: Artifact, generation: int, mode: str, backbone: dict | None) -> TaskEntry:
    """Check `artifact` for serving as task `name` in `mode` beside `backbone` (None: it is the first) in one line
    per problem, and describe it."""
    if not NAME.match(name):
        raise AotptError(f"task name {name!r}: use letters, digits, '_', '.', '-' (up to 128, one URL segment)")
    record = artifact.record
    if backbone is not None:
        mine = backbone_of(artifact)
        for key in BACKBONE_KEYS:
            if mine[key] != backbone[key]:
                raise AotptError(f"{artifact.path}: compiled for {key}={mine[key]!r}, the server has {backbone[key]!r}")
    if mode == "mmap" and not artifact.has_table:
        raise AotptError(
            f"{artifact.path}: a weights-only artifact (table=false) has no table to map; use another mode"
        )
    if mode == "onthefly" and not artifact.has_weights:
        raise AotptError(
            f"{artifact.path}: holds no reparam weights (a dense table); serve it with mode=device or host"
        )
    if not one_row(record.task):
        raise AotptError(f"{artifact.path}: task {record.task} makes several rows per request; the server takes one")
    return TaskEntry(
        name=name,
        path=str(Path(artifact.path).resolve()),
        generation=generation,
        kind=record.task,
        label_names=list(record.label_names),
        max_length=record.max_length,
        truncation=record.truncation,
        setup=record.setup,
        dtype=artifact.meta["dtype"],
        table=artifact.has_table,
        fields=list(fields(record.task)),
    )


class Registry:
    """The state folder's tasks.json: read cheaply (`snapshot`), changed under a lock (`add`, `remove`)."""

    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / "tasks.json"
        self._seen: tuple | None = None
        self._snapshot: Snapshot | None = None

    @classmethod
    def create(cls, state_dir: str | Path, artifacts: Mapping[str, str | Path], mode: str) -> Registry:
        """A new state folder serving `artifacts` (name -> artifact path) in `mode`; refuses an existing one."""
        registry = cls(state_dir)
        if registry.path.exists():
            raise AotptError(f"state_dir={state_dir} already holds a server's tasks.json; resume it or pick another")
        if not artifacts:
            raise AotptError("artifacts=[] is empty; pass one artifact per task (python -m aotpt.export)")
        registry.dir.mkdir(parents=True, exist_ok=True)
        backbone, tasks = None, {}
        for name, path in artifacts.items():
            artifact = Artifact.load(path)
            if name in tasks:
                raise TaskConflict(f"two artifacts for task {name!r}: {tasks[name].path} and {path}")
            tasks[name] = entry_for(name, artifact, 1, mode, backbone)
            backbone = backbone or backbone_of(artifact)
        registry._write(Snapshot(1, mode, backbone, tasks))
        return registry

    def snapshot(self) -> Snapshot:
        """The current tasks; re-read only when the file changed (a new file replaces it on every change)."""
        stat = self.path.stat()
        seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if seen != self._seen:
            data = json.loads(self.path.read_text())
            tasks = {name: TaskEntry(**entry) for name, entry in data["tasks"].items()}
            self._snapshot = Snapshot(data["generation"], data["mode"], data["backbone"], tasks)
            self._seen = seen
        return self._snapshot

    @contextmanager
    def _locked(self) -> Iterator[Snapshot]:
        with (self.dir / "tasks.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield self.snapshot()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self, snapshot: Snapshot) -> None:
        write_json_atomic(
            self.path,
            {
                "generation": snapshot.generation,
                "mode": snapshot.mode,
                "backbone": snapshot.backbone,
                "tasks": {name: asdict(entry) for name, entry in snapshot.tasks.items()},
            },
        )

    def add(self, name: str, path: str | Path) -> TaskEntry:
        """Serve the artifact at `path` as task `name` from the next generation on."""
        artifact = Artifact.load(path)
        with self._locked() as now:
            if name in now.tasks:
                raise TaskConflict(f"task {name!r} is already served (from {now.tasks[name].path}); remove it first")
            entry = entry_for(name, artifact, now.generation + 1, now.mode, now.backbone)
            self._write(Snapshot(now.generation + 1, now.mode, now.backbone, {**now.tasks, name: entry}))
        return entry

    def remove(self, name: str) -> int:
        """Stop serving task `name` from the next generation on; returns that generation."""
        with self._locked() as now:
            if name not in now.tasks:
                raise UnknownTask(f"task {name!r} is not served; served: {', '.join(now.tasks)}")
            tasks = {k: v for k, v in now.tasks.items() if k != name}
            self._write(Snapshot(now.generation + 1, now.mode, now.backbone, tasks))
        return now.generation + 1

    # -- what the workers report ------------------------------------------------------------------------------

    def clear_reports(self) -> None:
        """Forget the reports of a previous run's workers (a server started again on this folder)."""
        for path in (self.dir / "workers").glob("*.json"):
            path.unlink()

    def report(self, worker: str, status: dict) -> None:
        write_json_atomic(self.dir / "workers" / f"{worker}.json", {**status, "pid": os.getpid()})

    def workers(self) -> dict[str, dict]:
        """Each worker's last report, by worker id."""
        out = {}
        for path in sorted((self.dir / "workers").glob("*.json")):
            try:
                out[path.stem] = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):  # replaced while read: the next call sees the new one
                continue
        return out
