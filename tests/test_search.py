"""Optuna search on a tiny model: it completes, and a re-launch after a kill resumes it with exactly n_trials."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from optuna.trial import TrialState

from aotpt import search
from aotpt.cli import CONF_DIR
from aotpt.errors import ConfigError
from conftest import FIXTURES, REPO

TINY = ["model=tiny_bert", f"data_dir={FIXTURES}", "trainer=cpu", "logger=csv", "data.num_workers=0"]
TINY += ["data.batch_size=4"]


def _search_cfg(tmp_path: Path, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("search", overrides=[*TINY, "trainer.max_epochs=1", f"paths.root_dir={tmp_path}", *overrides])
    GlobalHydra.instance().clear()
    return cfg


def _study(tmp_path: Path) -> optuna.Study:
    (db,) = tmp_path.glob("logs/search/*/study.db")
    return optuna.load_study(study_name="rte-tiny_bert-aot", storage=f"sqlite:///{db}")


def _results(study: optuna.Study) -> dict[int, str]:
    return {t.number: (Path(t.user_attrs["run_dir"]) / "results.json").read_text() for t in study.trials}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_two_trial_search_killed_during_trial_2_resumes_it_under_its_number(tmp_path):
    """In-process: what a kill during trial 2 leaves (a RUNNING trial, its process gone), then the re-launch.

    The slow test below kills a real search mid-trial and checks the resume from the checkpoint.
    """
    train = [*TINY, "trainer.max_epochs=1"]
    search.run(_search_cfg(tmp_path, "search.n_trials=1"), train)
    study = _study(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]
    before = _results(study)
    orphan = study.ask()
    search.sample(orphan, OmegaConf.to_container(_search_cfg(tmp_path).search.space))
    orphan.set_user_attr("worker", f"{socket.gethostname()}:{_dead_pid()}")
    search.run(_search_cfg(tmp_path, "search.n_trials=2"), train)
    study = _study(tmp_path)
    assert [(t.number, t.state) for t in study.trials] == [(0, TrialState.COMPLETE), (1, TrialState.COMPLETE)]
    assert study.trials[1].params == orphan.params
    after = _results(study)
    assert after[0] == before[0]  # the finished trial is not re-run
    search.run(_search_cfg(tmp_path, "search.n_trials=2"), train)  # nothing left to do
    assert len(_study(tmp_path).trials) == 2 and _results(_study(tmp_path)) == after


def test_running_trial_of_a_live_worker_is_left_alone(tmp_path):
    cfg = _search_cfg(tmp_path, "search.n_trials=1")
    (tmp_path / "logs" / "search" / "rte-tiny_bert-aot").mkdir(parents=True)
    study = optuna.create_study(
        study_name="rte-tiny_bert-aot",
        storage=f"sqlite:///{tmp_path / 'logs' / 'search' / 'rte-tiny_bert-aot' / 'study.db'}",
        direction="maximize",
    )
    live = study.ask()
    search.sample(live, OmegaConf.to_container(cfg.search.space))
    live.set_user_attr("worker", f"{socket.gethostname()}:{os.getppid()}")  # pytest's parent: alive
    search.run(cfg, [*TINY, "trainer.max_epochs=1"])
    assert [t.state for t in _study(tmp_path).trials] == [TrialState.RUNNING]


def test_space_mistakes_are_one_line():
    with pytest.raises(ConfigError, match=r"search.space.lr.type='normal'; accepted: float, int, categorical"):
        search._check_space({"lr": {"type": "normal"}}, [])
    with pytest.raises(ConfigError, match="search.space.lr needs high"):
        search._check_space({"lr": {"type": "float", "low": 1e-4}}, [])
    with pytest.raises(ConfigError, match="when names 'reparm'"):
        search._check_space({"r": {"choices": [4], "when": {"reparm": "kron"}}}, [])
    with pytest.raises(ConfigError, match=r"optim.lr is searched \(search.space.lr\): drop optim.lr="):
        search._check_space({"lr": {"override": "optim.lr", "type": "float", "low": 1, "high": 2}}, ["optim.lr=1e-3"])


def test_conditional_space_samples_the_rank_of_the_chosen_reparam():
    space = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "search.yaml").search.space)
    fixed = optuna.trial.FixedTrial({"reparam": "fc", "lr": 0.002, "fc_rank": 64})
    assert search.sample(fixed, space) == ["reparam=fc", "optim.lr=0.002", "method.reparam.rank=64"]
    assert search.replay({"reparam": "kron"}, space) is None  # killed before every value was sampled


@pytest.mark.slow
def test_search_killed_during_trial_2_resumes_it_from_its_checkpoint(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = [*TINY, "trainer.max_epochs=6", "data.batch_size=2", f"paths.root_dir={tmp_path}", "search.n_trials=2"]
    cmd = [sys.executable, "-m", "aotpt.search", *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = tmp_path / "logs" / "search" / "rte-tiny_bert-aot" / "runs"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # kill once trial 2 has a checkpoint and is mid-way
        running = [
            p.parent
            for p in runs.rglob("results.json")
            if json.loads(p.read_text())["status"] == "running" and len(json.loads(p.read_text())["epochs"]) >= 2
        ]
        finished = [p for p in runs.rglob("results.json") if json.loads(p.read_text())["status"] == "completed"]
        if running and finished and (running[0] / "checkpoints" / "last.ckpt").exists():
            break
        assert proc.poll() is None, "the search ended before trial 2 could be killed"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    trial_2 = running[0]
    killed_at = len(json.loads((trial_2 / "results.json").read_text())["epochs"])
    trial_1 = finished[0].read_text()
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    study = _study(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert finished[0].read_text() == trial_1  # trial 1 is not re-run
    output = again.stdout + again.stderr
    assert "resuming trial 1" in output and "last.ckpt" in output
    epochs = json.loads((trial_2 / "results.json").read_text())["epochs"]
    assert len(epochs) == 6 > killed_at and study.trials[1].user_attrs["run_dir"] == str(trial_2)
