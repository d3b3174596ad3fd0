"""The multi-task predictor: mixed batches, the three serving modes, and refusing the wrong backbone or vocabulary."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from aotpt import bench
from aotpt.backbones import load_backbone, load_tokenizer
from aotpt.errors import AotptError
from aotpt.export import export
from aotpt.methods import aot
from aotpt.methods.aot import AotConfig
from aotpt.methods.aot.artifact import Artifact
from aotpt.model import save_trained
from aotpt.record import read_run
from aotpt.serving import MultiTaskPredictor
from aotpt.serving.cache import RowCache
from conftest import REPO, model_conf
from helpers import TEXTS, batch, bench_cfg, make_run, plain_backbone

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
        artifacts.append(Artifact.load(export(run_dir)))
        models[task] = tm
    return artifacts, models, load_tokenizer(model_conf("tiny_bert")["pretrained"]), plain_backbone(tm)


def _predictor(three_tasks, mode="device", **kwargs) -> MultiTaskPredictor:
    artifacts, _, _, backbone = three_tasks
    fingerprint = artifacts[0].record.tokenizer_fingerprint
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


def test_every_serving_mode_agrees_and_reports_memory(three_tasks):
    _, _, tokenizer, _ = three_tasks
    outputs, held = {}, {}
    row = 2 * 32 * 2  # L*d values of fp16
    for mode in ("device", "host", "mmap", "onthefly"):
        predictor = _predictor(three_tasks, mode, cache_bytes=16 * (row + 16))  # fewer rows than a batch's tokens
        outputs[mode] = [torch.cat(_logits(predictor, tokenizer, ROWS)) for _ in range(2)]
        held[mode] = predictor.held_bytes()
    for mode in ("host", "mmap", "onthefly"):  # the same rows bit for bit, so the same logits
        for got, want in zip(outputs[mode], outputs["device"], strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    table = (3 * 30522 + 1) * row  # (tasks x |V| + the zero row for padding) x L*d x fp16
    heads = 3 * (32 * 32 + 32 + 3 * 32 + 3) * 4  # dense + out of 3 slots, out padded to the widest (3 labels)
    none = {"device_table": 0, "host_table": 0, "mapped": 0, "weights": 0, "cache": 0, "heads": heads}
    cache = 16 * (row + 16)  # exactly the budget: 16 rows, their keys and stamps
    assert held["device"] == {**none, "device_table": table}  # the device table needs no cache
    assert held["host"] == {**none, "host_table": table, "cache": cache}
    assert held["mmap"] == {**none, "mapped": table - row, "cache": cache}
    assert 0 < held["onthefly"]["weights"] < table
    assert held["onthefly"] == {**none, "cache": cache, "weights": held["onthefly"]["weights"]}


def test_onthefly_cache_hits_repeated_rows(three_tasks):
    _, _, tokenizer, _ = three_tasks
    predictor = _predictor(three_tasks, "onthefly", cache_bytes=4096 * (2 * 32 * 2 + 16))
    first = _logits(predictor, tokenizer, ROWS)
    source = predictor.backbone.aot.source
    misses = source.misses
    assert source.hits == 0 and misses > 0
    again = _logits(predictor, tokenizer, ROWS)
    assert source.hits == misses and source.misses == misses  # every row now comes from the cache
    torch.testing.assert_close(torch.cat(again), torch.cat(first), rtol=0, atol=0)


def test_wrong_backbone_is_refused(three_tasks):
    artifacts, _, _, _ = three_tasks
    fingerprint = artifacts[0].record.tokenizer_fingerprint
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
    fingerprint = artifacts[0].record.tokenizer_fingerprint
    with pytest.raises(AotptError, match=f"tokenizer_fingerprint='{fingerprint}'.*'0123456789abcdef'"):
        MultiTaskPredictor(copy.deepcopy(backbone), artifacts, "0123456789abcdef")
    small = load_backbone(
        model_conf("tiny_bert")["pretrained"], {**model_conf("tiny_bert")["random_init"], "vocab_size": 1000}
    )
    with pytest.raises(AotptError, match="compiled for vocab_size=30522 .* has vocab_size=1000"):
        MultiTaskPredictor(small, artifacts, fingerprint)


def test_bad_combinations_are_refused(three_tasks, tmp_path):
    artifacts, _, _, backbone = three_tasks
    fingerprint = artifacts[0].record.tokenizer_fingerprint
    with pytest.raises(AotptError, match="two artifacts for task 'rte'"):
        MultiTaskPredictor(copy.deepcopy(backbone), [artifacts[0], artifacts[0]], fingerprint)
    with pytest.raises(AotptError, match="unknown mode='gpu'; accepted: bare, device, host, mmap, onthefly"):
        MultiTaskPredictor(copy.deepcopy(backbone), artifacts, fingerprint, "gpu")
    with pytest.raises(AotptError, match="unknown task='mnli'; loaded: rte, cb, stsb"):
        _predictor(three_tasks).task_id("mnli")
    dense = Artifact.load(export(make_run(tmp_path, "wnli", "dense")[0]))
    with pytest.raises(AotptError, match="holds no reparam weights .* serve it with mode=device or mode=host"):
        MultiTaskPredictor(copy.deepcopy(backbone), [dense], fingerprint, "onthefly")


def test_bench_serving_suite_runs_on_a_tiny_backbone(tmp_path):
    """`python -m aotpt.bench suite=serving` end to end, shrunk to a tiny backbone (the real run is in the README)."""
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
    result = bench.run(bench_cfg(*overrides))
    assert set(result["modes"]) == {"bare", "device", "host", "onthefly"}
    table = (2 * 500 + 1) * 2 * 32 * 2  # (tasks x |V| + the zero row for padding) x L*d x fp16
    assert result["modes"]["device"]["device_table"] == result["modes"]["host"]["host_table"] == table
    assert all(row["export_s"] > 0 and row["peak_bytes"] >= 0 for row in result["exports"].values())
    assert (tmp_path / "bench_serving.json").is_file()
    assert {p.name for p in tmp_path.glob("bench_serving_*.json")} == {
        f"bench_serving_{m}.json" for m in result["modes"]
    }


@pytest.mark.parametrize("model", ["tiny_bert", "tiny_roberta", "tiny_deberta"])
def test_a_row_does_not_depend_on_the_padding_of_its_batch(tmp_path, model):
    """Served alone or padded beside a longer row of another task, a row gets the same logits, in every mode.

    The tables make padding dangerous on purpose: dense tables (device, host) get a huge row for the pad id,
    kron tables (onthefly; dense keeps no reparam weights) large rows everywhere.
    """
    tokenizer = load_tokenizer(model_conf(model)["pretrained"])
    short, long = ("rte", "A cat.", "It sat."), ("cb", *TEXTS[1])
    for reparam, modes in (("dense", ("device", "host")), ("kron", ("onthefly",))):
        paths = []
        for task, seed in (("rte", 1), ("cb", 2)):
            run_dir, tm = make_run(tmp_path / reparam, task, reparam, weights_seed=seed, model=model)
            with torch.no_grad():
                if reparam == "dense":
                    tm.backbone.aot.source.P[tokenizer.pad_token_id] = 100.0
                else:
                    tm.backbone.aot.source.W_R.mul_(20.0)
            save_trained(tm, run_dir / "model" / "trained.safetensors", read_run(run_dir, "run_dir")[1])
            paths.append(export(run_dir))
        artifacts = [Artifact.load(p) for p in paths]
        fingerprint = artifacts[0].record.tokenizer_fingerprint
        for mode in modes:
            predictor = MultiTaskPredictor(plain_backbone(tm), artifacts, fingerprint, mode)
            (alone,) = _logits(predictor, tokenizer, [short])
            padded, _ = _logits(predictor, tokenizer, [short, long])
            torch.testing.assert_close(padded, alone, rtol=0, atol=1e-5, msg=lambda m, mode=mode: f"{mode}: {m}")


# MiniLM's row width (L x d = 6 x 384) and kron rank: matmul shapes where a few rows take another kernel path than
# thousands do; a small vocabulary keeps the tables small.
MINILM_SHAPED = {
    "model_type": "bert",
    "vocab_size": 3000,
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 6,
    "intermediate_size": 16,
}


def test_every_mode_returns_the_table_rows_bit_for_bit_whatever_the_cache_history(tmp_path):
    """onthefly computes rows from the reparameterisation: misses fed one at a time, in odd-sized groups and
    mixed with hits must give exactly the exported table's rows (kron and fc tasks), as host mode does."""
    artifacts = []
    for task, reparam, seed in (("rte", "kron", 1), ("cb", "fc", 2)):
        run_dir, tm = make_run(tmp_path, task, reparam, weights_seed=seed, random_init=MINILM_SHAPED)
        artifacts.append(Artifact.load(export(run_dir)))
    backbone, fingerprint = plain_backbone(tm), artifacts[0].record.tokenizer_fingerprint

    def source(mode, **kwargs):
        return MultiTaskPredictor(copy.deepcopy(backbone), artifacts, fingerprint, mode, **kwargs).backbone.aot.source

    device, host, onthefly = source("device"), source("host"), source("onthefly", cache_bytes=64 * (6 * 384 * 2 + 16))
    g = torch.Generator().manual_seed(0)
    keys = torch.randint(0, 2 * 3000, (300,), generator=g)
    groups = [keys[i : i + 1] for i in range(40)]  # one miss at a time
    start = 40
    for size in (2, 3, 5, 7, 1, 13, 64, 77):  # odd sizes, some keys repeated (hits), the cache evicting
        groups.append(torch.cat([keys[start : start + size], keys[:3]]))
        start += size
    for group in groups:
        want = device.rows(group)
        torch.testing.assert_close(onthefly.rows(group), want, rtol=0, atol=0)
        torch.testing.assert_close(host.rows(group), want, rtol=0, atol=0)
    assert onthefly.hits > 0 and onthefly.misses > 64  # the cache both hit and evicted


