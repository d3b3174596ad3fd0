"""suite=inference: the forward pass of AoT against the bare backbone and every baseline, in one process.

    python -m aotpt.bench suite=inference [model=minilm] [inference=full device=cuda]

Per cell (batch x length) every contender of `lineup` runs once per round,
in rotating order (`timing.interleaved`: warm-up first, a fixed thread count
on CPU, CUDA events between synchronisations on GPU). Each figure is a ratio
to the bare backbone of the same round, summarised by the median and
interquartile range over the rounds; the bare backbone is timed twice, and
the second entry's ratio to the first is the noise. Throughput is sequences
per second at the median time. Beside each ratio: the analytic cost
(`costs`), the memory the setting holds, the peak memory of one forward.

Inputs: Zipf-distributed token ids (frequent tokens repeat, as in text; the
onthefly cache relies on it), a fresh batch each round, no padding; a mixed
batch of T tasks gives its rows tasks 0..T-1 in turn.
"""

from __future__ import annotations

import statistics
import time

import torch
from omegaconf import DictConfig, OmegaConf
from torch._dynamo.utils import counters as dynamo_counters

from aotpt.backbones import load_backbone
from aotpt.benchmarks import lineup as L
from aotpt.benchmarks import plots, tables
from aotpt.benchmarks.contenders import Batch, Contender, backbone_bytes, distinct_outputs, usable_positions
from aotpt.benchmarks.costs import analytic, backbone_flops_per_token
from aotpt.benchmarks.memory import peak_memory
from aotpt.benchmarks.serving import zipf_batches
from aotpt.benchmarks.timing import fixed_threads, interleaved, paired_ratios, spread
from aotpt.cli import log
from aotpt.errors import ConfigError, choices
from aotpt.hardware import cpu_model
from aotpt.methods.aot.artifact import DTYPES as TABLE_DTYPES
from aotpt.serving import DTYPES, MODES

WEIGHTS = ("random", "pretrained")
MIN_ROUNDS = 20  # fewer rounds run (tests), but the result says the figures are not to be reported


def check(ic: DictConfig) -> None:
    """Refuse impossible options in one line, naming the option and what it accepts."""
    if ic.dtype not in DTYPES:
        raise choices("inference.dtype", ic.dtype, DTYPES)
    if ic.table_dtype not in TABLE_DTYPES:
        raise choices("inference.table_dtype", ic.table_dtype, TABLE_DTYPES)
    if ic.weights not in WEIGHTS:
        raise choices("inference.weights", ic.weights, WEIGHTS)
    for mode in ic.mixed.modes:
        if mode not in MODES:
            raise choices("inference.mixed.modes entry", mode, MODES)
    too_many = [t for t in ic.mixed.tasks if not 1 <= t <= ic.mixed.batch_size]
    if too_many:
        raise ConfigError(
            f"inference.mixed.tasks={list(too_many)}: T must be in [1, mixed.batch_size={ic.mixed.batch_size}]"
        )
    if ic.rounds < 2 or ic.warmup < 1:
        raise ConfigError(f"inference.rounds={ic.rounds}, warmup={ic.warmup}: need rounds >= 2 and warmup >= 1")


def _backbone(cfg: DictConfig, device: torch.device) -> torch.nn.Module:
    ic = cfg.inference
    if ic.weights == "random":
        if not cfg.model.get("architecture"):
            raise ConfigError(f"model={cfg.model.name} has no architecture block; use inference.weights=pretrained")
        architecture = OmegaConf.to_container(cfg.model.architecture, resolve=True)
    else:
        architecture = OmegaConf.to_container(cfg.model.random_init, resolve=True) if cfg.model.random_init else None
    backbone = load_backbone(cfg.model.pretrained, architecture, seed=0)
    return backbone.to(device, DTYPES[ic.dtype]).eval().requires_grad_(False)


def _cells(ic: DictConfig) -> list[tuple[str, int, int]]:
    grid = [("grid", b, n) for b in ic.batch_sizes for n in ic.seq_lens]
    return [*grid, ("mixed", ic.mixed.batch_size, ic.mixed.seq_len)]


def _batches(count: int, batch_size: int, seq_len: int, vocab: int, tasks: set[int], device) -> dict[int, list]:
    """{T: one Batch per round} over the same token ids: rows take tasks 0..T-1 in turn."""
    ids = [i.to(device) for i, _, _ in zipf_batches(count, batch_size, seq_len, vocab, 1)]
    mask = torch.ones(batch_size, seq_len, dtype=torch.long, device=device)
    out = {}
    for t in tasks:
        task_ids = torch.arange(batch_size) % t
        out[t] = [Batch(i, mask, task_ids.to(device), task_ids.tolist()) for i in ids]
    return out


