"""The MiniLM study (issue #15) is published from committed runs: the page cannot drift from them.

docs/results/minilm/runs and .../pilot hold each finished run's results.json
(`make study-commit`); docs/results/minilm.md and the tables and figure data
beside it are generated from them by `make study-page`.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from aotpt.report.build import run as build_report
from aotpt.report.coverage import cover
from aotpt.report.runs import read_runs
from aotpt.report.select import pilot_rows
from aotpt.sweeps import load_sweep
from conftest import FIXTURES

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "docs" / "results" / "minilm"
PAGE = ROOT / "docs" / "results" / "minilm.md"
DATA_DIR = ROOT.parent / "shared" / "data"
FOLDERS = {"runs": "study_minilm", "pilot": "study_minilm_pilot"}


def committed(folder: str) -> list[Path]:
    return sorted((STUDY / folder).glob("**/results.json"))


def page_cfg(check: bool):
    """`make study-page`'s options (the Makefile's command, in the report's config)."""
    cfg = OmegaConf.load(ROOT / "conf" / "report.yaml")
    cfg.pop("defaults")
    cfg.pop("hydra")
    cfg.merge_with(
        {
            "runs_dir": "docs/results/minilm/runs",
            "out_dir": "docs/results/minilm",
            "page": "docs/results/minilm.md",
            "sweep": "study_minilm",
            "pilot_dir": "docs/results/minilm/pilot",
            "data_dir": "../shared/data",
            "title": "AoT P-Tuning on MiniLM: the study",
            "commands": ["make study-background STUDY_WORKERS=2"],
            "benchmarks": ["sweep"],
            "summary": "README.md",
            "completed_only": True,
            "check": check,
        }
    )
    return cfg


def test_the_study_sweeps_are_the_issues_grid():
    jobs = load_sweep("study_minilm").jobs
    assert len(jobs) == 7 * 8 * 3 == len({frozenset(job) for job in jobs})
    tasks = {o.split("=")[1] for job in jobs for o in job if o.startswith("task=")}
    assert tasks == {"cb", "copa", "rte", "mrpc", "stsb", "cola", "wic"}
    epochs = {o.split("=")[1] for job in jobs for o in job if o.startswith("trainer.max_epochs=")}
    assert epochs == {"20", "10", "5"}
    pilot = load_sweep("study_minilm_pilot").jobs
    assert len(pilot) == 2 * 3 * 3  # RTE, MRPC x (kron, fc, ptuning_v2) x 3 rates, one seed, 3 epochs
    assert all("seed=1" in job and "trainer.max_epochs=3" in job for job in pilot)


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_committed_run_is_a_finished_job_of_its_sweep(folder):
    """Task, method, lr, epochs and seed are the sweep's, nothing shortened (the report excludes limited
    runs), every run completed, and no job committed twice."""
    paths = committed(folder)
    if not paths:
        pytest.skip(f"no run of {FOLDERS[folder]} committed yet")
    runs, coverage = cover(read_runs(STUDY / folder), load_sweep(FOLDERS[folder]))
    wrong = [f"{r.path}: {r.state} ({r.reason})" for r in runs if r.state != "included"]
    assert not wrong, "\n".join(wrong)
    assert coverage.done == len(runs) == len(paths), "a job of the sweep is committed twice"


def test_the_page_is_rebuilt_exactly_from_the_committed_runs(monkeypatch):
    """The generated part of docs/results/minilm.md, its summary in README.md and every CSV (the figures' data
    included) equal what the committed results.json give now; both say how many of the sweep's runs they are
    built from."""
    if not committed("runs"):
        assert not PAGE.exists(), "the page exists but no run of the study is committed"
        pytest.skip("no run of the study committed yet: nothing to build the page from")
    if not DATA_DIR.is_dir():
        pytest.skip("../shared/data is not beside the checkout (the majority-class row reads its dev labels)")
    monkeypatch.chdir(ROOT)
    report = build_report(page_cfg(check=True))  # raises ConfigError naming every file a rebuild would change
    text = PAGE.read_text()
    assert f"Built from {len(committed('runs'))} of the 168 runs of the sweep `study_minilm`" in text
    readme = (ROOT / "README.md").read_text().split("<!-- summary of docs/results/minilm.md: begin -->")[1]
    assert f"Built from {len(committed('runs'))} of the 168 runs of the sweep `study_minilm`" in readme
    assert report.coverage.done == len(committed("runs"))


