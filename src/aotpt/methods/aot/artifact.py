"""The compiled AoT artifact: the table P computed ahead of time, the head, and the run record.

After training, P = [P_1 | ... | P_L] (|V| x L·d) is computed once
(`compile_tensors`) and stored in fp16/bf16 beside the head:

    <name>.safetensors   "table" (|V|, L*d), "head.*", and "reparam.*" (the kron/fc weights, for rows on the fly)
    <name>.json          {"format": FORMAT, "run": <the run's RunMeta>, "dtype", "table_shape", ...}

The method and reparam are stored by registry name with their options (in
the run record), never as Python class paths. Artifacts of the first format
(`FORMAT_V1`: flat metadata, class paths) still load. Where the rows live at
inference is the serving side's business (`aotpt.serving.sources`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import PreTrainedModel

from aotpt.backbones import layout
from aotpt.errors import AotptError
from aotpt.record import RunMeta

FORMAT = "aotpt-aot-table/2"
FORMAT_V1 = "aotpt-aot-table/1"
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def compile_tensors(
    source: nn.Module, head: dict[str, torch.Tensor], dtype: torch.dtype, chunk_rows: int
) -> dict[str, torch.Tensor]:
    """The artifact's tensors from a trained reparameterisation and head: table, head and (mostly) the reparam
    weights.

    The reparam weights let `onthefly` serving recompute rows; they are kept
    unless they are as large as the table in fp32 (kron and fc: kept; dense:
    its weights are that fp32 table, so only the compiled table is kept).
    """
    table = source.table(chunk_rows=chunk_rows, dtype=dtype)  # (|V|, L*d)
    tensors = {"table": table, **{f"head.{k}": v for k, v in head.items()}}
    reparam = source.state_dict()
    if nbytes(reparam.values()) < table.numel() * 4:
        tensors.update({f"reparam.{k}": v for k, v in reparam.items()})
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


@dataclass(frozen=True)
class Artifact:
    """One compiled task: `path` (.safetensors), its metadata (the .json beside it) and its run record."""

    path: Path
    meta: dict
    record: RunMeta

    @classmethod
    def load(cls, path: str | Path) -> Artifact:
        path = Path(path)
        meta_path = path.with_suffix(".json")
        if not path.is_file() or not meta_path.is_file():
            raise AotptError(f"{path}: not an AoT artifact (need {path.name} and {meta_path.name}; see aotpt.export)")
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise AotptError(f"{meta_path}: truncated or corrupt artifact metadata ({err})") from None
        if meta.get("format") == FORMAT:
            record = RunMeta.from_dict(meta["run"], meta_path)
        elif meta.get("format") == FORMAT_V1:  # the run's metadata was the artifact's own, flat
            record = RunMeta.from_dict({k: v for k, v in meta.items() if k != "format"}, meta_path)
        else:
            raise AotptError(f"{meta_path}: format={meta.get('format')!r}; accepted: {FORMAT!r}, {FORMAT_V1!r}")
        artifact = cls(path, meta, record)
        artifact.check_file()
        return artifact

    def check_file(self) -> None:
        """Refuse a truncated or corrupt tensor file in one line naming it (safetensors checks its header)."""
        try:
            with safe_open(str(self.path), "pt") as f:
                shape = f.get_slice("table").get_shape()
        except (SafetensorError, OSError) as err:
            raise AotptError(f"{self.path}: truncated or corrupt artifact ({err})") from None
        if list(shape) != self.meta["table_shape"]:
            raise AotptError(f"{self.path}: table of shape {shape}, its metadata says {self.meta['table_shape']}")

    @property
    def task(self) -> str:
        return self.record.task

    @property
    def vocab_size(self) -> int:
        """Rows of the table: the word-embedding rows of the backbone it was compiled on."""
        return self.meta["table_shape"][0]

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.meta["dtype"]]

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """The stored tensors under `prefix.` (head, reparam), names without the prefix."""
        with safe_open(str(self.path), "pt") as f:
            return {k[len(prefix) + 1 :]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix + ".")}

    def table_chunks(self, chunk_rows: int = 4096) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, rows) of the table, `chunk_rows` (N, L*d) at a time, read from the memory-mapped file:
        no whole second copy is ever held."""
        with safe_open(str(self.path), "pt") as f:
            table = f.get_slice("table")
            for start in range(0, self.vocab_size, chunk_rows):
                yield start, table[start : start + chunk_rows]

    def copy_table_into(self, out: torch.Tensor, chunk_rows: int = 4096) -> None:
        """Copy the table into `out` (|V|, L*d), chunk by chunk."""
        for start, chunk in self.table_chunks(chunk_rows):
            out[start : start + len(chunk)] = chunk

    def check_backbone(self, backbone: PreTrainedModel, fingerprint: str, name: str) -> None:
        """Refuse a backbone or vocabulary other than the one the table was compiled for, naming both values."""
        config, record = backbone.config, self.record
        have = {
            "model_type": (record.model_type, config.model_type),
            "num_layers": (record.num_layers, config.num_hidden_layers),
            "hidden_size": (record.hidden_size, config.hidden_size),
            "vocab_size": (self.vocab_size, backbone.get_submodule(layout(backbone).word_embeddings).num_embeddings),
            "tokenizer_fingerprint": (record.tokenizer_fingerprint, fingerprint),
        }
        for key, (want, got) in have.items():
            if want != got:
                where = f"{self.path}: compiled for {key}={want!r} ({record.backbone})"
                raise AotptError(f"{where}, but backbone {name} has {key}={got!r}")

    def reparam(self, word_embeddings: nn.Embedding) -> nn.Module:
        """The task's reparameterisation with its stored weights (fc reads `word_embeddings`), in eval mode."""
        weights = self.tensors("reparam")
        reparam_cfg = self.record.method_config.reparam
        if not weights:
            raise AotptError(
                f"{self.path}: holds no reparam weights (reparam={reparam_cfg.name} weights are as large as the "
                "table); serve it with mode=device or mode=host"
            )
        source = reparam_cfg.build(self.record.num_layers, self.record.hidden_size, self.vocab_size, word_embeddings)
        source.load_state_dict(weights)
        return source.to(word_embeddings.weight.device).eval()
