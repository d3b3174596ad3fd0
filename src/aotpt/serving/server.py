"""The AoT server on LitServe: one frozen backbone behind HTTP, requests of any tasks batched into one forward.

    client --POST /predict--> API process: `RequestGate` checks the request against the registry and tokenises
        it as its task was trained (a bad request is answered here, a 4xx, and never joins a batch)
        --LitServe queue, dynamic batching (max_batch_size, batch_timeout)--> a worker: `AotAPI.predict`:
        one forward for the batch's requests, whatever their tasks (`LiveTasks`) --> {id, task, label, scores}

LitServe (0.2.19) builds the batching loop, the worker processes per device
and the HTTP server; what it leaves to us, and how:

- An exception raised anywhere in a batched worker loop fails every request
  of the batch. So requests are checked before they are queued, by an ASGI
  middleware on /predict in the API process, and what can still go wrong for
  one request in a worker (its task removed long ago) is returned as that
  request's own `JSONResponse` from `encode_response`, not raised.
- API processes are forked, workers spawned: task changes travel through the
  registry's file (`registry.py`); `POST /tasks/{name}` returns once every
  worker reports the task loaded.
- Routes of our own (`/tasks`) sit on LitServe's FastAPI app (`server.app`),
  behind LitServe's own authentication (`LIT_SERVER_API_KEY`), as its docs show.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import asdict, dataclass

import litserve as ls
from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from transformers import PreTrainedTokenizerBase

from aotpt.backbones import tokenizer_fingerprint
from aotpt.errors import AotptError
from aotpt.methods.aot.artifact import Artifact
from aotpt.serving.live import LiveTasks, slot_name
from aotpt.serving.predictor import MultiTaskPredictor, load_for
from aotpt.serving.registry import Registry, TaskConflict, UnknownTask
from aotpt.serving.requests import RequestError, request_texts


@dataclass(frozen=True)
class ServeSettings:
    """What a worker needs to build its predictor (pickled into each spawned worker process)."""

    state_dir: str
    mode: str = "onthefly"
    dtype: str = "fp32"  # the backbone's and heads'
    cache_bytes: int | None = None  # hot-row cache budget (`sources.empty_source`)
    threads: int | None = None  # torch threads per worker (None: torch's default)
    pretrained: str | None = None  # another copy of the backbone the artifacts name
    drain_s: float = 60.0  # a removed task is kept this long for requests accepted before its removal
    poll_s: float = 0.1  # how often a worker looks for task changes (one stat of tasks.json)
    report_s: float = 1.0  # how often a worker reports its state (GET /tasks)


def _error(status: int, message: str, field: str | None = None, accepted=None) -> JSONResponse:
    body = {"error": message} if field is None else {"error": message, "field": field, "accepted": accepted}
    return JSONResponse(body, status_code=status)


class RequestGate:
    """ASGI middleware on POST /predict (API process): check the request, tokenise it as its task was trained,
    and pass LitServe the worker's payload instead, or answer a 4xx here.

    The payload carries the registry generation it was checked against (`gen`): a worker behind on task
    changes loads them before predicting it."""

    def __init__(self, app, registry: Registry, tokenizer: PreTrainedTokenizerBase, path: str = "/predict") -> None:
        self.app, self.registry, self.tokenizer, self.path = app, registry, tokenizer, path

    def admit(self, row) -> dict:
        """The worker's payload for one request (a JSON value); a `RequestError` names what is wrong."""
        if not isinstance(row, dict):
            raise RequestError(f"the body must be a JSON object, got {type(row).__name__}", status=400)
        now = self.registry.snapshot()
        task, text_a, text_b = request_texts(row, now.kinds)
        entry = now.tasks[task]
        features = dict(self.tokenizer(text_a, text_b, truncation=entry.truncation, max_length=entry.max_length))
        tokens = len(features["input_ids"])
        if tokens >= entry.max_length:  # maybe cut: count the whole input (only for inputs that long)
            tokens = len(self.tokenizer(text_a, text_b)["input_ids"])
        features.update(truncated=tokens > entry.max_length, input_tokens=tokens, max_length=entry.max_length)
        return {"task": task, "gen": now.generation, "id": row.get("id"), **features}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            payload = json.dumps(self.admit(json.loads(body))).encode()
        except json.JSONDecodeError as err:
            return await _error(400, f"the body is not valid JSON ({err.msg})")(scope, receive, send)
        except RequestError as err:
            return await _error(err.status, str(err), err.field, err.accepted)(scope, receive, send)
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        scope = {**scope, "headers": [*headers, (b"content-length", str(len(payload)).encode())]}
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()  # e.g. the client disconnecting
            sent = True
            return {"type": "http.request", "body": payload, "more_body": False}

        await self.app(scope, replay, send)


