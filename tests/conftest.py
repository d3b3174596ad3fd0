"""Shared fixtures: tiny random backbones from conf/model/tiny_*.yaml and the real Hydra config, composed in-process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from aotpt.cli import CONF_DIR

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
SHARED_DATA = REPO.parent / "shared" / "data"
TINY_MODELS = ("tiny_bert", "tiny_roberta", "tiny_deberta")


def model_conf(name: str) -> dict:
    return yaml.safe_load((CONF_DIR / "model" / f"{name}.yaml").read_text())


def compose_train(overrides: list[str], output_dir: Path):
    """The real conf/train.yaml with `overrides`, outputs under `output_dir`, HydraConfig set as in a CLI run."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
        cfg.paths.root_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


# Small, fast, CPU-only: the default shrink of every in-process training test.
FAST = ["debug=default", "data.num_workers=0", "data.batch_size=4", "data.eval_batch_size=8"]


@pytest.fixture
def train_cfg(tmp_path):
    """Compose a training config for `tmp_path` (tiny BERT on the fixture files unless overridden)."""

    def make(*overrides: str, run: str = "run"):
        base = ["model=tiny_bert", f"data_dir={FIXTURES}", *FAST]
        return compose_train([*base, *overrides], tmp_path / run)

    yield make
    GlobalHydra.instance().clear()


@pytest.fixture(autouse=True)
def _restore_torch_state():
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)
