"""Benchmarks that print measured ratios: `python -m aotpt.bench [suite=train_step] [model=minilm]`.

train_step: optimiser steps (forward, backward, AdamW) of each method on the
same random token ids, batch x length as configured, taken in turn (one step
of each method per round) in one process; reports each method's median step
time and its ratio to full fine-tuning. Warm-up rounds run first; CUDA work
is synchronised around every timed step.

serving: AoT ahead of time on a RoBERTa-base-sized backbone with random
weights (`serving.backbone`): export time and peak memory of one table per
task (`serving.tasks`), then, for the bare backbone and each serving mode,
the memory the tables hold and the median latency of a mixed-task batch.
"""

from __future__ import annotations

import copy
import ctypes
import functools
import re
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from aotpt.atomic import write_json_atomic
from aotpt.backbones import count_params, load_backbone
from aotpt.cli import CONF_DIR, entry, log, one_line_errors
from aotpt.errors import choices
from aotpt.export import export
from aotpt.methods import method_config, setup_name
from aotpt.methods.aot.hooks import gather_bias
from aotpt.methods.aot.table import Artifact
from aotpt.model import build_model, save_trained
from aotpt.serving import MultiTaskPredictor
from aotpt.tasks import get_task

# Names the random serving backbone in metadata; its config comes from `serving.backbone` (no download).
RANDOM_BACKBONE = "random-init"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _seconds(call, device: torch.device) -> float:
    """Wall time of `call()`, synchronised on CUDA before and after."""
    _sync(device)
    start = time.perf_counter()
    call()
    _sync(device)
    return time.perf_counter() - start


def timed(step, device: torch.device, warmup: int, steps: int) -> list[float]:
    """Seconds per call of `step(i)`, `steps` of them after `warmup` untimed ones."""
    times = [_seconds(functools.partial(step, i), device) for i in range(warmup + steps)]
    return times[warmup:]


def _train_step(model, optimizer, ids, mask, labels) -> None:
    """One optimiser step: forward, backward, AdamW."""
    optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(ids, mask), labels).backward()
    optimizer.step()


def train_step(cfg: DictConfig) -> dict:
    """Round-robin over the methods, one step each per round, so machine noise hits all alike."""
    device = torch.device(cfg.device)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (cfg.batch_size, cfg.seq_len), generator=g).to(device)  # inside every vocab
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 2, (cfg.batch_size,), generator=g).to(device)
    models, optimizers = {}, {}
    for name, method in cfg.methods.items():
        torch.manual_seed(0)
        models[name] = build_model(cfg.model.pretrained, method_config(method), 2, cfg.model.random_init)
        models[name].to(device).train()
        optimizers[name] = torch.optim.AdamW([p for p in models[name].parameters() if p.requires_grad], lr=1e-4)
    times: dict[str, list[float]] = {name: [] for name in models}
    for round_ in range(cfg.warmup + cfg.steps):
        for name, model in models.items():
            seconds = _seconds(functools.partial(_train_step, model, optimizers[name], ids, mask, labels), device)
            if round_ >= cfg.warmup:
                times[name].append(seconds)
        log.info("round %d/%d done", round_ + 1, cfg.warmup + cfg.steps)
    rows = {}
    for name, model in models.items():
        trainable, total = count_params(model)
        rows[name] = {
            "median_step_s": statistics.median(times[name]),
            "trainable_params": trainable,
            "total_params": total,
        }
    base = rows[cfg.baseline]["median_step_s"]
    for row in rows.values():
        row[f"ratio_to_{cfg.baseline}"] = row["median_step_s"] / base
    return {
        "suite": "train_step",
        "device": str(device),
        "batch_size": cfg.batch_size,
        "seq_len": cfg.seq_len,
        "steps": cfg.steps,
        "torch_threads": torch.get_num_threads(),
        "model": cfg.model.name,
        "methods": rows,
    }


def print_table(result: dict) -> None:
    rows = result["methods"]
    ratio_key = next(k for k in next(iter(rows.values())) if k.startswith("ratio_to_"))
    shape = f"batch {result['batch_size']} x {result['seq_len']}"
    print(f"\n{result['suite']} on {result['model']} ({result['device']}, {shape})")
    print(f"{'method':<14}{'trainable':>14}{'s/step':>10}{ratio_key:>22}")
    for name, row in rows.items():
        print(f"{name:<14}{row['trainable_params']:>14,}{row['median_step_s']:>10.3f}{row[ratio_key]:>22.3f}")


# ---- serving: export + the three table modes ---------------------------------
FINGERPRINT = "random-vocabulary"  # the random backbone has no tokenizer; export and serving only compare this string


