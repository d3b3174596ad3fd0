"""Killed runs resume exactly, saves are atomic, bad losses and unreachable W&B are handled.

The exact-resume tests run the CLI with its defaults (data.num_workers=2:
worker processes), SIGKILL the whole process group at a chosen checkpoint
(mid-epoch or at an epoch's end), run the same command again, and compare
the final trained tensors — model/trained.safetensors, and last.ckpt's
trained tensors, optimiser moments and schedule — bit for bit with an
uninterrupted run: equal dev scores alone can be luck.
"""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from aotpt import train
from aotpt.atomic import atomic_path, write_json_atomic
from aotpt.errors import AotptError, ConfigError
from aotpt.loggers import build_loggers, choose_wandb_mode
from aotpt.module import TaskModule
from aotpt.resume import AtomicCheckpointIO, ResumeCheckpoint
from conftest import FIXTURES, REPO

ENV = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
# 16 fixture rows, batch 2: 8 steps an epoch; last.ckpt at steps 5, 8 (epoch end), 10, 15, 16, ...
STEPS = 8
RUN = ["model=tiny_bert", "task=mrpc", f"data_dir={FIXTURES}", "trainer=cpu", "logger=none", "trainer.max_epochs=3",
       "data.batch_size=2", "callbacks.resume_checkpoint.every_n_steps=5"]  # fmt: skip
# Two gloo processes of batch 1 (global batch 2, the same 8 steps an epoch), each with its own 2 loader workers.
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true", "data.batch_size=1"]


def _cmd(root: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "aotpt.train", *RUN, *extra, f"paths.root_dir={root}"]


def _run_dir(root: Path) -> Path:
    (results,) = (root / "logs" / "runs").glob("*/seed*/results.json")  # <name>/seed<seed>-<run id>
    return results.parent


def _epochs(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "results.json").read_text())["epochs"]


def _final_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    """What training produced: the best epoch's weights, and last.ckpt's weights, Adam moments and schedule."""
    tensors = {f"trained/{k}": v for k, v in load_file(run_dir / "model" / "trained.safetensors").items()}
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    tensors.update({f"last/{k}": v for k, v in ckpt["state_dict"].items()})
    for group in ckpt["optimizer_states"]:
        for pid, state in group["state"].items():
            tensors.update({f"adam/{pid}/{k}": torch.as_tensor(v) for k, v in state.items()})
    tensors["lr"] = torch.tensor([s["_last_lr"] for s in ckpt["lr_schedulers"]])
    tensors["global_step"] = torch.tensor(ckpt["global_step"])
    return tensors


