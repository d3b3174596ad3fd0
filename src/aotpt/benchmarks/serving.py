"""suite=serving: AoT ahead of time on a RoBERTa-base-sized backbone with random weights (`serving.backbone`).

Export time and peak memory of one table per task (`serving.tasks`), then,
for the bare backbone and each serving mode, the memory the tables hold and
the time of a mixed-task batch (`timing.interleaved`), plus the time of the
bias rows alone.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from aotpt.atomic import write_json_atomic
from aotpt.backbones import load_backbone
from aotpt.benchmarks.fabricate import RANDOM_BACKBONE, RANDOM_FINGERPRINT, random_run
from aotpt.benchmarks.memory import peak_memory
from aotpt.benchmarks.timing import interleaved, paired_ratios, spread
from aotpt.cli import log
from aotpt.export import export
from aotpt.methods import setup_name
from aotpt.methods.aot.artifact import Artifact
from aotpt.methods.aot.hooks import gather_bias
from aotpt.serving import MultiTaskPredictor


def zipf_batches(count: int, batch: int, length: int, vocab: int, tasks: int) -> list[tuple]:
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


def run(cfg: DictConfig) -> dict:
    sc, device = cfg.serving, torch.device(cfg.device)
    backbone_conf = OmegaConf.to_container(sc.backbone, resolve=True)
    exports, artifacts = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for seed, (task, method) in enumerate(OmegaConf.to_container(sc.tasks, resolve=True).items()):
            random_run(Path(tmp) / task, backbone_conf, task, method, weights_seed=seed)
            with peak_memory(torch.device("cpu")) as mem:
                start = time.perf_counter()
                path = export(Path(tmp) / task, sc.dtype, sc.chunk_rows)
                seconds = time.perf_counter() - start
            artifacts.append(Artifact.load(path))
            reparam = setup_name(method)
            exports[task] = {"reparam": reparam, "export_s": seconds, "peak_bytes": mem["peak_bytes"]}
            exports[task]["file_bytes"] = path.stat().st_size
            log.info("export %s (%s): %.1f s, peak %.2f GB", task, reparam, seconds, mem["peak_bytes"] / 1e9)
        backbone = load_backbone(RANDOM_BACKBONE, backbone_conf, seed=0).to(device).eval()
        modes, predictors = {"bare": {}}, {}
        for mode in sc.modes:
            hooked = copy.deepcopy(backbone)  # hooks live on modules: one copy per mode, so the modes can take turns
            with peak_memory(device) as mem:
                predictors[mode] = MultiTaskPredictor(
                    hooked, artifacts, RANDOM_FINGERPRINT, mode, sc.cache_rows, "random"
                )
            modes[mode] = {**predictors[mode].held_bytes(), "load_peak_bytes": mem["peak_bytes"]}
    vocab, tasks = backbone.config.vocab_size, len(artifacts)
    batches = [
        tuple(t.to(device) for t in batch)
        for batch in zipf_batches(2 * (cfg.warmup + cfg.steps), sc.batch_size, sc.seq_len, vocab, tasks)
    ]
    runners = {"bare": lambda i: backbone(*batches[i][:2])}
    runners.update({mode: lambda i, p=p: p(*batches[i]) for mode, p in predictors.items()})
    with torch.no_grad():
        times = interleaved(runners, device, cfg.warmup, cfg.steps, label="serving")
    ratios = paired_ratios(times, "bare")
    for name, values in times.items():
        modes[name].update(median_s=spread(values)["median"], min_s=min(values))
        modes[name].update(ratio_to_bare=ratios[name]["median"], ratio_iqr=[ratios[name]["q1"], ratios[name]["q3"]])
    # the bias alone (what a mode adds to the bare forward), without the backbone's noise, on batches not seen yet
    unseen = batches[cfg.warmup + cfg.steps :]
    keys = [task_ids[:, None] * vocab + ids for ids, _, task_ids in unseen]  # (B, n) rows of the stacked table
    bias_runners = {
        mode: lambda i, source=p.backbone.aot.source: gather_bias(source, keys[i]) for mode, p in predictors.items()
    }
    for mode, values in interleaved(bias_runners, device, cfg.warmup, cfg.steps).items():
        modes[mode]["bias_median_s"] = spread(values)["median"]
    if "onthefly" in predictors:
        source = predictors["onthefly"].backbone.aot.source
        modes["onthefly"]["cache_hit_rate"] = source.hits / (source.hits + source.misses)
    bare = modes["bare"]["median_s"]
    for row in modes.values():
        row["overhead_measured"] = row["ratio_to_bare"] - 1  # whole forward, noisy on a shared machine
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


def show(result: dict) -> None:
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
