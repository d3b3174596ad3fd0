"""Run identity: the resolved settings that can change a run's results, and the folder named after them.

Two runs share a folder — and so resume each other's checkpoint or return
each other's stored result — exactly when their identities are equal.

    identity(cfg)  the resolved config minus what cannot change results
                   (`NEUTRAL`: paths, loggers, progress display, worker count,
                   checkpoint file names, ...), with
                   - the data as a fingerprint of the task's train/dev file
                     contents (paths differ between machines; contents do
                     not), or the hub repo and config;
                   - `trainer.accelerator: auto` and `devices: auto/-1`
                     resolved to the device kind and count of this machine, and
                     precision aliases unified (bf16 = bf16-mixed);
                   - a local `model.pretrained` folder as a fingerprint of its
                     config and file sizes instead of its path.
    run_id(ident)  8 hex digits of its SHA-256: the folder suffix.
    run_subdir     `<run_name>/seed<seed>-<run_id>`, e.g.
                   `rte-minilm-aot-kron/seed1-3f9a0c12`: readable, and free of
                   `=`, `,` and `+`, so it can be passed back to a CLI.
    group_id       the run id of the identity minus its seed: the runs that
                   are seeds of one setup (what reports average over).

Settings added later (`LATER_DEFAULTS`) count only away from the value
that reproduces the runs recorded before them.

Everything not listed in `NEUTRAL` counts, so a new setting (a new config
group, a callback a user adds) separates runs unless declared neutral here.
Defaults written explicitly (`reparam=kron`) or left out give the same
resolved config, hence the same folder.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from aotpt.data.readers import local_path, read_bytes
from aotpt.errors import DataError
from aotpt.tasks import get_task

# Dotted config keys that cannot change a run's results.
NEUTRAL = (
    "hydra",
    "paths",
    "logger",
    "run_name",
    "ckpt_path",
    "optimized_metric",
    "data_dir",  # replaced by `data` in the identity: a fingerprint of the files' contents
    "data.num_workers",  # the order and RNG of batches do not depend on it (see resume.py)
    "model.name",  # a label; `pretrained` and `random_init` say what the model is
    "model.architecture",  # read by benchmarks only (random weights of the same shape), not by training
    "trainer.default_root_dir",
    "trainer.log_every_n_steps",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.num_sanity_val_steps",
    "trainer.detect_anomaly",
    "trainer.profiler",
    "callbacks.progress_bar",
    "callbacks.learning_rate_monitor",
    "callbacks.resume_checkpoint",  # when last.ckpt is written: resume is exact from any of them
    "callbacks.model_checkpoint.dirpath",
    "callbacks.model_checkpoint.filename",
    "callbacks.model_checkpoint.auto_insert_metric_name",
    "callbacks.model_checkpoint.save_last",
    "callbacks.model_checkpoint.save_top_k",
    "callbacks.model_checkpoint.save_on_train_epoch_end",
    "callbacks.model_checkpoint.verbose",
)
# Settings added after runs were recorded, with the value that reproduces those runs: at that
# value a setting is left out of the identity, so a finished run keeps its folder and its
# stored result after an upgrade (a re-launched sweep skips it) instead of training again.
LATER_DEFAULTS = {
    "data.group_by_length": False,
}
PRECISION_ALIASES = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true", "half": "16-true"}
_FILE_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256: a sweep hashes each file once


def identity(cfg: DictConfig) -> dict:
    """The resolved settings of `cfg` that can change results (see the module docstring)."""
    tree = OmegaConf.to_container(cfg, resolve=False)
    for key in NEUTRAL:
        _drop(tree, key.split("."))
    resolved = OmegaConf.to_container(OmegaConf.create(tree), resolve=True)
    for key, value in LATER_DEFAULTS.items():
        if lookup(resolved, key.split("."), _ABSENT) == value:
            _drop(resolved, key.split("."))
    resolved["data"] = {**resolved.get("data", {}), "source": data_fingerprint(cfg.task.name, cfg.get("data_dir"))}
    model = resolved.get("model", {})
    if model.get("pretrained") and Path(model["pretrained"]).is_dir():
        model["pretrained"] = folder_fingerprint(Path(model["pretrained"]))
    trainer = resolved.get("trainer", {})
    if trainer:
        trainer["accelerator"] = device_kind(trainer.get("accelerator", "auto"))
        trainer["devices"] = device_count(trainer["accelerator"], trainer.get("devices", "auto"))
        precision = str(trainer.get("precision", "32-true"))
        trainer["precision"] = PRECISION_ALIASES.get(precision, precision)
    return json.loads(json.dumps(resolved, default=str))  # as results.json stores it, so the two compare equal


def lookup(tree: dict, keys: Sequence[str], missing=None):
    """The value at a dotted path of a nested dict (as `keys`), or `missing` where the path is absent."""
    node = tree
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return missing
        node = node[key]
    return node


_ABSENT = object()


def _drop(tree: dict, keys: list[str]) -> None:
    node = tree
    for key in keys[:-1]:
        node = node.get(key)
        if not isinstance(node, dict):
            return
    node.pop(keys[-1], None)


def run_id(ident: dict) -> str:
    """8 hex digits naming an identity (a folder suffix; results.json keeps the full identity to compare)."""
    text = json.dumps(ident, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def without_seed(ident: dict) -> dict:
    """The identity of a setup: a run's identity minus its seed (runs that differ only by seed share it)."""
    return {k: v for k, v in ident.items() if k != "seed"}


