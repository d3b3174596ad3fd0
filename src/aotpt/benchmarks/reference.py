"""The AoT serving path as it was before layer-major tables (git 1583eda), kept to time it beside today's.

Per forward it took the batch's distinct keys (`unique`, a sort), gathered
their whole rows (U, L*d) from a row-major table, expanded them to a
(B, n, L, d) tensor, and each layer sliced its (B, n, d) part and cast it to
the hidden states' dtype before adding it. Today's device path
(`aotpt.serving.sources.DeviceTable`) gathers each layer's rows straight from
a layer-major table into the add, with the cast folded into it.

Benchmark code only: the library serves through `aotpt.serving`.
"""

from __future__ import annotations

import torch
from torch import nn


class RowMajorTable(nn.Module):
    """A bias source (`prepare`/`layer`, see `aotpt.methods.aot.hooks`) over a row-major stacked table
    (T·|V| + 1, L*d) whose last row is the zero row of padding; `out_dtype` is the hidden states' dtype."""

    def __init__(self, table: torch.Tensor, num_layers: int, hidden: int, out_dtype: torch.dtype) -> None:
        super().__init__()
        self.table = table  # a plain attribute: it may be another source's table, shared (never copied)
        self.num_layers, self.hidden, self.out_dtype = num_layers, hidden, out_dtype

    @classmethod
    def stack(cls, artifacts: list, device: torch.device, out_dtype: torch.dtype) -> RowMajorTable:
        """The tasks' tables one after another on `device`, then the zero row (T·|V| + 1, L*d)."""
        first = artifacts[0]
        vocab, layers, hidden = first.vocab_size, first.record.num_layers, first.record.hidden_size
        table = torch.empty(len(artifacts) * vocab + 1, layers * hidden, dtype=first.dtype, device=device)
        for t, artifact in enumerate(artifacts):
            artifact.copy_table_into(table[t * vocab : (t + 1) * vocab])
        table[-1] = 0
        return cls(table, layers, hidden, out_dtype)

    @property
    def zero_key(self) -> int:
        return len(self.table) - 1

    def prepare(self, keys: torch.Tensor) -> torch.Tensor:
        unique, inverse = keys.unique(return_inverse=True)  # (U,), (B, n)
        rows = self.table[unique]  # (U, L*d)
        return rows[inverse].view(*keys.shape, self.num_layers, self.hidden)  # (B, n, L, d)

    def layer(self, bias: torch.Tensor, index: int) -> torch.Tensor:
        return bias[:, :, index].to(self.out_dtype)  # (B, n, d), cast layer by layer

    def held_bytes(self) -> dict[str, int]:
        return {"device_table": self.table.numel() * self.table.element_size(), "host_table": 0}
