"""The benchmark suites run end to end and report ratios measured in one run (timings themselves are not asserted)."""

from __future__ import annotations

import csv
import json
import statistics

import pytest
import torch
import yaml
from omegaconf import OmegaConf, open_dict
from transformers import AutoConfig

from aotpt import bench
from aotpt.backbones import load_backbone
from aotpt.benchmarks import contenders, costs
from aotpt.benchmarks.fabricate import memory_artifacts
from aotpt.benchmarks.reference import RowMajorTable
from aotpt.cli import CONF_DIR
from aotpt.methods.aot.hooks import AotHooks
from aotpt.methods.lora import LoraConfig
from aotpt.serving import build_source
from conftest import model_conf
from helpers import bench_cfg


def test_train_step_bench_reports_ratios(tmp_path, capsys):
    cfg = bench_cfg("model=tiny_bert", "batch_size=2", "seq_len=8", "warmup=1", "steps=1")
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path)
    result = bench.run(cfg)
    assert set(result["methods"]) == set(cfg.methods)
    assert result["methods"]["finetune"]["ratio_to_finetune"] == 1.0
    assert all(row["median_step_s"] > 0 for row in result["methods"].values())
    assert json.loads((tmp_path / "bench_train_step.json").read_text())["suite"] == "train_step"
    assert "ratio_to_finetune" in capsys.readouterr().out


# suite=inference at its smallest: one grid cell, one mixed cell of 2 tasks, 2 timed rounds, aot_eager compile
TINY_INFERENCE = [
    "suite=inference",
    "model=tiny_bert",
    "inference.batch_sizes=[2]",
    "inference.seq_lens=[8]",
    "inference.rounds=2",
    "inference.warmup=1",
    "inference.mixed.batch_size=2",
    "inference.mixed.seq_len=8",
    "inference.mixed.tasks=[1,2]",
    "inference.aot.reparam.rank=4",
    "inference.compile.backend=aot_eager",
    "inference.threads=1",
]


@pytest.fixture(scope="module")
def inference(tmp_path_factory):
    """One run of the whole inference suite on tiny BERT: (result, output folder)."""
    out = tmp_path_factory.mktemp("bench")
    cfg = bench_cfg(*TINY_INFERENCE)
    with open_dict(cfg):
        cfg.output_dir = str(out)
    return bench.run(cfg), out


def _rows(result, section: str) -> dict[str, dict]:
    return {row["name"]: row for row in result["rows"] if row["section"] == section}


