"""Every group combination composes, and bad options fail in one line."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from aotpt.cli import CONF_DIR, check_overrides, group_options
from aotpt.errors import AotptError, ConfigError
from aotpt.methods import METHODS, method_config, options_of, setup_name
from aotpt.tasks import TASKS
from conftest import compose_train


def test_every_registered_method_and_task_has_a_config_file():
    assert set(group_options("method")) == set(METHODS)
    assert set(group_options("task")) == set(TASKS)


def _combinations(models: list[str]):
    for model, task, method in itertools.product(models, group_options("task"), METHODS):
        reparams = group_options("reparam") if method == "aot" else [None]
        for reparam in reparams:
            yield model, task, method, reparam


def _compose_all(combinations) -> int:
    count = 0
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):  # once: composing is the cost
        for model, task, method, reparam in combinations:
            overrides = [f"model={model}", f"task={task}", f"method={method}"]
            overrides += [f"reparam={reparam}"] if reparam else []
            _check_composed(compose("train", overrides=overrides), model, task, method, reparam)
            count += 1
    GlobalHydra.instance().clear()
    return count


def _keys_set_by(group: str) -> set[str]:
    """Top-level config keys the files of `group` write (a `_global_` file may write several)."""
    keys = set()
    for option in group_options(group):
        text = (CONF_DIR / group / f"{option}.yaml").read_text()
        data = yaml.safe_load(text) or {}
        keys |= {k for k in data if k != "defaults"} if "@package _global_" in text else {group}
    return keys


@pytest.mark.slow
def test_every_task_method_reparam_composes_and_models_are_independent():
    """task x method x reparam for one model; every model once. Sound because the groups write disjoint keys."""
    groups = ("model", "task", "method", "reparam")
    written = {g: _keys_set_by(g) for g in groups}
    for a, b in itertools.combinations(groups, 2):
        if {a, b} != {"method", "reparam"}:  # reparam files write method.reparam, inside method
            assert not written[a] & written[b], f"{a} and {b} both write {written[a] & written[b]}"
    count = _compose_all(_combinations(["tiny_bert"]))
    count += _compose_all((model, "rte", "aot", "kron") for model in group_options("model"))
    assert count == len(list(_combinations(["tiny_bert"]))) + len(group_options("model"))


@pytest.mark.slow
def test_every_model_task_method_reparam_composes():
    models = group_options("model")
    assert _compose_all(_combinations(models)) >= len(models) * len(TASKS) * len(METHODS)


def _check_composed(cfg, model: str, task: str, method: str, reparam: str | None) -> None:
    method_cfg = method_config(cfg.method)
    assert type(method_cfg).name == method
    assert cfg.task.name == task and cfg.model.name == model
    if reparam:
        assert method_cfg.reparam.name == reparam


@pytest.mark.parametrize("experiment", group_options("experiment"))
def test_every_experiment_composes(tmp_path, experiment):
    cfg = compose_train([f"experiment={experiment}"], tmp_path)
    method_config(cfg.method)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "aot"])
def test_reparam_with_another_method_is_refused(tmp_path, method):
    cfg = compose_train([f"method={method}", "reparam=fc"], tmp_path)
    with pytest.raises(ConfigError, match=f"reparam= only applies to method=aot, not method={method}") as err:
        method_config(cfg.method)
    assert "\n" not in str(err.value)


def test_unknown_method_option_lists_the_accepted_ones(tmp_path):
    cfg = compose_train(["method=lora", "+method.rnk=4"], tmp_path)
    with pytest.raises(ConfigError, match="method=lora has no option method.rnk; its options: alpha, dropout, rank"):
        method_config(cfg.method)


def test_non_aot_method_has_no_reparam(tmp_path):
    cfg = compose_train(["method=finetune"], tmp_path)
    assert "reparam" not in cfg.method


def test_bad_reparam_value_is_one_line(tmp_path):
    cfg = compose_train(["reparam=kron", "method.reparam.rank=0"], tmp_path)
    with pytest.raises(ConfigError, match=r"reparam.rank=0 must be >= 1"):
        method_config(cfg.method)


@pytest.mark.parametrize("arg", ["task=foo", "model=bert_huge", "method=prefix", "reparam=lowrank"])
def test_unknown_group_choice_lists_accepted_values(arg):
    key = arg.split("=")[0]
    with pytest.raises(AotptError, match=f"unknown {key}=") as err:
        check_overrides([arg])
    assert all(option in str(err.value) for option in group_options(key))


def test_sweeps_and_overrides_pass_the_check():
    check_overrides(["task=rte,mrpc", "optim.lr=1e-3", "reparam=null", "+trainer.foo=1", "seed=1"])


def test_unknown_reparam_option_names_its_full_path(tmp_path):
    cfg = compose_train(["reparam=kron", "+method.reparam.rnak=4"], tmp_path)
    with pytest.raises(ConfigError, match="reparam=kron has no option method.reparam.rnak; its options: dropout, rank"):
        method_config(cfg.method)


def test_registry_builds_configs_from_names_and_back():
    """Options hold registry names, never class paths; options_of inverts method_config; setup names come from it."""
    options = {"name": "aot", "reparam": {"name": "fc", "rank": 32, "activation": "gelu", "dropout": 0.1}}
    cfg = method_config(options)
    assert type(cfg).name == "aot" and cfg.reparam.name == "fc" and cfg.reparam.rank == 32
    assert options_of(cfg) == options and setup_name(options) == "aot/fc" and setup_name({"name": "lora"}) == "lora"
    for name in METHODS:
        assert options_of(method_config({"name": name}))["name"] == name
    legacy = {
        "_target_": "aotpt.methods.aot.AotConfig",
        "reparam": {"_target_": "aotpt.methods.aot.reparam.KronConfig"},
    }
    assert setup_name(legacy) == "aot/kron" and method_config(legacy).reparam.name == "kron"  # first-format files
    with pytest.raises(ConfigError, match="unknown method='prefix'; accepted: adapter, aot"):
        method_config({"name": "prefix"})
    with pytest.raises(ConfigError, match="unknown reparam='lowrank'; accepted: dense, fc, kron"):
        method_config({"name": "aot", "reparam": {"name": "lowrank"}})


@pytest.mark.parametrize("cli", ["bench", "export", "predict", "submit", "report"])
def test_other_clis_help_lists_their_own_options_not_the_training_groups(cli):
    """`python -m aotpt.<cli> --help` renders hydra.help.template: Hydra's default lists every group of conf/."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(cli, return_hydra_config=True)
    GlobalHydra.instance().clear()
    template = cfg.hydra.help.template
    assert "$APP_CONFIG_GROUPS" not in template and "$CONFIG" in template
    assert f"python -m aotpt.{cli}" in cfg.hydra.help.header


@pytest.mark.slow
def test_bench_help_output():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "aotpt.bench", "--help"], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.startswith("python -m aotpt.bench [suite=train_step|serving")
    assert "suite: train_step" in out.stdout and "Configuration groups" not in out.stdout
    assert "debug: default, fdr" not in out.stdout  # Hydra's default lists the training groups: debug: ..., task: ...
