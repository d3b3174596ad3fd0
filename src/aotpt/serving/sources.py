"""Where the rows of the served tasks' AoT tables live at inference: the serving modes, or tiers (DESIGN §1, §8).

Each mode is a bias source for `AotHooks` (`prepare(keys)` once per forward,
`layer(state, l)` per layer). Tasks sit in slots: key s·|V| + x is token x of
the task in slot s, and `zero_key` (one past the last slot) reads zeros, for
padding. Tasks enter and leave slots while serving: `load(artifact)` does the
slow part (reading, mapping, building) anywhere, `put(slot, loaded)` and
`drop(slot)` are quick and happen between forwards.

    device   : every table on the accelerator, layer-major (L, S·|V| + 1, d): each layer gathers its (B, n, d)
               rows straight from its own contiguous slice; no sort, no host sync, no (B, n, L, d)
    host     : each table in (pinned) host memory; a batch's distinct rows are gathered there and only those
               are copied to the device
    mmap     : each table memory-mapped from its artifact file: the OS reads in the pages of the rows asked
               for and evicts them under memory pressure (tables larger than memory, many tasks)
    onthefly : each task's reparameterisation (kron/fc weights, MBs) computes the rows asked for

host, mmap and onthefly keep the hot rows on the device in a `RowCache`
sized in bytes (`cache_bytes`; by default on for onthefly, and for host and
mmap only when the device is an accelerator: on a CPU they are already there).

All give the same rows, bit for bit: the fp32 reparam rows cast to the table
dtype, computed in the same fixed-size blocks (`Reparam.rows_blocked`) ahead
of time, when a weights-only artifact's table is computed at load, and on the fly.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel

from aotpt.backbones import layout
from aotpt.errors import AotptError, choices
from aotpt.methods.aot.artifact import Artifact, nbytes
from aotpt.methods.aot.hooks import UniqueRows
from aotpt.serving.cache import RowCache

MODES = ("device", "host", "mmap", "onthefly")
DEFAULT_CACHE_BYTES = 256 * 1024**2
HELD = ("device_table", "host_table", "mapped", "weights", "cache")  # what `held_bytes` reports, by kind


def table_rows(artifact: Artifact, word_embeddings: nn.Embedding, chunk_rows: int = 4096) -> Iterator[torch.Tensor]:
    """The task's table (|V|, L*d) in `chunk_rows` chunks: read from the file, or computed from the reparam
    weights of a weights-only artifact exactly as export computes it (blocks of `rows_blocked`)."""
    if artifact.has_table:
        for _, chunk in artifact.table_chunks(chunk_rows):
            yield chunk
        return
    reparam = artifact.reparam(word_embeddings)
    device = word_embeddings.weight.device
    for start in range(0, artifact.vocab_size, chunk_rows):
        ids = torch.arange(start, min(start + chunk_rows, artifact.vocab_size), device=device)
        yield reparam.rows_blocked(ids, artifact.dtype)


class _Slots(nn.Module):
    """What every source shares: tasks of |V| rows each, rows of L*d values in `dtype`, in slots."""

    def __init__(self, template: Artifact, backbone: PreTrainedModel) -> None:
        super().__init__()
        record = template.record
        self.vocab_size, self.num_layers, self.hidden = template.vocab_size, record.num_layers, record.hidden_size
        self.dtype, self.dtype_name = template.dtype, template.meta["dtype"]
        self.device = backbone.device
        # A tuple keeps the backbone's embeddings out of this module (fc reads them, never copies them).
        self._embeddings = (backbone.get_submodule(layout(backbone).word_embeddings),)
        self.capacity = 0

    @property
    def zero_key(self) -> int:
        """The key of the all-zero row that padded positions read: one past the last slot's rows."""
        return self.capacity * self.vocab_size

    def check(self, artifact: Artifact) -> None:
        """Refuse an artifact whose rows do not fit these slots (dtype; the backbone is checked by the predictor)."""
        if artifact.meta["dtype"] != self.dtype_name:
            raise AotptError(
                f"{artifact.path}: dtype={artifact.meta['dtype']}, the served tables are {self.dtype_name}; "
                "export every task with the same dtype="
            )

    def load(self, artifact: Artifact):
        """The slow part of adding a task (read, map or build its rows' source); safe outside the serving loop."""
        raise NotImplementedError

    def reserve(self, slots: int) -> None:
        """Allocate for `slots` tasks at once, where the source stacks them."""

    def put(self, slot: int, loaded) -> None:
        raise NotImplementedError

    def drop(self, slot: int) -> None:
        raise NotImplementedError

    def held_bytes(self) -> dict[str, int]:
        """Bytes this source holds, by kind (`HELD`)."""
        raise NotImplementedError


