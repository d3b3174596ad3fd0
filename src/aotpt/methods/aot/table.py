"""Compiled AoT tables: the artifact format and the bias sources that serve them.

After training, P = [P_1 | ... | P_L] (|V| x L·d) is computed once (`compile_tensors`)
and stored in fp16/bf16 beside the head and metadata (`<name>.safetensors` +
`<name>.json`). At inference T tasks' tables stack into T·|V| rows and token x
of a row of task t reads row t·|V| + x (`AotHooks.tasks`). Where those rows
live is the serving mode (DESIGN §1 "Memory"), each a bias source for AotHooks:

    device   : the stacked table on the accelerator; a gather per batch
    host     : the stacked table in (pinned) host memory; the batch's unique
               rows are gathered there and only those are copied to the device
    onthefly : each task's reparameterisation (kept in the artifact) computes
               the rows it is asked for; an LRU cache of rows avoids recomputing

All three return the same rows, bit for bit: the fp32 reparam rows cast to
the table dtype, computed in the same fixed-size blocks (`Reparam.rows_blocked`)
ahead of time and on the fly. Key T·|V| (`zero_key`, padding) reads zeros.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from transformers import PreTrainedModel

from aotpt.backbones import layout
from aotpt.errors import AotptError, choices
from aotpt.methods import reparam_config

FORMAT = "aotpt-aot-table/1"
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def compile_tensors(model: nn.Module, dtype: torch.dtype, chunk_rows: int) -> dict[str, torch.Tensor]:
    """The artifact's tensors from a trained AoT `TaskModel`: table, head and (mostly) the reparam weights.

    The reparam weights let `onthefly` serving recompute rows; they are kept
    unless they are as large as the table in fp32 (kron and fc: kept; dense:
    its weights are that fp32 table, so only the compiled table is kept).
    """
    source = model.backbone.aot.source
    table = source.table(chunk_rows=chunk_rows, dtype=dtype)  # (|V|, L*d)
    tensors = {"table": table, **{f"head.{k}": v for k, v in model.head.state_dict().items()}}
    reparam = source.state_dict()
    if _nbytes(reparam.values()) < table.numel() * 4:
        tensors.update({f"reparam.{k}": v for k, v in reparam.items()})
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


@dataclass(frozen=True)
class Artifact:
    """One compiled task: `path` (.safetensors) and its metadata (the .json beside it)."""

    path: Path
    meta: dict

    @classmethod
    def load(cls, path: str | Path) -> Artifact:
        path = Path(path)
        meta_path = path.with_suffix(".json")
        if not path.is_file() or not meta_path.is_file():
            raise AotptError(f"{path}: not an AoT artifact (need {path.name} and {meta_path.name}; see aotpt.export)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise AotptError(f"{meta_path}: format={meta.get('format')!r}, expected {FORMAT!r}")
        return cls(path, meta)

    @property
    def task(self) -> str:
        return self.meta["task"]

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

    def copy_table_into(self, out: torch.Tensor, chunk_rows: int = 4096) -> None:
        """Copy the table into `out` (|V|, L*d) chunk by chunk from the memory-mapped file: no second copy is held."""
        with safe_open(str(self.path), "pt") as f:
            table = f.get_slice("table")
            for start in range(0, len(out), chunk_rows):
                out[start : start + chunk_rows] = table[start : start + chunk_rows]

    def check_backbone(self, backbone: PreTrainedModel, fingerprint: str, name: str) -> None:
        """Refuse a backbone or vocabulary other than the one the table was compiled for, naming both values."""
        config, meta = backbone.config, self.meta
        have = {
            "model_type": (meta["model_type"], config.model_type),
            "num_layers": (meta["num_layers"], config.num_hidden_layers),
            "hidden_size": (meta["hidden_size"], config.hidden_size),
            "vocab_size": (self.vocab_size, backbone.get_submodule(layout(backbone).word_embeddings).num_embeddings),
            "tokenizer_fingerprint": (meta["tokenizer_fingerprint"], fingerprint),
        }
        for key, (want, got) in have.items():
            if want != got:
                where = f"{self.path}: compiled for {key}={want!r} ({meta['backbone']})"
                raise AotptError(f"{where}, but backbone {name} has {key}={got!r}")

    def reparam(self, backbone: PreTrainedModel) -> nn.Module:
        """The task's reparameterisation, rebuilt on `backbone` (fc reads its word embeddings) with stored weights."""
        weights = self.tensors("reparam")
        reparam_cfg = reparam_config(self.meta["method"]["reparam"])
        if not weights:
            raise AotptError(
                f"{self.path}: holds no reparam weights (reparam={reparam_cfg.name} weights are as large as the "
                "table); serve it with mode=device or mode=host"
            )
        word_embeddings = backbone.get_submodule(layout(backbone).word_embeddings)
        source = reparam_cfg.build(self.meta["num_layers"], self.meta["hidden_size"], word_embeddings)
        source.load_state_dict(weights)
        return source.to(backbone.device).eval()