def test_the_grids_rates_for_the_claimed_setups_are_the_pilots_picks():
    """aot kron, aot fc and ptuning_v2 run the main grid at the learning rate the pilot picked (best mean dev
    score over RTE and MRPC), once all of the pilot's runs are committed."""
    pilot = load_sweep("study_minilm_pilot")
    if len(committed("pilot")) < len(pilot.jobs):
        pytest.skip(f"{len(committed('pilot'))} of the pilot's {len(pilot.jobs)} runs committed")
    picks = {row.setup: row.values["optim.lr"] for row in pilot_rows(read_runs(STUDY / "pilot"), ["optim.lr"])
             if row.picked}  # fmt: skip
    assert set(picks) == {"aot/kron", "aot/fc", "ptuning_v2"}
    grid = {}
    for job in load_sweep("study_minilm").jobs:
        setting = dict(o.split("=", 1) for o in job)
        setup = f"aot/{setting['reparam']}" if setting["method"] == "aot" else setting["method"]
        grid.setdefault(setup, set()).add(float(setting["optim.lr"]))
    assert {setup: grid[setup] for setup in picks} == {setup: {float(lr)} for setup, lr in picks.items()}


STUDY_JOBS = "-m aotpt.train -m --config-dir sweeps --config-name study_minilm"  # make study-stop's pattern


def _study(tmp_path: Path, make_target: str, **popen) -> subprocess.Popen:
    """`make <target>` on a two-setup slice of the study grid (CB x AoT kron, fc; seeds 1 and 2) with tiny_bert
    and the fixtures, two one-thread workers; the runs and the logs go under tmp_path."""
    args = (f"model=tiny_bert task=cb method=aot paths.root_dir={tmp_path} logger=csv data.num_workers=0 "
            "data.batch_size=1")  # fmt: skip
    cmd = ["make", "--no-print-directory", make_target, "-o", "study-pilot", "STUDY_WORKERS=2", "STUDY_STAGGER=0",
           f"STUDY={tmp_path}", "STUDY_SEEDS=1 2", f"DATA_DIR={FIXTURES}", f"STUDY_ARGS={args}",
           f"BIN={Path(sys.executable).parent}"]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, **popen)


def _runs(tmp_path: Path) -> dict[str, dict]:
    return {
        p.parent.name: json.loads(p.read_text()) for p in tmp_path.glob("docs/results/minilm/runs/*/*/results.json")
    }


def _study_processes(tmp_path: Path) -> list[int]:
    """The processes started with this study's AOTPT_STUDY (its jobs and their loader workers)."""
    mark = f"AOTPT_STUDY={tmp_path}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if mark in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def _wait_for_two_training(tmp_path: Path, proc: subprocess.Popen, log: Path, since: dict[str, int]) -> None:
    """Until two runs are training at once: status running, with a dev epoch recorded since `since` was taken."""
    deadline = time.monotonic() + 300
    while True:
        runs = _runs(tmp_path)
        training = [n for n, r in runs.items() if r["status"] == "running" and len(r["epochs"]) > since.get(n, 0)]
        if len(training) >= 2:
            return
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the two workers never trained at the same time"
        time.sleep(0.05)