class DeviceTable(_Slots):
    """mode=device: the tables beside the backbone, layer-major (L, S·|V| + 1, d); a layer's bias is one gather
    of (B, n) keys from its own slice. Adding a task past the allocated slots re-allocates the table (one more
    slot: memory stays exactly the tasks' tables)."""

    def __init__(self, template: Artifact, backbone: PreTrainedModel) -> None:
        super().__init__(template, backbone)
        table = torch.zeros(self.num_layers, 1, self.hidden, dtype=self.dtype, device=self.device)
        self.register_buffer("table", table, persistent=False)  # only the zero row so far

    def reserve(self, slots: int) -> None:
        """Allocate `slots` slots (copying the tables already there), the zero row after them."""
        if slots <= self.capacity:
            return
        shape = (self.num_layers, slots * self.vocab_size + 1, self.hidden)
        table = torch.empty(shape, dtype=self.dtype, device=self.device)
        table[:, : self.zero_key] = self.table[:, : self.zero_key]
        table[:, slots * self.vocab_size] = 0
        self.table, self.capacity = table, slots

    def load(self, artifact: Artifact) -> torch.Tensor:
        self.check(artifact)
        rows = torch.empty(self.num_layers, self.vocab_size, self.hidden, dtype=self.dtype, device=self.device)
        start = 0
        for chunk in table_rows(artifact, self._embeddings[0]):  # (N, L*d)
            chunk = chunk.to(self.device).view(len(chunk), self.num_layers, self.hidden)  # (N, L, d)
            rows[:, start : start + len(chunk)] = chunk.transpose(0, 1)
            start += len(chunk)
        return rows  # (L, |V|, d)

    def put(self, slot: int, loaded: torch.Tensor) -> None:
        self.reserve(slot + 1)
        self.table[:, slot * self.vocab_size : (slot + 1) * self.vocab_size] = loaded

    def drop(self, slot: int) -> None:
        pass  # nothing reads a free slot; the next task put there overwrites it

    def prepare(self, keys: torch.Tensor) -> torch.Tensor:
        return keys  # (B, n): nothing to fetch, each layer gathers its own rows

    def layer(self, keys: torch.Tensor, index: int) -> torch.Tensor:
        return F.embedding(keys, self.table[index])  # (B, n, d)

    def rows(self, keys: torch.Tensor) -> torch.Tensor:
        """Whole rows (N,) -> (N, L*d), as the other modes give them (tests, inspection)."""
        return self.table[:, keys].transpose(0, 1).reshape(len(keys), -1)

    def held_bytes(self) -> dict[str, int]:
        return {**dict.fromkeys(HELD, 0), "device_table": nbytes([self.table])}


