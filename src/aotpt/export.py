"""Compile a trained AoT run into a serving artifact, ahead of time.

    python -m aotpt.export run_dir=logs/runs/rte-minilm-aot/seed42 [dtype=bf16] [chunk_rows=4096] [output=...]

Reads the run's `model/trained.safetensors` + `trained.json` (written by
`aotpt.train`), rebuilds backbone + reparam + head, computes the whole table
P (|V| x L·d) in row chunks of fp32 cast to `dtype` (peak memory: the table
plus one chunk), and writes `<output>.safetensors` (table, head, reparam
weights for `mode=onthefly`) and `<output>.json` (metadata, format
`table.FORMAT`), each atomically. Default output: <run_dir>/model/table.safetensors.

A run whose backbone was randomly initialised (`model.random_init`, tests) is
rebuilt with fresh random weights: fine for kron, whose table ignores the
backbone, but an fc table then reads other word embeddings than in training.
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
from omegaconf import DictConfig
from safetensors.torch import save_file

from aotpt import __version__
from aotpt.atomic import atomic_path, write_json_atomic
from aotpt.cli import CONF_DIR, entry, log, one_line_errors
from aotpt.errors import AotptError, ConfigError, choices
from aotpt.methods import method_config
from aotpt.methods.aot.table import DTYPES, FORMAT, compile_tensors
from aotpt.model import build_model, load_trained, read_run


def export(run_dir: str | Path, dtype: str = "fp16", chunk_rows: int = 4096, output: str | Path | None = None) -> Path:
    """Write the artifact of the AoT run in `run_dir`; returns the .safetensors path."""
    if dtype not in DTYPES:
        raise choices("dtype", dtype, DTYPES)
    if chunk_rows < 1:
        raise ConfigError(f"chunk_rows={chunk_rows} must be a positive integer")
    trained, meta = read_run(run_dir, "run_dir")
    method = method_config(meta["method"])
    if type(method).name != "aot":
        raise AotptError(f"run_dir={run_dir} was trained with method={type(method).name}; only method=aot compiles")

    start = time.perf_counter()
    model = build_model(meta["backbone"], method, len(meta["label_names"]) or 1, meta["random_init"])
    load_trained(model, trained)
    tensors = compile_tensors(model.eval(), DTYPES[dtype], chunk_rows)
    del model

    out = Path(output) if output else trained.with_name("table.safetensors")
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp))
    info = {k: v for k, v in meta.items() if k not in ("trainable", "aotpt_version")}
    write_json_atomic(
        out.with_suffix(".json"),
        {
            **info,
            "format": FORMAT,
            "dtype": dtype,
            "table_shape": list(tensors["table"].shape),
            "onthefly": any(k.startswith("reparam.") for k in tensors),  # reparam weights stored
            "source_run": str(Path(run_dir).resolve()),
            "trained_with_aotpt": meta.get("aotpt_version"),
            "aotpt_version": __version__,
            "export_s": round(time.perf_counter() - start, 3),
        },
    )
    log.info("exported %s (%s, %.1f MB)", out, dtype, out.stat().st_size / 1e6)
    return out


def run(cfg: DictConfig) -> dict:
    if not cfg.run_dir:
        raise ConfigError("run_dir is required: python -m aotpt.export run_dir=logs/runs/<run>/seed<seed>")
    path = export(cfg.run_dir, cfg.dtype, cfg.chunk_rows, cfg.output)
    print(f"written: {path} and {path.with_suffix('.json').name}")
    return {"artifact": str(path)}


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="export")
@one_line_errors
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    entry(main)