class _Stacked(nn.Module):
    """What every serving source shares: T tasks of |V| rows each, rows of L*d values in `dtype`."""

    def __init__(self, artifacts: list[Artifact]) -> None:
        super().__init__()
        first = artifacts[0].meta
        dtypes = {a.meta["dtype"] for a in artifacts}
        if len(dtypes) > 1:
            raise AotptError(f"artifacts mix dtypes {sorted(dtypes)}; export them all with the same dtype=")
        self.num_tasks, self.vocab_size = len(artifacts), artifacts[0].vocab_size
        self.num_layers, self.hidden = first["num_layers"], first["hidden_size"]
        self.dtype = artifacts[0].dtype

    @property
    def zero_key(self) -> int:
        """The key of the all-zero row that padded positions read: one past the last task's rows."""
        return self.num_tasks * self.vocab_size

    def _stack(self, artifacts: list[Artifact], **where) -> torch.Tensor:
        """The tasks' tables one after another, then one zero row: rows t·|V| .. (t+1)·|V| hold task t
        (T·|V| + 1, L*d)."""
        table = torch.empty(self.zero_key + 1, self.num_layers * self.hidden, dtype=self.dtype, **where)
        for t, artifact in enumerate(artifacts):
            artifact.copy_table_into(table[t * self.vocab_size : (t + 1) * self.vocab_size])
        table[self.zero_key].zero_()
        return table

    def held_bytes(self) -> dict[str, int]:
        """Bytes this source holds, by kind: table on the device, table in host memory, weights, cache."""
        raise NotImplementedError


class DeviceTable(_Stacked):
    """mode=device: the stacked table (T·|V|, L*d) lives beside the backbone; a batch costs one gather."""

    def __init__(self, artifacts: list[Artifact], device: torch.device) -> None:
        super().__init__(artifacts)
        self.register_buffer("table", self._stack(artifacts, device=device), persistent=False)

    def rows(self, keys: torch.Tensor) -> torch.Tensor:
        return self.table[keys]  # (N, L*d)

    def held_bytes(self) -> dict[str, int]:
        return {"device_table": _nbytes([self.table]), "host_table": 0, "weights": 0, "cache": 0}


class HostTable(_Stacked):
    """mode=host: the stacked table stays in host memory (pinned when CUDA is there, for async copies);
    each batch gathers its unique rows on the host and copies only those to the device."""

    def __init__(self, artifacts: list[Artifact]) -> None:
        super().__init__(artifacts)
        self.pinned = torch.cuda.is_available()
        # A plain attribute, not a buffer: moving the model to the GPU must leave it on the host.
        self.table = self._stack(artifacts, pin_memory=self.pinned)

    def rows(self, keys: torch.Tensor) -> torch.Tensor:
        staging = torch.empty(len(keys), self.table.shape[1], dtype=self.dtype, pin_memory=self.pinned)
        torch.index_select(self.table, 0, keys.cpu(), out=staging)  # (N, L*d) on the host
        return staging.to(keys.device, non_blocking=self.pinned)

    def held_bytes(self) -> dict[str, int]:
        return {"device_table": 0, "host_table": _nbytes([self.table]), "weights": 0, "cache": 0}