def test_a_backbone_that_already_has_aot_hooks_is_refused(three_tasks):
    artifacts, models, _, backbone = three_tasks
    fingerprint = artifacts[0].record.tokenizer_fingerprint
    trained = copy.deepcopy(models["rte"])  # its backbone carries the training hooks
    with pytest.raises(AotptError, match="already has AoT hooks"):
        MultiTaskPredictor(trained.backbone, artifacts, fingerprint)
    served = _predictor(three_tasks).backbone
    with pytest.raises(AotptError, match="already has AoT hooks"):
        MultiTaskPredictor(served, artifacts, fingerprint)
    with pytest.raises(AotptError, match="already has AoT hooks"):
        aot.attach(served, AotConfig())


def test_task_and_token_ids_outside_the_tables_are_one_clear_error(three_tasks):
    _, _, tokenizer, _ = three_tasks
    predictor = _predictor(three_tasks)
    inputs = batch(tokenizer, [TEXTS[0], TEXTS[1]])
    for bad in (-1, 3):  # -1 would silently read the last task's rows, 3 another table or garbage
        with pytest.raises(AotptError, match=rf"task id {bad} outside \[0, 3\)"):
            predictor(task_ids=torch.tensor([0, bad]), **inputs)
    ids = inputs["input_ids"].clone()
    ids[1, 1] = 30522
    with pytest.raises(AotptError, match=r"token id 30522 outside \[0, 30522\)"):
        predictor(task_ids=torch.tensor([0, 1]), input_ids=ids, attention_mask=inputs["attention_mask"])
    grown = copy.deepcopy(tokenizer)
    grown.add_tokens(["<brand-new-token>"])
    with pytest.raises(AotptError, match=r"token id 30522 outside \[0, 30522\)"):
        predictor.predict(grown, [("rte", "a <brand-new-token> here", "b")])


