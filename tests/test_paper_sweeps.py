"""Sweep files: every job composes, reparam only with AoT, no duplicates; the paper grids cover the protocol."""

from __future__ import annotations

import dataclasses
import itertools
import os
import subprocess
import sys
from collections import defaultdict

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from aotpt import train
from aotpt.cli import CONF_DIR, GROUPS
from aotpt.methods import METHODS, REPARAMS, method_config, setup_name
from aotpt.report.coverage import cover
from aotpt.report.runs import Run
from aotpt.sweeps import SWEEPS_DIR, grid_jobs, load_sweep, sweep_jobs
from aotpt.tasks import benchmark_tasks
from conftest import FIXTURES, REPO

TRAIN_SWEEPS = sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml") if not p.stem.startswith("wandb_"))
BACKBONES = ("roberta_base", "roberta_large", "deberta_xl", "minilm")
PAPER_SETUPS = {"aot/kron", "aot/fc"} | set(METHODS) - {"aot"}


def _compose_jobs(sweep: str, jobs: list[list[str]]) -> list:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(SWEEPS_DIR), version_base="1.3"):
            return [
                compose(sweep, overrides=[f"hydra.searchpath=[file://{CONF_DIR}]", *job], return_hydra_config=True)
                for job in jobs
            ]
    finally:
        GlobalHydra.instance().clear()


def _group_choices(job: list[str]) -> tuple[str, ...]:
    return tuple(sorted(o for o in job if o.split("=")[0] in GROUPS))


def _check(cfg, job: list[str]) -> str:
    """The job's config builds its method; reparam exists exactly for AoT, in the config and in the overrides."""
    method = method_config(cfg.method)
    aot = type(method).name == "aot"
    assert (cfg.method.get("reparam") is not None) == aot, job
    assert any(o.startswith("reparam=") for o in job) <= aot, f"reparam crossed with a baseline: {job}"
    return setup_name(cfg.method)


@pytest.mark.parametrize("sweep", TRAIN_SWEEPS)
def test_every_sweep_composes_without_duplicates_and_reparam_only_with_aot(sweep):
    jobs = sweep_jobs(sweep)
    assert jobs and len({frozenset(j) for j in jobs}) == len(jobs)
    # One job per distinct method/reparam choice here (the slow test composes every group choice).
    firsts = {}
    for job in jobs:
        key = tuple(o for o in _group_choices(job) if o.split("=")[0] in ("method", "reparam"))
        firsts.setdefault(key, job)
    for job, cfg in zip(firsts.values(), _compose_jobs(sweep, list(firsts.values())), strict=True):
        _check(cfg, job)


@pytest.mark.slow
@pytest.mark.parametrize("sweep", TRAIN_SWEEPS)
def test_every_group_choice_and_value_of_every_sweep_composes(sweep):
    jobs = sweep_jobs(sweep)
    by_groups = {}
    values = defaultdict(set)
    for job in jobs:
        by_groups.setdefault(_group_choices(job), job)
        for o in job:
            values[o.split("=")[0]].add(o)
    sample = list(by_groups.values())
    # every value of every non-group axis in at least one composed job
    for key, seen in values.items():
        covered = {o for job in sample for o in job if o.split("=")[0] == key}
        sample += [next(j for j in jobs if o in j) for o in sorted(seen - covered)]
    for job, cfg in zip(sample, _compose_jobs(sweep, sample), strict=True):
        _check(cfg, job)


def _setup_of(job: dict[str, str]) -> str:
    return f"aot/{job['reparam']}" if job["method"] == "aot" else job["method"]


@pytest.mark.parametrize("backbone", BACKBONES)
def test_paper_grid_is_every_task_x_setup_x_lr_grid_x_3_seeds(backbone):
    jobs = [dict(o.split("=", 1) for o in job) for job in sweep_jobs(f"paper_{backbone}")]
    tasks = set(benchmark_tasks("glue")) | set(benchmark_tasks("superglue"))
    assert {(j["task"], _setup_of(j)) for j in jobs} == set(itertools.product(tasks, PAPER_SETUPS))
    seeds = defaultdict(set)
    lrs = defaultdict(set)
    for j in jobs:
        seeds[frozenset((k, v) for k, v in j.items() if k != "seed")].add(j["seed"])
        lrs[j["method"]].add(float(j["optim.lr"]))
    assert all(s == {"1", "2", "3"} for s in seeds.values())
    assert all(len(v) >= 3 for v in lrs.values()), lrs  # a grid, not one value
    assert min(lrs["ptuning_v2"]) >= 5e-3 and max(lrs["ptuning_v2"]) <= 1e-2  # P-Tuning v2's range
    assert max(lrs["finetune"]) <= 5e-5 and min(lrs["bitfit"]) >= 1e-4
    small = {j["task"] for j in jobs if j.get("trainer.max_epochs")}
    assert small and all(j["method"] != "finetune" for j in jobs if j.get("trainer.max_epochs"))
    assert {"cb", "copa", "rte"} <= small and not {"mnli", "qqp", "sst2"} & small


