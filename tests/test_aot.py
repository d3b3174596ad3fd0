"""The maths of AoT P-Tuning on tiny random BERT, RoBERTa and DeBERTa-v2 backbones."""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import pytest
import torch
from transformers.masking_utils import create_bidirectional_mask

from aotpt.backbones import encoder_layers, load_backbone
from aotpt.errors import ConfigError
from aotpt.methods.aot import AotConfig
from aotpt.methods.aot.reparam import DenseConfig, FcConfig, KronConfig
from aotpt.model import build_model, load_trained, save_trained
from aotpt.record import read_run
from conftest import TINY_MODELS, model_conf
from helpers import record_for

REPARAMS = {"kron": KronConfig(rank=4), "fc": FcConfig(rank=8, activation="gelu"), "dense": DenseConfig()}
VOCAB = 30522


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # padding: masked in attention, may carry a bias
    return ids, mask


def _backbone_and_model(model: str, reparam: str):
    conf = model_conf(model)
    torch.manual_seed(0)
    tm = build_model(conf["pretrained"], AotConfig(reparam=copy.deepcopy(REPARAMS[reparam])), 3, conf["random_init"])
    frozen = copy.deepcopy(tm.backbone)
    frozen.aot.remove()
    del frozen.aot
    return frozen.eval(), tm.eval()