@pytest.mark.parametrize("mode", ["device", "host"])
def test_artifacts_of_the_first_format_still_load_and_predict_the_same(mode):
    """tests/fixtures/legacy_v0: artifacts exported by an earlier aotpt (format 1) and what they predicted then."""
    folder = REPO / "tests" / "fixtures" / "legacy_v0"
    expected = json.loads((folder / "expected.json").read_text())
    with torch.random.fork_rng():
        torch.manual_seed(expected["seed"])  # their backbone is a random tiny BERT, drawn from the seeded generator
        predictor, tokenizer = MultiTaskPredictor.load([folder / "rte.safetensors", folder / "sst2.safetensors"], mode)
    got = predictor.predict(tokenizer, [tuple(r) for r in expected["requests"]])
    for new, old in zip(got, expected["predictions"], strict=True):
        assert new["task"] == old["task"] and new["label"] == old["label"]
        assert new["scores"] == pytest.approx(old["scores"], abs=1e-6)


def test_the_row_cache_holds_no_more_than_its_budget_and_keeps_recent_rows():
    """Rows, keys and stamps are allocated once within the byte budget; a set keeps its most recently used keys."""
    width, budget = 64, 100_000
    cache = RowCache(budget, width, torch.float16, "cpu")
    assert cache.nbytes() <= budget and len(cache) == budget // (width * 2 + 16) // 8 * 8
    assert cache.nbytes() == len(cache) * (width * 2 + 16)  # exactly what it reports, nothing else
    g = torch.Generator().manual_seed(0)
    keys = torch.randperm(10_000, generator=g)[:5000]  # far more keys than slots: every set gets more than its ways
    rows = torch.randn(5000, width, generator=g).half()
    assert (cache.lookup(keys) == -1).all()
    cache.insert(keys, rows)
    slots = cache.lookup(keys)
    cached = slots >= 0
    assert cached.sum() == len(cache)  # every slot filled, the rest not cached
    torch.testing.assert_close(cache.rows[slots[cached]], rows[cached], rtol=0, atol=0)
    assert cache.nbytes() <= budget  # inserting never allocates
    # LRU within a set: a set of 8 ways, full; one key used again; a ninth key evicts another one
    cache = RowCache(budget, width, torch.float16, "cpu")
    candidates = torch.arange(100_000)
    same = candidates[cache._set(candidates) == 0][:9]  # keys of one set
    cache.insert(same[:8], torch.zeros(8, width).half())
    assert (cache.lookup(same[:8]) >= 0).all()
    cache.lookup(same[:1])  # the most recently used now
    cache.lookup(same[8:])  # a miss
    cache.insert(same[8:], torch.ones(1, width).half())
    assert (cache.lookup(same[[0, 8]]) >= 0).all() and (cache.lookup(same[1:8]) >= 0).sum() == 6
    cache.forget(0, 100_000)
    assert (cache.lookup(same) == -1).all()
    with pytest.raises(AotptError, match="cache_bytes=100 holds no row: one row of 64 values takes 144 bytes"):
        RowCache(100, width, torch.float16, "cpu")


