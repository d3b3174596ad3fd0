"""Benchmarks that print measured ratios: `python -m aotpt.bench [suite=train_step] [model=minilm]`.

train_step: optimiser steps (forward, backward, AdamW) of each method on the
same random token ids, batch x length as configured, taken in turn (one step
of each method per round) in one process; reports each method's median step
time and its ratio to full fine-tuning. Warm-up rounds run first; CUDA work
is synchronised around every timed step.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from aotpt.backbones import count_params
from aotpt.cli import CONF_DIR, entry, log, one_line_errors
from aotpt.errors import choices
from aotpt.model import build_model
from aotpt.module import instantiate_method
from aotpt.results import write_json_atomic


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _step(model, optimizer, ids, mask, labels) -> float:
    """Seconds for one optimiser step (forward, backward, AdamW)."""
    _sync(ids.device)
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(ids, mask), labels).backward()
    optimizer.step()
    _sync(ids.device)
    return time.perf_counter() - start


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
        models[name] = build_model(cfg.model.pretrained, instantiate_method(method), 2, cfg.model.random_init)
        models[name].to(device).train()
        optimizers[name] = torch.optim.AdamW([p for p in models[name].parameters() if p.requires_grad], lr=1e-4)
    times: dict[str, list[float]] = {name: [] for name in models}
    for round_ in range(cfg.warmup + cfg.steps):
        for name, model in models.items():
            seconds = _step(model, optimizers[name], ids, mask, labels)
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


SUITES = {"train_step": train_step}


def print_table(result: dict) -> None:
    rows = result["methods"]
    ratio_key = next(k for k in next(iter(rows.values())) if k.startswith("ratio_to_"))
    shape = f"batch {result['batch_size']} x {result['seq_len']}"
    print(f"\n{result['suite']} on {result['model']} ({result['device']}, {shape})")
    print(f"{'method':<14}{'trainable':>14}{'s/step':>10}{ratio_key:>22}")
    for name, row in rows.items():
        print(f"{name:<14}{row['trainable_params']:>14,}{row['median_step_s']:>10.3f}{row[ratio_key]:>22.3f}")


def run(cfg: DictConfig) -> dict:
    if cfg.suite not in SUITES:
        raise choices("suite", cfg.suite, SUITES)
    result = SUITES[cfg.suite](cfg)
    print_table(result)
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
