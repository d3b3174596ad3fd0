"""Forward hooks that add P_l[x] to the input of every encoder layer.

    H_0 = Embeddings(x)
    H_l = Layer_l(H_{l-1} + P_l[x])        l = 1..L

Hooks keep the backbone's own code untouched, so any family in
`aotpt.backbones.LAYOUTS` works. Three hooks cooperate:

1. a pre-hook on the embeddings reads the token ids x and asks the bias
   source for rows P[x] — (B, n, L, d) — once per forward;
2. a pre-hook on the encoder adds P_1[x] to its input (the embeddings output,
   after any embedding projection), so every layer-1 branch sees it (also
   DeBERTa-v2's convolution beside layer 1);
3. a pre-hook on each layer l >= 2 adds P_l[x] to that layer's input.

Multi-task serving stacks T tables into one source of T·|V| rows; inside
`with hooks.tasks(task_ids)` token x of batch row b reads row
task_ids[b]·|V| + x, so one forward serves rows of different tasks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import torch
from torch import nn
from transformers import PreTrainedModel

from aotpt.backbones import encoder_layers, layout
from aotpt.errors import ConfigError


class BiasSource(Protocol):
    """Anything that returns rows of P = [P_1 | ... | P_L] for token ids: (N,) -> (N, L*d)."""

    num_layers: int
    hidden: int

    def rows(self, ids: torch.Tensor) -> torch.Tensor: ...


def gather_bias(source: BiasSource, input_ids: torch.Tensor) -> torch.Tensor:
    """P_l[x] for every position and layer: (B, n) -> (B, n, L, d).

    Rows are computed once per distinct token of the batch, not per position.
    """
    unique, inverse = input_ids.unique(return_inverse=True)  # (U,), (B, n)
    rows = source.rows(unique)  # (U, L*d)
    return rows[inverse].view(*input_ids.shape, source.num_layers, source.hidden)  # (B, n, L, d)


def _replace_hidden(args: tuple, kwargs: dict, fn) -> tuple[tuple, dict]:
    """Apply `fn` to a module's hidden-states input, passed positionally or by name."""
    if args:
        return (fn(args[0]), *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}


class AotHooks(nn.Module):
    """Owns the bias source and the hook handles for one backbone.

    `source` is a trainable reparameterisation while training and a compiled
    table at inference; swapping it changes nothing else.
    """

    def __init__(self, backbone: PreTrainedModel, source: nn.Module) -> None:
        super().__init__()
        layers = encoder_layers(backbone)
        if source.num_layers != len(layers) or source.hidden != backbone.config.hidden_size:
            raise ConfigError(
                f"bias source has {source.num_layers} layers x {source.hidden} hidden, "
                f"backbone has {len(layers)} x {backbone.config.hidden_size}"
            )
        self.source = source
        self._bias: torch.Tensor | None = None  # (B, n, L, d) of the forward in flight
        self._task_ids: torch.Tensor | None = None  # (B,) inside `tasks(...)`, else None
        where = layout(backbone)
        self.vocab_size = backbone.get_submodule(where.word_embeddings).num_embeddings
        self._handles = [
            backbone.get_submodule(where.embeddings).register_forward_pre_hook(self._read_ids, with_kwargs=True),
            backbone.get_submodule(where.encoder).register_forward_pre_hook(self._adder(0), with_kwargs=True),
        ]
        self._handles += [
            layer.register_forward_pre_hook(self._adder(index), with_kwargs=True)
            for index, layer in enumerate(layers)
            if index > 0
        ]

    def _read_ids(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise ConfigError("method=aot needs input_ids: its bias is a function of the token ids, not inputs_embeds")
        if self._task_ids is not None:
            if self._task_ids.shape != input_ids.shape[:1]:
                raise ConfigError(f"{tuple(self._task_ids.shape)} task ids for a batch of {tuple(input_ids.shape)} ids")
            input_ids = self._task_ids[:, None] * self.vocab_size + input_ids  # (B, n) rows of the stacked source
        self._bias = gather_bias(self.source, input_ids)

    def __getstate__(self) -> dict:
        # The rows of the last forward are part of an autograd graph: never copy or pickle them
        # (deepcopy, DDP spawn). They are kept between forwards so that gradient checkpointing,
        # which re-runs layers during backward, still finds them.
        return {**self.__dict__, "_bias": None}

    @contextmanager
    def tasks(self, task_ids: torch.Tensor) -> Iterator[None]:
        """Forwards inside this block read row task_ids[b]·|V| + x of a stacked multi-task source (B,)."""
        self._task_ids = task_ids
        try:
            yield
        finally:
            self._task_ids = None

    def _adder(self, index: int):
        def add(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            bias = self._bias[:, :, index]  # (B, n, d)
            return _replace_hidden(args, kwargs, lambda hidden: hidden + bias.to(hidden.dtype))

        return add

    def remove(self) -> None:
        """Detach from the backbone (the backbone computes as if never hooked)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
