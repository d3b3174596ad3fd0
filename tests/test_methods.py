"""The shared matrix: every registered method × tiny BERT, RoBERTa and DeBERTa-v2, plus a real-data run each.

Facts about a method come from its config (`identity_at_init`, its fields);
the only per-method table here is the analytic parameter count, written out
independently of the method code.
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aotpt import train
from aotpt.backbones import count_params, load_backbone
from aotpt.errors import ConfigError
from aotpt.methods import METHODS, lora
from aotpt.methods.adapter import AdapterConfig
from aotpt.methods.lora import LoraConfig
from aotpt.methods.ptuning_v1 import PtuningV1Config
from aotpt.model import build_model, load_trained, save_trained
from conftest import SHARED_DATA, TINY_MODELS, model_conf
from helpers import record_for

LABELS = 3


def _build(method: str, model: str):
    conf = model_conf(model)
    torch.manual_seed(0)
    return build_model(conf["pretrained"], METHODS[method].config(), LABELS, conf["random_init"])


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 30522, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return ids, mask


def _cases():
    for method in METHODS:
        for model in TINY_MODELS:
            yield pytest.param(method, model, id=f"{method}-{model}")


CASES = list(_cases())


@pytest.mark.parametrize(("method", "model"), CASES)
def test_forward_is_finite(method, model):
    tm = _build(method, model)
    ids, mask = _batch()
    for mode in (tm.train, tm.eval):
        mode()
        logits = tm(ids, mask, token_type_ids=torch.zeros_like(ids))
        assert logits.shape == (3, LABELS) and torch.isfinite(logits).all()


@pytest.mark.parametrize(("method", "model"), CASES)
def test_three_steps_change_exactly_the_attached_parameters_and_the_head(method, model):
    tm = _build(method, model).train()
    before = {k: v.clone() for k, v in tm.state_dict().items()}
    # Adam moves every parameter with a non-zero gradient by about lr, whatever the gradient's scale
    # (tiny random DeBERTa's first-layer query gradients are ~1e-10: an SGD step would underflow).
    opt = torch.optim.Adam([p for p in tm.parameters() if p.requires_grad], lr=1e-2, eps=1e-12)
    ids, mask = _batch()
    for _ in range(3):  # zero-initialised factors (LoRA's B, an adapter's W_up, kron's W_R) free the rest at step 2
        opt.zero_grad()
        torch.nn.functional.cross_entropy(tm(ids, mask), torch.tensor([0, 1, 2])).backward()
        opt.step()
    changed = {k for k, v in tm.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == set(tm.trainable)
    assert any(k.startswith("backbone.") for k in tm.trainable) and any(k.startswith("head.") for k in tm.trainable)
    trained = {id(p) for n, p in tm.named_parameters() if n in tm.trainable}
    assert all(p.grad is None for p in tm.parameters() if id(p) not in trained)


@pytest.mark.parametrize(("method", "model"), CASES)
def test_identity_at_init_as_declared(method, model):
    tm = _build(method, model).eval()
    conf = model_conf(model)
    torch.manual_seed(0)
    frozen = load_backbone(conf["pretrained"], conf["random_init"]).eval()
    ids, mask = _batch()
    with torch.no_grad():
        got = tm.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        want = frozen(input_ids=ids, attention_mask=mask).last_hidden_state
    assert got.shape == want.shape
    real = mask.bool()
    if METHODS[method].config.identity_at_init:
        torch.testing.assert_close(got[real], want[real], rtol=0, atol=0)
    else:
        assert (got[real] - want[real]).abs().max() > 1e-3


@pytest.mark.parametrize(("method", "model"), CASES)
def test_save_load_reproduces_logits(tmp_path, method, model):
    tm = _build(method, model).eval()
    with torch.no_grad():  # move every trained tensor away from its initial value
        for name, p in tm.named_parameters():
            if name in tm.trainable:
                p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path / "trained.safetensors"
    save_trained(tm, path, record_for(tm, "rte", {"name": method}, model))
    fresh = _build(method, model).eval()
    ids, mask = _batch(1)
    with torch.no_grad():
        assert not torch.allclose(fresh(ids, mask), tm(ids, mask))
        load_trained(fresh, path)
        torch.testing.assert_close(fresh(ids, mask), tm(ids, mask), rtol=0, atol=1e-6)
    assert set(load_file(str(path))) == set(tm.trainable)


def _analytic(method: str, cfg, model: str) -> int:
    """Trainable parameters written out from each paper's definition, for the tiny configs (V, d, L, FFN width)."""
    init = model_conf(model)["random_init"]
    V, d, L, ffn = init["vocab_size"], init["hidden_size"], init["num_hidden_layers"], init["intermediate_size"]
    deberta = model == "tiny_deberta"
    linear = 4 * (d * d + d) + (d * ffn + ffn) + (ffn * d + d)  # q, k, v, attention output; FFN in and out
    if deberta:  # word embeddings + LN; relative embeddings (2 x buckets) + LN; conv (kernel 3) + LN
        embeddings = V * d + 2 * d
        extras = 2 * init["position_buckets"] * d + 2 * d + (3 * d * d + d) + 2 * d
    else:  # word, position, token-type embeddings + LayerNorm
        embeddings, extras = (V + init.get("max_position_embeddings", 512) + 2) * d + 2 * d, 0

    def ptuning_v2() -> int:
        if not cfg.projection:
            return cfg.length * L * 2 * d
        h = cfg.projection_hidden
        return cfg.length * d + (d * h + h) + (h * L * 2 * d + L * 2 * d)

    def aot() -> int:
        a, r = math.ceil(math.sqrt(V)), cfg.reparam.rank
        return a * r + math.ceil(V / a) * r + r * r * L * d

    counts = {
        "finetune": lambda: embeddings + L * (linear + 2 * 2 * d) + extras,
        # embedding LayerNorm; per layer q, k, v, output, FFN in (I), FFN out, 2 LayerNorms; DeBERTa's 3 extra biases
        "bitfit": lambda: d + L * (4 * d + ffn + d + 2 * d) + (3 * d if deberta else 0),
        "lora": lambda: L * len(("W_q", "W_v")) * (cfg.rank * d + d * cfg.rank),
        "adapter": lambda: L * 2 * (d * cfg.size + cfg.size + cfg.size * d + d + 2 * d * cfg.train_layer_norm),
        "ptuning_v2": ptuning_v2,
        "ptuning_v1": lambda: (
            cfg.length * d  # prompt embeddings, then the MLP d -> h -> h -> d
            + (d * cfg.encoder_hidden + cfg.encoder_hidden)
            + (cfg.encoder_hidden**2 + cfg.encoder_hidden)
            + (cfg.encoder_hidden * d + d)
        ),
        "aot": aot,
    }
    head = d * d + d + d * LABELS + LABELS
    return head + counts[method]()


