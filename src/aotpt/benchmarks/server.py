"""suite=server: a load test of `python -m aotpt.serve` on loopback (`server` in conf/bench.yaml).

Synthetic tasks (`fabricate.synthetic_tasks`: random kron weights and heads
on the real backbone of `model=`, weights-only, tables only for the tiers
that need them) are served by one server per setup (mode x number of tasks),
beside a server of the bare backbone (`mode=bare`: the same server, heads, no
bias). A bounded pool of `clients` concurrent clients sends rounds of
`round_requests` requests (or stops after `round_s` seconds), whose tasks
follow a popularity (uniform or Zipf over the tasks) and whose texts are
drawn from the vocabulary; the bare server and the setup take turns round by
round (`timing.interleaved`), so each throughput ratio is paired within a
round. Reported per setup and popularity: throughput, its ratio to the bare
backbone (median and IQR over rounds), p50/p99 latency, failures, what the
workers hold (tables, weights, cache) and the server's memory (PSS of all its
processes); and, on the largest onthefly setup, the time from adding one more
task (POST /tasks) to its first prediction while the other clients keep
sending, and how many of their requests failed.

The clients run on the same machine as the server (they take some of its CPU,
alike for the bare backbone and AoT).
"""

from __future__ import annotations

import asyncio
import logging
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch
from omegaconf import DictConfig, OmegaConf

from aotpt.backbones import load_tokenizer
from aotpt.benchmarks.fabricate import synthetic_tasks
from aotpt.benchmarks.timing import interleaved, spread
from aotpt.cli import log
from aotpt.serving.launch import ServerProcess
from aotpt.serving.requests import fields

TABLE_MODES = ("device", "host", "mmap")  # the tiers that serve stored tables (the others: weights only)
logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request


def vocabulary_words(pretrained: str) -> list[str]:
    """Whole alphabetic words of the tokenizer's vocabulary (no sub-word pieces, no special tokens)."""
    vocab = load_tokenizer(pretrained).get_vocab()
    return sorted(w for w in vocab if w.isalpha() and w.isascii() and len(w) > 1)


def requests_for(tasks: list[tuple[str, str]], popularity: str, count: int, seed: int, sc: DictConfig, words) -> list:
    """`count` requests: tasks (name, kind) drawn by `popularity` (uniform, or Zipf: weight 1/rank^s), texts of
    sc.words[0]..sc.words[1] words drawn with Zipf(1) frequencies (text repeats its frequent words)."""
    rng = random.Random(seed)
    if popularity not in ("uniform", "zipf"):
        raise ValueError(f"server.popularity: unknown {popularity!r}; accepted: uniform, zipf")
    weights = [1.0 if popularity == "uniform" else 1 / (rank + 1) ** sc.zipf_s for rank in range(len(tasks))]
    word_weights = [1 / (rank + 1) for rank in range(len(words))]
    out = []
    for name, kind in rng.choices(tasks, weights, k=count):
        row = {"task": name}
        for field in fields(kind):
            row[field] = " ".join(rng.choices(words, word_weights, k=rng.randint(*sc.words)))
        out.append(row)
    return out


async def _drive(url: str, requests: list[dict], clients: int, limit_s: float) -> dict:
    """Send `requests` from `clients` concurrent clients (each takes the next one when its last is answered) until
    all are answered or `limit_s` passed; latencies of the answered ones and the count of failures."""
    latencies, failed, queue = [], 0, list(reversed(requests))
    deadline = time.monotonic() + limit_s
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=limit_s + 60, limits=limits) as client:

        async def one_client():
            nonlocal failed
            while queue and time.monotonic() < deadline:
                body = queue.pop()
                start = time.perf_counter()
                try:
                    ok = (await client.post("/predict", json=body)).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - start)
                failed += not ok

        await asyncio.gather(*(one_client() for _ in range(clients)))
    return {"latencies": latencies, "failed": failed}


def drive(url: str, requests: list[dict], clients: int, limit_s: float) -> dict:
    return asyncio.run(_drive(url, requests, clients, limit_s))


