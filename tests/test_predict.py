"""`python -m aotpt.predict`: a JSONL file of mixed-task requests in, one prediction a line out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from aotpt import predict, train
from aotpt.cli import CONF_DIR
from aotpt.data.readers import read_local
from aotpt.errors import DataError
from aotpt.export import export
from aotpt.serving import MultiTaskPredictor
from aotpt.tasks import get_task
from conftest import REPO, SHARED_DATA
from helpers import make_run

REQUESTS = [
    {"task": "rte", "sentence1": "A man is playing a guitar.", "sentence2": "Someone plays music.", "id": "r1"},
    {"task": "sst2", "sentence": "A wonderful, moving film."},
    {"task": "wic", "word": "bank", "sentence1": "The river bank.", "sentence2": "The bank closed.", "id": 7},
    {"task": "rte", "sentence1": "Paris is in France.", "sentence2": "Paris is a city."},
    {"task": "sst2", "sentence": "Dull and far too long."},
]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    return [export(make_run(root, task, "kron", weights_seed=i)[0]) for i, task in enumerate(("rte", "sst2", "wic"))]


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _compose(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("predict", overrides=list(overrides))


@pytest.mark.parametrize("mode", ["device", "onthefly"])
def test_mixed_requests_are_predicted_in_input_order(artifacts, tmp_path, mode):
    requests = _write(tmp_path / "req.jsonl", [REQUESTS[0], "", *REQUESTS[1:]])  # a blank line is skipped
    out_path = tmp_path / "out" / "pred.jsonl"
    listed = "[" + ",".join(str(p) for p in artifacts) + "]"
    cfg = _compose(f"artifacts={listed}", f"input={requests}", f"output={out_path}", f"mode={mode}", "batch_size=2")
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the tiny backbone named in the artifacts is random: draw the same one twice
        result = predict.run(cfg)
    lines = [json.loads(line) for line in out_path.read_text().splitlines()]
    assert result["count"] == len(lines) == 5
    assert [x["line"] for x in lines] == [1, 3, 4, 5, 6] and [x["task"] for x in lines] == [r["task"] for r in REQUESTS]
    assert lines[0]["id"] == "r1" and lines[2]["id"] == 7 and "id" not in lines[1]
    assert lines[1]["label"] in ("negative", "positive") and lines[2]["label"] in ("False", "True")
    assert all(sum(x["scores"].values()) == pytest.approx(1.0) for x in lines)
    # batches of 2 mixed rows give what the predictor gives each request alone
    with torch.random.fork_rng():
        torch.manual_seed(0)
        predictor, tokenizer = MultiTaskPredictor.load(artifacts)
    for line, request in zip(lines, predict.read_requests(requests, predictor.tasks), strict=True):
        (alone,) = predictor.predict(tokenizer, [(request[1]["task"], request[2], request[3])])
        assert alone["label"] == line["label"]
        assert alone["scores"] == pytest.approx(line["scores"], abs=1e-4)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"task": "rte", "sentence1": "only one"}, r"req.jsonl:2: task rte needs field 'sentence2'"),
        ({"task": "mnli", "premise": "a", "hypothesis": "b"}, r"req.jsonl:2: task='mnli' is not loaded; accepted: rte"),
        ({"sentence1": "a", "sentence2": "b"}, r"req.jsonl:2: task=None is not loaded; accepted: rte"),
        ("{not json", r"req.jsonl:2: not valid JSON"),
        (
            {"task": "rte", "sentence1": 3, "sentence2": "b"},
            r"req.jsonl:2: the text fields of task rte must be strings",
        ),
    ],
)
def test_bad_request_lines_name_path_line_and_field(tmp_path, line, message):
    path = _write(tmp_path / "req.jsonl", [REQUESTS[0], line])
    with pytest.raises(DataError, match=message):
        predict.read_requests(path, ["rte"])


def test_cli_bad_line_is_one_line_error(artifacts, tmp_path):
    path = _write(tmp_path / "req.jsonl", [REQUESTS[1], {"task": "sst2", "text": "wrong field"}])
    env = {"WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "PATH": "", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "aotpt.predict",
            f"artifacts=[{artifacts[1]}]",
            f"input={path}",
            "hydra.run.dir=" + str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: {path}:2: task sst2 needs field 'sentence'"


def test_half_precision_backbone_predicts(artifacts, tmp_path):
    """dtype=bf16 runs the backbone and the heads in bf16 (fp32 heads on a bf16 backbone used to crash)."""
    requests = _write(tmp_path / "req.jsonl", REQUESTS)
    listed = "[" + ",".join(str(p) for p in artifacts) + "]"
    outputs = {}
    for dtype in ("fp32", "bf16"):
        out_path = tmp_path / f"{dtype}.jsonl"
        cfg = _compose(f"artifacts={listed}", f"input={requests}", f"output={out_path}", f"dtype={dtype}")
        with torch.random.fork_rng():
            torch.manual_seed(0)
            predict.run(cfg)
        outputs[dtype] = [json.loads(line) for line in out_path.read_text().splitlines()]
    for half, full in zip(outputs["bf16"], outputs["fp32"], strict=True):
        assert half["task"] == full["task"] and set(half["scores"]) == set(full["scores"])
        assert half["scores"] == pytest.approx(full["scores"], abs=0.05)  # bf16 keeps 8 bits of mantissa


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "glue" / "RTE").exists(), reason="needs ../shared/data")
def test_bf16_backbone_agrees_with_fp32_on_real_rte_dev(train_cfg):
    """MiniLM + AoT trained on real RTE for an epoch, exported in fp16, predicts the 277 dev pairs with an fp32 and
    a bf16 backbone: the same label on at least 99% of them. The largest score difference is printed (-s)."""
    cfg = train_cfg(
        "model=minilm",
        "task=rte",
        f"data_dir={SHARED_DATA}",
        "trainer.max_epochs=1",
        "trainer.detect_anomaly=false",
        "optim.lr=5e-3",
        "data.batch_size=32",
        "data.eval_batch_size=64",
    )
    run_dir = Path(train.run(cfg)["output_dir"])
    path = export(run_dir)
    dev = read_local(get_task("rte"), SHARED_DATA, "validation")
    requests = [("rte", ex["text_a"], ex["text_b"]) for ex in dev]
    preds = {}
    for dtype in ("fp32", "bf16"):
        predictor, tokenizer = MultiTaskPredictor.load([path], dtype=dtype)
        preds[dtype] = [
            p for i in range(0, len(requests), 32) for p in predictor.predict(tokenizer, requests[i : i + 32])
        ]
    same = sum(a["label"] == b["label"] for a, b in zip(preds["bf16"], preds["fp32"], strict=True)) / len(requests)
    diff = max(
        abs(a["scores"][k] - b["scores"][k])
        for a, b in zip(preds["bf16"], preds["fp32"], strict=True)
        for k in a["scores"]
    )
    print(
        f"\nRTE dev ({len(requests)} pairs): bf16 label = fp32 label on {same:.2%}; largest score difference {diff:.4f}"
    )
    assert same >= 0.99
