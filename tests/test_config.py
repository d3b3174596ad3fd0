"""Every group combination composes, and bad options fail in one line."""

from __future__ import annotations

import itertools

import pytest

from aotpt.cli import check_overrides, group_options
from aotpt.errors import AotptError, ConfigError
from aotpt.methods import METHODS
from aotpt.module import instantiate_method
from aotpt.tasks import TASKS
from conftest import compose_train


def test_every_registered_method_and_task_has_a_config_file():
    assert set(group_options("method")) == set(METHODS)
    assert set(group_options("task")) == set(TASKS)


def _combinations():
    for model, task, method in itertools.product(group_options("model"), group_options("task"), METHODS):
        reparams = group_options("reparam") if method == "aot" else [None]
        for reparam in reparams:
            yield model, task, method, reparam


def test_every_model_task_method_reparam_composes(tmp_path):
    count = 0
    for model, task, method, reparam in _combinations():
        overrides = [f"model={model}", f"task={task}", f"method={method}"]
        overrides += [f"reparam={reparam}"] if reparam else []
        cfg = compose_train(overrides, tmp_path)
        method_cfg = instantiate_method(cfg.method)
        assert type(method_cfg).name == method
        assert cfg.task.name == task and cfg.model.name == model
        if reparam:
            assert type(method_cfg.reparam).__name__.lower().startswith(reparam)
        count += 1
    assert count >= len(group_options("model")) * len(TASKS) * len(METHODS)


@pytest.mark.parametrize("experiment", group_options("experiment"))
def test_every_experiment_composes(tmp_path, experiment):
    cfg = compose_train([f"experiment={experiment}"], tmp_path)
    instantiate_method(cfg.method)


def test_reparam_with_another_method_is_refused(tmp_path):
    cfg = compose_train(["method=finetune", "reparam=fc"], tmp_path)
    with pytest.raises(ConfigError, match="reparam") as err:
        instantiate_method(cfg.method)
    assert "\n" not in str(err.value)


def test_non_aot_method_has_no_reparam(tmp_path):
    cfg = compose_train(["method=finetune"], tmp_path)
    assert "reparam" not in cfg.method


def test_bad_reparam_value_is_one_line(tmp_path):
    cfg = compose_train(["reparam=kron", "method.reparam.rank=0"], tmp_path)
    with pytest.raises(ConfigError, match=r"reparam.rank=0 must be >= 1"):
        instantiate_method(cfg.method)


@pytest.mark.parametrize("arg", ["task=foo", "model=bert_huge", "method=prefix", "reparam=lowrank"])
def test_unknown_group_choice_lists_accepted_values(arg):
    key = arg.split("=")[0]
    with pytest.raises(AotptError, match=f"unknown {key}=") as err:
        check_overrides([arg])
    assert all(option in str(err.value) for option in group_options(key))


def test_sweeps_and_overrides_pass_the_check():
    check_overrides(["task=rte,mrpc", "optim.lr=1e-3", "reparam=null", "+trainer.foo=1", "seed=1"])
