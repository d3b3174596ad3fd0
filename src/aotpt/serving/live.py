"""An inference worker's tasks follow the registry while it serves (one per LitServe worker process).

    watcher thread (every poll_s)          serving loop (LitServe's, one batch at a time)
    registry changed? -> `load`: prepare   `predict`: the batch asks for a newer generation? -> `load` now
    the added tasks (read files, build      `apply`: install what was prepared, retire what was removed
    their rows' source) off the loop         -> resolve each request's slot -> one forward -> outputs

Slow work (reading an artifact, building its source) happens in the watcher
thread while batches run; the serving loop only swaps prepared tasks in
between forwards, so requests in flight never see a half-added task. A
removed task keeps its slot for `drain_s` seconds (the server's request
timeout): a request accepted before the removal (its generation stamp is
older) is still answered by it; later ones are refused by the API already.
Each request resolves to the version of its task that was served when it was
accepted: a task removed and added again under the same name does not mix.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from aotpt.methods.aot.artifact import Artifact
from aotpt.serving.predictor import MultiTaskPredictor, Prepared
from aotpt.serving.registry import Registry, Snapshot, TaskEntry

log = logging.getLogger("aotpt")
FEATURES = ("input_ids", "token_type_ids", "attention_mask")  # what the API's tokenizer sends per request


def slot_name(entry: TaskEntry) -> str:
    """The predictor's name of one version of a task (a name may come back with another artifact)."""
    return f"{entry.name}#{entry.generation}"


@dataclass
class Retiring:
    entry: TaskEntry
    removed: int  # the registry generation without it (at the latest)
    until: float  # monotonic time after which no request accepted before `removed` can still be waiting


