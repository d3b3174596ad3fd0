"""The multi-task predictor: mixed batches, the three serving modes, and refusing the wrong backbone or vocabulary."""

from __future__ import annotations

import copy

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from aotpt import bench
from aotpt.backbones import load_backbone, load_tokenizer
from aotpt.cli import CONF_DIR
from aotpt.errors import AotptError
from aotpt.methods.aot.table import Artifact
from aotpt.serving import MultiTaskPredictor
from conftest import model_conf
from test_export import TEXTS, batch, export_seeded, make_run, plain_backbone

# three tasks of different heads: 2 labels (kron), 3 labels (fc), regression (kron)
TASKS = (("rte", "kron", 1), ("cb", "fc", 2), ("stsb", "kron", 3))
ROWS = [
    ("rte", *TEXTS[0]),
    ("cb", "It rains.", "The street is wet."),
    ("stsb", "A dog runs.", "A dog is running in the park."),
    ("cb", *TEXTS[1]),
    ("rte", "Paris is in France.", "Paris is a city."),
    ("stsb", *TEXTS[0]),
    ("rte", *TEXTS[1]),
]


@pytest.fixture(scope="module")
def three_tasks(tmp_path_factory):
    """Three exported tasks on one tiny BERT; returns (artifacts, TaskModels by task, tokenizer, backbone)."""
    root = tmp_path_factory.mktemp("runs")
    artifacts, models = [], {}
    for task, reparam, seed in TASKS:
        run_dir, tm = make_run(root, task, reparam, weights_seed=seed)
        artifacts.append(Artifact.load(export_seeded(run_dir)))
        models[task] = tm
    return artifacts, models, load_tokenizer(model_conf("tiny_bert")["pretrained"]), plain_backbone(tm)


def _predictor(three_tasks, mode="device", **kwargs) -> MultiTaskPredictor:
    artifacts, _, _, backbone = three_tasks
    fingerprint = artifacts[0].meta["tokenizer_fingerprint"]
    return MultiTaskPredictor(copy.deepcopy(backbone), artifacts, fingerprint, mode, **kwargs)


def _logits(predictor, tokenizer, rows) -> list[torch.Tensor]:
    task_ids = torch.tensor([predictor.task_id(task) for task, _, _ in rows])
    return predictor(task_ids=task_ids, **batch(tokenizer, [(a, b) for _, a, b in rows]))


def test_mixed_batch_equals_each_task_alone(three_tasks):
    _, models, tokenizer, _ = three_tasks
    predictor = _predictor(three_tasks)
    mixed = _logits(predictor, tokenizer, ROWS)
    assert [len(x) for x in mixed] == [2, 3, 1, 3, 2, 1, 2]
    for task, _, _ in TASKS:
        mine = [i for i, row in enumerate(ROWS) if row[0] == task]
        alone = _logits(predictor, tokenizer, [ROWS[i] for i in mine])
        torch.testing.assert_close(torch.stack([mixed[i] for i in mine]), torch.stack(alone), rtol=1e-4, atol=1e-5)
        with torch.no_grad():  # and each task's own reparameterised model, within the fp16 table's tolerance
            reference = models[task](**batch(tokenizer, [ROWS[i][1:] for i in mine]))
        torch.testing.assert_close(torch.stack(alone), reference, rtol=1e-2, atol=2e-3)
    # the tasks' biases differ: the same text under two tasks' tables gives different hidden states
    same_text = [("rte", *TEXTS[0]), ("stsb", *TEXTS[0])]
    ids = torch.tensor([predictor.task_id("rte"), predictor.task_id("stsb")])
    with predictor.backbone.aot.tasks(ids), torch.no_grad():
        hidden = predictor.backbone(**batch(tokenizer, [(a, b) for _, a, b in same_text])).last_hidden_state
    assert (hidden[0] - hidden[1]).abs().max() > 0.05


def test_predict_returns_label_names_and_scores(three_tasks):
    _, _, tokenizer, _ = three_tasks
    preds = _predictor(three_tasks).predict(tokenizer, ROWS)
    assert [p["task"] for p in preds] == [row[0] for row in ROWS]
    rte, cb, stsb = preds[0], preds[1], preds[2]
    assert rte["label"] in ("entailment", "not_entailment") and rte["label"] == max(
        rte["scores"], key=rte["scores"].get
    )
    assert list(cb["scores"]) == ["entailment", "contradiction", "neutral"]
    assert sum(cb["scores"].values()) == pytest.approx(1.0)
    assert isinstance(stsb["label"], float) and stsb["scores"] == {"value": stsb["label"]}


def test_three_serving_modes_agree_and_report_memory(three_tasks):
    _, _, tokenizer, _ = three_tasks
    outputs, held = {}, {}
    for mode in ("device", "host", "onthefly"):
        predictor = _predictor(three_tasks, mode, cache_rows=16)  # fewer rows than one batch's unique tokens
        outputs[mode] = [torch.cat(_logits(predictor, tokenizer, ROWS)) for _ in range(2)]
        held[mode] = predictor.held_bytes()
    for mode in ("host", "onthefly"):
        for got, want in zip(outputs[mode], outputs["device"], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)
    table = 3 * 30522 * 2 * 32 * 2  # tasks x |V| x L*d x fp16
    assert held["device"] == {"device_table": table, "host_table": 0, "weights": 0, "cache": 0}
    assert held["host"] == {"device_table": 0, "host_table": table, "weights": 0, "cache": 0}
    assert held["onthefly"]["cache"] == 16 * 2 * 32 * 2 and 0 < held["onthefly"]["weights"] < table
    assert held["onthefly"]["device_table"] == held["onthefly"]["host_table"] == 0