def _jobs(tmp_path: Path) -> list[int]:
    """This study's job processes as make study-stop finds them: python, not started by python."""
    found = []
    for pid in _study_processes(tmp_path):
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            exe, parent = (Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0].decode() for p in (pid, ppid))
        except (OSError, ValueError, IndexError):
            continue
        if Path(exe).name.startswith("python") and not Path(parent).name.startswith("python"):
            found.append(pid)
    return found


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _freeze_two_training(tmp_path: Path, proc: subprocess.Popen, log: Path, since: dict[str, int]):
    """Waits until two runs train at once and stops (SIGSTOP) this study's two jobs while both runs are at least
    two epochs from their end (CB: 20), so that neither can finish before the stop reaches it: the test must not
    depend on how fast this machine trains. Returns the frozen pids and the names of the two runs."""
    while True:
        _wait_for_two_training(tmp_path, proc, log, since)
        pids = _jobs(tmp_path)
        _signal(pids, signal.SIGSTOP)
        runs = _runs(tmp_path)
        training = {n for n, r in runs.items() if r["status"] == "running" and len(r["epochs"]) > since.get(n, 0)}
        if len(pids) == 2 and len(training) == 2 and all(len(runs[n]["epochs"]) <= 18 for n in training):
            return pids, training
        _signal(pids, signal.SIGCONT)  # one is about to finish: let it, and wait for the next pair
        time.sleep(0.2)


def _thaw_when_terminated(pids: list[int]) -> None:
    """SIGCONT once each frozen job has a SIGTERM pending (/proc/PID/status), i.e. the stop has reached it."""
    deadline = time.monotonic() + 120
    try:
        while True:
            pending = []
            for pid in pids:
                try:
                    status = Path(f"/proc/{pid}/status").read_text().splitlines()
                except OSError:
                    continue
                masks = [int(line.split()[1], 16) for line in status if line.startswith(("SigPnd:", "ShdPnd:"))]
                pending.append(any(m & (1 << (signal.SIGTERM - 1)) for m in masks))
            if all(pending) or time.monotonic() > deadline:
                return
            time.sleep(0.05)
    finally:
        _signal(pids, signal.SIGCONT)


def _decoy(study: str) -> subprocess.Popen:
    """A process with the study jobs' command line under a shell (as make starts them) and AOTPT_STUDY=study."""
    script = f"{shlex.quote(sys.executable)} -c 'import time; time.sleep(120)' {STUDY_JOBS}; :"
    return subprocess.Popen(["sh", "-c", script], env={**os.environ, "AOTPT_STUDY": study}, start_new_session=True)


