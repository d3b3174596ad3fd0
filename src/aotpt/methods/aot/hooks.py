"""Forward hooks that add P_l[x] to the input of every encoder layer.

    H_0 = Embeddings(x)
    H_l = Layer_l(H_{l-1} + P_l[x])        l = 1..L

Hooks keep the backbone's own code untouched, so any family in
`aotpt.backbones.LAYOUTS` works. Three kinds of hook cooperate:

1. a pre-hook on the backbone reads the token ids x and the attention mask
   and lets the bias source prepare the forward (`prepare(keys)`): compute
   or fetch the rows of the batch's distinct keys, or nothing at all for a
   table already on the device;
2. a pre-hook on the encoder adds P_1[x] (`source.layer(state, 0)`) to its
   input (the embeddings output, after any embedding projection), so every
   layer-1 branch sees it (also DeBERTa-v2's convolution beside layer 1);
3. a pre-hook on each layer l >= 2 adds P_l[x] to that layer's input.

Each layer gathers its own (B, n, d) rows straight into its add: the (B, n,
L, d) tensor of all layers is never built, and in training each layer's
gradient flows back into (U, d) rows of its own instead of a zero-filled
(B, n, L, d) tensor per layer.

Padded positions (attention mask 0) read the source's zero row, `zero_key`:
they stay masked in attention anyway, but DeBERTa-v2's convolution reads
neighbouring positions, so a bias on padding would reach the last real tokens
and a row's output would depend on the padding of its batch.

Multi-task serving stacks T tables into one source of T·|V| rows; inside
`with hooks.tasks(task_ids)` token x of batch row b reads row
task_ids[b]·|V| + x, so one forward serves rows of different tasks.

The hooks are bound methods (`functools.partial` for the layer index), never
closures: a deep copy then hooks the copy's own rows, and the model pickles
(`ddp_spawn` sends it to its worker processes).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel

from aotpt.backbones import encoder_layers, layout
from aotpt.errors import ConfigError


class BiasSource(Protocol):
    """Where the rows of P = [P_1 | ... | P_L] come from, one forward at a time.

    Keys run over 0 .. zero_key - 1 (token ids, or task·|V| + token id for a
    stacked source); key `zero_key` reads a row of zeros (padding).
    """

    num_layers: int
    hidden: int
    zero_key: int

    def prepare(self, keys: torch.Tensor) -> Any:
        """Whatever `layer` needs for this forward's (B, n) keys."""

    def layer(self, state: Any, index: int) -> torch.Tensor:
        """P_index at every position of the forward: (B, n, d)."""