def _time_cell(section, batch_size, seq_len, here: list[Contender], ic, device, vocab) -> dict[str, dict]:
    """Time the contenders of one cell; one row each."""
    batches = _batches(ic.warmup + ic.rounds + 1, batch_size, seq_len, vocab, {c.tasks for c in here}, device)
    runners = {c.name: (lambda i, c=c: c.run(batches[c.tasks][i])) for c in here}
    with torch.no_grad():
        times = interleaved(runners, device, ic.warmup, ic.rounds, f"{section} {batch_size}x{seq_len}", progress=True)
    ratios = paired_ratios(times, "bare")
    hit_rates = {}
    for c in here:
        if c.stats:  # onthefly cache counters: this cell's rounds only
            hits, misses = c.stats.pop("cache_hits"), c.stats.pop("cache_misses")
            hit_rates[c.name] = hits / max(1, hits + misses)
    rows = {}
    for c in here:
        with torch.no_grad(), peak_memory(device) as mem:  # one more forward, untimed, on a batch not seen yet
            c.run(batches[c.tasks][-1])
        t, r = spread(times[c.name]), ratios[c.name]
        rows[c.name] = {
            "section": section, "cell": f"{batch_size}x{seq_len}", "batch_size": batch_size, "seq_len": seq_len,
            "name": c.name, "method": c.method, "tasks": c.tasks, "rounds": len(times[c.name]),
            "median_s": t["median"], "q1_s": t["q1"], "q3_s": t["q3"], "times_s": times[c.name],
            "ratio": None if c.name == "bare" else r["median"],
            "ratio_q1": None if c.name == "bare" else r["q1"], "ratio_q3": None if c.name == "bare" else r["q3"],
            "throughput": batch_size / t["median"], "held_bytes": c.held_bytes, "peak_bytes": mem["peak_bytes"],
        }  # fmt: skip
        if c.name in hit_rates:
            rows[c.name]["cache_hit_rate"] = hit_rates[c.name]
        c.stats.clear()
    return rows


def _compile_first(contenders: list[Contender], vocab: int, device) -> dict[str, dict]:
    """Compile each torch.compile contender on a small batch before any timing, and count what that first
    compilation made: graphs (1 = the whole forward) and graph breaks with their reasons (dynamo's counters)."""
    out = {}
    ids = torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(0)).to(device)
    batch = Batch(ids, torch.ones_like(ids), torch.zeros(2, dtype=torch.long, device=device), [0, 0])
    for c in contenders:
        before, began = dict(dynamo_counters["graph_break"]), time.perf_counter()
        with torch.no_grad():
            c.run(batch)
        seconds = time.perf_counter() - began
        breaks = {k: v - before.get(k, 0) for k, v in dynamo_counters["graph_break"].items() if v > before.get(k, 0)}
        out[c.name] = {
            "backend": c.compile_info["backend"],
            "graph_count": c.compile_info["graphs_compiled"],
            "graph_breaks": sum(breaks.values()),
            "reasons": [reason.splitlines()[0] for reason in breaks],
            "compile_s": seconds,
        }
        log.info("%s: compiled in %.0f s, %d graph(s), %d graph break(s) %s", c.name, seconds,
                 out[c.name]["graph_count"], sum(breaks.values()), list(breaks))  # fmt: skip
    return out


def _onthefly_stats(lineup: L.Lineup) -> None:
    """Count cache hits of each onthefly contender in its own forwards (the source's counters, read around)."""
    for c in lineup.mixed:
        if c.method != "aot_onthefly":
            continue
        source, run = c.model.aot.source, c.run

        def counted(batch, source=source, run=run, stats=c.stats):
            hits, misses = source.hits, source.misses
            out = run(batch)
            stats["cache_hits"] = stats.get("cache_hits", 0) + source.hits - hits
            stats["cache_misses"] = stats.get("cache_misses", 0) + source.misses - misses
            return out

        c.run = counted


def run(cfg: DictConfig) -> dict:
    ic, device = cfg.inference, torch.device(cfg.device)
    check(ic)
    with fixed_threads(device, ic.threads) as threads:
        return _run(cfg, device, threads)


