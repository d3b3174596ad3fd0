"""The MiniLM study (issue #15) is published from committed runs: the page cannot drift from them.

docs/results/minilm/runs and .../pilot hold each finished run's results.json
(`make study-commit`); docs/results/minilm.md and the tables and figure data
beside it are generated from them by `make study-page`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from aotpt.report.build import run as build_report
from aotpt.report.coverage import cover
from aotpt.report.runs import read_runs
from aotpt.report.select import pilot_rows
from aotpt.sweeps import load_sweep

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
            "commands": ["make study"],
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
    """The generated part of docs/results/minilm.md and every CSV (the figures' data included) equal what
    the committed results.json give now; the page says how many of the sweep's runs it was built from."""
    if not committed("runs"):
        assert not PAGE.exists(), "the page exists but no run of the study is committed"
        pytest.skip("no run of the study committed yet: nothing to build the page from")
    if not DATA_DIR.is_dir():
        pytest.skip("../shared/data is not beside the checkout (the majority-class row reads its dev labels)")
    monkeypatch.chdir(ROOT)
    report = build_report(page_cfg(check=True))  # raises ConfigError naming every file a rebuild would change
    text = PAGE.read_text()
    assert f"Built from {len(committed('runs'))} of the 168 runs of the sweep `study_minilm`" in text
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
