"""Every served task's head, stacked by slot, so a batch of any mix of tasks runs its heads in two batched matmuls.

Each head is `aotpt.model.ClassificationHead` in eval mode (dense -> tanh ->
out on the first token). Looping over the tasks of a batch instead costs a
few kernel launches per task: with hundreds of tasks, batches hold dozens of
them, and on an accelerator those launches would cost as much as the
backbone. Gathering each row's own weights costs B·d² reads, against ~24·L·d²
FLOPs per token of the backbone.
"""

from __future__ import annotations

import torch
from torch import nn


class HeadBank(nn.Module):
    """Heads by slot: dense (S, d, d) + (S, d), out (S, C, d) + (S, C), C = the widest head (narrower ones padded
    with zeros, their extra outputs never read)."""

    def __init__(self, hidden: int, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.hidden = hidden
        for name, shape in (("dense_w", (0, hidden, hidden)), ("dense_b", (0, hidden)), ("out_w", (0, 1, hidden))):
            self.register_buffer(name, torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("out_b", torch.zeros(0, 1, device=device, dtype=dtype), persistent=False)
        self.widths: list[int] = []  # num_labels by slot (0: free)

    def _grow(self, slots: int, width: int) -> None:
        """Room for `slots` slots and heads `width` wide (new entries zero)."""
        have, wide = self.out_w.shape[:2]
        slots, width = max(slots, have), max(width, wide)
        if (slots, width) == (have, wide):
            return
        for name in ("dense_w", "dense_b", "out_w", "out_b"):
            old = getattr(self, name)
            shape = {"dense_w": (slots, self.hidden, self.hidden), "dense_b": (slots, self.hidden)}.get(
                name, (slots, width, self.hidden) if name == "out_w" else (slots, width)
            )
            new = old.new_zeros(shape)
            new[tuple(slice(0, n) for n in old.shape)] = old
            setattr(self, name, new)
        self.widths += [0] * (slots - len(self.widths))

    def reserve(self, slots: int) -> None:
        """Room for `slots` heads at once (one copy instead of one per head added)."""
        self._grow(slots, self.out_w.shape[1])

    def put(self, slot: int, state: dict[str, torch.Tensor]) -> None:
        """Install a ClassificationHead's state dict (dense.weight, dense.bias, out.weight, out.bias) in `slot`;
        past the slots there, grow by a quarter (adding tasks one by one copies the bank a few times, not each time)."""
        width = state["out.weight"].shape[0]
        have = self.out_w.shape[0]
        self._grow(slot + 1 if slot < have else max(slot + 1, have + have // 4), width)
        with torch.no_grad():
            self.dense_w[slot] = state["dense.weight"]
            self.dense_b[slot] = state["dense.bias"]
            self.out_w[slot].zero_()[:width] = state["out.weight"]
            self.out_b[slot].zero_()[:width] = state["out.bias"]
        self.widths[slot] = width

    def drop(self, slot: int) -> None:
        self.widths[slot] = 0

    def forward(self, first: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """First-token states (B, d) under their rows' heads (B,) -> logits (B, C), row b valid up to its width."""
        x = first.unsqueeze(1)  # (B, 1, d)
        x = torch.tanh(torch.baddbmm(self.dense_b[slots].unsqueeze(1), x, self.dense_w[slots].transpose(1, 2)))
        return torch.baddbmm(self.out_b[slots].unsqueeze(1), x, self.out_w[slots].transpose(1, 2)).squeeze(1)

    def nbytes(self) -> int:
        return sum(t.untyped_storage().nbytes() for t in (self.dense_w, self.dense_b, self.out_w, self.out_b))
