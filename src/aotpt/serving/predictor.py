"""One frozen backbone, many AoT tasks, one forward per mixed batch (plain PyTorch).

    rows of tasks in slots s_b, ids x_b -> bias rows s_b·|V| + x (a `sources` mode: device, host, mmap, onthefly)
        -> AotHooks add P_l[x] to every layer's input -> encoder (once) -> head of s_b per row (`HeadBank`)

Each task is an artifact written by `python -m aotpt.export`, served under a
name (by default its task, e.g. "rte"; a server may serve two RTE models as
"rte-a" and "rte-b"). Tasks sit in slots and can be added and removed between
forwards (`add`, `remove`; a server splits `add` into `prepare`, the slow
part, and `install`). Loading checks that every artifact was compiled for
this backbone and tokenizer vocabulary. The backbone may run in fp16/bf16
(`dtype=`); the heads follow its dtype. `mode="bare"` attaches no bias at
all: the frozen backbone with the tasks' heads, the baseline of benchmarks.

Task ids outside the loaded slots and token ids outside [0, |V|) would
silently read another task's rows (or another table's memory), so they are
refused where requests are encoded (`predict`), and in `forward` when the
inputs are still on the host; a forward on an accelerator trusts its inputs,
since a check there would cost a device-to-host sync per batch (`check_ids` does it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import DataCollatorWithPadding, PreTrainedModel, PreTrainedTokenizerBase

from aotpt.backbones import load_backbone, load_tokenizer, tokenizer_fingerprint
from aotpt.errors import AotptError, choices
from aotpt.methods.aot.artifact import Artifact
from aotpt.methods.aot.hooks import AotHooks, is_hooked
from aotpt.serving.heads import HeadBank
from aotpt.serving.sources import HELD, MODES, empty_source

log = logging.getLogger("aotpt")
NO_ARTIFACTS = "artifacts=[] is empty; pass one artifact per task (python -m aotpt.export)"
# dtype= of the backbone (and heads) at inference; the tables keep the dtype they were exported in
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
BARE = "bare"  # no bias: the frozen backbone and the heads (a benchmark's baseline)


@dataclass(frozen=True)
class Served:
    """A task in a slot: its name, what it is (the `TaskSpec` name it was trained on) and how it reads text."""

    name: str
    kind: str
    label_names: tuple[str, ...]
    max_length: int
    truncation: str
    path: Path


@dataclass
class Prepared:
    """A task loaded and checked, ready to `install` between forwards."""

    served: Served
    rows: Any  # what the source's `load` built
    head: dict[str, torch.Tensor]


class MultiTaskPredictor(nn.Module):
    """Predicts rows of different tasks in one backbone forward.

    backbone: a plain (un-hooked) encoder, already on its device;
    artifacts: the tasks to start with (names: `names`, or each artifact's task; unique);
    fingerprint: `tokenizer_fingerprint` of the tokenizer that will feed it;
    mode: where the tables live, one of `sources.MODES` (or "bare");
    cache_bytes: the hot-row cache's budget (`sources.empty_source`).
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        artifacts: Sequence[Artifact],
        fingerprint: str,
        mode: str = "device",
        cache_bytes: int | None = None,
        name: str = "",
        names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if not artifacts:
            raise AotptError(NO_ARTIFACTS)
        if mode not in (*MODES, BARE):
            raise choices("mode", mode, (*MODES, BARE))
        if is_hooked(backbone):
            raise AotptError(
                "this backbone already has AoT hooks (backbone.aot), e.g. a trained TaskModel's or another "
                "predictor's: give the predictor a plain backbone, or its biases would add up"
            )
        names = list(names) if names is not None else [a.task for a in artifacts]
        if len(names) != len(artifacts):
            raise AotptError(f"{len(names)} names for {len(artifacts)} artifacts")
        self.mode, self.fingerprint = mode, fingerprint
        self.backbone_name = name or backbone.config.name_or_path
        self.backbone = backbone.eval()
        self.slots: list[Served | None] = []
        self.heads = HeadBank(backbone.config.hidden_size, backbone.device, backbone.dtype)
        self.source = None
        artifacts[0].check_backbone(backbone, fingerprint, self.backbone_name)  # before building anything on it
        if mode != BARE:
            self.source = empty_source(mode, artifacts[0], backbone, cache_bytes)
            backbone.add_module("aot", AotHooks(backbone, self.source))
            self.source.reserve(len(artifacts))  # device and host tables: one allocation for all of them
        self.heads.reserve(len(artifacts))
        for artifact, task in zip(artifacts, names, strict=True):
            self.add(artifact, task)

    @classmethod
    def load(
        cls,
        paths: Sequence[str | Path],
        mode: str = "device",
        device: str = "cpu",
        pretrained: str | None = None,
        cache_bytes: int | None = None,
        dtype: str = "fp32",
        names: Sequence[str] | None = None,
    ) -> tuple[MultiTaskPredictor, PreTrainedTokenizerBase]:
        """Load the backbone named in the first artifact (or `pretrained`) in `dtype`, its tokenizer, and every
        artifact."""
        if not paths:
            raise AotptError(NO_ARTIFACTS)
        if dtype not in DTYPES:
            raise choices("dtype", dtype, DTYPES)
        artifacts = [Artifact.load(p) for p in paths]
        tokenizer, backbone, name = load_for(artifacts[0], pretrained, device, dtype)
        return cls(backbone, artifacts, tokenizer_fingerprint(tokenizer), mode, cache_bytes, name, names), tokenizer

    # -- the served tasks -------------------------------------------------------------------------------------

    @property
    def tasks(self) -> list[str]:
        """Names of the loaded tasks, in slot order."""
        return [s.name for s in self.slots if s is not None]

    def served(self, task: str) -> Served:
        return self.slots[self.task_id(task)]

    def task_id(self, task: str) -> int:
        for slot, served in enumerate(self.slots):
            if served is not None and served.name == task:
                return slot
        raise AotptError(f"unknown task={task!r}; loaded: {', '.join(self.tasks)}")

    def prepare(self, artifact: Artifact, name: str | None = None) -> Prepared:
        """Check `artifact` against this backbone and load what serving it needs (the slow part of `add`; it
        changes nothing here, so it may run beside forwards, e.g. in another thread)."""
        artifact.check_backbone(self.backbone, self.fingerprint, self.backbone_name)
        record = artifact.record
        served = Served(
            name or artifact.task,
            artifact.task,
            tuple(record.label_names),
            record.max_length,
            record.truncation,
            artifact.path,
        )
        rows = self.source.load(artifact) if self.source is not None else None
        return Prepared(served, rows, artifact.tensors("head"))

    def install(self, prepared: Prepared) -> int:
        """Put a prepared task in the first free slot (between forwards); returns the slot."""
        name = prepared.served.name
        if name in self.tasks:
            raise AotptError(f"two artifacts for task {name!r}: {self.served(name).path} and {prepared.served.path}")
        slot = next((s for s, served in enumerate(self.slots) if served is None), len(self.slots))
        if self.source is not None:
            self.source.put(slot, prepared.rows)
        self.heads.put(slot, prepared.head)
        self.slots += [None] * (slot + 1 - len(self.slots))
        self.slots[slot] = prepared.served
        return slot

    def add(self, artifact: Artifact, name: str | None = None) -> int:
        """Serve `artifact` as task `name` (default: its task); returns its slot."""
        task = name or artifact.task
        if task in self.tasks:
            raise AotptError(f"two artifacts for task {task!r}: {self.served(task).path} and {artifact.path}")
        return self.install(self.prepare(artifact, task))

    def remove(self, task: str) -> None:
        """Stop serving `task` (between forwards): its slot is free, its rows and head are dropped."""
        self.free(self.task_id(task))

    def free(self, slot: int) -> None:
        if self.source is not None:
            self.source.drop(slot)
        self.heads.drop(slot)
        self.slots[slot] = None

    # -- predicting -------------------------------------------------------------------------------------------

    def check_ids(self, input_ids: torch.Tensor, task_ids: torch.Tensor) -> None:
        """Refuse task ids of no loaded task and token ids outside [0, |V|) in one line (reads the values: host
        tensors cost nothing, device tensors a sync)."""
        vocab = self.backbone.get_input_embeddings().num_embeddings
        for what, ids, end in (("task", task_ids, len(self.slots)), ("token", input_ids, vocab)):
            bad = ids[(ids < 0) | (ids >= end)]
            if len(bad):
                raise AotptError(f"{what} id {int(bad[0])} outside [0, {end}): it would read another task's rows")
        free = [t for t in task_ids.tolist() if self.slots[t] is None]
        if free:
            raise AotptError(f"task id {free[0]} is a free slot (its task was removed)")

    @torch.no_grad()
    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, task_ids: torch.Tensor, **inputs: torch.Tensor
    ) -> list[torch.Tensor]:
        """Logits of every row under its own task's head: (B, n) ids + (B,) task ids -> B tensors (num_labels_t,)."""
        if input_ids.device.type == "cpu" and task_ids.device.type == "cpu":
            self.check_ids(input_ids, task_ids)
        if self.source is None:
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **inputs).last_hidden_state
        else:
            with self.backbone.aot.tasks(task_ids):
                hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **inputs).last_hidden_state
        logits = self.heads(hidden[:, 0], task_ids)  # (B, C)
        widths = [self.heads.widths[t] for t in task_ids.tolist()]
        return [row[:width] for row, width in zip(logits, widths, strict=True)]

    def features(
        self, tokenizer: PreTrainedTokenizerBase, text_a: str, text_b: str | None, task: int, max_length: int | None
    ) -> dict[str, list[int]]:
        """One row tokenised as its task was trained (truncation and max length from its run record, or
        `max_length` for all)."""
        served = self.slots[task]
        return tokenizer(text_a, text_b, truncation=served.truncation, max_length=max_length or served.max_length)

    def collate(
        self, tokenizer: PreTrainedTokenizerBase, features: Sequence[dict], task_ids: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Tokenised rows padded to the longest, checked on the host (`check_ids`), moved to the backbone's device."""
        batch = DataCollatorWithPadding(tokenizer)(list(features))
        self.check_ids(batch["input_ids"], task_ids)
        return {k: v.to(self.backbone.device) for k, v in batch.items()}

    def encode(
        self,
        tokenizer: PreTrainedTokenizerBase,
        texts: Sequence[tuple[str, str | None]],
        task_ids: torch.Tensor,
        max_length: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Tokenise (text_a, text_b) rows as their task was trained, padded to the longest (`collate`)."""
        features = [
            self.features(tokenizer, a, b, t, max_length) for (a, b), t in zip(texts, task_ids.tolist(), strict=True)
        ]
        return self.collate(tokenizer, features, task_ids)

    def outputs(self, task_ids: torch.Tensor, logits_per_row: Sequence[torch.Tensor]) -> list[dict]:
        """{task, label, scores} per row. Classification: label = the argmax's label name, scores = softmax
        probability per label name. Regression: label = scores["value"] = the output."""
        out = []
        for t, logits in zip(task_ids.tolist(), logits_per_row, strict=True):
            served = self.slots[t]
            names = served.label_names
            if not names:
                value = logits.float().item()
                out.append({"task": served.name, "label": value, "scores": {"value": value}})
                continue
            probs = logits.float().softmax(-1).tolist()
            best = max(range(len(names)), key=probs.__getitem__)
            out.append({"task": served.name, "label": names[best], "scores": dict(zip(names, probs, strict=True))})
        return out

    def predict(
        self,
        tokenizer: PreTrainedTokenizerBase,
        requests: Sequence[tuple[str, str, str | None]],
        max_length: int | None = None,
    ) -> list[dict]:
        """(task, text_a, text_b) rows -> {task, label, scores} each (`outputs`), in one forward."""
        task_ids = torch.tensor([self.task_id(task) for task, _, _ in requests])
        batch = self.encode(tokenizer, [(a, b) for _, a, b in requests], task_ids, max_length)
        return self.outputs(task_ids, self(task_ids=task_ids.to(self.backbone.device), **batch))

    def held_bytes(self) -> dict[str, int]:
        """Bytes held for the tasks, by kind: device table, host table, mapped files, reparam weights, row cache,
        heads."""
        held = self.source.held_bytes() if self.source is not None else dict.fromkeys(HELD, 0)
        return {**held, "heads": self.heads.nbytes()}


def load_for(
    artifact: Artifact, pretrained: str | None, device: str, dtype: str
) -> tuple[PreTrainedTokenizerBase, PreTrainedModel, str]:
    """The tokenizer and the backbone (on `device`, in `dtype`) that `artifact` was compiled for, or `pretrained`."""
    record = artifact.record
    name = pretrained or record.backbone
    random_init = record.random_init if pretrained is None else None
    if random_init and record.init_seed is None:
        log.warning("%s names a random backbone without its seed: its weights are drawn anew", artifact.path)
    tokenizer = load_tokenizer(name)
    backbone = load_backbone(name, random_init, record.init_seed).to(device, DTYPES[dtype])
    return tokenizer, backbone, name