class UniqueRows:
    """`prepare`/`layer` for sources that produce whole rows (N,) -> (N, L*d) through `rows`: each distinct key's
    row once per forward, split per layer, then gathered per position by each layer."""

    num_layers: int
    hidden: int

    def rows(self, keys: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def prepare(self, keys: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        unique, inverse = keys.unique(return_inverse=True)  # (U,), (B, n)
        rows = self.rows(unique).view(len(unique), self.num_layers, self.hidden)  # (U, L, d)
        return rows.unbind(1), inverse  # L x (U, d)

    def layer(self, state: tuple[tuple[torch.Tensor, ...], torch.Tensor], index: int) -> torch.Tensor:
        per_layer, inverse = state
        return F.embedding(inverse, per_layer[index])  # (B, n, d)


def gather_bias(source: BiasSource, keys: torch.Tensor) -> torch.Tensor:
    """P_l[x] for every position and layer at once, (B, n) keys -> (B, n, L, d): for tests and inspection."""
    state = source.prepare(keys)
    return torch.stack([source.layer(state, index) for index in range(source.num_layers)], dim=2)


def add_bias(hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """hidden + bias in hidden's dtype; an fp16/bf16 bias on fp32 hidden states is widened inside the add
    (type promotion) rather than by a separate cast."""
    if torch.promote_types(hidden.dtype, bias.dtype) != hidden.dtype:
        bias = bias.to(hidden.dtype)
    return hidden + bias


def _replace_hidden(args: tuple, kwargs: dict, fn) -> tuple[tuple, dict]:
    """Apply `fn` to a module's hidden-states input, passed positionally or by name."""
    if args:
        return (fn(args[0]), *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}


def _ids_and_mask(args: tuple, kwargs: dict) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """input_ids and attention_mask of a backbone call: by name, or the first two positional arguments
    (the order of every supported family's forward)."""
    input_ids = kwargs.get("input_ids", args[0] if args else None)
    mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
    return input_ids, mask


def is_hooked(backbone: nn.Module) -> bool:
    """Does `backbone` already carry AoT hooks (a training model's, or a predictor's)?"""
    return isinstance(getattr(backbone, "aot", None), AotHooks)


class AotHooks(nn.Module):
    """Owns the bias source and the hook handles for one backbone.

    `source` is a trainable reparameterisation while training and a compiled
    table at inference; swapping it changes nothing else.
    """

    def __init__(self, backbone: PreTrainedModel, source: nn.Module) -> None:
        super().__init__()
        if is_hooked(backbone):
            raise ConfigError(
                "this backbone already has AoT hooks (backbone.aot): a second set would add its bias on top; "
                "load a fresh backbone, or call backbone.aot.remove() and delete backbone.aot first"
            )
        layers = encoder_layers(backbone)
        if source.num_layers != len(layers) or source.hidden != backbone.config.hidden_size:
            raise ConfigError(
                f"bias source has {source.num_layers} layers x {source.hidden} hidden, "
                f"backbone has {len(layers)} x {backbone.config.hidden_size}"
            )
        self.source = source
        self._state: Any = None  # what the source prepared for the forward in flight
        self._task_ids: torch.Tensor | None = None  # (B,) inside `tasks(...)`, else None
        where = layout(backbone)
        self.vocab_size = backbone.get_submodule(where.word_embeddings).num_embeddings
        self._handles = [
            backbone.register_forward_pre_hook(self._read_ids, with_kwargs=True),
            backbone.get_submodule(where.encoder).register_forward_pre_hook(
                functools.partial(self._add, 0), with_kwargs=True
            ),
        ]
        self._handles += [
            layer.register_forward_pre_hook(functools.partial(self._add, index), with_kwargs=True)
            for index, layer in enumerate(layers)
            if index > 0
        ]

    def keys(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The source row each position reads (B, n): the token id, offset by its row's task inside
        `tasks(...)`, and the zero row for padding."""
        keys = input_ids
        if self._task_ids is not None:
            if self._task_ids.shape != input_ids.shape[:1]:
                raise ConfigError(f"{tuple(self._task_ids.shape)} task ids for a batch of {tuple(input_ids.shape)} ids")
            keys = self._task_ids[:, None] * self.vocab_size + input_ids  # (B, n) rows of the stacked source
        if attention_mask is not None:
            keys = keys.masked_fill(attention_mask == 0, self.source.zero_key)
        return keys

    def _read_ids(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids, mask = _ids_and_mask(args, kwargs)
        if input_ids is None:
            raise ConfigError("method=aot needs input_ids: its bias is a function of the token ids, not inputs_embeds")
        self._state = self.source.prepare(self.keys(input_ids, mask))

    def _add(self, index: int, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        bias = self.source.layer(self._state, index)  # (B, n, d)
        return _replace_hidden(args, kwargs, lambda hidden: add_bias(hidden, bias))

    def __getstate__(self) -> dict:
        # The rows of the last forward are part of an autograd graph: never copy or pickle them
        # (deepcopy, DDP spawn). They are kept between forwards so that gradient checkpointing,
        # which re-runs layers during backward, still finds them.
        return {**self.__dict__, "_state": None}

    @contextmanager
    def tasks(self, task_ids: torch.Tensor) -> Iterator[None]:
        """Forwards inside this block read row task_ids[b]·|V| + x of a stacked multi-task source (B,)."""
        self._task_ids = task_ids
        try:
            yield
        finally:
            self._task_ids = None

    def remove(self) -> None:
        """Detach from the backbone (the backbone computes as if never hooked)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
