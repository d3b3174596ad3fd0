"""Where the rows of T stacked AoT tables live at inference: the serving modes (DESIGN §1 "Memory").

Each is a bias source for `AotHooks` (`prepare(keys)` once per forward,
`layer(state, l)` per layer). Key t·|V| + x is token x of task t; key T·|V|
(`zero_key`, padding) reads zeros.

    device   : the stacked tables on the accelerator, layer-major (L, T·|V| + 1, d): each layer gathers its
               (B, n, d) rows straight from its own contiguous slice; no sort, no host sync, no (B, n, L, d)
    host     : the stacked tables in (pinned) host memory; a batch's distinct rows are gathered there and
               only those are copied to the device
    onthefly : each task's reparameterisation (kept in the artifact) computes the rows it is asked for,
               behind an LRU cache of rows

All three give the same rows, bit for bit: the fp32 reparam rows cast to the
table dtype, computed in the same fixed-size blocks (`Reparam.rows_blocked`)
ahead of time and on the fly.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel

from aotpt.backbones import layout
from aotpt.errors import AotptError, choices
from aotpt.methods.aot.artifact import Artifact, nbytes
from aotpt.methods.aot.hooks import UniqueRows

MODES = ("device", "host", "onthefly")


class _Stacked(nn.Module):
    """What every serving source shares: T tasks of |V| rows each, rows of L*d values in `dtype`."""

    def __init__(self, artifacts: list[Artifact]) -> None:
        super().__init__()
        dtypes = {a.meta["dtype"] for a in artifacts}
        if len(dtypes) > 1:
            raise AotptError(f"artifacts mix dtypes {sorted(dtypes)}; export them all with the same dtype=")
        first = artifacts[0].record
        self.num_tasks, self.vocab_size = len(artifacts), artifacts[0].vocab_size
        self.num_layers, self.hidden = first.num_layers, first.hidden_size
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
    """mode=device: the stacked tables beside the backbone, layer-major (L, T·|V| + 1, d); a layer's bias is one
    gather of (B, n) keys from its own slice."""

    def __init__(self, artifacts: list[Artifact], device: torch.device) -> None:
        super().__init__(artifacts)
        table = torch.empty(self.num_layers, self.zero_key + 1, self.hidden, dtype=self.dtype, device=device)
        for t, artifact in enumerate(artifacts):
            for start, chunk in artifact.table_chunks():  # (N, L*d) rows of task t
                rows = chunk.to(device).view(len(chunk), self.num_layers, self.hidden).transpose(0, 1)  # (L, N, d)
                table[:, t * self.vocab_size + start : t * self.vocab_size + start + len(chunk)] = rows
        table[:, self.zero_key] = 0
        self.register_buffer("table", table, persistent=False)

    def prepare(self, keys: torch.Tensor) -> torch.Tensor:
        return keys  # (B, n): nothing to fetch, each layer gathers its own rows

    def layer(self, keys: torch.Tensor, index: int) -> torch.Tensor:
        return F.embedding(keys, self.table[index])  # (B, n, d)

    def rows(self, keys: torch.Tensor) -> torch.Tensor:
        """Whole rows (N,) -> (N, L*d), as the other modes give them (tests, inspection)."""
        return self.table[:, keys].transpose(0, 1).reshape(len(keys), -1)

    def held_bytes(self) -> dict[str, int]:
        return {"device_table": nbytes([self.table]), "host_table": 0, "weights": 0, "cache": 0}


class HostTable(UniqueRows, _Stacked):
    """mode=host: the stacked table stays in host memory (pinned when CUDA is there, for async copies);
    each batch gathers its distinct rows on the host and copies only those to the device."""

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
        return {"device_table": 0, "host_table": nbytes([self.table]), "weights": 0, "cache": 0}


class OnTheFlyRows(UniqueRows, _Stacked):
    """mode=onthefly: rows computed by each task's reparameterisation, kept in an LRU cache of `cache_rows` rows.

    The cache is one preallocated (cache_rows, L*d) tensor plus a key -> slot
    map in least-recently-used order, so memory held is fixed and a hit is a
    gather. Rows are computed as export computes them (`rows_blocked`).
    (functools.lru_cache caches whole calls; a batch needs a cache per row.)
    """

    def __init__(self, artifacts: list[Artifact], backbone: PreTrainedModel, cache_rows: int) -> None:
        super().__init__(artifacts)
        if cache_rows < 1:
            raise AotptError(f"cache_rows={cache_rows} must be a positive integer")
        word_embeddings = backbone.get_submodule(layout(backbone).word_embeddings)
        self.reparams = nn.ModuleList(artifact.reparam(word_embeddings) for artifact in artifacts)
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
        weights = sum(nbytes(r.state_dict().values()) for r in self.reparams)
        return {"device_table": 0, "host_table": 0, "weights": weights, "cache": nbytes([self.cache])}


def build_source(mode: str, artifacts: list[Artifact], backbone: PreTrainedModel, cache_rows: int = 8192) -> _Stacked:
    """The bias source of serving mode `mode` for `artifacts` (task t = artifacts[t]), on the backbone's device."""
    if mode == "device":
        return DeviceTable(artifacts, backbone.device)
    if mode == "host":
        return HostTable(artifacts)
    if mode == "onthefly":
        return OnTheFlyRows(artifacts, backbone, cache_rows)
    raise choices("mode", mode, MODES)