class OnTheFlyRows(_Stacked):
    """mode=onthefly: rows computed by each task's reparameterisation, kept in an LRU cache of `cache_rows` rows.

    The cache is one preallocated (cache_rows, L*d) tensor plus a key -> slot
    map in least-recently-used order, so memory held is fixed and a hit is a
    gather. Rows are computed in fp32 and cast to the table dtype, as export does.
    (functools.lru_cache caches whole calls; a batch needs a cache per row.)
    """

    def __init__(self, artifacts: list[Artifact], backbone: PreTrainedModel, cache_rows: int) -> None:
        super().__init__(artifacts)
        if cache_rows < 1:
            raise AotptError(f"cache_rows={cache_rows} must be a positive integer")
        self.reparams = nn.ModuleList(artifact.reparam(backbone) for artifact in artifacts)
        cache = torch.empty(cache_rows, self.num_layers * self.hidden, dtype=self.dtype, device=backbone.device)
        self.register_buffer("cache", cache, persistent=False)
        self._slots: OrderedDict[int, int] = OrderedDict()  # key -> slot, least recently used first
        self.hits = self.misses = 0

    def _compute(self, keys: torch.Tensor) -> torch.Tensor:
        """Rows of `keys` (N,) from each task's reparameterisation, exactly as export computed them."""
        out = torch.zeros(len(keys), self.cache.shape[1], dtype=self.dtype, device=keys.device)  # zero_key stays 0
        task, token = keys // self.vocab_size, keys % self.vocab_size  # (N,), (N,)
        for t in task.unique().tolist():
            if t < self.num_tasks:
                sel = task == t
                out[sel] = self.reparams[t].rows_blocked(token[sel], self.dtype)
        return out

    def _store(self, keys: list[int], rows: torch.Tensor) -> None:
        """Put the last `cache_rows` of `rows` in the cache, evicting the least recently used."""
        capacity = len(self.cache)
        keys, rows = keys[-capacity:], rows[-capacity:]
        slots = []
        for key in keys:
            slot = len(self._slots) if len(self._slots) < capacity else self._slots.popitem(last=False)[1]
            self._slots[key] = slot
            slots.append(slot)
        self.cache[torch.tensor(slots, device=self.cache.device)] = rows

    def rows(self, keys: torch.Tensor) -> torch.Tensor:
        out = torch.empty(len(keys), self.cache.shape[1], dtype=self.dtype, device=keys.device)
        hit_pos, hit_slots, miss_pos = [], [], []
        for pos, key in enumerate(keys.tolist()):
            slot = self._slots.get(key)
            if slot is None:
                miss_pos.append(pos)
            else:
                self._slots.move_to_end(key)
                hit_pos.append(pos)
                hit_slots.append(slot)
        self.hits, self.misses = self.hits + len(hit_pos), self.misses + len(miss_pos)
        if hit_pos:
            out[hit_pos] = self.cache[hit_slots]
        if miss_pos:
            miss = keys[miss_pos]
            out[miss_pos] = computed = self._compute(miss)
            self._store(miss.tolist(), computed)
        return out

    def held_bytes(self) -> dict[str, int]:
        weights = sum(_nbytes(r.state_dict().values()) for r in self.reparams)
        return {"device_table": 0, "host_table": 0, "weights": weights, "cache": _nbytes([self.cache])}


MODES = ("device", "host", "onthefly")


def build_source(mode: str, artifacts: list[Artifact], backbone: PreTrainedModel, cache_rows: int = 8192) -> _Stacked:
    """The bias source of serving mode `mode` for `artifacts` (task t = artifacts[t]), on the backbone's device."""
    if mode == "device":
        return DeviceTable(artifacts, backbone.device)
    if mode == "host":
        return HostTable(artifacts)
    if mode == "onthefly":
        return OnTheFlyRows(artifacts, backbone, cache_rows)
    raise choices("mode", mode, MODES)
