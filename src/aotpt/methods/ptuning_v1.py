"""P-Tuning v1, a soft prompt in the input (Liu et al. 2021, "GPT Understands, Too", https://arxiv.org/abs/2103.10385).

    E' = [e(x_0) ; f(h_1 .. h_p) ; e(x_1) .. e(x_n-1)]

h_1..h_p are trained prompt embeddings and f is the paper's prompt encoder (a
bidirectional LSTM + MLP, or an MLP): PEFT's `PromptEncoder`. The backbone
runs on E' with the attention mask and token types widened by p.

The prompt goes right after the first token, so [CLS] / <s> stays at position 0
where the task head reads it, and the prompt positions are dropped from the
output again: the backbone returns (B, n, d) as with any other method, and
`TaskModel` needs no change. Both are hooks on the backbone's forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from peft import PromptEncoder, PromptEncoderConfig
from torch import nn
from transformers import PreTrainedModel

from aotpt.backbones import layout
from aotpt.errors import ConfigError
from aotpt.methods._shared import at_least, one_of
from aotpt.methods.base import MethodConfig

ENCODERS = ("lstm", "mlp")  # the paper's two prompt encoders


@dataclass
class PtuningV1Config(MethodConfig):
    name: ClassVar[str] = "ptuning_v1"
    identity_at_init: ClassVar[bool] = False  # the prompt is extra input from step 0
    length: int = 20  # p, prompt positions
    encoder: str = "mlp"  # lstm or mlp
    encoder_hidden: int = 256  # width of the prompt encoder

    def __post_init__(self) -> None:
        at_least("length", self.length, 1)
        at_least("encoder_hidden", self.encoder_hidden, 1)
        one_of("encoder", self.encoder, ENCODERS)


class SoftPrompt(nn.Module):
    """The prompt encoder and the two hooks that put its output into the input and take it out of the output."""

    def __init__(self, backbone: PreTrainedModel, cfg: PtuningV1Config) -> None:
        super().__init__()
        self._word_embeddings = layout(backbone).word_embeddings  # a path: the module itself is the backbone's
        dim = backbone.get_submodule(self._word_embeddings).embedding_dim
        self.encoder = PromptEncoder(
            PromptEncoderConfig(
                num_virtual_tokens=cfg.length,
                token_dim=dim,
                encoder_hidden_size=cfg.encoder_hidden,
                encoder_reparameterization_type=cfg.encoder.upper(),
                num_transformer_submodules=1,
            )
        )
        self.register_buffer("slots", torch.arange(cfg.length), persistent=False)
        backbone.register_forward_pre_hook(self._insert, with_kwargs=True)
        backbone.register_forward_hook(self._strip)

    def _insert(self, backbone: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """input_ids (B, n) -> inputs_embeds (B, p + n, e) with the prompt after the first token."""
        if args or kwargs.get("input_ids") is None or kwargs.get("position_ids") is not None:
            raise ConfigError("method=ptuning_v1 needs the backbone called with input_ids= by keyword, no position_ids")
        ids = kwargs.pop("input_ids")
        batch, p = ids.shape[0], len(self.slots)
        embeds = backbone.get_submodule(self._word_embeddings)(ids)  # (B, n, e)
        prompt = self.encoder(self.slots.expand(batch, p)).to(embeds.dtype)  # (B, p, e)
        kwargs["inputs_embeds"] = _after_first(embeds, prompt)
        mask = kwargs.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask
        kwargs["attention_mask"] = _after_first(mask, mask.new_ones(batch, p))  # (B, p + n)
        if kwargs.get("token_type_ids") is not None:  # the prompt joins the first segment
            types = kwargs["token_type_ids"]
            kwargs["token_type_ids"] = _after_first(types, types[:, :1].expand(batch, p))
        return args, kwargs

    def _strip(self, backbone: nn.Module, args: tuple, output):
        """Drop the prompt positions: last_hidden_state (B, p + n, d) -> (B, n, d)."""
        hidden = output.last_hidden_state
        output.last_hidden_state = torch.cat([hidden[:, :1], hidden[:, 1 + len(self.slots) :]], dim=1)
        return output


def _after_first(sequence: torch.Tensor, inserted: torch.Tensor) -> torch.Tensor:
    """Insert `inserted` (B, p, ...) after position 0 of `sequence` (B, n, ...): (B, p + n, ...)."""
    return torch.cat([sequence[:, :1], inserted, sequence[:, 1:]], dim=1)


def attach(backbone: PreTrainedModel, cfg: PtuningV1Config) -> dict[str, nn.Parameter]:
    backbone.add_module("prompt", SoftPrompt(backbone, cfg))
    return dict(backbone.prompt.named_parameters("prompt"))