@pytest.mark.parametrize(("method", "model"), CASES)
def test_trainable_count_is_analytic(method, model):
    tm = _build(method, model)
    trainable, _ = count_params(tm)
    assert trainable == _analytic(method, METHODS[method].config(), model)
    assert trainable == sum(p.numel() for n, p in tm.named_parameters() if n in tm.trainable)


@pytest.mark.skipif(not (SHARED_DATA / "glue" / "MRPC").exists(), reason="needs ../shared/data")
@pytest.mark.parametrize("method", METHODS)
def test_minilm_real_data_smoke_run(train_cfg, method):
    """One short epoch of MiniLM on real MRPC files; the checkpoint holds only what the method trains."""
    cfg = train_cfg(
        "model=minilm",
        "task=mrpc",
        f"method={method}",
        f"data_dir={SHARED_DATA}",
        "data.limit_examples=16",
        "data.batch_size=8",
        "data.eval_batch_size=16",
        "data.max_length=48",
        "trainer.detect_anomaly=false",  # a smoke run: its backward costs several times more on 2 cores
    )
    out = train.run(cfg)
    results = json.loads((Path(out["output_dir"]) / "results.json").read_text())
    assert results["status"] == "completed" and math.isfinite(results["best"]["val/score"])
    assert 0 < results["trainable_params"] <= results["total_params"]
    ckpt = torch.load(f"{out['output_dir']}/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    saved = load_file(str(Path(out["output_dir"]) / "model" / "trained.safetensors"))
    assert {k.removeprefix("net.") for k in ckpt["state_dict"]} == set(saved)
    assert sum(v.numel() for v in saved.values()) == results["trainable_params"]


# ---- method-specific checks --------------------------------------------------


@pytest.mark.parametrize(
    ("config", "options", "message"),
    [
        (LoraConfig, {"rank": 0}, r"method.rank=0 must be >= 1"),
        (LoraConfig, {"dropout": 1.0}, r"method.dropout=1.0 must be in \[0, 1\)"),
        (AdapterConfig, {"size": 0}, r"method.size=0 must be >= 1"),
        (AdapterConfig, {"activation": "nope"}, r"unknown method.activation='nope'; accepted: .*gelu"),
        (PtuningV1Config, {"encoder": "gru"}, r"unknown method.encoder='gru'; accepted: lstm, mlp"),
        (PtuningV1Config, {"length": 0}, r"method.length=0 must be >= 1"),
    ],
)
def test_bad_options_fail_in_one_line(config, options, message):
    with pytest.raises(ConfigError, match=message) as err:
        config(**options)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("model", TINY_MODELS)
def test_lora_targets_the_family_projections(model):
    conf = model_conf(model)
    backbone = load_backbone(conf["pretrained"], conf["random_init"])
    lora.attach(backbone, LoraConfig())
    suffix = {"tiny_deberta": ("query_proj", "value_proj")}.get(model, ("query", "value"))
    expected = [f"encoder.layer.{i}.attention.self.{name}" for i in range(2) for name in suffix]
    assert sorted(lora.tuner(backbone).targeted_module_names) == sorted(expected)


# DeBERTa-v2 with share_att_key also runs query_proj on the relative embeddings (batch 1), which PEFT's
# per-row adapter_names cannot split: the mixed-batch serving baseline needs another target set there.
@pytest.mark.parametrize("model", ["tiny_bert", "tiny_roberta"])
def test_lora_keeps_the_tuner_for_mixed_batches(model):
    conf = model_conf(model)
    backbone = load_backbone(conf["pretrained"], conf["random_init"])
    lora.attach(backbone, LoraConfig())
    backbone.eval()
    ids, mask = _batch()
    with torch.no_grad():  # the serving baseline's path: adapter_names reaches the layers through the tuner
        plain = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        with lora.tuner(backbone)._enable_peft_forward_hooks(adapter_names=[lora.ADAPTER] * 3):
            named = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(named, plain, rtol=0, atol=1e-6)


def test_lora_unknown_target_is_refused():
    conf = model_conf("tiny_bert")
    backbone = load_backbone(conf["pretrained"], conf["random_init"])
    with pytest.raises(ConfigError, match=r"unknown method.targets entry='q_proj'; accepted: key, query, value"):
        lora.attach(backbone, LoraConfig(targets=["q_proj"]))


def test_adapter_sits_before_each_residual_layer_norm():
    """One BERT layer written out: h = LN(x + a(attn_out(x))), y = LN(h + a'(ffn(h)))."""
    tm = _build("adapter", "tiny_bert").eval()
    with torch.no_grad():
        for name, p in tm.named_parameters():
            if ".adapter." in name:
                p.normal_(0, 0.3)
    layer = tm.backbone.encoder.layer[0]
    x = torch.randn(3, 9, 32)
    with torch.no_grad():
        attention = layer.attention
        context = attention.self(x, attention_mask=None)[0]
        h = attention.output.LayerNorm(x + attention.output.adapter(attention.output.dense(context)))
        want = layer.output.LayerNorm(h + layer.output.adapter(layer.output.dense(layer.intermediate(h))))
        got = layer(x, attention_mask=None)
        got = got[0] if isinstance(got, tuple) else got
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model", TINY_MODELS)
def test_ptuning_v1_prompt_follows_the_first_token(model):
    """The hooked backbone equals the plain one run on [e(x_0); prompt; e(x_1..)], prompt positions dropped."""
    tm = _build("ptuning_v1", model).eval()
    conf = model_conf(model)
    torch.manual_seed(0)
    plain = load_backbone(conf["pretrained"], conf["random_init"]).eval()
    p = tm.backbone.prompt.slots.numel()
    ids, mask = _batch()
    with torch.no_grad():
        got = tm.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        prompt = tm.backbone.prompt.encoder(torch.arange(p)[None]).expand(3, -1, -1)  # (B, p, d)
        embeds = plain.embeddings.word_embeddings(ids)  # (B, n, d)
        full = plain(
            inputs_embeds=torch.cat([embeds[:, :1], prompt, embeds[:, 1:]], dim=1),
            attention_mask=torch.cat([mask[:, :1], torch.ones(3, p, dtype=mask.dtype), mask[:, 1:]], dim=1),
        ).last_hidden_state  # (B, 1 + p + n - 1, d)
    want = torch.cat([full[:, :1], full[:, 1 + p :]], dim=1)
    assert got.shape == (*ids.shape, 32)
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], rtol=1e-5, atol=1e-5)


