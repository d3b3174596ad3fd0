"""What a GPU node exercises and this CPU does not, parametrised by device.

Every test runs on "cpu" here (in `make test`) and on "cuda" where a CUDA
device exists: those cases carry the `gpu` marker (`make test-gpu`) and skip
cleanly without one.
"""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import open_dict

from aotpt import bench
from aotpt.backbones import load_backbone, load_tokenizer
from aotpt.export import export
from aotpt.methods import METHODS
from aotpt.methods.aot.artifact import Artifact
from aotpt.methods.ptuning_v2 import PtuningV2Config, attach
from aotpt.model import build_model
from aotpt.serving import MultiTaskPredictor
from conftest import TINY_MODELS, model_conf
from helpers import TEXTS, batch, bench_cfg, make_run, plain_backbone

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")],
    ),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("model", TINY_MODELS)
@pytest.mark.parametrize("method", list(METHODS))
def test_bf16_mixed_training_steps(device, method, model):
    """What trainer.precision=bf16-mixed does: forward under bf16 autocast, fp32 weights and gradients."""
    conf = model_conf(model)
    torch.manual_seed(0)
    tm = build_model(conf["pretrained"], METHODS[method].config(), 3, conf["random_init"]).to(device).train()
    before = {n: p.detach().clone() for n, p in tm.named_parameters() if p.requires_grad}
    opt = torch.optim.Adam([p for p in tm.parameters() if p.requires_grad], lr=1e-2, eps=1e-12)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 30522, (3, 9), generator=g).to(device)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    for _ in range(3):
        opt.zero_grad()
        with torch.autocast(device, dtype=torch.bfloat16):
            logits = tm(ids, mask)
        loss = torch.nn.functional.cross_entropy(logits.float(), torch.tensor([0, 1, 2], device=device))
        assert torch.isfinite(loss)
        loss.backward()
        assert all(p.grad.dtype == torch.float32 for p in tm.parameters() if p.grad is not None)
        opt.step()
    moved = {n for n, p in tm.named_parameters() if p.requires_grad and not torch.equal(p, before[n])}
    assert moved == set(before)


@pytest.fixture(scope="module")
def two_tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    artifacts = []
    for task, reparam, seed in (("rte", "kron", 1), ("cb", "fc", 2)):
        run_dir, tm = make_run(root, task, reparam, weights_seed=seed)
        artifacts.append(Artifact.load(export(run_dir)))
    return artifacts, plain_backbone(tm), load_tokenizer(model_conf("tiny_bert")["pretrained"])


@pytest.mark.parametrize("device", DEVICES)
def test_host_table_serving_matches_the_device_table(device, two_tasks):
    """mode=host keeps the table in host memory (pinned on CUDA) and copies a batch's rows with non_blocking=True:
    the logits must be those of the table on the device, bit for bit."""
    artifacts, backbone, tokenizer = two_tasks
    fingerprint = artifacts[0].record.tokenizer_fingerprint
    inputs = {k: v.to(device) for k, v in batch(tokenizer, [TEXTS[0], TEXTS[1], TEXTS[0]]).items()}
    task_ids = torch.tensor([0, 1, 1], device=device)
    logits = {}
    for mode in ("device", "host"):
        predictor = MultiTaskPredictor(copy.deepcopy(backbone).to(device), artifacts, fingerprint, mode)
        if mode == "host":
            source = predictor.backbone.aot.source
            assert all(t.device.type == "cpu" and t.is_pinned() == (device == "cuda") for t in source.stores)
        logits[mode] = torch.cat(predictor(task_ids=task_ids, **inputs))
    torch.testing.assert_close(logits["host"], logits["device"], rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_ptuning_v2_prefix_attention_matches_eager(device, attn):
    """The prefix through SDPA (the default on CUDA: fused kernels) and through eager attention agree."""
    conf = model_conf("tiny_bert")
    cfg = PtuningV2Config(length=4, dropout=0.0)
    models = {}
    for impl in (attn, "eager"):
        torch.manual_seed(0)
        backbone = load_backbone(conf["pretrained"], {**conf["random_init"], "attn_implementation": impl})
        attach(backbone, cfg)
        models[impl] = backbone.to(device).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 30522, (3, 9), generator=g).to(device)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        got = models[attn](input_ids=ids, attention_mask=mask).last_hidden_state
        want = models["eager"](input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], rtol=1e-4, atol=1e-5)


def _bench_cfg(device: str, tmp_path, *overrides: str):
    cfg = bench_cfg("model=tiny_bert", f"device={device}", *overrides)
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path)
    return cfg


@pytest.mark.parametrize("device", DEVICES)
def test_benchmarks_time_on_the_device(device, tmp_path):
    """The benchmarks' timing (CUDA: synchronised around every timed call) runs on `device` end to end."""
    result = bench.run(_bench_cfg(device, tmp_path, "batch_size=2", "seq_len=8", "warmup=1", "steps=2"))
    assert result["device"] == device and all(r["median_step_s"] > 0 for r in result["methods"].values())