def _run(cfg: DictConfig, device: torch.device, threads: int) -> dict:
    ic = cfg.inference
    backbone = _backbone(cfg, device)
    config = backbone.config
    positions = usable_positions(config)
    longest = max(*ic.seq_lens, ic.mixed.seq_len)
    if positions is not None and longest > positions:
        raise ConfigError(
            f"inference.seq_lens up to {longest} tokens: model={cfg.model.name} has {positions} positions"
        )
    if ic.rounds < MIN_ROUNDS:
        log.warning("inference.rounds=%d: fewer than %d rounds, not figures to report", ic.rounds, MIN_ROUNDS)
    began = time.perf_counter()
    lineup = L.build(ic, backbone, device)
    log.info("%d + %d contenders built in %.0f s", len(lineup.grid), len(lineup.mixed), time.perf_counter() - began)
    vocab = config.vocab_size
    ids = torch.randint(0, vocab, (1, 8), generator=torch.Generator().manual_seed(0)).to(device)
    distinct = {c.name: distinct_outputs(c, ids, torch.ones_like(ids)) for c in lineup.mixed if c.tasks > 1}
    if not all(distinct.values()):
        raise RuntimeError(f"mixed contenders whose tasks compute the same outputs: {distinct}")  # a benchmark bug
    _onthefly_stats(lineup)
    compiled = [c for c in lineup.grid if c.compile_info]
    graphs = _compile_first(compiled, vocab, device)
    arch = {k: getattr(config, k) for k in ("num_hidden_layers", "hidden_size", "intermediate_size")}
    act, table = DTYPES[ic.dtype].itemsize, TABLE_DTYPES[ic.table_dtype].itemsize
    rows, cells = [], _cells(ic)
    for k, (section, batch_size, seq_len) in enumerate(cells, start=1):
        here = []
        for c in lineup.grid if section == "grid" else lineup.mixed:
            if positions is not None and seq_len + c.extra_positions > positions:
                reason = f"{seq_len} + {c.extra_positions} prompt positions > the model's {positions}"
                lineup.skipped.append(
                    {"section": section, "cell": f"{batch_size}x{seq_len}", "name": c.name, "reason": reason}
                )
            else:
                here.append(c)
        log.info(
            "cell %d/%d: %s %dx%d, %d contenders x %d rounds",
            k,
            len(cells),
            section,
            batch_size,
            seq_len,
            len(here),
            ic.warmup + ic.rounds,
        )
        timed = _time_cell(section, batch_size, seq_len, here, ic, device, vocab)
        for c in here:
            row = timed[c.name]
            row.update(analytic(c.method, c.options, arch, seq_len, act, table))
            if c.name in distinct:
                row["distinct_outputs"] = distinct[c.name]
            rows.append(row)
    on_gpu = device.type == "cuda"
    memory = {"backbone_bytes": backbone_bytes(backbone), "tables": lineup.tables}
    result = {
        "suite": "inference",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if on_gpu else cpu_model(),
        "torch_threads": threads,
        "torch_version": torch.__version__,
        "model": cfg.model.name,
        "weights": ic.weights,
        "architecture": {"model_type": config.model_type, "vocab_size": vocab, **arch},
        "dtype": ic.dtype,
        "table_dtype": ic.table_dtype,
        "rounds": ic.rounds,
        "warmup": ic.warmup,
        "reportable": ic.rounds >= MIN_ROUNDS,
        "noise": _noise(rows),
        "memory": {**memory, "budget_gb": OmegaConf.to_container(ic.memory_budget_gb)},
        "backbone_flops_per_token": {
            n: backbone_flops_per_token(arch, n) for n in sorted({*ic.seq_lens, ic.mixed.seq_len})
        },
        "compile": graphs,
        "rows": rows,
        "skipped": lineup.skipped,
    }
    for c in compiled:  # graphs over the whole run: recompilations for new shapes (batch 1 specialises) add some
        graphs[c.name]["graphs_compiled_in_run"] = c.compile_info["graphs_compiled"]
    result["files"] = tables.write(result, cfg.output_dir) + plots.write(result, cfg.output_dir)
    return result


def _noise(rows: list[dict]) -> dict[str, dict]:
    """Per cell: the bare backbone's second entry over its first (median, IQR): the spread any ratio carries."""
    out = {}
    for row in rows:
        if row["name"] == "bare_again":
            out[f"{row['section']} {row['cell']}"] = {k: row[k] for k in ("ratio", "ratio_q1", "ratio_q3")}
    return out


def show(result: dict) -> None:
    print(tables.markdown(result))
    med = statistics.median(abs(n["ratio"] - 1) for n in result["noise"].values()) if result["noise"] else 0.0
    print(f"\nnoise (bare_again / bare): median |ratio - 1| over cells = {med:.3f}")
    for path in result["files"]:
        print(f"written: {path}")