def _kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict]:
    """Peak bytes above the block's start: the CUDA allocator's peak on GPU; on CPU the process's
    peak RSS (VmHWM), reset through /proc/self/clear_refs so earlier peaks do not count."""
    stats: dict = {}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        yield stats
        stats["peak_bytes"] = torch.cuda.max_memory_allocated() - start
        return
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # return freed heap to the OS, or its reuse hides from the RSS delta
    Path("/proc/self/clear_refs").write_text("5")
    start = _kib("VmRSS")
    yield stats
    stats["peak_bytes"] = (_kib("VmHWM") - start) * 1024


def _random_run(run_dir: Path, backbone: dict, task: str, method: dict, seed: int) -> None:
    """A run folder as `aotpt.train` writes it, with random AoT weights (std 0.02) and head."""
    spec = get_task(task)
    torch.manual_seed(seed)
    model = build_model(RANDOM_BACKBONE, method_config(method), spec.num_labels, backbone)
    with torch.no_grad():
        for name in model.trainable:
            model.get_parameter(name).normal_(0, 0.02)
    config = model.backbone.config
    keys = ("model_type", "num_hidden_layers", "hidden_size", "vocab_size")
    model_type, num_layers, hidden_size, vocab_size = (getattr(config, k) for k in keys)
    meta = {"backbone": RANDOM_BACKBONE, "random_init": backbone, "tokenizer_fingerprint": FINGERPRINT}
    meta.update(model_type=model_type, num_layers=num_layers, hidden_size=hidden_size, vocab_size=vocab_size)
    meta.update(task=task, label_names=list(spec.label_names), metrics=list(spec.metrics), method=method)
    save_trained(model, run_dir / "model" / "trained.safetensors", meta)


def _zipf_batches(count: int, batch: int, length: int, vocab: int, tasks: int) -> list[tuple]:
    """Token ids with Zipf(1) frequencies over a random vocabulary order (text repeats frequent tokens,
    which is what the onthefly cache relies on), mask all ones, task ids cycling over the tasks."""
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(vocab, generator=g)
    weights = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64)
    out = []
    for _ in range(count):
        ids = order[torch.multinomial(weights, batch * length, replacement=True, generator=g)].view(batch, length)
        out.append((ids, torch.ones_like(ids), torch.arange(batch) % tasks))
    return out


def serving(cfg: DictConfig) -> dict:
    sc, device = cfg.serving, torch.device(cfg.device)
    backbone_conf = OmegaConf.to_container(sc.backbone, resolve=True)
    exports, artifacts = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for seed, (task, method) in enumerate(OmegaConf.to_container(sc.tasks, resolve=True).items()):
            _random_run(Path(tmp) / task, backbone_conf, task, method, seed)
            with peak_memory(torch.device("cpu")) as mem:
                start = time.perf_counter()
                path = export(Path(tmp) / task, sc.dtype, sc.chunk_rows)
                seconds = time.perf_counter() - start
            artifacts.append(Artifact.load(path))
            reparam = setup_name(method)
            exports[task] = {"reparam": reparam, "export_s": seconds, "peak_bytes": mem["peak_bytes"]}
            exports[task]["file_bytes"] = path.stat().st_size
            log.info("export %s (%s): %.1f s, peak %.2f GB", task, reparam, seconds, mem["peak_bytes"] / 1e9)
        backbone = load_backbone(RANDOM_BACKBONE, backbone_conf).to(device).eval()
        modes, predictors = {"bare": {}}, {}
        for mode in sc.modes:
            hooked = copy.deepcopy(backbone)  # hooks live on modules: one copy per mode, so the modes can take turns
            with peak_memory(device) as mem:
                predictors[mode] = MultiTaskPredictor(hooked, artifacts, FINGERPRINT, mode, sc.cache_rows, "random")
            modes[mode] = {**predictors[mode].held_bytes(), "load_peak_bytes": mem["peak_bytes"]}
    vocab, tasks = backbone.config.vocab_size, len(artifacts)
    batches = [
        tuple(t.to(device) for t in batch)
        for batch in _zipf_batches(2 * (cfg.warmup + cfg.steps), sc.batch_size, sc.seq_len, vocab, tasks)
    ]
    runners = {"bare": lambda i: backbone(*batches[i][:2])}
    runners.update({mode: functools.partial(_predict_batch, p, batches) for mode, p in predictors.items()})
    for name, times in _take_turns(runners, device, cfg.warmup, cfg.steps).items():
        modes[name].update(median_s=statistics.median(times), min_s=min(times))
    # the bias alone (what a mode adds to the bare forward), without the backbone's noise, on batches not seen yet
    unseen = batches[cfg.warmup + cfg.steps :]
    keys = [task_ids[:, None] * vocab + ids for ids, _, task_ids in unseen]  # (B, n) rows of the stacked table
    for mode, predictor in predictors.items():
        rows = functools.partial(_bias_rows, predictor.backbone.aot.source, keys)
        modes[mode]["bias_median_s"] = statistics.median(timed(rows, device, cfg.warmup, cfg.steps))
    if "onthefly" in predictors:
        source = predictors["onthefly"].backbone.aot.source
        modes["onthefly"]["cache_hit_rate"] = source.hits / (source.hits + source.misses)
    bare = modes["bare"]["median_s"]
    for row in modes.values():
        row["ratio_to_bare"] = row["median_s"] / bare
        row["overhead_measured"] = row["median_s"] / bare - 1  # whole forward, noisy on a shared machine
        row["overhead_bias_only"] = row.get("bias_median_s", 0.0) / bare  # the bias rows alone
    d = backbone.config.hidden_size
    result = {
        "suite": "serving",
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "backbone": {k: backbone_conf[k] for k in ("model_type", "vocab_size", "num_hidden_layers", "hidden_size")},
        "dtype": sc.dtype,
        "batch_size": sc.batch_size,
        "seq_len": sc.seq_len,
        "exports": exports,
        "modes": modes,
        # a gather + L adds of B*n*d values against ~24*B*n*d^2*L FLOPs of the layers
        "analytic_overhead": 1 / (24 * d),
    }
    common = {k: v for k, v in result.items() if k not in ("exports", "modes")}
    for mode, row in modes.items():  # one JSON per serving mode, measured overhead beside the analytic one
        write_json_atomic(Path(cfg.output_dir) / f"bench_serving_{mode}.json", {**common, "mode": mode, **row})
    return result


