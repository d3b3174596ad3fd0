"""Run identity: runs that can differ in results never share a folder; equivalent spellings of one run do.

The folder is what Hydra computes from conf/hydra/default.yaml for a
command line (composed in-process, the run dir resolved as Hydra would).
"""

from __future__ import annotations

import functools
import re
import shutil

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from aotpt import identity as ident_mod
from aotpt import train  # noqa: F401 - registers the run-folder resolvers
from aotpt.cli import CONF_DIR
from conftest import FIXTURES

BASE = ["model=tiny_bert", "task=rte", "logger=none"]


def run_dir(*overrides: str, data_dir=FIXTURES) -> str:
    """The folder `python -m aotpt.train <overrides>` would use (relative to logs/)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*BASE, f"data_dir={data_dir}", *overrides], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    folder = OmegaConf.select(cfg, "hydra.run.dir")
    GlobalHydra.instance().clear()
    return folder.split("/logs/", 1)[1]


@functools.cache
def default_dir() -> str:
    """The folder of the default command (computed once: most tests compare against it)."""
    return run_dir()


def test_folder_is_readable_prefix_plus_identity_hash():
    folder = run_dir("seed=3", "reparam=fc")
    assert re.fullmatch(r"runs/rte-tiny_bert-aot-fc/seed3-[0-9a-f]{8}", folder), folder
    assert not set("=,+") & set(folder)
    assert run_dir("method=lora").startswith("runs/rte-tiny_bert-lora/seed42-")


def test_explicit_defaults_and_spellings_give_the_same_folder():
    default = default_dir()
    assert run_dir("reparam=kron") == default
    assert run_dir("method=aot", "reparam=kron", "method.reparam.rank=16") == default
    assert run_dir("optim.lr=0.001") == run_dir("optim.lr=1e-3") == default
    assert run_dir("trainer.precision=32") == default  # Lightning's alias of 32-true
    assert run_dir("data.num_workers=0") == default  # resume and order do not depend on it


def test_data_enters_by_content_not_path(tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(FIXTURES, copy)
    assert run_dir(data_dir=copy) == default_dir()  # another machine's path, same files
    train_file = copy / "glue" / "RTE" / "train.tsv"
    train_file.write_text(train_file.read_text().replace("entailment\n", "not_entailment\n", 1))
    assert run_dir(data_dir=copy) != default_dir()  # same path name, other data


@pytest.mark.parametrize(
    "override",
    ["trainer.precision=bf16-mixed", "trainer.devices=2", "data.max_length=64", "seed=1",
     "optim.lr=5e-3", "method.reparam.rank=8", "model.random_init.hidden_size=64", "data.eval_batch_size=8",
     "trainer.max_epochs=3", "+trainer.max_steps=5", "callbacks.model_checkpoint.monitor=val/loss",
     "data.group_by_length=true"],
)  # fmt: skip
def test_every_setting_that_can_change_results_changes_the_folder(override):
    assert run_dir(override) != default_dir()


def test_a_setting_added_later_keeps_earlier_runs_folders_at_its_old_behaviour():
    """Runs recorded before `data.group_by_length` existed had no such key: they keep their folder (a re-launched
    sweep finds them finished) when the setting is at the value that reproduces them (ident_mod.LATER_DEFAULTS)."""
    assert run_dir("~data.group_by_length") == run_dir("data.group_by_length=false") == default_dir()
    assert run_dir("data.group_by_length=true") != default_dir()
    assert set(ident_mod.LATER_DEFAULTS) == {"data.group_by_length"}


def test_a_gpu_run_and_a_cpu_run_never_share_a_folder(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    assert run_dir("trainer=gpu") != run_dir("trainer=cpu") != run_dir()  # auto: cuda on this (faked) machine
    assert run_dir("trainer=gpu", "trainer.precision=32-true") == run_dir("trainer.precision=32-true")


@pytest.mark.parametrize(
    "override",
    ["logger=csv", "trainer.log_every_n_steps=1", "callbacks.resume_checkpoint.every_minutes=5",
     "callbacks.progress_bar.refresh_rate=1", "trainer.num_sanity_val_steps=0", "run_name=mine"],
)  # fmt: skip
def test_display_and_bookkeeping_settings_do_not_change_the_identity(override):
    assert run_dir(override).rsplit("-", 1)[1] == default_dir().rsplit("-", 1)[1]


def test_accelerator_auto_is_the_device_kind_of_this_machine(train_cfg, monkeypatch):
    cfg = train_cfg("trainer.accelerator=auto")
    assert ident_mod.identity(cfg)["trainer"]["accelerator"] == "cpu"  # the test machines have no GPU
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 4)
    gpu = ident_mod.identity(train_cfg("trainer.accelerator=auto", "trainer.devices=-1"))["trainer"]
    assert (gpu["accelerator"], gpu["devices"]) == ("cuda", 4)


def test_seeds_of_one_setup_share_a_group(train_cfg):
    one, two = ident_mod.identity(train_cfg("seed=1")), ident_mod.identity(train_cfg("seed=2"))
    assert ident_mod.run_id(one) != ident_mod.run_id(two)
    assert ident_mod.group_id(one) == ident_mod.group_id(two)
    assert ident_mod.without_seed(one) == ident_mod.without_seed(two)
    other = ident_mod.identity(train_cfg("seed=1", "optim.lr=5e-3"))
    assert ident_mod.group_id(other) != ident_mod.group_id(one)
    assert ident_mod.differences(one, other) == ["optim.lr"]


def test_debug_runs_keep_their_own_prefix():
    assert run_dir("debug=fdr").startswith("runs/debug-rte-tiny_bert-aot-kron/seed42-")


def test_sweep_jobs_use_the_same_scheme(tmp_path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*BASE, f"data_dir={FIXTURES}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    subdir = OmegaConf.select(cfg, "hydra.sweep.subdir")
    GlobalHydra.instance().clear()
    assert "runs/" + subdir == default_dir()