def test_inference_suite_writes_every_output_file(inference):
    result, out = inference
    for name in ("bench_inference.json", "bench_inference.csv", "bench_inference.md"):
        assert (out / name).stat().st_size > 0, name
    for name in ("inference_ratio_vs_length.png", "inference_throughput_vs_tasks.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    grid, mixed = _rows(result, "grid"), _rows(result, "mixed")
    assert set(grid) == {
        "bare", "bare_again", "aot", "aot_before", "ptuning_v2_p8", "ptuning_v2_p32", "ptuning_v2_p128",
        "ptuning_v1_p20", "lora_merged", "lora_unmerged", "adapter", "bare_compiled", "aot_compiled",
    }  # fmt: skip
    modes = ("device", "host", "onthefly", "before")
    assert {f"aot_{mode}_T{t}" for mode in modes for t in (1, 2)} | {"lora_mixed_T2"} <= set(mixed)
    for row in result["rows"]:
        assert row["throughput"] > 0 and row["rounds"] == 2
        if row["name"] != "bare":
            assert row["ratio_q1"] <= row["ratio"] <= row["ratio_q3"]
        assert {"extra_flops_per_token", "extra_bytes_per_token", "analytic_ratio"} <= set(row)
    with open(out / "bench_inference.csv") as f:
        assert len(list(csv.DictReader(f))) == len(result["rows"])
    markdown = (out / "bench_inference.md").read_text()
    assert all(name in markdown for name in grid)
    assert json.loads((out / "bench_inference.json").read_text())["suite"] == "inference"


def test_backbone_noise_comes_from_two_separately_timed_entries(inference):
    result, _ = inference
    for section in ("grid", "mixed"):
        rows = _rows(result, section)
        bare, again = rows["bare"], rows["bare_again"]
        assert bare["ratio"] is None  # the reference of every ratio has none of its own
        assert len(bare["times_s"]) == len(again["times_s"]) == 2
        paired = [a / b for a, b in zip(again["times_s"], bare["times_s"], strict=True)]
        assert again["ratio"] == pytest.approx(statistics.median(paired))


def test_mixed_batches_read_distinct_tables_and_adapters(inference):
    result, _ = inference
    mixed = [row for row in result["rows"] if row["section"] == "mixed" and row["tasks"] > 1]
    assert mixed and all(row["distinct_outputs"] for row in mixed)


def test_lora_mixed_batch_uses_distinct_adapters():
    conf = model_conf("tiny_bert")
    backbone = load_backbone(conf["pretrained"], conf["random_init"], seed=0).eval()
    contender = contenders.lora_mixed(backbone, 3, LoraConfig(rank=4, alpha=4))
    ids = torch.randint(1000, 30000, (3, 6), generator=torch.Generator().manual_seed(0))
    mixed = contender.run(contenders.Batch(ids, torch.ones_like(ids), torch.tensor([0, 1, 2])))
    alone = contender.run(contenders.Batch(ids, torch.ones_like(ids), torch.tensor([0, 0, 0])))
    torch.testing.assert_close(mixed[0], alone[0], rtol=1e-5, atol=1e-5)  # row 0 is task 0 both times
    assert not torch.allclose(mixed[1], alone[1]) and not torch.allclose(mixed[2], alone[2])
    assert not torch.allclose(mixed[1], mixed[2])
    assert contenders.distinct_outputs(contender, ids, torch.ones_like(ids))


def test_aot_compiles_into_one_graph(inference):
    result, _ = inference
    for name in ("bare_compiled", "aot_compiled"):
        graphs = result["compile"][name]
        assert graphs["backend"] == "aot_eager"
        assert graphs["graph_count"] == 1 and graphs["graph_breaks"] == 0, graphs


def _tiny_backbone():
    conf = model_conf("tiny_bert")
    return load_backbone(conf["pretrained"], conf["random_init"], seed=0).eval()


def test_before_path_reads_the_same_rows_as_the_device_table():
    """The reference (unique + (B, n, L, d) + per-layer cast) and today's layer-major table: same outputs."""
    backbone = _tiny_backbone()
    artifacts = memory_artifacts(backbone, {"name": "aot", "reparam": {"name": "kron", "rank": 4}}, 2, "fp16")
    ids = torch.randint(1000, 30000, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[2, 4:] = 0
    task_ids = torch.tensor([0, 1, 1])
    out = {}
    for name in ("device", "before"):
        model = contenders.share_weights(backbone)
        host = build_source("host", artifacts, model)
        source = RowMajorTable(host.table, host.num_layers, host.hidden, torch.float32) if name == "before" else None
        model.add_module("aot", AotHooks(model, source or build_source("device", artifacts, model)))
        with torch.no_grad(), model.aot.tasks(task_ids):
            out[name] = model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(out["before"], out["device"], rtol=0, atol=0)


def test_memory_budget_caps_tasks_and_names_what_it_skips():
    per_task = costs.table_bytes(vocab=1000, layers=2, hidden=4, tasks=1, itemsize=2)
    assert per_task == (1000 + 1) * 8 * 2
    where = {"device": "cpu", "host": "cpu", "onthefly": "cpu"}

    def need(mode: str, tasks: int) -> int:  # onthefly holds weights only (none here)
        return 0 if mode == "onthefly" else costs.table_bytes(1000, 2, 4, tasks, 2)

    caps, skipped = contenders.cap_tasks({mode: [1, 2, 8] for mode in where}, where, need, {"cpu": 5 * per_task})
    assert caps == {"device": 2, "host": 2, "onthefly": 8}  # device holds 2 tables; host's 2 more fit, not 8
    assert {(s["mode"], s["tasks"]) for s in skipped} == {("device", 8), ("host", 8)}
    assert all(s["bytes_needed"] == costs.table_bytes(1000, 2, 4, 8, 2) for s in skipped)


ARCHITECTURE_KEYS = {
    "model_type",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
}


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml")))
def test_every_model_config_carries_its_architecture(name):
    """Random weights of any model= need no hub: the architecture block is a complete config."""
    arch = OmegaConf.to_container(bench_cfg(f"model={name}").model.architecture, resolve=True)
    assert ARCHITECTURE_KEYS <= set(arch)
    overrides = dict(arch)
    config = AutoConfig.for_model(overrides.pop("model_type"), **overrides)
    assert config.hidden_size % config.num_attention_heads == 0


def test_large_architectures_have_the_published_shapes():
    deberta = yaml.safe_load((CONF_DIR / "model" / "deberta_xl.yaml").read_text())["architecture"]
    assert (deberta["vocab_size"], deberta["hidden_size"], deberta["num_hidden_layers"]) == (128100, 1536, 24)
    assert deberta["relative_attention"] and deberta["position_buckets"] == 256 and deberta["conv_kernel_size"] == 3
    assert costs.table_bytes(128100, 24, 1536, 1, 2) / 1e9 == pytest.approx(9.44, abs=0.01)  # DESIGN §1: 9.4 GB
    large = yaml.safe_load((CONF_DIR / "model" / "roberta_large.yaml").read_text())["architecture"]
    assert (large["vocab_size"], large["hidden_size"], large["num_hidden_layers"]) == (50265, 1024, 24)


def test_analytic_costs_per_token():
    arch = {"num_hidden_layers": 6, "hidden_size": 384, "intermediate_size": 1536}
    backbone = costs.backbone_flops_per_token(arch, seq_len=128)
    assert backbone == 6 * (8 * 384**2 + 4 * 384 * 1536 + 4 * 128 * 384)
    aot = costs.analytic("aot", {}, arch, seq_len=128)
    assert aot["extra_flops_per_token"] == 6 * 384
    assert aot["analytic_ratio"] == pytest.approx(1 + 6 * 384 / backbone)
    prefix = costs.analytic("ptuning_v2", {"length": 32}, arch, seq_len=128)
    assert prefix["extra_flops_per_token"] == 6 * 4 * 32 * 384
    assert costs.analytic("lora_merged", {}, arch, seq_len=128)["analytic_ratio"] == 1.0


def test_default_inference_grid_is_cpu_sized_and_full_is_the_gpu_preset():
    default, full = bench_cfg("suite=inference").inference, bench_cfg("suite=inference", "inference=full").inference
    assert default.rounds >= 20 and full.rounds >= 20
    assert default.dtype == "fp32" and full.dtype in ("fp16", "bf16")
    assert len(full.batch_sizes) * len(full.seq_lens) > len(default.batch_sizes) * len(default.seq_lens)
    assert max(default.mixed.tasks) == 64 and default.mixed.batch_size >= 64


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_inference_suite_runs_on_cuda_in_half_precision(tmp_path):
    """make test-gpu: fp16 backbone and tables, pinned host table, CUDA events, inductor on the device."""
    overrides = [o for o in TINY_INFERENCE if not o.startswith("inference.compile")]
    cfg = bench_cfg(*overrides, "device=cuda", "inference.dtype=fp16", "inference.compile.backend=inductor")
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path)
    result = bench.run(cfg)
    assert result["device"] == "cuda" and all(row["throughput"] > 0 for row in result["rows"])
    assert result["compile"]["aot_compiled"]["graph_breaks"] == 0
    assert all(row["distinct_outputs"] for row in result["rows"] if row["tasks"] > 1)


def test_a_random_backbone_from_a_model_type_never_asks_the_hub(monkeypatch):
    """`suite=serving` and `weights=random` build e.g. a RoBERTa-base-shaped backbone from its architecture alone:
    with the network down (HF_HUB_OFFLINE unset, the probe failing) it must still build, not ask for 'random-init'."""
    from aotpt import hub

    def no_network(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(hub, "probe", no_network)
    tiny = {
        "model_type": "roberta",
        "vocab_size": 100,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 40,
        "pad_token_id": 1,
    }
    model = load_backbone("random-init", tiny, seed=0)
    assert model.config.model_type == "roberta" and model.config.num_hidden_layers == 2