class AotAPI(ls.LitAPI):
    """The worker side: a `MultiTaskPredictor` that follows the registry (`LiveTasks`), one forward per batch."""

    def __init__(self, settings: ServeSettings, **litapi) -> None:
        super().__init__(**litapi)
        self.settings = settings
        self.live: LiveTasks | None = None

    def setup(self, device: str) -> None:
        s = self.settings
        if s.threads:
            import torch

            torch.set_num_threads(s.threads)
        registry = Registry(s.state_dir)
        now = registry.snapshot()
        artifacts = [Artifact.load(entry.path) for entry in now.tasks.values()]
        tokenizer, backbone, name = load_for(artifacts[0], s.pretrained, device, s.dtype)
        predictor = MultiTaskPredictor(
            backbone,
            artifacts,
            tokenizer_fingerprint(tokenizer),
            s.mode,
            s.cache_bytes,
            name,
            [slot_name(entry) for entry in now.tasks.values()],
        )
        worker = os.environ.get("LITSERVE_WORKER_ID", str(os.getpid()))
        live = LiveTasks(predictor, tokenizer, registry, now, worker, s.drain_s, s.poll_s, s.report_s)
        self.live = live.start()

    def teardown(self) -> None:
        if self.live is not None:
            self.live.close()

    def decode_request(self, request: dict) -> dict:
        return request  # checked and tokenised by the RequestGate already

    def batch(self, inputs: list[dict]) -> list[dict]:
        return inputs

    def predict(self, x):
        single = isinstance(x, dict)  # max_batch_size=1: LitServe passes one request
        outputs = self.live.predict([x] if single else x)
        return outputs[0] if single else outputs

    def unbatch(self, output: list[dict]) -> list[dict]:
        return output

    def encode_response(self, output: dict):
        if "status" in output:  # this request alone failed (e.g. its task removed long ago): its own error
            return _error(output["status"], output["error"], output.get("field"), output.get("accepted"))
        return output


def task_routes(app, registry: Registry, auth, wait_s: float = 60.0) -> None:
    """GET /tasks, POST /tasks/{name} {"path": artifact}, DELETE /tasks/{name} on LitServe's FastAPI app."""

    async def settled(generation: int) -> dict:
        """Wait until every worker has loaded `generation` (or `wait_s` passed); their reports."""
        deadline = time.monotonic() + wait_s
        while True:
            workers = await run_in_threadpool(registry.workers)
            if all(w["generation"] >= generation for w in workers.values()) or time.monotonic() > deadline:
                return workers
            await asyncio.sleep(0.05)

    async def list_tasks() -> dict:
        now = await run_in_threadpool(registry.snapshot)
        tasks = [asdict(entry) for entry in now.tasks.values()]
        workers = await run_in_threadpool(registry.workers)
        return {"generation": now.generation, "mode": now.mode, "backbone": now.backbone, "tasks": tasks} | {
            "workers": workers
        }

    async def add_task(name: str, request: Request):
        try:
            body = await request.json()
        except json.JSONDecodeError as err:
            return _error(400, f"the body is not valid JSON ({err.msg})")
        if not isinstance(body, dict) or not isinstance(body.get("path"), str):
            return _error(422, 'give the artifact as {"path": "<file>.safetensors"}', "path", "an artifact path")
        try:
            entry = await run_in_threadpool(registry.add, name, body["path"])
        except TaskConflict as err:
            return _error(409, str(err))
        except AotptError as err:
            return _error(422, str(err))
        workers = await settled(entry.generation)
        failed = {w: r["failed"][name] for w, r in workers.items() if name in r.get("failed", {})}
        if failed:
            await run_in_threadpool(registry.remove, name)
            return _error(500, f"task {name} failed to load: {failed}")
        synced = all(w["generation"] >= entry.generation for w in workers.values())
        return JSONResponse({"task": asdict(entry), "workers": workers}, status_code=200 if synced else 202)

    async def remove_task(name: str):
        try:
            generation = await run_in_threadpool(registry.remove, name)
        except UnknownTask as err:
            return _error(404, str(err))
        workers = await settled(generation)
        return {"removed": name, "generation": generation, "workers": workers}

    dependencies = [Depends(auth)]
    app.add_api_route("/tasks", list_tasks, methods=["GET"], dependencies=dependencies)
    app.add_api_route("/tasks/{name}", add_task, methods=["POST"], dependencies=dependencies)
    app.add_api_route("/tasks/{name}", remove_task, methods=["DELETE"], dependencies=dependencies)


def build_server(
    settings: ServeSettings,
    registry: Registry,
    tokenizer: PreTrainedTokenizerBase,
    accelerator: str = "auto",
    devices: int | str = "auto",
    workers_per_device: int = 1,
    max_batch_size: int = 8,
    batch_timeout: float = 0.01,
    timeout: float = 30.0,
    fast_queue: bool = False,
) -> ls.LitServer:
    """The LitServer: `AotAPI` workers, the `RequestGate` in front of /predict, and the /tasks routes."""
    api = AotAPI(settings, max_batch_size=max_batch_size, batch_timeout=batch_timeout)
    server = ls.LitServer(
        api,
        accelerator=accelerator,
        devices=devices,
        workers_per_device=workers_per_device,
        timeout=timeout,
        fast_queue=fast_queue,
        middlewares=[(RequestGate, {"registry": registry, "tokenizer": tokenizer})],
        model_metadata={"mode": settings.mode, "backbone": registry.snapshot().backbone["backbone"]},
    )
    task_routes(server.app, registry, server.setup_auth())
    return server