def _moved(method: str, model: str):
    """A model of `method` whose trained tensors moved away from their initial values (a non-identity model)."""
    tm = _build(method, model).eval()
    with torch.no_grad():
        for name, p in tm.named_parameters():
            if name in tm.trainable:
                p.add_(torch.randn_like(p) * 0.05)
    return tm


@pytest.mark.parametrize(("method", "model"), CASES)
def test_deep_copy_computes_with_its_own_weights(method, model):
    tm = _moved(method, model)
    ids, mask = _batch(1)
    with torch.no_grad():
        want = tm(ids, mask)
        twin = copy.deepcopy(tm)
        for name, p in twin.named_parameters():  # the copy's trained backbone tensors move again, the original's not
            if name in twin.trainable and name.startswith("backbone."):
                p.add_(torch.randn_like(p) * 0.05)
        got = twin(ids, mask)
        torch.testing.assert_close(tm(ids, mask), want, rtol=0, atol=0)  # the original is untouched
        reference = _build(method, model).eval()  # a fresh model that carries the copy's weights
        reference.load_state_dict(twin.state_dict())
        torch.testing.assert_close(got, reference(ids, mask), rtol=0, atol=1e-6)
        assert (got - want).abs().max() > 1e-4  # the copy's own weights really changed its output


def test_every_method_unpickles_and_runs_in_a_fresh_interpreter(tmp_path):
    """What a ddp_spawn worker does: unpickle the model in a new process (no registration from the parent)."""
    ids, mask = _batch(1)
    expected = {}
    for method in METHODS:
        for model in TINY_MODELS:
            tm = _moved(method, model)
            with torch.no_grad():
                expected[f"{method}-{model}"] = tm(ids, mask)
            torch.save(tm, tmp_path / f"{method}-{model}.pt")
    torch.save({"ids": ids, "mask": mask, "expected": expected}, tmp_path / "expected.pt")
    code = f"""
import torch
from pathlib import Path
data = torch.load({str(tmp_path / "expected.pt")!r})
for name, want in data["expected"].items():
    tm = torch.load(Path({str(tmp_path)!r}) / f"{{name}}.pt", weights_only=False)
    with torch.no_grad():
        got = tm(data["ids"], data["mask"])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6, msg=lambda m: f"{{name}}: {{m}}")
print("ok", len(data["expected"]))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["ok", str(len(expected))]