def _bias_rows(source, keys: list[torch.Tensor], i: int) -> None:
    gather_bias(source, keys[i])


def _predict_batch(predictor: MultiTaskPredictor, batches: list[tuple], i: int) -> None:
    predictor(*batches[i])


@torch.no_grad()
def _take_turns(runners: dict, device: torch.device, warmup: int, steps: int) -> dict[str, list[float]]:
    """Seconds per batch of each runner `fn(i)`; they take turns batch by batch, so that load from
    other processes on a shared machine hits every mode alike."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for i in range(warmup + steps):
        for name, run_batch in runners.items():
            seconds = _seconds(functools.partial(run_batch, i), device)
            if i >= warmup:
                times[name].append(seconds)
    return times


def print_serving(result: dict) -> None:
    b = result["backbone"]
    shape = f"|V|={b['vocab_size']:,} L={b['num_hidden_layers']} d={b['hidden_size']}, {result['dtype']}"
    print(f"\nexport on {b['model_type']}-shaped random weights ({shape}; cpu)")
    print(f"{'task':<8}{'reparam':<14}{'export s':>10}{'file GB':>10}{'peak GB':>10}")
    for task, row in result["exports"].items():
        gb = row["file_bytes"] / 1e9, row["peak_bytes"] / 1e9
        print(f"{task:<8}{row['reparam']:<14}{row['export_s']:>10.1f}{gb[0]:>10.2f}{gb[1]:>10.2f}")
    batch = f"mixed batch {result['batch_size']} x {result['seq_len']}, {len(result['exports'])} tasks"
    print(f"\nserving ({result['device']}, {batch}; analytic overhead {result['analytic_overhead']:.1e})")
    head = f"{'mode':<10}{'device GB':>10}{'host GB':>9}{'weights MB':>11}{'cache MB':>9}{'load peak GB':>13}"
    print(f"{head}{'median s':>10}{'min s':>8}{'x bare':>8}{'bias ms':>9}")
    for mode, row in result["modes"].items():
        held = [row.get(k, 0) for k in ("device_table", "host_table", "weights", "cache", "load_peak_bytes")]
        sizes = f"{held[0] / 1e9:>10.2f}{held[1] / 1e9:>9.2f}{held[2] / 1e6:>11.1f}{held[3] / 1e6:>9.1f}"
        hits = f"  (cache hits {row['cache_hit_rate']:.0%})" if "cache_hit_rate" in row else ""
        times = f"{row['median_s']:>10.3f}{row['min_s']:>8.3f}{row['ratio_to_bare']:>8.3f}"
        times += f"{row.get('bias_median_s', 0) * 1e3:>9.1f}"
        print(f"{mode:<10}{sizes}{held[4] / 1e9:>13.2f}{times}{hits}")


# suite -> (run, print its table)
SUITES = {"train_step": (train_step, print_table), "serving": (serving, print_serving)}


def run(cfg: DictConfig) -> dict:
    if cfg.suite not in SUITES:
        raise choices("suite", cfg.suite, SUITES)
    bench, show = SUITES[cfg.suite]
    result = bench(cfg)
    show(result)
    out = Path(cfg.output_dir) / f"bench_{cfg.suite}.json"
    write_json_atomic(out, {**result, "config": OmegaConf.to_container(cfg, resolve=True)})
    print(f"\nwritten: {out}")
    return result


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="bench")
@one_line_errors
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    entry(main)