def group_id(ident: dict) -> str:
    """The id shared by the seeds of one setup (see `without_seed`)."""
    return run_id(without_seed(ident))


def run_subdir(cfg: DictConfig) -> str:
    """`<run_name>/seed<seed>-<run_id>`: the run's folder under logs/runs (or a sweep's folder)."""
    return f"{cfg.run_name}/seed{cfg.seed}-{run_id(identity(cfg))}"


def differences(stored: dict, now: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two identities."""
    keys = []
    for key in sorted(set(stored) | set(now)):
        a, b = stored.get(key, "<absent>"), now.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            keys += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def method_label(cfg: DictConfig) -> str:
    """`aot-kron`, `lora`, ...: the method (and AoT's reparam) for readable run names."""
    from aotpt.methods import setup_name

    return setup_name(OmegaConf.to_container(cfg.method, resolve=True)).replace("/", "-")


# ---- fingerprints ------------------------------------------------------------------------------------------------
def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes; checks the text is UTF-8 on first read (a one-line DataError otherwise)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_HASHES:
        _FILE_HASHES[key] = hashlib.sha256(read_bytes(path)).hexdigest()
    return _FILE_HASHES[key]


def data_fingerprint(task: str, data_dir: str | None) -> dict:
    """What the run trains and evaluates on: the hub dataset, or the SHA-256 of each local split file it reads."""
    spec = get_task(task)
    if data_dir is None:
        repo, config = spec.hub
        return {"hub": repo, "config": config}
    splits = [s for s in ("train", *spec.eval_splits) if s in spec.splits]
    files = {}
    for split in splits:
        path = local_path(spec, data_dir, split)
        if not path.is_file():
            raise DataError(
                f"{path}: file not found (task {spec.name}, split {split}); "
                f"data_dir must hold {spec.benchmark}/{spec.folder}/{path.name}"
            )
        files[split] = file_sha256(path)[:16]
    return {"sha256": files}


def folder_fingerprint(folder: Path) -> dict:
    """A local model folder: its config.json and tokenizer files by content, weight files by name and size."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        small = path.suffix in (".json", ".txt", ".model") and path.stat().st_size < 50_000_000
        digest.update(f"{rel}:{path.stat().st_size}:".encode())
        if small:
            digest.update(path.read_bytes())
    return {"folder": folder.name, "sha256": digest.hexdigest()[:16]}


# ---- devices -----------------------------------------------------------------------------------------------------
def device_kind(accelerator: str) -> str:
    """`auto` and `gpu` as the device kind they mean on this machine (cuda, mps or cpu)."""
    accelerator = str(accelerator)
    if accelerator in ("auto", "gpu"):
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu" if accelerator == "auto" else accelerator
    return accelerator


def device_count(kind: str, devices) -> int | str:
    """How many devices train: `auto`/-1 resolved, a list of ids by its length (ids do not change results)."""
    if isinstance(devices, list | tuple):
        return len(devices)
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    if str(devices) in ("auto", "-1"):
        return torch.cuda.device_count() if kind == "cuda" else 1
    try:
        return int(devices)
    except (TypeError, ValueError):
        return str(devices)


def register_resolvers() -> None:
    """`${aotpt.run_subdir:}` and `${aotpt.method:}` for conf/ (the run folder and run name), registered once."""
    if not OmegaConf.has_resolver("aotpt.run_subdir"):
        OmegaConf.register_new_resolver("aotpt.run_subdir", _run_subdir_resolver)
    if not OmegaConf.has_resolver("aotpt.method"):
        OmegaConf.register_new_resolver("aotpt.method", lambda _root_: method_label(_root_))


def _run_subdir_resolver(_root_: DictConfig) -> str:
    """Hydra asks for the run folder before it creates it: every config mistake fails here, leaving no folder."""
    from aotpt.checks import check_config  # checks imports the model code; only needed when a CLI runs

    check_config(_root_)
    return run_subdir(_root_)
