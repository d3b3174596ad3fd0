"""W&B dashboards without a server: group, job type, tags and the run summary, from a real training run."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import wandb
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

from aotpt import train
from aotpt.cli import CONF_DIR
from aotpt.sweeps import SWEEPS_DIR

TINY = ["logger=wandb", "trainer.max_epochs=2", "task=rte"]


class FakeRun:
    """What Lightning's WandbLogger and our callbacks use of a wandb run; `log` feeds the summary as W&B does."""

    def __init__(self, **init):
        self.init, self.summary, self.logged = init, {}, []
        self.id = self.name = "fake"
        self.config = type("Config", (), {"update": lambda *a, **k: None})()

    def log(self, data, **_):
        self.logged.append(data)
        self.summary.update(data)

    def define_metric(self, *args, **kwargs):
        pass

    def finish(self, *args, **kwargs):
        pass


@pytest.fixture
def fake_wandb(monkeypatch):
    runs: list[FakeRun] = []

    @functools.wraps(wandb.init)  # keeps wandb.init's signature, which config checks read
    def init(**kwargs):
        runs.append(FakeRun(**kwargs))
        return runs[-1]

    monkeypatch.setattr(wandb, "init", init)
    return runs


def test_run_is_grouped_tagged_and_its_summary_holds_the_dev_table_and_best_metrics(train_cfg, fake_wandb):
    cfg = train_cfg(*TINY, "method=aot", "reparam=fc")
    out = train.run(cfg)
    (run,) = fake_wandb
    assert run.init["group"] == "train" and run.init["job_type"] == "aot"
    assert run.init["tags"] == ["rte", "tiny_bert", "aot", "fc"]
    results = json.loads((Path(out["output_dir"]) / "results.json").read_text())
    assert run.summary["best/epoch"] == results["best"]["epoch"]
    assert run.summary["best/val/score"] == results["best"]["val/score"]
    table = run.summary["dev/epochs"]
    assert table.columns[0] == "epoch" and "val/score" in table.columns
    assert [row[0] for row in table.data] == [e["epoch"] for e in results["epochs"]] == [0, 1]


def test_baselines_are_tagged_without_a_reparam(train_cfg):
    wb = train_cfg(*TINY, "method=bitfit").logger.wandb
    assert (wb.job_type, list(wb.tags)) == ("bitfit", ["rte", "tiny_bert", "bitfit", "no-reparam"])


def test_a_sweep_job_is_grouped_by_its_sweep():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(SWEEPS_DIR), version_base="1.3"):
        cfg = compose(
            "paper_minilm",
            overrides=[f"hydra.searchpath=[file://{CONF_DIR}]", "method=lora", "task=cb"],
            return_hydra_config=True,
        )
    GlobalHydra.instance().clear()
    HydraConfig.instance().set_config(cfg)
    wb = cfg.logger.wandb
    assert (wb.group, wb.job_type, list(wb.tags)) == ("paper_minilm", "lora", ["cb", "minilm", "lora", "no-reparam"])


def test_real_wandb_offline_run_accepts_the_summary(train_cfg, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = train.run(train_cfg(*TINY, "trainer.max_epochs=1"))
    assert out["status"] == "completed"
    assert list((Path(out["output_dir"]) / "wandb").glob("offline-run-*/*.wandb"))
