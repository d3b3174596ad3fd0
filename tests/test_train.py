"""End-to-end training: the real config, in-process, on fixtures (tiny models) and on real data (MiniLM)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aotpt import train
from conftest import REPO, SHARED_DATA, TINY_MODELS


def _results(out: dict) -> dict:
    return json.loads((Path(out["output_dir"]) / "results.json").read_text())


@pytest.mark.parametrize("model", TINY_MODELS)
def test_tiny_run_writes_results_and_trained_weights(train_cfg, model):
    cfg = train_cfg(f"model={model}", "task=mrpc", "trainer.max_epochs=2", "reparam=fc")
    out = train.run(cfg)
    results = _results(out)
    assert results["status"] == "completed"
    assert [e["epoch"] for e in results["epochs"]] == [0, 1]
    assert {"val/f1", "val/acc", "val/score"} <= set(results["epochs"][0])
    assert results["best"]["epoch"] in (0, 1)
    assert results["best"]["val/score"] == max(e["val/score"] for e in results["epochs"])
    assert 0 < results["trainable_params"] < results["total_params"]
    assert "encoder" in results["changed_modules"]
    assert results["config"]["task"]["name"] == "mrpc" and results["wall_time_s"] > 0
    assert results["machine"]["threads"] == torch.get_num_threads() and results["machine"]["cpu"]
    ckpt = torch.load(f"{out['output_dir']}/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["state_dict"] and all(k.startswith(("net.backbone.aot.", "net.head.")) for k in ckpt["state_dict"])
    meta = json.loads((Path(out["output_dir"]) / "model" / "trained.json").read_text())
    assert meta["task"] == "mrpc" and meta["label_names"] == ["not_equivalent", "equivalent"]
    assert len(meta["tokenizer_fingerprint"]) == 16


def test_mnli_reports_both_dev_sets(train_cfg):
    out = train.run(train_cfg("task=mnli", "trainer.max_epochs=1"))
    epoch = _results(out)["epochs"][0]
    assert {"val/validation_matched/acc", "val/validation_mismatched/acc", "val/score"} <= set(epoch)
    expected = (epoch["val/validation_matched/acc"] + epoch["val/validation_mismatched/acc"]) / 2
    assert epoch["val/score"] == pytest.approx(expected)


def test_regression_task_trains(train_cfg):
    out = train.run(train_cfg("task=stsb", "method=finetune"))
    assert {"val/pearson", "val/spearman"} <= set(_results(out)["epochs"][0])


def test_same_seed_same_metrics(train_cfg):
    out = train.run(train_cfg("task=rte", "trainer.max_epochs=1"))
    first, first_dir = out["best"], out["output_dir"]
    second = train.run(train_cfg("task=rte", "trainer.max_epochs=1", run="again"))
    assert second["output_dir"] != first_dir
    assert second["best"]["val/score"] == first["val/score"]


@pytest.mark.skipif(not (SHARED_DATA / "glue" / "RTE").exists(), reason="needs ../shared/data")
def test_minilm_real_rte_short_run(train_cfg):
    """MiniLM + AoT on the real RTE files: a short epoch end to end."""
    cfg = train_cfg(
        "model=minilm",
        "task=rte",
        f"data_dir={SHARED_DATA}",
        "data.limit_examples=64",
        "data.batch_size=16",
        "data.max_length=128",
    )
    out = train.run(cfg)
    results = _results(out)
    assert results["status"] == "completed" and len(results["epochs"]) == 1
    assert 0.0 <= results["best"]["val/acc"] <= 1.0


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {"WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "PATH": ""}
    return subprocess.run(
        [sys.executable, "-m", "aotpt.train", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=300
    )


def test_cli_offline_hub_download_fails_in_one_line(tmp_path):
    proc = _cli("task=boolq", "model=deberta_xl", f"paths.root_dir={tmp_path}", "logger=none")
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "microsoft/deberta-v2-xlarge" in last and "model.pretrained=" in last


def test_cli_missing_data_file_fails_in_one_line(tmp_path):
    proc = _cli("task=rte", "model=tiny_bert", f"data_dir={tmp_path}", f"paths.root_dir={tmp_path}", "debug=default")
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(tmp_path) in last
