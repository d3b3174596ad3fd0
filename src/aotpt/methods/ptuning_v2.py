"""P-Tuning v2, deep prefix tuning (Liu et al. 2022, https://arxiv.org/abs/2110.07602).

    Attn_l(Q, K, V) = softmax(Q [Pk_l ; K]^T / sqrt(d_h) + [0 ; M]) [Pv_l ; V]      l = 1..L

Every layer's self-attention sees p extra key/value pairs (Pk_l, Pv_l) before
the real ones; the padding mask M grows by p always-open columns. The prefix
is a trained table (p × L·2·d), or with `projection=true` the MLP
reparameterisation Embedding(p, d) -> Linear -> tanh -> Linear(L·2·d); both
are PEFT's `PrefixEncoder`, with dropout on the result as in the paper's code.

In-house because PEFT's prefix tuning goes through `past_key_values`, which
BERT/RoBERTa/DeBERTa encoders reject under transformers 5. Two ways in:
- BERT-like families call the function registered under
  `config._attn_implementation`; we register one that prepends the prefix and
  widens the mask, and register the base mask function under the same name
  (otherwise transformers drops the padding mask for an unknown name).
- DeBERTa-v2's `DisentangledSelfAttention` has its own forward; its class is
  swapped for a subclass that adds the prefix columns with zero
  relative-position (c2p, p2c) terms.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from peft import PrefixEncoder, PrefixTuningConfig
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.models.deberta_v2.modeling_deberta_v2 import DisentangledSelfAttention, scaled_size_sqrt

from aotpt.backbones import encoder_layers, layout
from aotpt.errors import choices
from aotpt.methods._shared import at_least, probability
from aotpt.methods.base import MethodConfig

# Attention implementations the prefix can wrap; flash kernels take no dense mask to widen.
BASE_ATTENTION = ("sdpa", "eager")


@dataclass
class PtuningV2Config(MethodConfig):
    name: ClassVar[str] = "ptuning_v2"
    identity_at_init: ClassVar[bool] = False  # a random prefix changes every layer's attention
    length: int = 20  # p, prefix key/value pairs per layer
    dropout: float = 0.1  # on the prefix keys/values (the paper's code uses the backbone's hidden dropout)
    projection: bool = False  # MLP reparameterisation of the prefix
    projection_hidden: int = 512  # width of that MLP

    def __post_init__(self) -> None:
        at_least("length", self.length, 1)
        at_least("projection_hidden", self.projection_hidden, 1)
        probability("dropout", self.dropout)


class DeepPrefix(nn.Module):
    """The prefix keys/values of every layer, computed once per backbone forward.

    A pre-hook on the backbone reads the batch size and builds the prefix for the
    forward in flight; each attention module then takes its layer's slice.
    """

    def __init__(self, backbone: PreTrainedModel, cfg: PtuningV2Config) -> None:
        super().__init__()
        config = backbone.config
        self.num_layers, self.heads = len(encoder_layers(backbone)), config.num_attention_heads
        self.encoder = PrefixEncoder(
            PrefixTuningConfig(
                num_virtual_tokens=cfg.length,
                token_dim=config.hidden_size,
                num_layers=self.num_layers,
                num_attention_heads=self.heads,
                num_transformer_submodules=1,
                prefix_projection=cfg.projection,
                encoder_hidden_size=cfg.projection_hidden,
            )
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.register_buffer("slots", torch.arange(cfg.length), persistent=False)
        # Which prefix columns queries may attend to: all in training. A closed column
        # gets -inf in the mask (ablations; the test that a closed prefix is the backbone).
        self.register_buffer("visible", torch.ones(cfg.length, dtype=torch.bool), persistent=False)
        self._kv: torch.Tensor | None = None  # (2L, B, h, p, d_h) of the forward in flight
        self._all_visible = True  # read once per forward, not once per layer (a host sync on GPUs)
        backbone.register_forward_pre_hook(self._start, with_kwargs=True)
        backbone.register_forward_hook(self._finish)

    def _start(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        inputs = kwargs.get("input_ids", args[0] if args else None)
        if inputs is None:
            inputs = kwargs["inputs_embeds"]
        batch, p = inputs.shape[0], len(self.slots)
        kv = self.dropout(self.encoder(self.slots.expand(batch, p)))  # (B, p, L*2*d)
        kv = kv.view(batch, p, 2 * self.num_layers, self.heads, -1)  # (B, p, 2L, h, d_h)
        self._kv = kv.permute(2, 0, 3, 1, 4)  # (2L, B, h, p, d_h); layer l: keys 2l, values 2l+1
        self._all_visible = bool(self.visible.all())

    def _finish(self, module: nn.Module, args: tuple, output) -> None:
        self._kv = None

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `index`'s prefix keys and values, each (B, h, p, d_h)."""
        return self._kv[2 * index], self._kv[2 * index + 1]

    def widen(self, mask: torch.Tensor | None, kv_length: int, dtype: torch.dtype) -> torch.Tensor | None:
        """Prepend the prefix columns to a 4-D mask: (B, 1, q, n) -> (B, 1, q, p + n).

        Boolean masks (True = attend) get `visible`; additive float masks get 0 or the
        dtype's minimum. `None` (no padding: SDPA's shortcut) stays `None` while the
        whole prefix is visible, else becomes an additive mask of `dtype`.
        """
        if mask is None:
            if self._all_visible:
                return None
            mask = torch.zeros(1, 1, 1, kv_length, dtype=dtype, device=self.visible.device)
        if mask.dtype == torch.bool:
            columns = self.visible
        else:
            columns = torch.zeros(len(self.visible), dtype=mask.dtype, device=mask.device)
            columns = columns.masked_fill(~self.visible, torch.finfo(mask.dtype).min)
        columns = columns.view(1, 1, 1, -1).expand(*mask.shape[:3], -1)  # (B, 1, q, p)
        return torch.cat([columns, mask], dim=-1)