@pytest.mark.slow
def test_two_study_workers_share_the_grid_and_stop_with_study_stop_or_ctrl_c(tmp_path):
    """`make study STUDY_WORKERS=2`: both workers train at once (one thread each) on different jobs of one list.
    `make study-stop` stops this study's jobs (theirs only) and returns once none is left; Ctrl-C on `make study`
    does the same; the running jobs end as interrupted, and the next `make study` resumes them and finishes
    every job, each trained in one folder."""
    log = tmp_path / "study.log"
    with open(log, "w") as out:
        proc = _study(tmp_path, "study", stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        frozen, training = _freeze_two_training(tmp_path, proc, log, since={})
        other, ours = _decoy("/elsewhere"), _decoy(str(tmp_path))  # another checkout's study, and one of ours
        time.sleep(0.5)
        stop = subprocess.Popen(["make", "--no-print-directory", "study-stop", f"STUDY={tmp_path}"], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        _thaw_when_terminated(frozen)
        out, _ = stop.communicate(timeout=300)
        assert stop.returncode == 0 and out.count("SIGTERM to ") == 3, out
        assert proc.wait(timeout=60) != 0 and ours.wait(timeout=10) is not None
        assert other.poll() is None, "make study-stop stopped another checkout's study"
        os.killpg(other.pid, signal.SIGKILL)
    assert "stopped (make study-stop)" in log.read_text() and not _study_processes(tmp_path)
    runs = _runs(tmp_path)  # the two that were training: interrupted; one that finished before them: completed
    assert {n: r["status"] for n, r in runs.items() if n in training} == dict.fromkeys(training, "interrupted")
    assert {r["status"] for n, r in runs.items() if n not in training} <= {"completed"}, log.read_text()[-3000:]
    interrupted = training

    # Ctrl-C in the terminal: SIGINT to make's whole foreground process group (the workers ignore it)
    epochs = {name: len(r["epochs"]) for name, r in runs.items()}
    with open(log, "w") as out:
        proc = _study(tmp_path, "study", stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        frozen, training = _freeze_two_training(tmp_path, proc, log, since=epochs)
        os.killpg(proc.pid, signal.SIGINT)
        _thaw_when_terminated(frozen)
        proc.wait(timeout=120)
    deadline = time.monotonic() + 120
    while _study_processes(tmp_path):
        assert time.monotonic() < deadline, f"left running after Ctrl-C: {_study_processes(tmp_path)}"
        time.sleep(0.2)
    assert "stopping the workers" in log.read_text()
    after = {n: r["status"] for n, r in _runs(tmp_path).items()}  # the two that were training: interrupted
    assert {n: after[n] for n in training} == dict.fromkeys(training, "interrupted") and set(after.values()) <= {
        "interrupted", "completed"}, after  # fmt: skip

    proc = _study(tmp_path, "study", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    runs = _runs(tmp_path)
    assert len(runs) == 4 and all(r["status"] == "completed" for r in runs.values())
    assert all(r["machine"]["threads"] == 1 for r in runs.values())
    worker_logs = "".join((tmp_path / f"study-worker{w}.log").read_text() for w in (1, 2))
    resumed = {name for name in interrupted if f"resuming from {tmp_path}" in worker_logs and name in worker_logs}
    assert resumed == interrupted
    assert [e["epoch"] for r in runs.values() for e in r["epochs"]] == list(range(20)) * 4


@pytest.mark.slow
def test_study_drain_lets_the_running_jobs_finish_and_starts_no_other(tmp_path):
    """`make study-drain` while two workers train: both runs finish (completed, not interrupted), no other job
    starts, the study ends as drained and study-drain returns once none of its jobs runs. The next `make study`
    trains only the jobs left, each once."""
    log = tmp_path / "study.log"
    with open(log, "w") as out:
        proc = _study(tmp_path, "study", stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        frozen, _ = _freeze_two_training(tmp_path, proc, log, since={})
        try:
            started = set(_runs(tmp_path))
            drain = subprocess.Popen(
                ["make", "--no-print-directory", "study-drain", f"STUDY={tmp_path}"],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            deadline = time.monotonic() + 60
            while not (tmp_path / ".study-drain").exists():
                assert time.monotonic() < deadline and drain.poll() is None, drain.communicate()[0]
                time.sleep(0.05)
            _signal(frozen, signal.SIGCONT)
            out, _ = drain.communicate(timeout=600)
            assert drain.returncode == 0 and "drained: nothing of" in out, out
            assert proc.wait(timeout=60) != 0
        finally:  # a failed check leaves no frozen or running study behind
            _signal(frozen, signal.SIGCONT)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                _signal(_study_processes(tmp_path), signal.SIGKILL)
    assert "drained (make study-drain)" in log.read_text() and not _study_processes(tmp_path)
    runs = _runs(tmp_path)
    assert set(runs) == started, "a job started after study-drain"
    assert {n: r["status"] for n, r in runs.items()} == dict.fromkeys(runs, "completed"), log.read_text()[-3000:]
    assert len(runs) < 4

    proc = _study(tmp_path, "study", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    runs = _runs(tmp_path)
    assert len(runs) == 4 and all(r["status"] == "completed" for r in runs.values())
    assert [e["epoch"] for r in runs.values() for e in r["epochs"]] == list(range(20)) * 4
