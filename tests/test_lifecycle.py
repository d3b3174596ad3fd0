"""Run lifecycle: finished runs answer at once, folders are locked, failures and Ctrl-C are recorded,
short runs validate."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from aotpt import train
from aotpt.errors import AotptError, ConfigError
from aotpt.module import TaskModule
from conftest import FIXTURES, REPO

ENV = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}


def _results(folder) -> dict:
    return json.loads((Path(folder) / "results.json").read_text())


def _snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file below `folder` with its modification time and content hash, except Hydra's own records of
    each launch (.hydra/*.yaml, the job log), which Hydra writes before any of our code runs."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log"
    }


def _forbid(monkeypatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("a finished run built a model, a logger or a trainer")

    monkeypatch.setattr("aotpt.module.build_model", forbidden)
    monkeypatch.setattr("aotpt.train.build_loggers", forbidden)
    monkeypatch.setattr("lightning.pytorch.Trainer.__init__", forbidden)


def test_finished_run_returns_its_stored_result_touching_nothing(train_cfg, monkeypatch):
    run = ("task=mrpc", "logger=csv", "trainer.max_epochs=2")
    first = train.run(train_cfg(*run))
    folder = Path(first["output_dir"])
    assert _results(folder)["status"] == "completed" and (folder / "csv" / "metrics.csv").is_file()
    before = _snapshot(folder)
    _forbid(monkeypatch)
    again = train.run(train_cfg(*run, "reparam=kron"))  # the same run, a default written out
    assert again["stored"] and again["output_dir"] == first["output_dir"]
    assert again["metrics"] == first["metrics"] and again["best"]["val/score"] == first["best"]["val/score"]
    assert train.optimized_value(again, "val/score_best") == first["metrics"]["val/score_best"]
    assert train.optimized_value(again, "val/loss") == first["metrics"]["val/loss"]  # any metric logged at the end
    assert _snapshot(folder) == before


def test_drain_file_lets_finished_runs_answer_and_starts_no_other(train_cfg, monkeypatch, tmp_path):
    """While $AOTPT_DRAIN_FILE names a file that exists (make study-drain), a finished run still returns its
    stored result and a run not finished does not start: KeyboardInterrupt (a sweep stops as interrupted), its
    folder untouched. Without the file, runs start as before."""
    drain = tmp_path / "drain"
    monkeypatch.setenv("AOTPT_DRAIN_FILE", str(drain))
    first = train.run(train_cfg("task=mrpc", run="finished"))  # no file yet: it trains
    assert first["status"] == "completed"
    drain.touch()
    _forbid(monkeypatch)
    assert train.run(train_cfg("task=mrpc", run="finished"))["stored"]
    with pytest.raises(KeyboardInterrupt):
        train.run(train_cfg("task=rte", run="new"))
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").rglob("*"))


def test_finished_folder_with_other_settings_is_refused_naming_them(train_cfg):
    train.run(train_cfg("task=mrpc"))
    with pytest.raises(ConfigError) as err:  # e.g. a changed default that resolves to another lr in the same folder
        train.run(train_cfg("task=mrpc", "optim.lr=5e-3"))
    assert "holds a finished run with other settings (optim.lr)" in str(err.value) and "\n" not in str(err.value)


HOLD_LOCK = """
import sys, time
from aotpt.rundir import RunLock
with RunLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_second_process_on_a_run_folder_is_refused_naming_the_holder(train_cfg, monkeypatch):
    cfg = train_cfg("task=mrpc")
    folder = Path(cfg.paths.output_dir)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(AotptError) as err:
            train.run(cfg)
        message = str(err.value)
        assert f"pid {holder.pid} on {socket.gethostname()}" in message and "\n" not in message
        assert not (folder / "results.json").exists()  # refused before writing anything
        monkeypatch.setenv("LOCAL_RANK", "1")  # another rank of a plain-ddp run works under rank 0's lock
        from aotpt.rundir import RunLock

        with RunLock(folder):
            pass
    finally:
        holder.kill()
        holder.wait()
    monkeypatch.delenv("LOCAL_RANK")
    assert train.run(cfg)["status"] == "completed"  # the kernel dropped the dead holder's lock


class _FakeWandb(types.ModuleType):
    """Stands in for the wandb module: a run is open until `finish`, whose exit code is recorded."""

    def __init__(self) -> None:
        super().__init__("wandb")
        self.run, self.exit_codes = object(), []

    def finish(self, exit_code: int = 0) -> None:
        self.exit_codes.append(exit_code)
        self.run = None


@pytest.mark.parametrize("stage", ["loggers", "trainer"])
def test_failure_while_building_is_recorded_and_wandb_marked_failed(train_cfg, monkeypatch, stage):
    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    real_instantiate = train.instantiate

    def boom(*args, **kwargs):
        raise RuntimeError(f"{stage} broke")

    if stage == "loggers":
        monkeypatch.setattr("aotpt.train.build_loggers", boom)
    else:
        trainer = "lightning.pytorch.Trainer"
        monkeypatch.setattr(
            "aotpt.train.instantiate", lambda c, **kw: boom() if c._target_ == trainer else real_instantiate(c, **kw)
        )
    cfg = train_cfg("task=mrpc")
    with pytest.raises(RuntimeError, match=f"{stage} broke"):
        train.run(cfg)
    results = _results(cfg.paths.output_dir)
    assert results["status"] == "failed" and results["error"] == f"RuntimeError: {stage} broke"
    assert fake.exit_codes == [1]