@pytest.mark.parametrize("reparam", REPARAMS)
@pytest.mark.parametrize("model", TINY_MODELS)
def test_zero_init_equals_frozen_backbone(model, reparam):
    frozen, tm = _backbone_and_model(model, reparam)
    ids, mask = _batch()
    with torch.no_grad():
        got = tm.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        want = frozen(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("reparam", REPARAMS)
@pytest.mark.parametrize("model", TINY_MODELS)
def test_step_changes_only_aot_and_head(model, reparam):
    _, tm = _backbone_and_model(model, reparam)
    tm.train()
    before = {k: v.clone() for k, v in tm.state_dict().items()}
    opt = torch.optim.SGD([p for p in tm.parameters() if p.requires_grad], lr=0.5)
    ids, mask = _batch()
    for _ in range(2):  # kron/fc: W_R/W2 leave zero at step 1, the rest moves at step 2
        opt.zero_grad()
        torch.nn.functional.cross_entropy(tm(ids, mask), torch.tensor([0, 1, 2])).backward()
        opt.step()
    changed = {k for k, v in tm.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == set(tm.trainable)
    assert all(k.startswith(("backbone.aot.", "head.")) for k in tm.trainable)
    assert all(p.grad is None for n, p in tm.backbone.named_parameters() if not n.startswith("aot."))


def _reference_forward(backbone, table: torch.Tensor, ids, mask) -> torch.Tensor:
    """Embeddings, + P_1[x], layer 1, + P_2[x], ... written out per family; padded positions get no bias."""
    L, d = len(encoder_layers(backbone)), backbone.config.hidden_size
    bias = (table[ids] * mask[..., None]).view(*ids.shape, L, d)  # (B, n, L, d)
    h = backbone.embeddings(input_ids=ids, **({"mask": mask} if hasattr(backbone.encoder, "rel_embeddings") else {}))
    if backbone.config.model_type == "deberta-v2":
        enc = backbone.encoder
        att = enc.get_attention_mask(mask)
        rel_pos, rel_emb = enc.get_rel_pos(h), enc.get_rel_embedding()
        h = h + bias[:, :, 0]
        x = h
        for i, layer in enumerate(enc.layer):
            x = x + bias[:, :, i] if i > 0 else x
            out, _ = layer(x, att, relative_pos=rel_pos, rel_embeddings=rel_emb)
            x = enc.conv(h, out, mask) if i == 0 else out
        return x
    att = create_bidirectional_mask(config=backbone.config, inputs_embeds=h, attention_mask=mask)
    for i, layer in enumerate(backbone.encoder.layer):
        h = layer(h + bias[:, :, i], att)
    return h


@pytest.mark.parametrize("model", TINY_MODELS)
def test_matches_hand_written_reference(model):
    frozen, tm = _backbone_and_model(model, "dense")
    with torch.no_grad():
        tm.backbone.aot.source.P.normal_(0, 0.5)
    ids, mask = _batch(1)
    with torch.no_grad():
        got = tm.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        want = _reference_forward(frozen, tm.backbone.aot.source.P, ids, mask)
        plain = frozen(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - plain).abs().max() > 1e-2  # the bias really changed the output


@pytest.mark.parametrize("reparam", ["kron", "fc"])
def test_batch_rows_equal_full_table_rows(reparam):
    backbone = load_backbone(model_conf("tiny_bert")["pretrained"], model_conf("tiny_bert")["random_init"])
    emb = backbone.embeddings.word_embeddings
    source = REPARAMS[reparam].build(2, 32, emb.num_embeddings, emb)
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    ids = torch.tensor([0, 1, 17, 5000, VOCAB - 1, 17])
    table = source.table(chunk_rows=1000, dtype=torch.float32)
    assert table.shape == (VOCAB, 2 * 32)
    torch.testing.assert_close(source.rows(ids), table[ids], rtol=1e-5, atol=1e-5)


def test_kron_rows_are_kronecker_products():
    src = KronConfig(rank=3).build(2, 4, 50)
    torch.nn.init.normal_(src.W_R)
    x = 37
    want = torch.kron(src.W_L[x // src.b], src.W_M[x % src.b]) @ src.W_R
    torch.testing.assert_close(src.rows(torch.tensor([x]))[0], want)
    assert src.a * src.b >= 50


@pytest.mark.parametrize("reparam", REPARAMS)
def test_trainable_count_is_analytic(reparam):
    conf = model_conf("tiny_bert")
    tm = build_model(conf["pretrained"], AotConfig(reparam=copy.deepcopy(REPARAMS[reparam])), 2, conf["random_init"])
    L, d, V = 2, 32, VOCAB
    a = math.ceil(math.sqrt(V))
    b = math.ceil(V / a)
    head = d * d + d + d * 2 + 2
    expected = {
        "kron": a * 4 + b * 4 + 16 * L * d,
        "fc": d * 8 + 8 + 8 * L * d + L * d,
        "dense": V * L * d,
    }[reparam]
    assert sum(p.numel() for p in tm.parameters() if p.requires_grad) == expected + head


def test_save_load_roundtrip_holds_no_backbone_weights(tmp_path):
    conf = model_conf("tiny_roberta")
    torch.manual_seed(0)
    tm = build_model(conf["pretrained"], AotConfig(reparam=FcConfig(rank=8)), 2, conf["random_init"]).eval()
    with torch.no_grad():
        tm.backbone.aot.source.down.weight.normal_()
    method = {"name": "aot", "reparam": {"name": "fc", "rank": 8}}
    save_trained(tm, tmp_path / "model" / "trained.safetensors", record_for(tm, "rte", method, "tiny_roberta"))
    torch.manual_seed(0)
    fresh = build_model(conf["pretrained"], AotConfig(reparam=FcConfig(rank=8)), 2, conf["random_init"]).eval()
    load_trained(fresh, tmp_path / "model" / "trained.safetensors")
    _, meta = read_run(tmp_path)
    ids, mask = _batch()
    torch.testing.assert_close(fresh(ids, mask), tm(ids, mask))
    from safetensors.torch import load_file

    keys = set(load_file(str(tmp_path / "model" / "trained.safetensors")))
    assert keys == set(tm.trainable) and not any("word_embeddings" in k for k in keys)
    assert meta.task == "rte" and meta.setup == "aot/fc" and meta.trainable == tm.trainable and meta.aotpt_version


def test_dense_refuses_a_large_vocabulary_with_the_memory_it_needs():
    with pytest.raises(ConfigError, match=r"needs \d+\.\d GiB"):
        DenseConfig().build(24, 1024, 50265)


@pytest.mark.parametrize("bad", [{"rank": 0}, {"dropout": 1.5}, {"activation": "nope"}])
def test_reparam_options_are_validated(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        FcConfig(**bad)


def test_method_code_does_not_import_lightning():
    code = "import sys, aotpt.methods, aotpt.model; assert 'lightning' not in sys.modules, 'lightning imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_model_copies_after_a_training_forward():
    """The batch's rows live in an autograd graph between forwards; copying or pickling must not carry them."""
    _, tm = _backbone_and_model("tiny_bert", "kron")
    ids, mask = _batch()
    tm(ids, mask).sum().backward()
    twin = copy.deepcopy(tm)
    torch.testing.assert_close(twin.eval()(ids, mask), tm.eval()(ids, mask))


@pytest.mark.parametrize("model", TINY_MODELS)
def test_changed_modules_name_every_hooked_layer(model):
    _, tm = _backbone_and_model(model, "kron")
    layers = [f"encoder.layer.{i}" for i in range(1, len(encoder_layers(tm.backbone)))]
    assert tm.changed_modules == ["<root>", "encoder", *layers, "aot"]


PAD_ID = 0  # MiniLM's tokenizer pads with id 0; the tiny configs set pad_token_id to match


@pytest.mark.parametrize("model", TINY_MODELS)
def test_padding_does_not_reach_real_tokens(model):
    """A row alone and the same row padded in a batch give the same outputs, even with a huge bias row for the pad id.

    DeBERTa-v2's convolution beside layer 1 reads neighbouring positions: a bias on padded positions would
    reach the last real tokens. Padding sits right after the last real token, where the convolution reads it.
    """
    _, tm = _backbone_and_model(model, "dense")
    with torch.no_grad():
        tm.backbone.aot.source.P.normal_(0, 0.5)
        tm.backbone.aot.source.P[PAD_ID] = 100.0
    g = torch.Generator().manual_seed(3)
    row = torch.randint(1000, VOCAB, (1, 6), generator=g)
    longer = torch.randint(1000, VOCAB, (1, 11), generator=g)
    padded = torch.cat([torch.cat([row, torch.full((1, 5), PAD_ID)], 1), longer])  # (2, 11)
    mask = torch.ones_like(padded)
    mask[0, 6:] = 0
    with torch.no_grad():
        alone = tm.backbone(input_ids=row, attention_mask=torch.ones_like(row)).last_hidden_state
        batched = tm.backbone(input_ids=padded, attention_mask=mask).last_hidden_state
        logits_alone, logits_batched = tm(row, torch.ones_like(row)), tm(padded, mask)
    torch.testing.assert_close(batched[0, :6], alone[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(logits_batched[0], logits_alone[0], rtol=0, atol=1e-5)
