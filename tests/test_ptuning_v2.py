"""P-Tuning v2: attention over [prefix ; tokens] against hand-written references, one per family."""

from __future__ import annotations

import math

import pytest
import torch

from aotpt.backbones import load_backbone
from aotpt.errors import ConfigError
from aotpt.methods.ptuning_v2 import PtuningV2Config, attach
from conftest import TINY_MODELS, model_conf

VOCAB = 30522


def _batch(padded: bool = True, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    if padded:
        mask[1, 6:] = 0
        mask[2, 4:] = 0
    return ids, mask


def _pair(model: str, cfg: PtuningV2Config, attn: str | None = None, **overrides):
    """(frozen backbone, the same backbone with the prefix attached), both in eval mode."""
    conf = model_conf(model)
    random_init = {**conf["random_init"], **({"attn_implementation": attn} if attn else {}), **overrides}
    torch.manual_seed(0)
    frozen = load_backbone(conf["pretrained"], random_init).eval()
    torch.manual_seed(0)
    prefixed = load_backbone(conf["pretrained"], random_init)
    attach(prefixed, cfg)
    return frozen, prefixed.eval()


def _prefix_kv(backbone) -> torch.Tensor:
    """The prefix as the paper's PrefixEncoder lays it out: (2L, h, p, d_h); layer l keys 2l, values 2l+1."""
    prefix = backbone.prefix
    kv = prefix.encoder(torch.arange(len(prefix.slots))[None])[0]  # (p, L*2*d)
    return kv.view(kv.shape[0], 2 * prefix.num_layers, prefix.heads, -1).permute(1, 2, 0, 3)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.view(*x.shape[:2], heads, -1).transpose(1, 2)  # (B, n, d) -> (B, h, n, d_h)


def _reference_bert(backbone, ids, mask) -> torch.Tensor:
    """BERT/RoBERTa encoder written out with softmax(q [pk ; k]^T / sqrt(d_h)) [pv ; v] in every layer."""
    kv, heads = _prefix_kv(backbone), backbone.config.num_attention_heads
    batch, p = ids.shape[0], kv.shape[2]
    open_columns = torch.cat([torch.ones(batch, p), mask], dim=1).bool()[:, None, None, :]  # (B, 1, 1, p + n)
    h = backbone.embeddings(input_ids=ids)
    for index, layer in enumerate(backbone.encoder.layer):
        att = layer.attention.self
        q = _split_heads(att.query(h), heads)
        k = torch.cat([kv[2 * index].expand(batch, -1, -1, -1), _split_heads(att.key(h), heads)], dim=2)
        v = torch.cat([kv[2 * index + 1].expand(batch, -1, -1, -1), _split_heads(att.value(h), heads)], dim=2)
        scores = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(~open_columns, -math.inf)
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(h.shape)  # (B, n, d)
        attended = layer.attention.output(context, h)
        h = layer.output(layer.intermediate(attended), attended)
    return h


def _reference_deberta(backbone, ids, mask) -> torch.Tensor:
    """DeBERTa-v2 written out: prefix columns get q·pk only; token columns keep c2c + c2p + p2c."""
    kv, heads, enc = _prefix_kv(backbone), backbone.config.num_attention_heads, backbone.encoder
    batch, n, p = *ids.shape, kv.shape[2]
    h0 = backbone.embeddings(input_ids=ids, mask=mask)
    token_mask = enc.get_attention_mask(mask).bool()  # (B, 1, n, n)
    open_columns = torch.cat([torch.ones(batch, 1, n, p, dtype=torch.bool), token_mask], dim=-1)
    rel_pos, rel_emb = enc.get_rel_pos(h0), enc.get_rel_embedding()
    x = h0
    for index, layer in enumerate(enc.layer):
        att = layer.attention.self
        q, k, v = (att.transpose_for_scores(proj(x), heads) for proj in (att.query_proj, att.key_proj, att.value_proj))
        scale = math.sqrt(q.shape[-1] * 3)  # c2c, c2p, p2c
        pk = kv[2 * index].expand(batch, -1, -1, -1).flatten(0, 1)  # (B*h, p, d_h)
        pv = kv[2 * index + 1].expand(batch, -1, -1, -1).flatten(0, 1)
        tokens = q @ k.transpose(-1, -2) / scale + att.disentangled_attention_bias(q, k, rel_pos, rel_emb, 3)
        scores = torch.cat([q @ pk.transpose(-1, -2) / scale, tokens], dim=-1).view(batch, heads, n, p + n)
        scores = scores.masked_fill(~open_columns, torch.finfo(scores.dtype).min)
        context = scores.softmax(-1).flatten(0, 1) @ torch.cat([pv, v], dim=1)  # (B*h, n, d_h)
        context = context.view(batch, heads, n, -1).transpose(1, 2).reshape(batch, n, -1)
        attended = layer.attention.output(context, x)
        out = layer.output(layer.intermediate(attended), attended)
        x = enc.conv(h0, out, mask) if index == 0 else out
    return x


def _cases():
    for model in TINY_MODELS:
        for attn in ("sdpa", "eager") if model != "tiny_deberta" else (None,):
            yield pytest.param(model, attn, id=f"{model}-{attn or 'own'}")


@pytest.mark.parametrize("projection", [False, True])
@pytest.mark.parametrize(("model", "attn"), list(_cases()))
def test_matches_hand_written_reference(model, attn, projection):
    frozen, prefixed = _pair(model, PtuningV2Config(length=5, projection=projection, projection_hidden=16), attn)
    reference = _reference_deberta if model == "tiny_deberta" else _reference_bert
    for padded in (True, False):  # False: SDPA passes no mask at all
        ids, mask = _batch(padded)
        with torch.no_grad():
            got = prefixed(input_ids=ids, attention_mask=mask).last_hidden_state
            want = reference(prefixed, ids, mask)
            plain = frozen(input_ids=ids, attention_mask=mask).last_hidden_state
        real = mask.bool()  # DeBERTa leaves padded rows undefined (all-masked softmax)
        torch.testing.assert_close(got[real], want[real], rtol=1e-5, atol=1e-5)
        assert (got[real] - plain[real]).abs().max() > 1e-3  # the prefix really changed the output


@pytest.mark.parametrize(("model", "attn"), list(_cases()))
def test_prefix_closed_by_the_mask_reproduces_the_backbone(model, attn):
    frozen, prefixed = _pair(model, PtuningV2Config(length=5), attn)
    prefixed.prefix.visible.fill_(False)  # every prefix column gets -inf before the softmax
    for padded in (True, False):
        ids, mask = _batch(padded, seed=1)
        with torch.no_grad():
            got = prefixed(input_ids=ids, attention_mask=mask).last_hidden_state
            want = frozen(input_ids=ids, attention_mask=mask).last_hidden_state
        real = mask.bool()
        torch.testing.assert_close(got[real], want[real], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model", TINY_MODELS)
def test_padding_stays_masked(model):
    """Changing what sits in padded positions changes nothing else: the mask reached every attention."""
    _, prefixed = _pair(model, PtuningV2Config(length=5))
    ids, mask = _batch()
    other = ids.masked_fill(mask == 0, 7)
    with torch.no_grad():
        a = prefixed(input_ids=ids, attention_mask=mask).last_hidden_state
        b = prefixed(input_ids=other, attention_mask=mask).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(a[real], b[real], rtol=1e-5, atol=1e-6)


def test_prefix_dropout_acts_in_training_only():
    no_backbone_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    _, prefixed = _pair("tiny_bert", PtuningV2Config(length=5, dropout=0.5), **no_backbone_dropout)
    ids, mask = _batch()
    with torch.no_grad():
        evals = [prefixed(input_ids=ids, attention_mask=mask).last_hidden_state for _ in range(2)]
        prefixed.train()
        trains = [prefixed(input_ids=ids, attention_mask=mask).last_hidden_state for _ in range(2)]
    torch.testing.assert_close(evals[0], evals[1], rtol=0, atol=0)
    assert (trains[0] - trains[1]).abs().max() > 1e-4


@pytest.mark.parametrize("bad", [{"length": 0}, {"dropout": 1.0}, {"projection_hidden": 0}])
def test_options_are_validated(bad):
    with pytest.raises(ConfigError, match=f"method.{next(iter(bad))}="):
        PtuningV2Config(**bad)


def test_unsupported_attention_kernel_is_refused():
    conf = model_conf("tiny_bert")
    backbone = load_backbone(conf["pretrained"], conf["random_init"])
    backbone.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ConfigError, match="sdpa"):
        attach(backbone, PtuningV2Config())