def test_completed_run_marks_wandb_finished_ok(train_cfg, monkeypatch):
    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    train.run(train_cfg("task=mrpc"))
    assert fake.exit_codes == [0]


def test_ctrl_c_records_interrupted_and_the_run_resumes(train_cfg, monkeypatch):
    real_step = TaskModule.training_step

    def ctrl_c_at_step_5(self, batch, batch_idx):
        if self.global_step == 5:
            raise KeyboardInterrupt
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(TaskModule, "training_step", ctrl_c_at_step_5)
    run = ("task=mrpc", "trainer.max_epochs=3")
    with pytest.raises(KeyboardInterrupt):
        train.run(train_cfg(*run))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Lightning had set it to ignore
    cfg = train_cfg(*run)
    results = _results(cfg.paths.output_dir)
    assert results["status"] == "interrupted" and results["error"] is None
    assert [e["epoch"] for e in results["epochs"]] == [0]
    monkeypatch.undo()
    out = train.run(cfg)
    assert out["status"] == "completed" and [e["epoch"] for e in _results(out["output_dir"])["epochs"]] == [0, 1, 2]


def test_max_steps_inside_an_epoch_ends_with_one_dev_evaluation(train_cfg):
    out = train.run(train_cfg("task=mrpc", "trainer.max_epochs=5", "+trainer.max_steps=3"))  # 4 steps an epoch
    results = _results(out["output_dir"])
    assert [(e["epoch"], e["step"]) for e in results["epochs"]] == [(0, 3)]
    assert results["status"] == "completed" and "val/score_best" in out["metrics"]
    assert (Path(out["output_dir"]) / "model" / "trained.safetensors").is_file()
    ckpt = torch.load(Path(out["output_dir"]) / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 3


def _sweep(root: Path, seeds: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "aotpt.train", "-m", "model=tiny_bert", "task=mrpc", f"data_dir={FIXTURES}",
           f"paths.root_dir={root}", "logger=csv", "trainer=cpu", "trainer.max_epochs=2", "data.batch_size=4",
           "data.num_workers=0", f"seed={seeds}"]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600)


@pytest.mark.slow
def test_relaunched_sweep_skips_finished_jobs_and_resumes_the_rest(tmp_path):
    assert _sweep(tmp_path, "1,2").returncode == 0
    job1, job2 = sorted((tmp_path / "logs" / "multiruns" / "train").glob("*/seed*"))
    # job 2 as a pre-empted job leaves it: killed after its last checkpoint, before the end of the run
    results = _results(job2)
    results["status"] = "running"
    (job2 / "results.json").write_text(json.dumps(results))
    (job2 / "model" / "trained.safetensors").unlink()
    before = _snapshot(job1)
    time.sleep(0.01)
    proc = _sweep(tmp_path, "1,2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _snapshot(job1) == before
    logs = proc.stdout + proc.stderr
    assert f"{job1}: finished run" in logs and f"resuming from {job2}" in logs
    assert _results(job2)["status"] == "completed" and (job2 / "model" / "trained.safetensors").is_file()


def _wait_for(pattern: str, root: Path, proc: subprocess.Popen, log: Path) -> Path:
    deadline = time.monotonic() + 300
    while not (found := list(root.glob(pattern))):
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no {pattern} in time"
        time.sleep(0.02)
    return found[0]


@pytest.mark.slow
def test_ctrl_c_on_the_command_line_exits_130_and_the_same_command_resumes(tmp_path):
    cmd = [sys.executable, "-m", "aotpt.train", "model=tiny_bert", "task=mrpc", f"data_dir={FIXTURES}",
           f"paths.root_dir={tmp_path}", "logger=csv", "trainer=cpu", "trainer.max_epochs=4",
           "data.batch_size=2"]  # fmt: skip
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=ENV, cwd=REPO, stdout=out, stderr=out)
        last = _wait_for("logs/runs/*/seed*/checkpoints/last.ckpt", tmp_path, proc, log)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130
    assert "\ninterrupted: run the same command again to resume\n" in log.read_text()
    assert _results(last.parent.parent)["status"] == "interrupted"
    proc = subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "resuming from" in proc.stdout + proc.stderr
    assert [e["epoch"] for e in _results(last.parent.parent)["epochs"]] == [0, 1, 2, 3]


@pytest.mark.slow
def test_sweep_killed_in_its_second_job_resumes_it_when_relaunched(tmp_path):
    cmd = [sys.executable, "-m", "aotpt.train", "-m", "model=tiny_bert", "task=mrpc", f"data_dir={FIXTURES}",
           f"paths.root_dir={tmp_path}", "logger=csv", "trainer=cpu", "trainer.max_epochs=4", "data.batch_size=2",
           "seed=1,2"]  # fmt: skip
    log = tmp_path / "sweep.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=ENV, cwd=REPO, stdout=out, stderr=out, start_new_session=True)
        _wait_for("logs/multiruns/train/*/seed2-*/checkpoints/last.ckpt", tmp_path, proc, log)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    job1, job2 = sorted((tmp_path / "logs" / "multiruns" / "train").glob("*/seed*"))
    assert _results(job1)["status"] == "completed" and _results(job2)["status"] == "running"
    before = _snapshot(job1)
    proc = subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _snapshot(job1) == before and f"resuming from {job2}" in proc.stdout + proc.stderr
    assert [e["epoch"] for e in _results(job2)["epochs"]] == [0, 1, 2, 3]