def test_onthefly_cache_hits_repeated_rows(three_tasks):
    _, _, tokenizer, _ = three_tasks
    predictor = _predictor(three_tasks, "onthefly", cache_rows=4096)
    first = _logits(predictor, tokenizer, ROWS)
    source = predictor.backbone.aot.source
    misses = source.misses
    assert source.hits == 0 and misses > 0
    again = _logits(predictor, tokenizer, ROWS)
    assert source.hits == misses and source.misses == misses  # every row now comes from the cache
    torch.testing.assert_close(torch.cat(again), torch.cat(first), rtol=0, atol=0)


def test_wrong_backbone_is_refused(three_tasks):
    artifacts, _, _, _ = three_tasks
    fingerprint = artifacts[0].meta["tokenizer_fingerprint"]
    roberta = load_backbone(model_conf("tiny_roberta")["pretrained"], model_conf("tiny_roberta")["random_init"])
    with pytest.raises(AotptError, match=r"compiled for model_type='bert' .* has model_type='roberta'"):
        MultiTaskPredictor(roberta, artifacts, fingerprint, name="tiny_roberta")
    wide = load_backbone(
        model_conf("tiny_bert")["pretrained"], {**model_conf("tiny_bert")["random_init"], "hidden_size": 64}
    )
    with pytest.raises(AotptError, match="compiled for hidden_size=32 .* has hidden_size=64"):
        MultiTaskPredictor(wide, artifacts, fingerprint)


def test_wrong_vocabulary_is_refused(three_tasks):
    artifacts, _, _, backbone = three_tasks
    fingerprint = artifacts[0].meta["tokenizer_fingerprint"]
    with pytest.raises(AotptError, match=f"tokenizer_fingerprint='{fingerprint}'.*'0123456789abcdef'"):
        MultiTaskPredictor(copy.deepcopy(backbone), artifacts, "0123456789abcdef")
    small = load_backbone(
        model_conf("tiny_bert")["pretrained"], {**model_conf("tiny_bert")["random_init"], "vocab_size": 1000}
    )
    with pytest.raises(AotptError, match="compiled for vocab_size=30522 .* has vocab_size=1000"):
        MultiTaskPredictor(small, artifacts, fingerprint)


def test_bad_combinations_are_refused(three_tasks, tmp_path):
    artifacts, _, _, backbone = three_tasks
    fingerprint = artifacts[0].meta["tokenizer_fingerprint"]
    with pytest.raises(AotptError, match="two artifacts for task 'rte'"):
        MultiTaskPredictor(copy.deepcopy(backbone), [artifacts[0], artifacts[0]], fingerprint)
    with pytest.raises(AotptError, match="unknown mode='gpu'; accepted: device, host, onthefly"):
        MultiTaskPredictor(copy.deepcopy(backbone), artifacts, fingerprint, "gpu")
    with pytest.raises(AotptError, match="unknown task='mnli'; loaded: rte, cb, stsb"):
        _predictor(three_tasks).task_id("mnli")
    dense = Artifact.load(export_seeded(make_run(tmp_path, "wnli", "dense")[0]))
    with pytest.raises(AotptError, match="holds no reparam weights .* serve it with mode=device or mode=host"):
        MultiTaskPredictor(copy.deepcopy(backbone), [dense], fingerprint, "onthefly")


def test_bench_serving_suite_runs_on_a_tiny_backbone(tmp_path):
    """`python -m aotpt.bench suite=serving` end to end, shrunk to a tiny backbone (the real run is in the README)."""
    GlobalHydra.instance().clear()
    tiny = {k: v for k, v in model_conf("tiny_bert")["random_init"].items() if k != "vocab_size"}
    overrides = [f"serving.backbone.{k}={v}" for k, v in tiny.items()] + ["serving.backbone.vocab_size=500"]
    overrides += [
        "suite=serving",
        "warmup=0",
        "steps=2",
        "serving.batch_size=2",
        "serving.seq_len=8",
        f"output_dir={tmp_path}",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("bench", overrides=overrides)
    result = bench.run(cfg)
    assert set(result["modes"]) == {"bare", "device", "host", "onthefly"}
    table = 500 * 2 * 32 * 2  # |V| x L*d x fp16, per task
    assert result["modes"]["device"]["device_table"] == result["modes"]["host"]["host_table"] == 2 * table
    assert all(row["export_s"] > 0 and row["peak_bytes"] >= 0 for row in result["exports"].values())
    assert (tmp_path / "bench_serving.json").is_file()
    assert {p.name for p in tmp_path.glob("bench_serving_*.json")} == {
        f"bench_serving_{m}.json" for m in result["modes"]
    }