def test_grids_are_a_union_of_cross_products():
    params = {"task": "rte,cb", "seed": "1,2"}
    grids = [{"method": "aot", "reparam": "kron,fc", "optim.lr": "1e-3"}, {"method": "finetune", "optim.lr": "1e-5"}]
    jobs = grid_jobs(params, grids)
    assert len(jobs) == 2 * 2 * 2 + 2 * 2
    assert ["task=rte", "seed=1", "method=aot", "reparam=kron", "optim.lr=0.001"] in jobs
    assert all("reparam=kron" not in j and "reparam=fc" not in j for j in jobs if "method=finetune" in j)
    # a grid's own axis replaces the common one; the command line narrows grid axes and sets the others
    jobs = grid_jobs(params, [{"task": "cb", "method": "bitfit"}, {"method": "lora"}], ["task=cb", "data_dir=/d"])
    assert jobs == [
        ["task=cb", "seed=1", "method=bitfit", "data_dir=/d"],
        ["task=cb", "seed=2", "method=bitfit", "data_dir=/d"],
        ["task=cb", "seed=1", "method=lora", "data_dir=/d"],
        ["task=cb", "seed=2", "method=lora", "data_dir=/d"],
    ]
    assert grid_jobs({}, [{"optim.lr": "1e-3,5e-3"}], ["optim.lr=0.005"]) == [["optim.lr=0.005"]]  # by value
    assert grid_jobs({"seed": "1"}, [{"method": "aot"}, {"method": "aot"}]) == [["seed=1", "method=aot"]]  # once
    assert grid_jobs({"task": "rte,cb"}, None, ["task=cb"]) == [["task=cb"]]  # plain Hydra sweeps: replaced
    # a key other grids set leaves a grid without it alone; ++ sets it in every job
    grids = [{"method": "aot", "reparam": "kron,fc", "trainer.max_epochs": "50"}, {"method": "bitfit"}]
    assert grid_jobs({}, grids, ["reparam=kron"]) == [
        ["method=aot", "reparam=kron", "trainer.max_epochs=50"],
        ["method=bitfit"],
    ]
    assert grid_jobs({}, grids, ["++trainer.max_epochs=1", "reparam=fc"]) == [
        ["method=aot", "reparam=fc", "++trainer.max_epochs=1"],
        ["method=bitfit", "++trainer.max_epochs=1"],
    ]


def test_unknown_sweep_is_one_line():
    from aotpt.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown sweep='nope'; accepted: .*paper_minilm"):
        sweep_jobs("nope")


def test_reparam_registry_names_match_the_paper_setups():
    assert {"kron", "fc"} <= set(REPARAMS)


def _wandb_points(spec: dict, count: int) -> list[dict]:
    """`count` points of a W&B sweep: the i-th value of each list (or min/max of a distribution), cycling."""
    axes = {}
    for name, p in spec["parameters"].items():
        axes[name] = p["values"] if "values" in p else [p["min"], p["max"]] if "min" in p else [p["value"]]
    return [{k: v[i % len(v)] for k, v in axes.items()} for i in range(count)]


def _wandb_command(spec: dict, point: dict) -> list[str]:
    """The command `wandb agent` runs for `point` (its ${env}, ${program}, ${args_no_hyphens} macros)."""
    argv = []
    for part in spec["command"]:
        if part == "${env}":
            continue
        if part == "${program}":
            argv.append(spec["program"])
        elif part == "${args_no_hyphens}":
            argv += [f"{k}={v}" for k, v in point.items()]
        else:
            argv.append(sys.executable if part == "python" else part)
    return argv


WANDB_SWEEPS = sorted(p.stem for p in SWEEPS_DIR.glob("wandb_*.yaml"))


