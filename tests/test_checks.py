"""Every user mistake is one line, before any model is loaded, any W&B run created or any run folder made."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from safetensors.torch import save_file

from aotpt import train
from aotpt.checks import check_config
from aotpt.cli import CONF_DIR, user_error
from aotpt.errors import AotptError, ConfigError, DataError
from aotpt.model import load_trained
from conftest import FIXTURES, REPO


@pytest.fixture
def nothing_loads(monkeypatch):
    """Fail the test if a model or a logger is built: every check must come before."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a model or logger was built before the mistake was reported")

    monkeypatch.setattr("aotpt.module.build_model", forbidden)
    monkeypatch.setattr("aotpt.train.build_loggers", forbidden)


def one_line(exc_type, fn, *args) -> str:
    with pytest.raises(exc_type) as err:
        fn(*args)
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optim.lr=-1", "optim.lr=-1 must be a number > 0"),
        ("optim.lr=abc", "optim.lr='abc' must be a number > 0"),
        ("optim.lr=0", "optim.lr=0 must be a number > 0"),
        ("seed=abc", "seed='abc' must be an integer >= 0"),
        ("seed=1.5", "seed=1.5 must be an integer >= 0"),
        ("optim.warmup_ratio=2", "optim.warmup_ratio=2 must be a number >= 0 and <= 1"),
        ("data.batch_size=0", "data.batch_size=0 must be an integer >= 1"),
        ("data.num_workers=-1", "data.num_workers=-1 must be an integer >= 0"),
        ("data.group_by_length=no", "data.group_by_length='no' must be true or false"),
        ("data.group_by_length=null", "data.group_by_length=None must be true or false"),
        ("+optim.lrr=1e-3", "unknown key optim.lrr (did you mean optim.lr?); accepted: head_dropout, lr,"),
        ("+data.max_len=64", "unknown key data.max_len (did you mean data.max_length?)"),
        ("+trainer.bogus=1", "unknown key trainer.bogus; accepted: accelerator, accumulate_grad_batches,"),
        ("+trainer.max_step=3", "unknown key trainer.max_step (did you mean trainer.max_steps?)"),
        ("+trainer.callbacks=[]", "trainer.callbacks cannot be set: it comes from the callbacks group"),
        ("logger=csv +logger.csv.bogus=1", "unknown key logger.csv.bogus"),
        ("+logger.csv.save_dir=x", "logger.csv must be a config with a _target_ class"),
        ("+callbacks.model_checkpoint.bogus=1", "unknown key callbacks.model_checkpoint.bogus"),
        ("+foo=1", "unknown key foo; accepted:"),
        ("task=ax", "task=ax has no training split"),
        ("data.max_length=600", "data.max_length=600 exceeds the 512 positions of"),
    ],
)
def test_config_mistakes_are_one_line_before_anything_loads(train_cfg, nothing_loads, override, expected):
    cfg = train_cfg(*override.split())
    assert expected in one_line(ConfigError, train.run, cfg)
    assert not Path(cfg.paths.output_dir).exists()


