"""One frozen backbone, many AoT tasks, one forward per mixed batch (plain PyTorch).

    rows of tasks t_b, ids x_b -> bias rows t_b·|V| + x (a `sources` mode: device, host, onthefly)
        -> AotHooks add P_l to every layer's input -> encoder (once) -> head of t_b per row

Each task is an artifact written by `python -m aotpt.export`. Loading checks
that every artifact was compiled for this backbone and tokenizer vocabulary.
The backbone may run in fp16/bf16 (`dtype=`); the heads follow its dtype.

Task ids outside [0, T) and token ids outside [0, |V|) would silently read
another task's rows (or another table's memory), so they are refused where
requests are encoded (`predict`), and in `forward` when the inputs are still
on the host; a forward on an accelerator trusts its inputs, since a check
there would cost a device-to-host sync per batch (`check_ids` does it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import DataCollatorWithPadding, PreTrainedModel, PreTrainedTokenizerBase

from aotpt.backbones import load_backbone, load_tokenizer, tokenizer_fingerprint
from aotpt.errors import AotptError, choices
from aotpt.methods.aot.artifact import Artifact
from aotpt.methods.aot.hooks import AotHooks, is_hooked
from aotpt.model import ClassificationHead
from aotpt.serving.sources import build_source

log = logging.getLogger("aotpt")
NO_ARTIFACTS = "artifacts=[] is empty; pass one artifact per task (python -m aotpt.export)"
# dtype= of the backbone (and heads) at inference; the tables keep the dtype they were exported in
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class MultiTaskPredictor(nn.Module):
    """Predicts rows of different tasks in one backbone forward.

    backbone: a plain (un-hooked) encoder, already on its device;
    artifacts: one per task (task t = artifacts[t], names must be unique);
    fingerprint: `tokenizer_fingerprint` of the tokenizer that will feed it;
    mode: where the tables live, one of `table.MODES`.
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        artifacts: Sequence[Artifact],
        fingerprint: str,
        mode: str = "device",
        cache_rows: int = 8192,
        name: str = "",
    ) -> None:
        super().__init__()
        if not artifacts:
            raise AotptError(NO_ARTIFACTS)
        if is_hooked(backbone):
            raise AotptError(
                "this backbone already has AoT hooks (backbone.aot), e.g. a trained TaskModel's or another "
                "predictor's: give the predictor a plain backbone, or its biases would add up"
            )
        seen: dict[str, Path] = {}
        for artifact in artifacts:
            artifact.check_backbone(backbone, fingerprint, name or backbone.config.name_or_path)
            if artifact.task in seen:
                raise AotptError(f"two artifacts for task {artifact.task!r}: {seen[artifact.task]} and {artifact.path}")
            seen[artifact.task] = artifact.path
        self.mode = mode
        self.tasks = list(seen)
        self.label_names = [tuple(a.record.label_names) for a in artifacts]
        self.max_lengths = [a.record.max_length for a in artifacts]
        self.truncations = [a.record.truncation for a in artifacts]
        self.backbone = backbone.eval()
        backbone.add_module("aot", AotHooks(backbone, build_source(mode, list(artifacts), backbone, cache_rows)))
        self.heads = nn.ModuleList(self._head(a) for a in artifacts).to(backbone.device, backbone.dtype).eval()

    def _head(self, artifact: Artifact) -> ClassificationHead:
        head = ClassificationHead(artifact.record.hidden_size, artifact.record.num_labels)
        head.load_state_dict(artifact.tensors("head"))
        return head

    @classmethod
    def load(
        cls,
        paths: Sequence[str | Path],
        mode: str = "device",
        device: str = "cpu",
        pretrained: str | None = None,
        cache_rows: int = 8192,
        dtype: str = "fp32",
    ) -> tuple[MultiTaskPredictor, PreTrainedTokenizerBase]:
        """Load the backbone named in the first artifact (or `pretrained`) in `dtype`, its tokenizer, and every
        artifact."""
        if not paths:
            raise AotptError(NO_ARTIFACTS)
        if dtype not in DTYPES:
            raise choices("dtype", dtype, DTYPES)
        artifacts = [Artifact.load(p) for p in paths]
        first = artifacts[0].record
        name = pretrained or first.backbone
        random_init = first.random_init if pretrained is None else None
        if random_init and first.init_seed is None:
            log.warning(
                "%s names a randomly initialised backbone without its seed: its weights are drawn anew", paths[0]
            )
        tokenizer = load_tokenizer(name)
        backbone = load_backbone(name, random_init, first.init_seed).to(device, DTYPES[dtype])
        return cls(backbone, artifacts, tokenizer_fingerprint(tokenizer), mode, cache_rows, name), tokenizer

    def task_id(self, task: str) -> int:
        if task not in self.tasks:
            raise AotptError(f"unknown task={task!r}; loaded: {', '.join(self.tasks)}")
        return self.tasks.index(task)

    def check_ids(self, input_ids: torch.Tensor, task_ids: torch.Tensor) -> None:
        """Refuse task ids outside [0, T) and token ids outside [0, |V|) in one line (reads the values: host tensors
        cost nothing, device tensors a sync)."""
        for what, ids, end in (("task", task_ids, len(self.tasks)), ("token", input_ids, self.backbone.aot.vocab_size)):
            bad = ids[(ids < 0) | (ids >= end)]
            if len(bad):
                raise AotptError(f"{what} id {int(bad[0])} outside [0, {end}): it would read another task's rows")

    @torch.no_grad()
    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, task_ids: torch.Tensor, **inputs: torch.Tensor
    ) -> list[torch.Tensor]:
        """Logits of every row under its own task's head: (B, n) ids + (B,) task ids -> B tensors (num_labels_t,)."""
        if input_ids.device.type == "cpu" and task_ids.device.type == "cpu":
            self.check_ids(input_ids, task_ids)
        with self.backbone.aot.tasks(task_ids):
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **inputs).last_hidden_state
        logits: list[torch.Tensor | None] = [None] * len(task_ids)
        for t in task_ids.unique().tolist():
            rows = (task_ids == t).nonzero().flatten()  # (B_t,)
            for row, out in zip(rows.tolist(), self.heads[t](hidden[rows]), strict=True):
                logits[row] = out
        return logits

    def encode(
        self,
        tokenizer: PreTrainedTokenizerBase,
        texts: Sequence[tuple[str, str | None]],
        task_ids: torch.Tensor,
        max_length: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Tokenise (text_a, text_b) rows as their task was trained (truncation and max length from its run record,
        or `max_length` for all), padded to the longest; checked on the host (`check_ids`), then moved to the
        backbone's device."""
        features = [
            tokenizer(a, b, truncation=self.truncations[t], max_length=max_length or self.max_lengths[t])
            for (a, b), t in zip(texts, task_ids.tolist(), strict=True)
        ]
        batch = DataCollatorWithPadding(tokenizer)(features)
        self.check_ids(batch["input_ids"], task_ids)
        return {k: v.to(self.backbone.device) for k, v in batch.items()}

    def predict(
        self,
        tokenizer: PreTrainedTokenizerBase,
        requests: Sequence[tuple[str, str, str | None]],
        max_length: int | None = None,
    ) -> list[dict]:
        """(task, text_a, text_b) rows -> {task, label, scores} each, in one forward.

        Classification: label = the argmax's label name, scores = softmax
        probability per label name. Regression: label = scores["value"] = the output.
        """
        task_ids = torch.tensor([self.task_id(task) for task, _, _ in requests])
        batch = self.encode(tokenizer, [(a, b) for _, a, b in requests], task_ids, max_length)
        logits_per_row = self(task_ids=task_ids.to(self.backbone.device), **batch)
        out = []
        for t, logits in zip(task_ids.tolist(), logits_per_row, strict=True):
            names = self.label_names[t]
            if not names:
                value = logits.float().item()
                out.append({"task": self.tasks[t], "label": value, "scores": {"value": value}})
                continue
            probs = logits.float().softmax(-1).tolist()
            best = max(range(len(names)), key=probs.__getitem__)
            out.append({"task": self.tasks[t], "label": names[best], "scores": dict(zip(names, probs, strict=True))})
        return out

    def held_bytes(self) -> dict[str, int]:
        """Bytes held for the tables in this mode (device table, host table, reparam weights, row cache)."""
        return self.backbone.aot.source.held_bytes()
