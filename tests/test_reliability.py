"""Killed runs resume exactly, saves are atomic, bad losses and unreachable W&B are handled."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from aotpt import train
from aotpt.atomic import write_json_atomic
from aotpt.errors import AotptError
from aotpt.loggers import build_loggers, choose_wandb_mode
from aotpt.module import TaskModule
from aotpt.resume import AtomicCheckpointIO
from conftest import FIXTURES, REPO

RUN = ["model=tiny_bert", "task=mrpc", "debug=default", "trainer.max_epochs=5", "data.batch_size=2"]


def _epochs(run_dir: Path) -> list[dict]:
    return [
        {k: v for k, v in e.items() if k != "wall_time_s"}
        for e in json.loads((run_dir / "results.json").read_text())["epochs"]
    ]


def _train_cmd(root: Path) -> list[str]:
    return [sys.executable, "-m", "aotpt.train", *RUN, f"data_dir={FIXTURES}", f"paths.root_dir={root}"]


def _run_dir(root: Path) -> Path:
    (results,) = (root / "logs" / "runs").glob("*/seed*/*/results.json")  # <name>/seed<seed>/<other overrides>
    return results.parent


ENV = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> list[dict]:
    root = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run(_train_cmd(root), check=True, env=ENV, cwd=REPO, capture_output=True, timeout=300)
    return _epochs(_run_dir(root))


_DELAYS = random.Random(7)
KILL_POINTS = [
    pytest.param(0.0, id="at-first-checkpoint"),
    pytest.param(_DELAYS.uniform(0.05, 1.0), id="random"),
    *[pytest.param(_DELAYS.uniform(0.0, 2.0), id=f"random-{i}", marks=pytest.mark.slow) for i in range(3)],
]


@pytest.mark.parametrize("kill_delay", KILL_POINTS)
def test_sigkilled_run_resumes_to_identical_results(tmp_path, uninterrupted, kill_delay):
    proc = subprocess.Popen(_train_cmd(tmp_path), env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not list(tmp_path.glob("logs/runs/*/seed*/*/checkpoints/last.ckpt")):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(kill_delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(_epochs(_run_dir(tmp_path)))
    assert killed_at < len(uninterrupted), "the run finished before the kill; the test proves nothing"
    subprocess.run(_train_cmd(tmp_path), check=True, env=ENV, cwd=REPO, capture_output=True, timeout=300)
    assert _epochs(_run_dir(tmp_path)) == uninterrupted


def test_checkpoint_save_killed_midway_leaves_previous_file(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)

    def dies_midway(obj, f):
        f.write(b"partial bytes")
        raise KeyboardInterrupt  # what a kill looks like from inside the writer

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False) == {"step": 1}


def test_results_json_write_killed_midway_leaves_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    write_json_atomic(path, {"epoch": 1})

    def dies_midway(obj, f, **kwargs):
        f.write('{"epo')
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dump", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        write_json_atomic(path, {"epoch": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"epoch": 1}


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(train_cfg, monkeypatch):
    real_loss, calls = TaskModule._loss, {"n": 0}
    steps_per_epoch = 4  # 16 fixture rows / batch 4

    def nan_in_second_epoch(self, logits, labels):
        loss = real_loss(self, logits, labels)
        if not self.training:
            return loss
        calls["n"] += 1  # the 6th training step: global step 5, the second of epoch 1
        return loss * float("nan") if calls["n"] > steps_per_epoch + 1 else loss

    monkeypatch.setattr(TaskModule, "_loss", nan_in_second_epoch)
    cfg = train_cfg("task=mrpc", "trainer.max_epochs=3")
    with pytest.raises(AotptError, match=r"loss is nan at step 5 \(epoch 1\).*last good checkpoint: .*last\.ckpt"):
        train.run(cfg)
    run_dir = Path(cfg.paths.output_dir)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "failed" and "step 5" in results["error"]
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["global_step"] == steps_per_epoch
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())


def test_wandb_unreachable_falls_back_to_offline(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    assert choose_wandb_mode() == "offline"
    assert os.environ["WANDB_MODE"] == "offline"


def test_wandb_logger_that_fails_to_start_is_recreated_offline(monkeypatch, tmp_path):
    from omegaconf import OmegaConf

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setattr("aotpt.loggers.wandb_reachable", lambda timeout_s=3.0: True)  # passes the probe, then fails
    conf = OmegaConf.create({"wandb": {"_target_": "lightning.pytorch.loggers.WandbLogger", "save_dir": str(tmp_path)}})
    monkeypatch.setattr("wandb.init", _fail_then_offline())
    (logger,) = build_loggers(conf)
    assert os.environ["WANDB_MODE"] == "offline" and logger.experiment == "offline-run"


def _fail_then_offline():
    def init(*args, **kwargs):
        if kwargs.get("mode") != "offline":
            raise ConnectionError("wandb.init timed out")
        return "offline-run"

    return init


def test_unknown_option_on_the_command_line_is_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "aotpt.train", "reparam=lowrank"], capture_output=True, text=True, env=ENV, cwd=REPO
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown reparam='lowrank'; accepted: dense, fc, kron" in proc.stderr