def test_gpu_on_a_machine_without_one_fails_before_anything_loads(train_cfg, nothing_loads, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr("torch.backends.mps.is_available", lambda: False)
    message = one_line(ConfigError, train.run, train_cfg("trainer=gpu"))
    assert message.startswith("trainer.accelerator=gpu but this machine has no GPU")


@pytest.mark.parametrize(
    "override",
    ["+trainer.max_steps=3", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
     "+trainer.limit_test_batches=1", "+trainer.val_check_interval=0.5", "+trainer.accumulate_grad_batches=2",
     "logger=default +logger.wandb.entity=team +logger.wandb.notes=x", "optim.lr=5", "data.max_length=512"],
)  # fmt: skip
def test_documented_additions_are_accepted(train_cfg, override):
    check_config(train_cfg(*override.split()))


def test_position_limits_of_each_family_and_the_soft_prompt(train_cfg):
    check_config(train_cfg("model=tiny_roberta", "data.max_length=519"))  # 520 positions - padding_idx 0 - 1
    message = one_line(ConfigError, check_config, train_cfg("model=tiny_roberta", "data.max_length=520"))
    assert "exceeds the 519 positions" in message and "data.max_length<=519" in message
    check_config(train_cfg("model=tiny_deberta", "data.max_length=2048"))  # relative positions only: no limit
    message = one_line(ConfigError, check_config, train_cfg("method=ptuning_v1", "data.max_length=500"))
    assert "data.max_length=500 + method.length=20 exceeds the 512 positions" in message
    assert "data.max_length<=492" in message


def test_non_utf8_data_file_fails_before_the_model(train_cfg, nothing_loads, tmp_path):
    data = tmp_path / "data"
    (data / "glue" / "RTE").mkdir(parents=True)
    for name in ("train.tsv", "dev.tsv"):
        text = (FIXTURES / "glue" / "RTE" / name).read_text().replace("a", "\u00e0")
        (data / "glue" / "RTE" / name).write_bytes(text.encode("cp1252"))
    message = one_line(DataError, train.run, train_cfg("task=rte", f"data_dir={data}"))
    assert str(data / "glue" / "RTE" / "train.tsv") in message and "not UTF-8" in message and "looks like" in message


def test_truncated_checkpoint_is_one_line_naming_it_before_the_model(train_cfg, nothing_loads):
    cfg = train_cfg("task=rte")
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, last)
    last.write_bytes(last.read_bytes()[:500])  # a kill while copying, a full disk
    message = one_line(DataError, train.run, cfg)
    assert f"{last}: truncated or corrupt checkpoint" in message and "ckpt_path=" in message


def test_truncated_trained_weights_are_one_line_naming_the_file(tmp_path):
    path = tmp_path / "trained.safetensors"
    save_file({"w": torch.zeros(1000)}, str(path))
    path.write_bytes(path.read_bytes()[:200])
    message = one_line(AotptError, load_trained, None, path)
    assert str(path) in message and "corrupt" in message


ENV = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["seed=abc"], "error: seed='abc' must be an integer >= 0"),
        pytest.param(["optim.lrr=1e-3"], "error: unknown key optim.lrr (did you", marks=pytest.mark.slow),
        pytest.param(["optim.lr=[1,"], "error: cannot parse 'optim.lr=[1,': ", marks=pytest.mark.slow),
        pytest.param(["+optim.lrr=1e-3"], "error: unknown key optim.lrr (did you", marks=pytest.mark.slow),
    ],
    ids=["bad-value", "hydra-unknown-key", "hydra-parse-error", "unknown-added-key"],
)
def test_cli_mistakes_are_one_line_exit_2_and_leave_no_folder(tmp_path, args, expected):
    cmd = [sys.executable, "-m", "aotpt.train", "model=tiny_bert", f"data_dir={FIXTURES}", f"paths.root_dir={tmp_path}"]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith(expected), proc.stderr
    assert not (tmp_path / "logs").exists(), list(tmp_path.rglob("*"))


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optim.lrr=1e-3", "unknown key optim.lrr (did you mean optim.lr?); accepted: head_dropout, lr,"),
        ("trainer.max_steps=3", "trainer.max_steps is not in the config: add it with +trainer.max_steps=<value>"),
        ("optim.lr=[1,", "cannot parse 'optim.lr=[1,': "),
        ("debug=nope", "In 'train': Could not find 'debug/nope'; Available options in 'debug':"),  # Hydra's words
    ],
)
def test_hydra_command_line_errors_become_one_line(override, expected):
    """What `cli.entry` prints for Hydra's exceptions (the CLI test above checks that it prints them)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"), pytest.raises(Exception) as err:
        compose("train", overrides=override.split())
    GlobalHydra.instance().clear()
    message = user_error(err.value)
    assert message and "\n" not in message and message.startswith(expected)