def _server_args(sc: DictConfig, cfg: DictConfig, mode: str, folder: Path) -> list[str]:
    args = [f"artifacts_dir={folder}", f"mode={mode}", f"max_batch_size={sc.max_batch_size}"]
    args += [f"batch_timeout={sc.batch_timeout}", f"workers_per_device={sc.workers_per_device}"]
    args += [f"accelerator={'cpu' if cfg.device == 'cpu' else 'cuda'}", f"dtype={sc.dtype}", "timeout=-1"]
    args += [f"threads={sc.threads}" if sc.threads else "threads=null", f"api_servers={sc.api_servers or 'null'}"]
    if sc.cache_bytes is not None:
        args.append(f"cache_bytes={sc.cache_bytes}")
    return args


def _folder(root: Path, source: Path, names: list[str]) -> Path:
    """A folder of links to the first tasks of `source`: what one server serves (`artifacts_dir`)."""
    folder = root / f"{source.name}-{len(names)}"
    if folder.is_dir():  # another tier serves the same tasks (device, host and mmap with 8)
        return folder
    folder.mkdir()
    for name in names:
        for suffix in (".safetensors", ".json"):
            (folder / f"{name}{suffix}").symlink_to(source / f"{name}{suffix}")
    return folder


def _held(server: ServerProcess) -> dict:
    """What the workers hold (summed) and the server's memory."""
    workers = httpx.get(f"{server.url}/tasks", timeout=60).json()["workers"]
    held: dict[str, int] = {}
    for report in workers.values():
        for kind, value in report["held_bytes"].items():
            held[kind] = held.get(kind, 0) + value
    hits = sum(w["cache"].get("hits", 0) for w in workers.values())
    misses = sum(w["cache"].get("misses", 0) for w in workers.values())
    memory = server.memory()
    return {
        "held_bytes": held,
        "cache_hit_rate": hits / (hits + misses) if hits + misses else None,
        "server_rss_bytes": memory["rss"],
        "server_pss_bytes": memory["pss"],
        "server_processes": memory["processes"],
    }


