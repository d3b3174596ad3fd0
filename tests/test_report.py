"""Benchmark scores computed from results.json files, not typed in."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from aotpt import report
from aotpt.errors import ConfigError
from aotpt.tasks import benchmark_tasks

AOT = {"name": "aot", "reparam": {"name": "kron", "rank": 16}}


def fake_run(root, task, seed, best, status="completed", method=AOT):
    folder = root / f"{task}-s{seed}"
    folder.mkdir(parents=True)
    config = {"task": {"name": task}, "model": {"name": "minilm"}, "method": method, "seed": seed}
    result = {"status": status, "config": config, "best": {f"val/{k}": v for k, v in best.items()}}
    (folder / "results.json").write_text(json.dumps(result))


def test_scores_are_means_over_metrics_seeds_and_tasks(tmp_path):
    fake_run(tmp_path, "mrpc", 1, {"f1": 0.9, "acc": 0.8, "score": 0.85})
    fake_run(tmp_path, "mrpc", 2, {"f1": 0.8, "acc": 0.7, "score": 0.75})
    fake_run(tmp_path, "cola", 1, {"mcc": 0.5, "score": 0.5})
    fake_run(tmp_path, "copa", 1, {"choice_acc": 0.6, "score": 0.6})
    fake_run(tmp_path, "ax", 1, {"mcc": 0.3, "score": 0.3})  # a diagnostic: not in the GLUE score
    fake_run(tmp_path, "rte", 3, {"acc": 0.1, "score": 0.1}, status="failed")  # ignored
    fake_run(tmp_path, "rte", 4, {"acc": 0.9, "score": 0.9}, method={"name": "finetune"})
    out = report.run(OmegaConf.create({"runs_dir": str(tmp_path), "out": None, "status": "completed"}))
    aot = out["minilm aot/kron"]
    mrpc = aot["tasks"]["mrpc"]
    assert mrpc["score"]["mean"] == pytest.approx(0.8)
    assert mrpc["score"]["std"] == pytest.approx(statistics.stdev([0.85, 0.75]))
    assert mrpc["f1"]["mean"] == pytest.approx(0.85) and mrpc["score"]["n"] == 2
    glue = aot["benchmarks"]["glue"]
    assert glue["score"] == pytest.approx((0.8 + 0.5) / 2)  # mrpc, cola; not ax
    assert glue["tasks"] == 2 and glue["of"] == len(benchmark_tasks("glue")) == 9
    assert aot["benchmarks"]["superglue"]["score"] == pytest.approx(0.6)
    assert "rte" not in aot["tasks"]
    assert out["minilm finetune"]["tasks"]["rte"]["score"]["mean"] == pytest.approx(0.9)
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(json.dumps(out))
    text = report.table(out)
    assert "mrpc" in text and "score  80.00 ±  7.07" in text and "glue score 65.00 over 2/9 tasks" in text


def test_empty_runs_dir_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="no results.json"):
        report.run(OmegaConf.create({"runs_dir": str(tmp_path), "out": None, "status": "completed"}))


def test_cli(tmp_path):
    fake_run(tmp_path, "cb", 1, {"acc": 0.9, "macro_f1": 0.7, "score": 0.8})
    proc = subprocess.run(
        [sys.executable, "-m", "aotpt.report", f"runs_dir={tmp_path}"], capture_output=True, text=True, check=True
    )
    assert "superglue score 80.00 over 1/8 tasks" in proc.stdout
