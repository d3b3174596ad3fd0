"""Reparameterisations of the AoT table P = [P_1 | ... | P_L], a |V| x (L*d) matrix.

Every reparameterisation is a *bias source*: `rows(ids)` returns the rows
P[ids] without building the table (id |V|, the padding key, gives zeros), and
`table()` builds the whole table (for export). All start with P = 0, so a
fresh AoT model computes what the frozen backbone computes.

    kron : P = (W_L ⊗ W_M) W_R       W_L a×r, W_M b×r, W_R r²×L·d (zero)
    fc   : P = f(E W1 + b1) W2 + b2  E frozen word embeddings, W2 = b2 = 0
    dense: P                          a plain |V|×L·d parameter (small models only)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from transformers.activations import ACT2FN

from aotpt.errors import ConfigError
from aotpt.methods._shared import at_least, one_of, probability
from aotpt.methods.aot.hooks import UniqueRows

# A dense table above this size is refused: use kron or fc instead.
DENSE_MAX_BYTES = 2 * 1024**3
# Rows computed ahead of time (the table) and on the fly (serving) go through the same fixed-size matrix
# products of ROW_BLOCK rows: a GEMM's rounding depends on its shape, so rows computed a few at a time would
# otherwise differ from the table's by an ulp and logits would depend on a cache's history.
ROW_BLOCK = 16


@dataclass
class ReparamConfig:
    """Fields shared by every reparameterisation; `name` is its registry name (`REPARAMS`, `reparam=`)."""

    name: ClassVar[str]
    needs_embeddings: ClassVar[bool] = False  # does `build` read the backbone's word embeddings (fc)?
    dropout: float = 0.0  # on the rank-space activations (kron: r², fc: r); 0 keeps rows exact

    def __post_init__(self) -> None:
        probability("reparam.dropout", self.dropout)

    def build(self, num_layers: int, hidden: int, vocab_size: int, word_embeddings: nn.Embedding | None = None):
        """The trainable bias source for a backbone of `num_layers` x `hidden` and `vocab_size` token ids."""
        raise NotImplementedError


@dataclass
class KronConfig(ReparamConfig):
    name: ClassVar[str] = "kron"
    rank: int = 16  # r: W_R has r² rows

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least("reparam.rank", self.rank, 1)

    def build(self, num_layers, hidden, vocab_size, word_embeddings=None) -> KronReparam:
        return KronReparam(vocab_size, num_layers, hidden, self.rank, self.dropout)


@dataclass
class FcConfig(ReparamConfig):
    name: ClassVar[str] = "fc"
    needs_embeddings: ClassVar[bool] = True
    rank: int = 64  # r: width of the bottleneck between E (d) and P (L·d)
    activation: str = "relu"  # f, any name in transformers.activations.ACT2FN

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least("reparam.rank", self.rank, 1)
        one_of("reparam.activation", self.activation, ACT2FN)

    def build(self, num_layers, hidden, vocab_size, word_embeddings=None) -> FcReparam:
        if word_embeddings is None or word_embeddings.num_embeddings != vocab_size:
            raise ConfigError(f"reparam=fc reads the backbone's word embeddings ({vocab_size} rows): pass them")
        return FcReparam(word_embeddings, num_layers, hidden, self.rank, self.activation, self.dropout)


@dataclass
class DenseConfig(ReparamConfig):
    name: ClassVar[str] = "dense"

    def build(self, num_layers, hidden, vocab_size, word_embeddings=None) -> DenseReparam:
        vocab = vocab_size
        need = vocab * num_layers * hidden * 4
        if need > DENSE_MAX_BYTES:
            raise ConfigError(
                f"reparam=dense needs {need / 1024**3:.1f} GiB for a {vocab}x{num_layers * hidden} fp32 table "
                f"(limit {DENSE_MAX_BYTES / 1024**3:.0f} GiB, plus twice that for Adam); "
                "use reparam=kron or reparam=fc"
            )
        return DenseReparam(vocab, num_layers, hidden)


# The reparameterisation registry: `reparam=<name>` and the `name` stored in run records and artifacts.
REPARAMS: dict[str, type[ReparamConfig]] = {cls.name: cls for cls in (KronConfig, FcConfig, DenseConfig)}


class Reparam(UniqueRows, nn.Module):
    """A bias source: rows of P for given token ids, without building P."""

    def __init__(self, vocab_size: int, num_layers: int, hidden: int) -> None:
        super().__init__()
        self.vocab_size, self.num_layers, self.hidden = vocab_size, num_layers, hidden

    @property
    def zero_key(self) -> int:
        """The key of the all-zero row that padded positions read."""
        return self.vocab_size

    def compute(self, ids: torch.Tensor) -> torch.Tensor:
        """P[ids] for valid ids 0 .. |V|-1: (N,) long -> (N, L*d) fp32."""
        raise NotImplementedError

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """P[ids]: (N,) long -> (N, L*d); the padding key |V| gives zeros."""
        pad = ids >= self.vocab_size  # (N,)
        return self.compute(ids.clamp(max=self.vocab_size - 1)).masked_fill(pad[:, None], 0.0)

    @torch.no_grad()
    def rows_blocked(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """P[ids] in `dtype`, computed in blocks of exactly ROW_BLOCK ids (the last one padded with id 0).

        The same ids give the same bits whatever else is computed with them:
        export and on-the-fly serving both call this. Eval mode (no dropout).
        """
        was_training = self.training
        self.eval()
        out = torch.empty(len(ids), self.num_layers * self.hidden, dtype=dtype, device=ids.device)
        block = ids.new_zeros(ROW_BLOCK)
        for start in range(0, len(ids), ROW_BLOCK):
            part = ids[start : start + ROW_BLOCK]
            block.zero_()[: len(part)] = part
            out[start : start + len(part)] = self.rows(block)[: len(part)].to(dtype)
        self.train(was_training)
        return out

    @torch.no_grad()
    def table(self, chunk_rows: int = 4096, dtype: torch.dtype = torch.float16) -> torch.Tensor:
        """The whole table (|V|, L*d) in `dtype`, `chunk_rows` ids at a time (through `rows_blocked`).

        Peak memory stays near the size of the result: each chunk is computed in
        fp32 and cast before the next one starts. Runs in eval mode (no dropout).
        """
        device = next(self.parameters()).device
        out = torch.empty(self.vocab_size, self.num_layers * self.hidden, dtype=dtype, device=device)
        for start in range(0, self.vocab_size, chunk_rows):
            ids = torch.arange(start, min(start + chunk_rows, self.vocab_size), device=device)
            out[start : start + len(ids)] = self.rows_blocked(ids, dtype)
        return out


class FactoredReparam(Reparam):
    """P = C(x) · W: a small code per token (kron: r², fc: r + 1) times one weight matrix (code width x L*d).

    The padding key's rows are zeroed through its code (U x c values) rather
    than through its rows (U x L*d values, twice: forward and backward).
    """

    def code(self, ids: torch.Tensor) -> torch.Tensor:
        """C(ids): (N,) valid ids -> (N, c)."""
        raise NotImplementedError

    def weight(self) -> torch.Tensor:
        """W: (c, L*d)."""
        raise NotImplementedError

    def compute(self, ids: torch.Tensor) -> torch.Tensor:
        return self.code(ids) @ self.weight()  # (N, L*d)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        real = (ids < self.vocab_size).unsqueeze(1)  # (N, 1): the padding key's code is zero, so is its row
        return (self.code(ids.clamp(max=self.vocab_size - 1)) * real) @ self.weight()  # (N, L*d)


class KronReparam(FactoredReparam):
    """Row x of (W_L ⊗ W_M) is kron(W_L[x // b], W_M[x % b]), so any row costs O(r² L d)."""

    def __init__(self, vocab_size: int, num_layers: int, hidden: int, rank: int, dropout: float) -> None:
        super().__init__(vocab_size, num_layers, hidden)
        self.a = math.ceil(math.sqrt(vocab_size))
        self.b = math.ceil(vocab_size / self.a)  # a * b >= |V|
        self.rank = rank
        self.W_L = nn.Parameter(torch.randn(self.a, rank) / math.sqrt(rank))
        self.W_M = nn.Parameter(torch.randn(self.b, rank) / math.sqrt(rank))
        self.W_R = nn.Parameter(torch.zeros(rank * rank, num_layers * hidden))
        self.dropout = nn.Dropout(dropout)

    def code(self, ids: torch.Tensor) -> torch.Tensor:
        left = self.W_L[ids // self.b]  # (N, r)
        right = self.W_M[ids % self.b]  # (N, r)
        return self.dropout((left[:, :, None] * right[:, None, :]).reshape(len(ids), self.rank * self.rank))  # (N, r²)

    def weight(self) -> torch.Tensor:
        return self.W_R  # (r², L*d)


class FcReparam(FactoredReparam):
    """P = f(E W1 + b1) W2 + b2 over the backbone's own frozen word embeddings E.

    As a factored reparam the code is [f(E W1 + b1), 1] and W is [W2; b2], so
    the bias b2 is part of the product and the padding key's zero code gives a
    zero row.
    """

    def __init__(
        self, word_embeddings: nn.Embedding, num_layers: int, hidden: int, rank: int, activation: str, dropout: float
    ) -> None:
        super().__init__(word_embeddings.num_embeddings, num_layers, hidden)
        # A tuple keeps E out of this module's parameters and state_dict: it is
        # the backbone's frozen matrix, shared, never copied or saved twice.
        self._embeddings = (word_embeddings,)
        self.up = nn.Linear(word_embeddings.embedding_dim, rank)  # W1, b1
        self.act = ACT2FN[activation]
        self.dropout = nn.Dropout(dropout)
        self.down = nn.Linear(rank, num_layers * hidden)  # W2, b2
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def code(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(self.act(self.up(self._embeddings[0](ids))))  # (N, r)
        return torch.cat([hidden, hidden.new_ones(len(ids), 1)], dim=1)  # (N, r + 1)

    def weight(self) -> torch.Tensor:
        return torch.cat([self.down.weight.T, self.down.bias[None]])  # (r + 1, L*d)


class DenseReparam(Reparam):
    """The table itself as a parameter: the reference the other reparams approximate."""

    def __init__(self, vocab_size: int, num_layers: int, hidden: int) -> None:
        super().__init__(vocab_size, num_layers, hidden)
        self.P = nn.Parameter(torch.zeros(vocab_size, num_layers * hidden))

    def compute(self, ids: torch.Tensor) -> torch.Tensor:
        return self.P[ids]