def _row(mode: str, tasks: int, popularity: str, rounds: list[dict], times: list[float], bare: list[float]) -> dict:
    latencies = sorted(x for r in rounds for x in r["latencies"])
    completed = len(latencies)
    throughput = [len(r["latencies"]) / t for r, t in zip(rounds, times, strict=True)]
    row = {"mode": mode, "tasks": tasks, "popularity": popularity, "completed": completed}
    row["failed"] = sum(r["failed"] for r in rounds)
    row["throughput_rps"] = statistics.median(throughput)
    row["p50_s"] = latencies[completed // 2] if latencies else None
    row["p99_s"] = latencies[min(completed - 1, int(completed * 0.99))] if latencies else None
    ratios = spread([t / b for t, b in zip(throughput, bare, strict=True)]) if bare else None
    if ratios:
        row.update(ratio_to_bare=ratios["median"], ratio_iqr=[ratios["q1"], ratios["q3"]])
    return row


def _add_task(server: ServerProcess, artifact: Path, kind: str, requests: list[dict], sc: DictConfig) -> dict:
    """While clients keep sending `requests`, POST one more task (of `kind`) and time its first prediction."""
    traffic: dict = {}
    thread = threading.Thread(target=lambda: traffic.update(drive(server.url, requests, sc.clients, sc.round_s)))
    thread.start()
    time.sleep(0.5)
    body = {"task": "added", **dict.fromkeys(fields(kind), "a new task answers")}
    with httpx.Client(base_url=server.url, timeout=120) as client:
        start = time.perf_counter()
        added = client.post("/tasks/added", json={"path": str(artifact)})
        post_s = time.perf_counter() - start
        first = None
        while added.status_code in (200, 202) and time.perf_counter() - start < 60:
            if client.post("/predict", json=body).status_code == 200:
                first = time.perf_counter() - start
                break
    thread.join()
    return {
        "status": added.status_code,
        "post_s": post_s,
        "first_prediction_s": first,
        "completed": len(traffic.get("latencies", [])),
        "failed": traffic.get("failed", 0),
    }


def _paired(bare: ServerProcess, server: ServerProcess, streams: list, to_bare: list, cfg: DictConfig, label: str):
    """Rounds of requests taking turns between the bare server and `server` (`timing.interleaved`): the timed
    rounds' results and seconds of each."""
    sc, results = cfg.server, {"bare": [], "aot": []}

    def round_of(name: str, url: str, stream: list):
        return lambda i: results[name].append(drive(url, stream[i], sc.clients, sc.round_s))

    runners = {"bare": round_of("bare", bare.url, to_bare), "aot": round_of("aot", server.url, streams)}
    times = interleaved(runners, torch.device("cpu"), cfg.warmup, cfg.steps, label)  # client wall time
    return {k: v[cfg.warmup :] for k, v in results.items()}, times


def run(cfg: DictConfig) -> dict:
    sc = cfg.server
    setups = OmegaConf.to_container(sc.setups, resolve=True)
    model = OmegaConf.to_container(cfg.model, resolve=True)
    kinds = list(sc.kinds)
    words = vocabulary_words(model["pretrained"])
    most = max(s["tasks"] for s in setups)
    table_tasks = max([s["tasks"] for s in setups if s["mode"] in TABLE_MODES] + [0])
    largest_onthefly = max((s["tasks"] for s in setups if s["mode"] == "onthefly"), default=None)
    rows, add_task = [], None
    with tempfile.TemporaryDirectory(dir=sc.work_dir) as tmp:
        root = Path(tmp)
        log.info("fabricating %d weights-only tasks and %d with tables", most + 1, table_tasks)
        method = OmegaConf.to_container(sc.method, resolve=True)
        synthetic_tasks(root / "weights", model, method, kinds, most + 1, table=False, dtype=sc.table_dtype)
        if table_tasks:
            synthetic_tasks(root / "tables", model, method, kinds, table_tasks, table=True, dtype=sc.table_dtype)
        names = [f"t{i:04d}" for i in range(most + 1)]
        bare_tasks = [(names[i], kinds[i]) for i in range(min(len(kinds), most))]  # one task per kind: its heads
        kind_to_bare = {kind: name for name, kind in bare_tasks}
        bare_folder = _folder(root, root / "weights", [n for n, _ in bare_tasks])
        bare_rounds: dict[str, list] = {p: [] for p in sc.popularity}
        bare_times: dict[str, list] = {p: [] for p in sc.popularity}
        with ServerProcess(_server_args(sc, cfg, "bare", bare_folder), root / "bare", sc.start_s) as bare:
            for setup in setups:
                mode, count = setup["mode"], setup["tasks"]
                folder = _folder(root, root / ("tables" if mode in TABLE_MODES else "weights"), names[:count])
                tasks = [(names[i], kinds[i % len(kinds)]) for i in range(count)]
                label, start = f"{mode}-{count}", time.perf_counter()
                with ServerProcess(_server_args(sc, cfg, mode, folder), root / label, sc.start_s) as server:
                    ready_s = time.perf_counter() - start
                    for popularity in sc.popularity:
                        seeds = range(cfg.warmup + cfg.steps)
                        streams = [requests_for(tasks, popularity, sc.round_requests, i, sc, words) for i in seeds]
                        kind_of = dict(tasks)
                        to_bare = [[{**r, "task": kind_to_bare[kind_of[r["task"]]]} for r in s] for s in streams]
                        timed, times = _paired(bare, server, streams, to_bare, cfg, f"{label} {popularity}")
                        bare_rounds[popularity] += timed["bare"]
                        bare_times[popularity] += times["bare"]
                        bare_tp = [len(r["latencies"]) / t for r, t in zip(timed["bare"], times["bare"], strict=True)]
                        row = _row(mode, count, popularity, timed["aot"], times["aot"], bare_tp)
                        rows.append({**row, **_held(server), "ready_s": ready_s})
                        log.info(
                            "%s %s: %.2f req/s, x%.3f bare",
                            label,
                            popularity,
                            row["throughput_rps"],
                            row["ratio_to_bare"],
                        )
                    if mode == "onthefly" and count == largest_onthefly and sc.add_task:
                        stream = requests_for(tasks, "zipf", 4 * sc.round_requests, 99, sc, words)
                        extra = root / "weights" / f"{names[count]}.safetensors"
                        add_task = {
                            "mode": mode,
                            "tasks": count,
                            **_add_task(server, extra, kinds[count % len(kinds)], stream, sc),
                        }
            for popularity in reversed(sc.popularity):
                row = _row("bare", len(bare_tasks), popularity, bare_rounds[popularity], bare_times[popularity], [])
                rows.insert(0, {**row, **_held(bare)})
    return {
        "suite": "server",
        "model": model["name"],
        "device": cfg.device,
        "settings": {k: v for k, v in OmegaConf.to_container(sc, resolve=True).items() if k != "setups"},
        "rows": rows,
        "add_task": add_task,
        "targets": targets(rows, add_task),
    }


def targets(rows: list[dict], add_task: dict | None) -> dict:
    """The issue's targets, as measured (None where the run had no such setup)."""

    def ratio(tasks: int) -> float | None:
        found = [r for r in rows if (r["mode"], r["tasks"], r["popularity"]) == ("onthefly", tasks, "zipf")]
        return found[0].get("ratio_to_bare") if found else None

    out = {"tasks_1000_zipf_ratio": ratio(1000), "tasks_64_zipf_ratio": ratio(64)}
    for popularity in ("uniform", "zipf"):
        tp = [
            r["throughput_rps"]
            for r in rows
            if (r["mode"], r["popularity"]) == ("onthefly", popularity) and r["tasks"] >= 8
        ]
        out[f"flat_8_to_max_{popularity}"] = max(tp) / min(tp) - 1 if len(tp) > 1 else None  # spread of throughput
    out["add_task_first_prediction_s"] = add_task and add_task["first_prediction_s"]
    out["add_task_failed"] = add_task and add_task["failed"]
    return out


def show(result: dict) -> None:
    s = result["settings"]
    print(
        f"\nserver load test on {result['model']} ({result['device']}, {s['workers_per_device']} worker(s), "
        f"batch <= {s['max_batch_size']} within {s['batch_timeout']} s, {s['clients']} clients, "
        f"{s['round_requests']} requests/round)"
    )
    head = f"{'mode':<9}{'tasks':>6} {'popularity':<10}{'req/s':>8}{'x bare':>8}{'IQR':>13}{'p50 ms':>8}{'p99 ms':>8}"
    print(f"{head}{'fail':>5}{'tables MB':>10}{'weights MB':>11}{'cache MB':>9}{'PSS MB':>8}{'hits':>6}{'ready s':>8}")
    for r in result["rows"]:
        held = r["held_bytes"]
        tables = held.get("device_table", 0) + held.get("host_table", 0) + held.get("mapped", 0)
        iqr = f"{r['ratio_iqr'][0]:.3f}-{r['ratio_iqr'][1]:.3f}" if "ratio_iqr" in r else ""
        ratio = f"{r['ratio_to_bare']:.3f}" if "ratio_to_bare" in r else "1"
        hits = f"{r['cache_hit_rate']:.0%}" if r.get("cache_hit_rate") is not None else ""
        latency = f"{(r['p50_s'] or 0) * 1e3:>8.0f}{(r['p99_s'] or 0) * 1e3:>8.0f}"
        line = f"{r['mode']:<9}{r['tasks']:>6} {r['popularity']:<10}{r['throughput_rps']:>8.2f}{ratio:>8}{iqr:>13}"
        line += latency
        mb = f"{tables / 1e6:>10.0f}{held.get('weights', 0) / 1e6:>11.1f}{held.get('cache', 0) / 1e6:>9.1f}"
        print(f"{line}{r['failed']:>5}{mb}{r['server_pss_bytes'] / 1e6:>8.0f}{hits:>6}{r.get('ready_s', 0):>8.1f}")
    if result["add_task"]:
        a = result["add_task"]
        first = f"{a['first_prediction_s']:.2f} s" if a["first_prediction_s"] is not None else "never"
        print(
            f"\nadding a task while serving ({a['mode']}, {a['tasks']} tasks): first prediction {first} after POST "
            f"(POST {a['post_s']:.2f} s), {a['failed']} of {a['completed'] + a['failed']} concurrent requests failed"
        )
    t = result["targets"]
    print("\ntargets (measured):")
    for key, value in t.items():
        print(f"  {key}: {value if value is None else round(value, 3)}")