@pytest.mark.parametrize("mode", ["device", "host", "mmap", "onthefly"])
def test_tasks_are_added_and_removed_between_forwards(three_tasks, mode):
    """A removed task's slot is reused by the next task added, whose rows (not the cached rows of the task before
    it) and head it then serves: the same logits as a predictor built with it from the start."""
    artifacts, _, tokenizer, backbone = three_tasks
    fingerprint = artifacts[0].record.tokenizer_fingerprint
    predictor = MultiTaskPredictor(copy.deepcopy(backbone), artifacts[:2], fingerprint, mode, cache_bytes=1 << 20)
    rows = [r for r in ROWS if r[0] != "stsb"]
    before = _logits(predictor, tokenizer, rows)  # fills the cache with rte's and cb's rows
    predictor.remove("rte")
    assert predictor.tasks == ["cb"]
    with pytest.raises(AotptError, match="unknown task='rte'; loaded: cb"):
        predictor.task_id("rte")
    with pytest.raises(AotptError, match="task id 0 is a free slot"):
        predictor(task_ids=torch.tensor([0]), **batch(tokenizer, [TEXTS[0]]))
    assert predictor.add(artifacts[2], "sts-b") == 0  # stsb, in rte's old slot
    assert predictor.tasks == ["sts-b", "cb"]
    with pytest.raises(AotptError, match="two artifacts for task 'cb'"):
        predictor.add(artifacts[1])
    mixed = [("sts-b", *r[1:]) if r[0] == "rte" else r for r in rows]
    fresh = MultiTaskPredictor(
        copy.deepcopy(backbone), [artifacts[2], artifacts[1]], fingerprint, mode, names=["sts-b", "cb"]
    )
    for got, want in zip(_logits(predictor, tokenizer, mixed), _logits(fresh, tokenizer, mixed), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    for got, want, row in zip(_logits(predictor, tokenizer, mixed), before, mixed, strict=True):
        if row[0] == "cb":  # cb never moved: its logits did not change either
            torch.testing.assert_close(got, want, rtol=0, atol=0)
