"""Shared fixtures: tiny random backbones from conf/model/tiny_*.yaml and the real Hydra config, composed in-process."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

# Under pytest-xdist (`make test` runs `-n auto`) each worker gets its share of the cores: torch here reads
# OMP_NUM_THREADS when it loads, and the CLIs the tests start inherit it. Without the share, N workers of
# all-core torch oversubscribe the CPU.
if _workers := os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // int(_workers))))

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
# CLIs that tests start write their folders (logs/, .cache/: paths.root_dir and the export, predict, bench and
# submit logs) under this root, never into the checkout; tests that check a folder pass their own tmp_path.
_TEST_ROOT = tempfile.mkdtemp(prefix="aotpt-tests-")
os.environ.setdefault("AOTPT_ROOT", _TEST_ROOT)
atexit.register(shutil.rmtree, _TEST_ROOT, ignore_errors=True)

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


# ---- the suite leaves the checkout as it found it ---------------------------------------------------------------
OUTPUT_DIRS = ("logs", ".cache", "outputs", "multirun", "submission", "wandb")  # where a stray CLI run would write
_TOOL_NOISE = ("__pycache__", ".pytest_cache", ".ruff_cache", ".venv", ".egg-info")


def _checkout_state() -> set[str]:
    """Untracked, ignored and modified paths of the checkout, and every file (with its mtime) in output folders."""
    try:
        status = subprocess.run(
            ["git", "status", "--porcelain", "--ignored"], cwd=REPO, capture_output=True, text=True, timeout=60
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        status = []
    files = [f"{p} {p.stat().st_mtime_ns}" for d in OUTPUT_DIRS for p in (REPO / d).rglob("*") if p.is_file()]
    return {line for line in status if not any(n in line for n in _TOOL_NOISE)} | set(files)


def pytest_sessionstart(session):
    session.config._aotpt_checkout = _checkout_state()


def pytest_sessionfinish(session, exitstatus):
    before = getattr(session.config, "_aotpt_checkout", None)
    if before is None or not (REPO / ".git").exists():
        return
    left = sorted(_checkout_state() - before)
    if left:
        print(f"\nerror: the tests wrote into the checkout (write under tmp_path instead): {left[:10]}")
        session.exitstatus = 1