@pytest.mark.parametrize("name", WANDB_SWEEPS)
def test_wandb_sweep_points_run_through_hydra(name, train_cfg):
    """W&B sweeps need the W&B server (`wandb agent`): run the agent's command lines of a few points ourselves."""
    spec = yaml.safe_load((SWEEPS_DIR / f"{name}.yaml").read_text())
    points = _wandb_points(spec, 3)
    commands = [_wandb_command(spec, point) for point in points]
    assert all(c[:3] == [sys.executable, "-m", "aotpt.train"] for c in commands)
    for i, command in enumerate(commands):  # each point composes and trains (tiny model, W&B disabled)
        cfg = train_cfg(*command[3:], run=f"point{i}")
        for key, value in points[i].items():
            expected = OmegaConf.select(cfg, key) if key != "reparam" else cfg.method.reparam.name
            assert expected == value, key
        assert train.run(cfg)["status"] == "completed"


@pytest.mark.slow
@pytest.mark.parametrize("name", WANDB_SWEEPS)
def test_wandb_sweep_command_line_runs(name, tmp_path):
    """The exact command line of the agent (plus a tiny model) through Hydra's CLI."""
    spec = yaml.safe_load((SWEEPS_DIR / f"{name}.yaml").read_text())
    command = _wandb_command(spec, _wandb_points(spec, 1)[0])
    tiny = ["model=tiny_bert", f"data_dir={FIXTURES}", "trainer=cpu", "logger=csv", "data.num_workers=0"]
    tiny += ["trainer.max_epochs=1", f"paths.root_dir={tmp_path}"]
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([*command, *tiny], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list(tmp_path.rglob("results.json"))


@pytest.mark.parametrize("launcher", sorted(p.stem for p in (SWEEPS_DIR / "hydra" / "launcher").glob("*.yaml")))
def test_launcher_presets_compose_with_the_paper_sweeps(launcher):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e .[slurm]")
    (cfg,) = _compose_jobs("paper_deberta_xl", [[f"hydra/launcher={launcher}"]])
    assert "submitit" in cfg.hydra.launcher._target_ and cfg.hydra.launcher.gpus_per_node == 1


def test_a_run_matches_a_job_only_with_the_settings_the_sweep_file_fixes(tmp_path):
    """`data.group_by_length: true` in a sweep's body is part of every job: a run without it is no job of the
    sweep (the report excludes it, the study's test fails on it); a run recorded before the setting existed
    reads as `false` (identity.LATER_DEFAULTS)."""
    (tmp_path / "mini.yaml").write_text(
        "defaults:\n  - train\n  - _self_\n"
        "data:\n  max_length: 64\n  group_by_length: true\n"
        "hydra:\n  sweeper:\n    params:\n      task: rte\n      method: lora\n      seed: 1,2\n"
    )
    sweep = load_sweep("mini", sweeps_dir=tmp_path)
    assert sweep.fixed == {"data.max_length": 64, "data.group_by_length": True}

    def run(seed: int, **data) -> Run:
        config = {"task": {"name": "rte"}, "method": {"name": "lora"}, "seed": seed, "data": data}
        return Run(path=f"r{seed}{data}", state="included", task="rte", seed=seed, config=config)

    runs, coverage = cover(
        [
            run(1, max_length=64, group_by_length=True),
            run(2, max_length=64),
            run(2, max_length=128, group_by_length=True),
        ],
        sweep,
    )
    assert [r.state for r in runs] == ["included", "excluded", "excluded"]
    assert coverage.done == 1 and coverage.jobs == 2
    names = {
        f"{p.stem}": load_sweep(p.stem).fixed for p in SWEEPS_DIR.glob("*.yaml") if not p.stem.startswith("wandb_")
    }
    assert (
        names.pop("study_minilm")
        == names.pop("study_minilm_pilot")
        == {
            "data.max_length": 128,
            "data.group_by_length": True,
        }
    )
    assert not any(names.values()), names  # the paper's sweeps fix nothing beyond their jobs
    neutral = dataclasses.replace(sweep, fixed={"model.name": "x", "data.num_workers": 9, "logger": "csv"})
    assert [r.state for r in cover([run(1, max_length=1)], neutral)[0]] == ["included"]
    named = dataclasses.replace(sweep, fixed={"model.names": "x"})  # not `model.name`: checked
    assert [r.state for r in cover([run(1, max_length=1)], named)[0]] == ["excluded"]
    plain = dataclasses.replace(sweep, fixed={"data.group_by_length": False})
    assert [r.state for r in cover([run(1, max_length=64), run(2, max_length=64)], plain)[0]] == ["included"] * 2
