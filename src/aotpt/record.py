"""The run record: what a trained run is, written once by train and read by export, predict, submit, serve and bench.

A finished `python -m aotpt.train` run folder holds

    model/trained.safetensors   the trained tensors only (the method's and the head's)
    model/trained.json          this record (`RunMeta`), format `FORMAT`

Every consumer reads the record through `RunMeta.from_dict` (or
`read_run`) instead of re-parsing the JSON its own way, so the backbone, its
random-init seed, the tokenizer fingerprint, the method by registry name, the
max length and truncation the run was trained with travel together. Records
of the first format (flat JSON, methods as Python class paths, no max length
or seed) still read: the missing fields take the values that format implied.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aotpt import __version__
from aotpt.errors import ConfigError
from aotpt.methods import MethodConfig, method_config, options_of, setup_name

FORMAT = "aotpt-run/2"
TRAINED = Path("model") / "trained.safetensors"  # relative to the run folder; the record is the .json beside it


@dataclass(frozen=True)
class RunMeta:
    """Everything needed to rebuild and use a trained run without its config files."""

    backbone: str  # model.pretrained: hub id or local folder
    model_type: str
    num_layers: int
    hidden_size: int
    vocab_size: int  # rows of the word embeddings (= rows of an AoT table)
    tokenizer_fingerprint: str  # aotpt.backbones.tokenizer_fingerprint of the tokenizer it was trained with
    task: str
    label_names: list[str]  # empty for regression
    metrics: list[str]
    method: dict[str, Any]  # registry options: {"name": "aot", "reparam": {"name": "kron", "rank": 16, ...}}
    max_length: int = 128  # inputs are truncated (`truncation`) to this many tokens, as in training
    truncation: str = "longest_first"
    random_init: dict[str, Any] | None = None  # config overrides of a randomly initialised backbone (tests, benches)
    init_seed: int | None = None  # the seed that backbone's weights were drawn with, so they can be drawn again
    choices: dict[str, Any] = field(default_factory=dict)  # Hydra group choices: model, task, method, debug, ...
    limits: dict[str, Any] = field(default_factory=dict)  # settings that shortened the run (limit_*, max_steps, ...)
    best_epoch: int | None = None
    best_score: float | None = None
    trainable: list[str] = field(default_factory=list)  # names of the tensors in trained.safetensors
    aotpt_version: str = __version__
    format: str = FORMAT

    @property
    def method_config(self) -> MethodConfig:
        return method_config(self.method)

    @property
    def setup(self) -> str:
        """The method setup by registry name: `aot/kron`, `lora`."""
        return setup_name(self.method)

    @property
    def num_labels(self) -> int:
        return len(self.label_names) or 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str | Path = "run record") -> RunMeta:
        """Read a record of this format or of the first one; `where` names the file in errors."""
        data = dict(data)
        names = {f.name for f in dataclasses.fields(cls)}
        if data.get("format") not in (FORMAT, None):
            raise ConfigError(f"{where}: format={data['format']!r}; this aotpt reads {FORMAT!r} and the first format")
        if data.get("format") is None:  # the first format: class paths instead of names, no record of its own
            data["method"] = options_of(method_config(data["method"]))
            data["format"] = FORMAT
        missing = sorted(
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.name not in data and f.default_factory is dataclasses.MISSING
        )
        if missing:
            raise ConfigError(f"{where}: not a run record (missing {', '.join(missing)})")
        return cls(**{k: v for k, v in data.items() if k in names})

    def with_(self, **changes: Any) -> RunMeta:
        return dataclasses.replace(self, **changes)


def record_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / TRAINED.with_suffix(".json")


def write_record(record: RunMeta, path: Path) -> None:
    from aotpt.atomic import write_json_atomic

    write_json_atomic(path, record.to_dict())


def read_run(run_dir: str | Path, option: str = "run_dir") -> tuple[Path, RunMeta]:
    """The trained-tensor file of a finished `aotpt.train` run folder and its record.

    `option` names the CLI option that gave the folder, for the error.
    """
    weights = Path(run_dir) / TRAINED
    meta = record_path(run_dir)
    if not weights.is_file() or not meta.is_file():
        raise ConfigError(f"{option}={run_dir} has no {TRAINED} (+ .json): not a finished python -m aotpt.train run")
    try:
        data = json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{meta}: truncated or corrupt run record ({err})") from None
    return weights, RunMeta.from_dict(data, meta)
