"""suite=train_step: optimiser steps (forward, backward, AdamW) of each method, as a ratio to full fine-tuning.

All methods step on the same random token ids (batch x length as
configured), taking turns step by step in one process (`timing.interleaved`).
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from aotpt.backbones import count_params
from aotpt.benchmarks.timing import interleaved, paired_ratios, spread
from aotpt.methods import method_config
from aotpt.model import build_model


def _step(model, optimizer, ids, mask, labels) -> None:
    """One optimiser step: forward, backward, AdamW."""
    optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(ids, mask), labels).backward()
    optimizer.step()


def run(cfg: DictConfig) -> dict:
    device = torch.device(cfg.device)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (cfg.batch_size, cfg.seq_len), generator=g).to(device)  # inside every vocab
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 2, (cfg.batch_size,), generator=g).to(device)
    models, runners = {}, {}
    for name, method in cfg.methods.items():
        torch.manual_seed(0)
        model = build_model(cfg.model.pretrained, method_config(method), 2, cfg.model.random_init, init_seed=0)
        models[name] = model.to(device).train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        runners[name] = lambda i, m=model, o=optimizer: _step(m, o, ids, mask, labels)
    times = interleaved(runners, device, cfg.warmup, cfg.steps, label="train_step")
    ratios = paired_ratios(times, cfg.baseline)
    rows = {}
    for name, model in models.items():
        trainable, total = count_params(model)
        step = spread(times[name])
        rows[name] = {
            "median_step_s": step["median"],
            "step_iqr_s": [step["q1"], step["q3"]],
            "trainable_params": trainable,
            "total_params": total,
            f"ratio_to_{cfg.baseline}": ratios[name]["median"],
            "ratio_iqr": [ratios[name]["q1"], ratios[name]["q3"]],
        }
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


def show(result: dict) -> None:
    rows = result["methods"]
    ratio_key = next(k for k in next(iter(rows.values())) if k.startswith("ratio_to_"))
    shape = f"batch {result['batch_size']} x {result['seq_len']}"
    print(f"\n{result['suite']} on {result['model']} ({result['device']}, {shape}, {result['steps']} rounds)")
    print(f"{'method':<14}{'trainable':>14}{'s/step':>10}{ratio_key:>22}{'IQR':>18}")
    for name, row in rows.items():
        iqr = f"{row['ratio_iqr'][0]:.3f}-{row['ratio_iqr'][1]:.3f}"
        print(f"{name:<14}{row['trainable_params']:>14,}{row['median_step_s']:>10.3f}{row[ratio_key]:>22.3f}{iqr:>18}")
