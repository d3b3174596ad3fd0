"""The benchmark script runs and reports a ratio for every method (timings themselves are not asserted)."""

from __future__ import annotations

import json

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from aotpt import bench
from aotpt.cli import CONF_DIR


def test_train_step_bench_reports_ratios(tmp_path, capsys):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("bench", overrides=["model=tiny_bert", "batch_size=2", "seq_len=8", "warmup=1", "steps=1"])
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path)
    result = bench.run(cfg)
    assert set(result["methods"]) == set(cfg.methods)
    assert result["methods"]["finetune"]["ratio_to_finetune"] == 1.0
    assert all(row["median_step_s"] > 0 for row in result["methods"].values())
    assert json.loads((tmp_path / "bench_train_step.json").read_text())["suite"] == "train_step"
    assert "ratio_to_finetune" in capsys.readouterr().out