def _assert_bitwise_equal(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    different = [k for k in expected if not torch.equal(got[k], expected[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _train(root: Path, extra: list[str]) -> Path:
    log = root / "train.log"
    with open(log, "w") as out:
        proc = subprocess.run(_cmd(root, extra), env=ENV, cwd=REPO, stdout=out, stderr=out, timeout=600)
    assert proc.returncode == 0, log.read_text()[-3000:]
    return _run_dir(root)


def _step_of(last: Path) -> int | None:
    try:
        return torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    except Exception:  # not there yet
        return None


def _kill_when(root: Path, extra: list[str], saved_at: int, delay: float = 0.0) -> int:
    """Start the run, SIGKILL its whole process group once last.ckpt holds step `saved_at`; the step it holds then."""
    log = open(root / "killed.log", "w")
    proc = subprocess.Popen(_cmd(root, extra), env=ENV, cwd=REPO, stdout=log, stderr=log, start_new_session=True)
    deadline, seen = time.monotonic() + 300, None
    try:
        while True:
            assert proc.poll() is None, (root / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint in time"
            lasts = list(root.glob("logs/runs/*/seed*/checkpoints/last.ckpt"))
            if lasts and lasts[0].stat().st_mtime_ns != seen:
                seen = lasts[0].stat().st_mtime_ns
                if _step_of(lasts[0]) == saved_at:
                    break
            time.sleep(0.005)
        time.sleep(delay)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
    run_dir = _run_dir(root)
    assert json.loads((run_dir / "results.json").read_text())["status"] != "completed", "finished before the kill"
    return _step_of(run_dir / "checkpoints" / "last.ckpt")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    run_dir = _train(tmp_path_factory.mktemp("uninterrupted"), [])
    return {"tensors": _final_tensors(run_dir), "epochs": _epochs(run_dir)}


@pytest.fixture(scope="module")
def uninterrupted_ddp(tmp_path_factory) -> dict:
    run_dir = _train(tmp_path_factory.mktemp("uninterrupted_ddp"), DDP)
    return {"tensors": _final_tensors(run_dir), "epochs": _epochs(run_dir)}


def _without_wall_time(epochs: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "wall_time_s"} for e in epochs]


_DELAYS = random.Random(7)


@pytest.mark.slow
def test_run_killed_mid_epoch_then_at_an_epoch_end_resumes_to_identical_tensors(tmp_path, uninterrupted):
    """Killed after the step-5 checkpoint, resumed mid-epoch; killed again after the epoch's end (step 8), resumed at
    the next epoch's start, the case that ran epoch 0's order again with worker processes; then to the end."""
    for saved_at in (5, STEPS):
        assert _kill_when(tmp_path, [], saved_at) == saved_at  # killed before the next save: the case under test
    run_dir = _train(tmp_path, [])
    _assert_bitwise_equal(_final_tensors(run_dir), uninterrupted["tensors"])
    assert _without_wall_time(_epochs(run_dir)) == _without_wall_time(uninterrupted["epochs"])


# a checkpoint (mid-epoch or epoch end) and a short random delay after it, before the next save
_RANDOM_KILLS = [(_DELAYS.choice([5, 8, 10, 15, 16]), _DELAYS.uniform(0.0, 0.1)) for _ in range(3)]


@pytest.mark.slow
@pytest.mark.parametrize(("saved_at", "delay"), _RANDOM_KILLS, ids=lambda v: str(round(v, 2)))
def test_sigkilled_run_resumes_to_identical_tensors(tmp_path, uninterrupted, saved_at, delay):
    _kill_when(tmp_path, [], saved_at, delay)
    run_dir = _train(tmp_path, [])
    _assert_bitwise_equal(_final_tensors(run_dir), uninterrupted["tensors"])
    assert _without_wall_time(_epochs(run_dir)) == _without_wall_time(uninterrupted["epochs"])


@pytest.mark.slow
@pytest.mark.parametrize("saved_at", [5, STEPS], ids=["mid-epoch", "epoch-end"])
def test_sigkilled_ddp_run_resumes_to_identical_tensors(tmp_path, uninterrupted_ddp, saved_at):
    assert _kill_when(tmp_path, DDP, saved_at) == saved_at
    run_dir = _train(tmp_path, DDP)
    _assert_bitwise_equal(_final_tensors(run_dir), uninterrupted_ddp["tensors"])
    assert _without_wall_time(_epochs(run_dir)) == _without_wall_time(uninterrupted_ddp["epochs"])


# ---- atomic writes ------------------------------------------------------------------------------


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
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


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


def test_concurrent_writers_use_their_own_temporary_files(tmp_path):
    target = tmp_path / "results.json"
    with atomic_path(target) as first, atomic_path(target) as second:  # two ranks, or two processes
        assert first != second and first.parent == second.parent == tmp_path
        first.write_text("1")
        second.write_text("2")
    assert target.read_text() == "1"  # the last rename wins, whole


def test_files_get_the_users_umask_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        import importlib

        import aotpt.atomic

        importlib.reload(aotpt.atomic)  # it reads the umask once, at import
        path = tmp_path / "trained.safetensors"
        with aotpt.atomic.atomic_path(path) as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp))  # safetensors creates its file 0600
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    finally:
        os.umask(old)
        importlib.reload(aotpt.atomic)


# ---- bad losses, W&B --------------------------------------------------------------------------


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
    conf = OmegaConf.create({"wandb": {"_target_": "aotpt.loggers.WandbLogger", "save_dir": str(tmp_path)}})
    monkeypatch.setattr("wandb.init", _fail_then_offline())
    (logger,) = build_loggers(conf)
    assert os.environ["WANDB_MODE"] == "offline" and logger.experiment == "offline-run"


def test_wandb_logger_does_not_pass_the_deprecated_anonymous_setting(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    seen = {}
    monkeypatch.setattr("wandb.init", lambda **kwargs: seen.update(kwargs) or "run")
    conf = OmegaConf.create({"wandb": {"_target_": "aotpt.loggers.WandbLogger", "save_dir": str(tmp_path)}})
    (logger,) = build_loggers(conf)
    assert logger.experiment == "run"
    assert "anonymous" not in seen  # wandb warns "The anonymous setting has no effect" whenever it is passed


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


@pytest.mark.parametrize(
    ("interval", "saved"),
    [("every_n_steps=3", [3, 4, 6, 8]), ("every_minutes=1e-9", [1, 2, 3, 4, 5, 6, 7, 8])],
)
def test_last_ckpt_is_written_on_an_interval_inside_epochs_and_at_epoch_ends(train_cfg, monkeypatch, interval, saved):
    steps, real_save = [], ResumeCheckpoint._save

    def recorded(self, trainer):
        steps.append(trainer.global_step)
        real_save(self, trainer)

    monkeypatch.setattr(ResumeCheckpoint, "_save", recorded)
    if interval.startswith("every_n_steps"):
        interval = [f"callbacks.resume_checkpoint.{interval}", "callbacks.resume_checkpoint.every_minutes=null"]
    else:
        interval = [f"callbacks.resume_checkpoint.{interval}"]
    train.run(train_cfg("task=mrpc", "trainer.max_epochs=2", *interval))  # 4 steps an epoch
    assert steps == saved  # never on an epoch's last batch: the epoch-end save follows it


def test_resume_checkpoint_refuses_a_bad_interval():
    with pytest.raises(ConfigError, match="every_minutes=0 must be > 0 or null"):
        ResumeCheckpoint("x", every_minutes=0)
