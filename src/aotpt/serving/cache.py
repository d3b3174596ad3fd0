"""Hot rows of the served tables, kept on the device in a fixed byte budget: a set-associative LRU cache.

Every operation is a handful of tensor ops on the whole batch of keys (no
Python step per key, so it runs on the accelerator beside the backbone):

    key --hash--> set s (of `sets`) --> compare with the s-th row of `tags` (ways keys) --> hit: slot s*ways + way

A set keeps its `ways` most recently used keys; a miss replaces the set's
least recently used slot (its stamp is the oldest). Two misses of one batch in
the same set take distinct slots (their rank within the set picks the 1st,
2nd, ... least recently used way); beyond `ways` misses in one set the rest are
served but not cached. Rows, tags and stamps are allocated once, so what the
cache holds (`nbytes`) is fixed and never above its budget.
"""

from __future__ import annotations

import torch

from aotpt.errors import ConfigError

WAYS = 8  # slots per set: 8-way LRU misses little more than a full LRU on skewed (Zipf) keys
BOOKKEEPING = 16  # bytes per slot beside its row: its key (int64) and its last-use stamp (int64)
_HASH = 2654435761  # Knuth's multiplicative constant: spreads consecutive token ids and tasks over the sets


class RowCache:
    """Rows of `width` values in `dtype` on `device`, keyed by int64 keys, within `budget` bytes."""

    def __init__(self, budget: int, width: int, dtype: torch.dtype, device: torch.device | str) -> None:
        per_slot = width * dtype.itemsize + BOOKKEEPING
        slots = budget // per_slot
        if slots < 1:
            raise ConfigError(
                f"cache_bytes={budget} holds no row: one row of {width} values takes {per_slot} bytes "
                f"({width * dtype.itemsize} + {BOOKKEEPING} of bookkeeping); give it more, or 0 for no cache"
            )
        self.ways = min(WAYS, slots)
        self.sets = slots // self.ways
        self.budget = budget
        self.rows = torch.empty(self.sets * self.ways, width, dtype=dtype, device=device)
        self.tags = torch.full((self.sets, self.ways), -1, dtype=torch.long, device=device)  # -1: empty
        self.stamps = torch.zeros((self.sets, self.ways), dtype=torch.long, device=device)  # 0: never used
        self.clock = 0
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self.rows)

    def nbytes(self) -> int:
        """Bytes the cache's storage really holds (rows, tags, stamps)."""
        return sum(t.untyped_storage().nbytes() for t in (self.rows, self.tags, self.stamps))

    def _set(self, keys: torch.Tensor) -> torch.Tensor:
        return torch.remainder(keys * _HASH, self.sets)  # (N,)

    def lookup(self, keys: torch.Tensor) -> torch.Tensor:
        """Slots of distinct `keys` (N,), -1 where missing; marks the hits as just used."""
        sets = self._set(keys)
        match = self.tags[sets] == keys[:, None]  # (N, ways)
        hit = match.any(1)
        slot = sets * self.ways + match.to(torch.uint8).argmax(1)  # (N,)
        self.clock += 1
        self.stamps.view(-1)[slot[hit]] = self.clock
        found = int(hit.sum())
        self.hits, self.misses = self.hits + found, self.misses + len(keys) - found
        return torch.where(hit, slot, -1)

    def insert(self, keys: torch.Tensor, rows: torch.Tensor) -> None:
        """Cache distinct `keys` (M,) that `lookup` just missed, with their `rows` (M, width), evicting the least
        recently used slots of their sets."""
        if not len(keys):
            return
        sets = self._set(keys)
        order = torch.argsort(sets, stable=True)
        by_set = sets[order]  # (M,) sorted
        rank = torch.arange(len(keys), device=keys.device) - torch.searchsorted(by_set, by_set)  # rank within set
        keep = rank < self.ways
        lru = self.stamps[by_set].argsort(dim=1)  # (M, ways): ways from least to most recently used
        way = lru.gather(1, rank.clamp(max=self.ways - 1)[:, None]).squeeze(1)
        slot = (by_set * self.ways + way)[keep]
        source = order[keep]
        self.rows[slot] = rows[source].to(self.rows.dtype)
        self.tags.view(-1)[slot] = keys[source]
        self.stamps.view(-1)[slot] = self.clock

    def forget(self, start: int, end: int) -> None:
        """Drop every cached key in [start, end) (a task leaving its slot)."""
        gone = (self.tags >= start) & (self.tags < end)
        self.tags[gone] = -1
        self.stamps[gone] = 0
