"""Benchmarks that print measured ratios: `python -m aotpt.bench [suite=train_step] [model=minilm] [device=cuda]`.

The suites live in `aotpt.benchmarks` (one module each, one timing helper for
all); this CLI picks one, prints its table and writes its JSON.

    train_step : optimiser steps of each method, ratio to full fine-tuning
    serving    : export + the serving modes of AoT on a RoBERTa-base-sized random backbone
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from aotpt.atomic import write_json_atomic
from aotpt.benchmarks import serving, train_step
from aotpt.cli import CONF_DIR, entry, one_line_errors
from aotpt.errors import choices

# suite -> the module that runs it (`run(cfg) -> dict`) and prints its table (`show(result)`)
SUITES = {"train_step": train_step, "serving": serving}


def run(cfg: DictConfig) -> dict:
    if cfg.suite not in SUITES:
        raise choices("suite", cfg.suite, SUITES)
    suite = SUITES[cfg.suite]
    result = suite.run(cfg)
    suite.show(result)
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
