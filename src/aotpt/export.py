"""Compile a trained AoT run into a serving artifact, ahead of time.

    python -m aotpt.export run_dir=logs/runs/<run folder> [dtype=bf16] [chunk_rows=4096] [output=...]

Reads the run's `model/trained.safetensors` and its record (`aotpt.record`),
rebuilds only what the table needs — the reparameterisation, plus the
backbone's word embeddings for fc (read alone from the checkpoint; the rest of
the backbone is never built) — computes the whole table P (|V| x L·d) in row
chunks of fp32 cast to `dtype` (peak memory: the table plus one chunk), and
writes `<output>.safetensors` (table, head, reparam weights for
`mode=onthefly`) and `<output>.json` (the run record and the artifact's own
metadata, format `artifact.FORMAT`), each atomically.
Default output: <run_dir>/model/table.safetensors.
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
from omegaconf import DictConfig
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from aotpt import __version__
from aotpt.atomic import atomic_path, write_json_atomic
from aotpt.backbones import load_word_embeddings
from aotpt.cli import CONF_DIR, entry, log, one_line_errors
from aotpt.errors import AotptError, ConfigError, choices
from aotpt.methods.aot.artifact import DTYPES, FORMAT, compile_tensors
from aotpt.record import read_run

# where a TaskModel keeps the AoT source and the head (trained.safetensors names its tensors so)
SOURCE, HEAD = "backbone.aot.source.", "head."


def export(run_dir: str | Path, dtype: str = "fp16", chunk_rows: int = 4096, output: str | Path | None = None) -> Path:
    """Write the artifact of the AoT run in `run_dir`; returns the .safetensors path."""
    if dtype not in DTYPES:
        raise choices("dtype", dtype, DTYPES)
    if chunk_rows < 1:
        raise ConfigError(f"chunk_rows={chunk_rows} must be a positive integer")
    trained, record = read_run(run_dir, "run_dir")
    method = record.method_config
    if method.name != "aot":
        raise AotptError(f"run_dir={run_dir} was trained with method={method.name}; only method=aot compiles")
    try:
        state = load_file(str(trained))
    except (SafetensorError, OSError) as err:
        raise AotptError(f"{trained}: truncated or corrupt trained tensors ({err})") from None

    start = time.perf_counter()
    embeddings = None
    if method.reparam.needs_embeddings:
        embeddings = load_word_embeddings(record.backbone, record.random_init, record.init_seed)
    source = method.reparam.build(record.num_layers, record.hidden_size, record.vocab_size, embeddings)
    source.load_state_dict({k.removeprefix(SOURCE): v for k, v in state.items() if k.startswith(SOURCE)})
    head = {k.removeprefix(HEAD): v for k, v in state.items() if k.startswith(HEAD)}
    tensors = compile_tensors(source.eval(), head, DTYPES[dtype], chunk_rows)
    del source, embeddings

    out = Path(output) if output else trained.with_name("table.safetensors")
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp))
    write_json_atomic(
        out.with_suffix(".json"),
        {
            "format": FORMAT,
            "run": record.with_(trainable=[]).to_dict(),
            "dtype": dtype,
            "table_shape": list(tensors["table"].shape),
            "onthefly": any(k.startswith("reparam.") for k in tensors),  # reparam weights stored
            "source_run": str(Path(run_dir).resolve()),
            "aotpt_version": __version__,
            "export_s": round(time.perf_counter() - start, 3),
        },
    )
    log.info("exported %s (%s, %.1f MB)", out, dtype, out.stat().st_size / 1e6)
    return out


def run(cfg: DictConfig) -> dict:
    if not cfg.run_dir:
        raise ConfigError("run_dir is required: python -m aotpt.export run_dir=logs/runs/<run folder>")
    path = export(cfg.run_dir, cfg.dtype, cfg.chunk_rows, cfg.output)
    print(f"written: {path} and {path.with_suffix('.json').name}")
    return {"artifact": str(path)}


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="export")
@one_line_errors
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    entry(main)