class LiveTasks:
    """The predictor of one worker and the registry it follows."""

    def __init__(
        self,
        predictor: MultiTaskPredictor,
        tokenizer: PreTrainedTokenizerBase,
        registry: Registry,
        snapshot: Snapshot,
        worker: str,
        drain_s: float = 30.0,
        poll_s: float = 0.1,
        report_s: float = 1.0,
    ) -> None:
        self.predictor, self.tokenizer, self.registry, self.worker = predictor, tokenizer, registry, worker
        self.drain_s, self.poll_s, self.report_s = drain_s, poll_s, report_s
        self.generation = snapshot.generation  # of the tasks loaded (installed or prepared)
        self.target = dict(snapshot.tasks)  # name -> entry, as of `generation`
        self.live = dict(snapshot.tasks)  # name -> entry, installed
        self.slots = {slot_name(e): predictor.task_id(slot_name(e)) for e in snapshot.tasks.values()}
        self.retiring: list[Retiring] = []
        self.failed: dict[str, str] = {}
        self.batches = {"count": 0, "requests": 0, "largest": 0, "mixed": 0}
        self._events: list[tuple[TaskEntry, Prepared | int]] = []  # in order: (added, prepared), (removed, generation)
        self._lock = threading.Lock()  # one loader at a time; guards the events
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="aotpt-tasks", daemon=True)

    def start(self) -> LiveTasks:
        self.report()
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    # -- following the registry -------------------------------------------------------------------------------

    def _watch(self) -> None:
        reported, last_report = self.generation, time.monotonic()
        while not self._stop.wait(self.poll_s):
            try:
                self.load()
                if self.generation != reported or time.monotonic() - last_report > self.report_s:
                    reported, last_report = self.generation, time.monotonic()
                    self.report()  # at once when the tasks changed: POST /tasks waits for it
            except Exception:  # keep watching: a bad artifact must not stop the worker from following changes
                log.exception("worker %s: reading the registry failed", self.worker)

    def load(self) -> bool:
        """Prepare what the registry changed since `generation` (any thread); True if anything changed."""
        with self._lock:
            now = self.registry.snapshot()
            if now.generation <= self.generation:
                return False
            for name, entry in now.tasks.items():
                old = self.target.get(name)
                if old is not None and old.generation == entry.generation:
                    continue
                if old is not None:
                    self._events.append((old, now.generation))
                try:
                    prepared = self.predictor.prepare(Artifact.load(entry.path), slot_name(entry))
                except Exception as err:  # the API checked it; a file changed or vanished since
                    log.exception("worker %s: loading task %s failed", self.worker, name)
                    self.failed[name] = str(err)
                    continue
                self.failed.pop(name, None)
                self._events.append((entry, prepared))
            for name, old in self.target.items():
                if name not in now.tasks:
                    self._events.append((old, now.generation))
                    self.failed.pop(name, None)
            self.target, self.generation = dict(now.tasks), now.generation
            return True

    def apply(self) -> None:
        """Install what was prepared and retire what was removed (the serving loop, between forwards)."""
        with self._lock:
            events, self._events = self._events, []
        for entry, change in events:
            if isinstance(change, Prepared):
                self.slots[slot_name(entry)] = self.predictor.install(change)
                self.live[entry.name] = entry
            elif self.live.get(entry.name) == entry:  # removed at generation `change`
                del self.live[entry.name]
                self.retiring.append(Retiring(entry, change, time.monotonic() + self.drain_s))
        now = time.monotonic()
        for gone in [r for r in self.retiring if r.until <= now]:
            self.predictor.free(self.slots.pop(slot_name(gone.entry)))
            self.retiring.remove(gone)

    def resolve(self, name: str, generation: int) -> int | dict:
        """The slot of task `name` as served at `generation` (the request's stamp), or the error to answer."""
        entry = self.live.get(name)
        if entry is not None and entry.generation <= generation:
            return self.slots[slot_name(entry)]
        for old in self.retiring:
            if old.entry.name == name and old.entry.generation <= generation < old.removed:
                return self.slots[slot_name(old.entry)]
        if name in self.failed:
            return {"status": 503, "error": f"task {name} failed to load in worker {self.worker}: {self.failed[name]}"}
        return {"status": 410, "error": f"task {name} was removed", "field": "task"}

    def report(self) -> None:
        with self._lock:  # a consistent copy (the serving loop may be loading too)
            status = {"generation": self.generation, "tasks": list(self.target), "failed": dict(self.failed)}
        status.update(
            retiring=[r.entry.name for r in self.retiring],
            held_bytes=self.predictor.held_bytes(),
            cache=_cache_stats(self.predictor),
            batches=dict(self.batches),
            device=str(self.predictor.backbone.device),
        )
        self.registry.report(self.worker, status)

    # -- serving ----------------------------------------------------------------------------------------------

    def predict(self, payloads: list[dict]) -> list[dict]:
        """One forward for every request of the batch that resolves to a task; the others get their error."""
        if max(p["gen"] for p in payloads) > self.generation:
            self.load()  # accepted against a change the watcher has not loaded yet: load it now
        self.apply()
        resolved = [self.resolve(p["task"], p["gen"]) for p in payloads]
        outputs: list[dict] = list(resolved)
        ok = [i for i, r in enumerate(resolved) if isinstance(r, int)]
        if ok:
            task_ids = torch.tensor([resolved[i] for i in ok])
            features = [{k: payloads[i][k] for k in FEATURES if k in payloads[i]} for i in ok]
            batch = self.predictor.collate(self.tokenizer, features, task_ids)
            logits = self.predictor(task_ids=task_ids.to(self.predictor.backbone.device), **batch)
            for i, out in zip(ok, self.predictor.outputs(task_ids, logits), strict=True):
                request = payloads[i]
                outputs[i] = {"id": request.get("id"), "task": request["task"], "label": out["label"]}
                outputs[i].update(scores=out["scores"], truncated=request["truncated"])
                if request["truncated"]:
                    outputs[i].update(input_tokens=request["input_tokens"], max_length=request["max_length"])
            self.batches["mixed"] += len(set(task_ids.tolist())) > 1
        self.batches["count"] += 1
        self.batches["requests"] += len(payloads)
        self.batches["largest"] = max(self.batches["largest"], len(payloads))
        return outputs


def _cache_stats(predictor: MultiTaskPredictor) -> dict:
    cache = getattr(predictor.source, "cache", None)
    if cache is None:
        return {}
    return {"rows": len(cache), "bytes": cache.nbytes(), "hits": cache.hits, "misses": cache.misses}