class _Tiered(UniqueRows, _Slots):
    """Rows from a per-task store (`load` builds it: a host table, a mapped file, reparam weights), behind an
    optional `RowCache` of hot rows on the device; each batch asks for its distinct keys once."""

    def __init__(self, template: Artifact, backbone: PreTrainedModel, cache_bytes: int) -> None:
        super().__init__(template, backbone)
        self.stores: list = []  # by slot; None: free
        width = self.num_layers * self.hidden
        self.cache = RowCache(cache_bytes, width, self.dtype, self.device) if cache_bytes else None

    @property
    def hits(self) -> int:
        return self.cache.hits if self.cache else 0

    @property
    def misses(self) -> int:
        return self.cache.misses if self.cache else 0

    def put(self, slot: int, loaded) -> None:
        self.stores += [None] * (slot + 1 - len(self.stores))
        self.stores[slot] = loaded
        self.capacity = len(self.stores)

    def drop(self, slot: int) -> None:
        self.stores[slot] = None
        if self.cache is not None:
            self.cache.forget(slot * self.vocab_size, (slot + 1) * self.vocab_size)

    def fetch(self, store, tokens: torch.Tensor) -> torch.Tensor:
        """Rows of one task's `tokens` (N,) from its store -> (N, L*d) on the device."""
        raise NotImplementedError

    def _fetch(self, keys: torch.Tensor) -> torch.Tensor:
        """Rows of sorted real keys (M,), one store call per task present (not per key)."""
        slots, counts = torch.unique_consecutive(keys // self.vocab_size, return_counts=True)
        parts = torch.split(keys % self.vocab_size, counts.tolist())
        rows = [self.fetch(self.stores[s], tokens) for s, tokens in zip(slots.tolist(), parts, strict=True)]
        return torch.cat(rows) if rows else torch.empty(0, self.num_layers * self.hidden, dtype=self.dtype)

    def rows(self, keys: torch.Tensor) -> torch.Tensor:
        """Rows of distinct keys (N,) -> (N, L*d): hits from the cache, misses from the stores (then cached),
        zeros for the padding key."""
        out = torch.zeros(len(keys), self.num_layers * self.hidden, dtype=self.dtype, device=keys.device)
        real = keys < self.zero_key
        wanted = keys[real]  # (M,)
        rows = torch.empty(len(wanted), out.shape[1], dtype=self.dtype, device=keys.device)
        missing = torch.ones_like(wanted, dtype=torch.bool)
        if self.cache is not None:
            slot = self.cache.lookup(wanted)
            hit = slot >= 0
            rows[hit] = self.cache.rows[slot[hit]]
            missing = ~hit
        if missing.any():
            rows[missing] = fetched = self._fetch(wanted[missing]).to(keys.device)
            if self.cache is not None:
                self.cache.insert(wanted[missing], fetched)
        out[real] = rows
        return out

    def held_bytes(self) -> dict[str, int]:
        return {**dict.fromkeys(HELD, 0), "cache": self.cache.nbytes() if self.cache else 0}


class HostTable(_Tiered):
    """mode=host: each table stays in host memory (pinned when CUDA is there, for async copies); a batch's rows
    are gathered on the host and only those are copied to the device.

    The tasks a source starts with (`reserve`) share one stacked table, (S·|V| + 1, L*d) with the zero row
    last (`table`: what other readers of the same rows share); tasks added later get a table each."""

    def __init__(self, template: Artifact, backbone: PreTrainedModel, cache_bytes: int) -> None:
        super().__init__(template, backbone, cache_bytes)
        self.pinned = torch.cuda.is_available()
        # A plain tensor, not a buffer: moving the model to the GPU must leave it on the host.
        self.table = torch.zeros(1, self.num_layers * self.hidden, dtype=self.dtype, pin_memory=self.pinned)

    def reserve(self, slots: int) -> None:
        """One stacked table for slots 0 .. `slots` - 1 (before any task is put)."""
        if self.stores:
            raise AotptError("reserve the host table before putting tasks in it")
        width = self.num_layers * self.hidden
        self.table = torch.empty(slots * self.vocab_size + 1, width, dtype=self.dtype, pin_memory=self.pinned)
        self.table[-1] = 0

    def put(self, slot: int, loaded: torch.Tensor) -> None:
        if (slot + 1) * self.vocab_size < len(self.table):  # a slot of the stacked table: copy it in, keep the view
            view = self.table[slot * self.vocab_size : (slot + 1) * self.vocab_size]
            view.copy_(loaded)
            loaded = view
        super().put(slot, loaded)

    def load(self, artifact: Artifact) -> torch.Tensor:
        self.check(artifact)
        width = self.num_layers * self.hidden
        table = torch.empty(self.vocab_size, width, dtype=self.dtype, pin_memory=self.pinned)
        start = 0
        for chunk in table_rows(artifact, self._embeddings[0]):
            table[start : start + len(chunk)] = chunk.cpu()
            start += len(chunk)
        return table

    def fetch(self, store: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        staging = torch.empty(len(tokens), store.shape[1], dtype=self.dtype, pin_memory=self.pinned)
        torch.index_select(store, 0, tokens.cpu(), out=staging)  # (N, L*d) on the host
        return staging.to(self.device, non_blocking=self.pinned)

    def held_bytes(self) -> dict[str, int]:
        stacked = self.table.data_ptr()
        own = [s for s in self.stores if s is not None and s.untyped_storage().data_ptr() != stacked]
        return {**super().held_bytes(), "host_table": nbytes([self.table, *own])}


class MappedTable(HostTable):
    """mode=mmap: each table is the artifact file itself, memory-mapped (copy-on-write, never written): nothing
    is read at load; the rows a batch asks for are paged in by the OS, which also evicts them."""

    def reserve(self, slots: int) -> None:
        pass  # nothing to allocate: the files are the tables

    def put(self, slot: int, loaded: torch.Tensor) -> None:
        _Tiered.put(self, slot, loaded)

    def load(self, artifact: Artifact) -> torch.Tensor:
        self.check(artifact)
        if not artifact.has_table:
            raise AotptError(
                f"{artifact.path}: a weights-only artifact (table=false) has no table to map; serve it with "
                "mode=onthefly, device or host (which compute its table at load)"
            )
        offset, shape = artifact.table_offset()
        size = artifact.path.stat().st_size
        storage = torch.UntypedStorage.from_file(str(artifact.path), shared=False, nbytes=size)  # mmap, lazy
        return torch.empty(0, dtype=self.dtype).set_(storage, offset // self.dtype.itemsize, shape)

    def held_bytes(self) -> dict[str, int]:
        return {**_Tiered.held_bytes(self), "mapped": nbytes(s for s in self.stores if s is not None)}


class OnTheFlyRows(_Tiered):
    """mode=onthefly: rows computed by each task's reparameterisation (on the device), exactly as export
    computed them (`rows_blocked`)."""

    def __init__(self, template: Artifact, backbone: PreTrainedModel, cache_bytes: int) -> None:
        super().__init__(template, backbone, cache_bytes)
        self.weights = 0  # bytes of the stores' weights, kept as tasks come and go (1,000 tasks: no sum per report)

    def load(self, artifact: Artifact) -> nn.Module:
        self.check(artifact)
        return artifact.reparam(self._embeddings[0])

    def put(self, slot: int, loaded: nn.Module) -> None:
        super().put(slot, loaded)
        self.weights += nbytes(loaded.state_dict().values())

    def drop(self, slot: int) -> None:
        self.weights -= nbytes(self.stores[slot].state_dict().values())
        super().drop(slot)

    def fetch(self, store: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        return store.rows_blocked(tokens.to(self.device), self.dtype)

    def held_bytes(self) -> dict[str, int]:
        return {**super().held_bytes(), "weights": self.weights}


def build_source(
    mode: str, artifacts: list[Artifact], backbone: PreTrainedModel, cache_bytes: int | None = None
) -> _Slots:
    """The bias source of serving mode `mode` serving `artifacts` (task t in slot t), on the backbone's device."""
    source = empty_source(mode, artifacts[0], backbone, cache_bytes)
    source.reserve(len(artifacts))
    for slot, artifact in enumerate(artifacts):
        source.put(slot, source.load(artifact))
    return source


def empty_source(mode: str, template: Artifact, backbone: PreTrainedModel, cache_bytes: int | None = None) -> _Slots:
    """An empty bias source of serving mode `mode` for tasks shaped like `template`, on the backbone's device.

    `cache_bytes`: the budget of the hot-row cache (host, mmap, onthefly); None picks `DEFAULT_CACHE_BYTES` for
    onthefly, and for host and mmap on an accelerator (on a CPU their rows are in memory already), 0 turns it off.
    """
    if mode not in MODES:
        raise choices("mode", mode, MODES)
    if cache_bytes is not None and cache_bytes < 0:
        raise AotptError(f"cache_bytes={cache_bytes} must be >= 0 (0: no cache)")
    if mode == "device":
        return DeviceTable(template, backbone)
    if cache_bytes is None:
        cache_bytes = DEFAULT_CACHE_BYTES if mode == "onthefly" or backbone.device.type != "cpu" else 0
    return {"host": HostTable, "mmap": MappedTable, "onthefly": OnTheFlyRows}[mode](template, backbone, cache_bytes)