@dataclass
class PrefixSlot:
    """What one attention module needs: the shared prefix, its layer index, the attention it wraps."""

    prefix: DeepPrefix
    index: int
    base: Callable | None = None  # the attention function it wraps (interface families only)


def prefix_attention(module: nn.Module, query, key, value, attention_mask, **kwargs):
    """The registered attention function: q (B, h, n, d_h) over [prefix ; tokens], then the base implementation."""
    slot: PrefixSlot = module.prefix_slot
    prefix_key, prefix_value = slot.prefix.layer(slot.index)  # (B, h, p, d_h) each
    key = torch.cat([prefix_key.to(key.dtype), key], dim=2)  # (B, h, p + n, d_h)
    value = torch.cat([prefix_value.to(value.dtype), value], dim=2)
    mask = slot.prefix.widen(attention_mask, key.shape[2] - len(slot.prefix.visible), query.dtype)
    return slot.base(module, query, key, value, mask, **kwargs)


class PrefixDisentangledSelfAttention(DisentangledSelfAttention):
    """DeBERTa-v2 attention over [prefix ; tokens]; prefix columns get no relative-position terms.

    Installed by swapping the class of each existing module, so every parameter
    keeps its name. Mirrors `DisentangledSelfAttention.forward` and reuses its
    relative-position code for the token columns.
    """

    prefix_slot: PrefixSlot

    def forward(
        self,
        hidden_states,
        attention_mask,
        output_attentions=False,
        query_states=None,
        relative_pos=None,
        rel_embeddings=None,
    ):
        heads = self.num_attention_heads
        query_states = hidden_states if query_states is None else query_states
        query = self.transpose_for_scores(self.query_proj(query_states), heads)  # (B*h, n, d_h)
        key = self.transpose_for_scores(self.key_proj(hidden_states), heads)  # (B*h, n, d_h)
        value = self.transpose_for_scores(self.value_proj(hidden_states), heads)
        scale_factor = 1 + sum(kind in self.pos_att_type for kind in ("c2p", "p2c"))
        scale = scaled_size_sqrt(query, scale_factor).to(dtype=query.dtype)
        scores = torch.bmm(query, key.transpose(-1, -2) / scale)  # (B*h, n, n)
        if self.relative_attention:
            rel_embeddings = self.pos_dropout(rel_embeddings)
            scores = scores + self.disentangled_attention_bias(query, key, relative_pos, rel_embeddings, scale_factor)

        prefix_key, prefix_value = self.prefix_slot.prefix.layer(self.prefix_slot.index)  # (B, h, p, d_h)
        prefix_key = prefix_key.flatten(0, 1).to(key.dtype)  # (B*h, p, d_h)
        prefix_value = prefix_value.flatten(0, 1).to(value.dtype)
        prefix_scores = torch.bmm(query, prefix_key.transpose(-1, -2) / scale)  # (B*h, n, p): c2c only
        scores = torch.cat([prefix_scores, scores], dim=-1)  # (B*h, n, p + n)
        scores = scores.view(-1, heads, scores.size(-2), scores.size(-1))  # (B, h, n, p + n)

        mask = self.prefix_slot.prefix.widen(attention_mask.bool(), key.size(1), query.dtype)
        scores = scores.masked_fill(~mask, torch.finfo(query.dtype).min)
        probs = self.dropout(nn.functional.softmax(scores, dim=-1))
        context = torch.bmm(probs.flatten(0, 1), torch.cat([prefix_value, value], dim=1))  # (B*h, n, d_h)
        context = context.view(-1, heads, context.size(-2), context.size(-1)).permute(0, 2, 1, 3)  # (B, n, h, d_h)
        context = context.reshape(context.size(0), context.size(1), -1)  # (B, n, h*d_h)
        return context, (probs if output_attentions else None)


def _prefix_name(base: str) -> str:
    return f"aotpt_prefix_{base}"


# Registered when this module is imported, not when a model is built: a process that unpickles a model
# (a ddp_spawn worker) imports this module through the model's classes and so finds the names registered.
for _base in BASE_ATTENTION:
    AttentionInterface.register(_prefix_name(_base), prefix_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(_prefix_name(_base), ALL_MASK_ATTENTION_FUNCTIONS[_base])


def _switch_to_prefix_attention(backbone: PreTrainedModel) -> Callable:
    """Switch the backbone to the prefix attention registered for its attention implementation, and return the
    attention function that wraps (the family's own eager function, as its modeling file calls it)."""
    base = backbone.config._attn_implementation
    if base not in BASE_ATTENTION:
        raise choices("attn_implementation for method=ptuning_v2", base, BASE_ATTENTION)
    backbone.set_attn_implementation(_prefix_name(base))
    if base == "sdpa":
        return sdpa_attention_forward
    attention = encoder_layers(backbone)[0].get_submodule(layout(backbone).self_attention)
    return sys.modules[type(attention).__module__].eager_attention_forward


def attach(backbone: PreTrainedModel, cfg: PtuningV2Config) -> dict[str, nn.Parameter]:
    """Add the prefix as `backbone.prefix` and route every self-attention through it."""
    where = layout(backbone)
    backbone.add_module("prefix", DeepPrefix(backbone, cfg))
    base = None if where.attention == "disentangled" else _switch_to_prefix_attention(backbone)
    for index, layer in enumerate(encoder_layers(backbone)):
        attention = layer.get_submodule(where.self_attention)
        if base is None:
            attention.__class__ = PrefixDisentangledSelfAttention
        attention.prefix_slot = PrefixSlot(backbone.prefix, index, base)
    return dict(backbone.prefix.named_parameters("prefix"))
