"""One task's data without Lightning: read -> tokenise (cached) -> dynamically padded batches.

Batch format (dict of tensors):
    input_ids, attention_mask   (B, n) long, n = longest sequence in the batch (<= max_length)
    token_type_ids              (B, n) long, only if the tokenizer makes them (BERT yes, RoBERTa no)
    labels                      (B,) long class ids, or float for regression; absent on test splits
                                (the files have no labels there, and a sentinel like -1 could leak into a loss)
    idx                         (B,) long, the row's unique id in its split (the official index for
                                one-row tasks), for gathering predictions across DDP ranks and for
                                submission files
    group                       (B,) long, grouped tasks only: the question/query/pair of the row
    answer_f1                   (B,) float, ReCoRD eval splits only: the candidate's token F1

Only `aotpt.tasks.predictions.MODEL_INPUTS` reach the model; the rest is
bookkeeping for metrics. Each split's `Example`s (with their `meta`: official
ids, answer texts) stay in `examples[split]` for submission files.

`TaskData` is what inference-side tools (submit) read with; training wraps
it in `aotpt.data.datamodule.TaskDataModule`, the LightningDataModule.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from aotpt.backbones import tokenizer_fingerprint
from aotpt.data.readers import read_hub, read_local
from aotpt.errors import ConfigError
from aotpt.tasks import Example, get_task


def limit_rows(examples: list[Example], limit: int | None) -> list[Example]:
    """The first `limit` rows, extended to the end of the last row's group so no question is cut."""
    if not limit or limit >= len(examples):
        return examples
    end = limit
    group = examples[end - 1].get("group")
    while group is not None and end < len(examples) and examples[end].get("group") == group:
        end += 1
    return examples[:end]


class TaskData:
    """One task's splits, tokenised, and loaders over them in file order.

    data_dir: folder with glue/ and superglue/ laid out as the official archives; None reads the hub.
    cache_dir: where tokenised splits are kept between runs; None tokenises in memory every time.
    limit_examples: debug cap on every split (its first N rows, completed to whole questions).
    """

    def __init__(
        self,
        task: str,
        tokenizer: PreTrainedTokenizerBase,
        data_dir: str | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        cache_dir: str | None = None,
        limit_examples: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("max_length", max_length),
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size),
        ):
            if value is not None and value < 1:
                raise ConfigError(f"data.{name}={value}; must be a positive integer")
        if limit_examples is not None and limit_examples < 1:
            raise ConfigError(f"data.limit_examples={limit_examples}; must be a positive integer or null")
        self.spec = get_task(task)
        self.tokenizer = tokenizer
        self.data_dir = data_dir
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.cache_dir = cache_dir
        self.limit_examples = limit_examples
        self.seed = seed  # the train order of epoch e is a function of (seed, e): see resume.ResumableSampler
        self.collator = DataCollatorWithPadding(tokenizer)
        self.datasets: dict[str, Dataset] = {}
        self.examples: dict[str, list[Example]] = {}

    def setup(self, stage: str | None = None) -> None:
        """Read and tokenise the splits the stage needs (all of them for stage None)."""
        splits = {
            "fit": ("train", *self.spec.eval_splits),
            "validate": self.spec.eval_splits,
            "test": self.spec.test_splits,
            "predict": self.spec.test_splits,
        }.get(stage, self.spec.splits)
        if "train" in splits and not self.spec.trainable:
            raise ConfigError(
                f"task={self.spec.name} has no training split: it is predicted by a model trained on "
                f"task={self.spec.model_task} (python -m aotpt.submit runs=[<that run folder>])"
            )
        for split in splits:
            self.dataset(split)

    def dataset(self, split: str) -> Dataset:
        """The tokenised `split`, built on first use."""
        if split not in self.datasets:
            self.examples[split] = self._read(split)
            self.datasets[split] = self._tokenise(split, self.examples[split])
        return self.datasets[split]

    def _read(self, split: str) -> list[Example]:
        if self.data_dir is None:
            examples = read_hub(self.spec, split)
        else:
            examples = read_local(self.spec, self.data_dir, split)
        return limit_rows(examples, self.limit_examples)

    def cache_file(self, split: str, examples: list[Example]) -> Path | None:
        """Where the tokenised split is cached, or None without cache_dir.

        The key hashes the examples themselves rather than file dates or hub
        revisions: any change of source data, text construction or
        limit_examples gets a new file, and hub and local copies of the same
        data share one.
        """
        if self.cache_dir is None:
            return None
        content = hashlib.sha256(json.dumps(examples, ensure_ascii=False).encode()).hexdigest()[:16]
        fingerprint = tokenizer_fingerprint(self.tokenizer)
        name = f"{self.spec.name}-{split}-tok{fingerprint}-len{self.max_length}-data{content}.arrow"
        return Path(self.cache_dir) / name

    def _tokenise(self, split: str, examples: list[Example]) -> Dataset:
        """Token ids per example; `datasets` writes the cache file atomically, so DDP ranks may race."""
        cache_file = self.cache_file(split, examples)
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
        labelled = split not in self.spec.test_splits

        def encode(batch: dict[str, list]) -> dict[str, list]:
            pair = batch["text_b"][0] is not None  # a task's examples are all pairs or all single
            out = self.tokenizer(
                batch["text_a"],
                batch["text_b"] if pair else None,
                truncation="longest_first",
                max_length=self.max_length,
            )
            if labelled:
                out["labels"] = batch["label"]
            return dict(out)

        rows = [{k: v for k, v in example.items() if k != "meta"} for example in examples]
        return Dataset.from_list(rows).map(
            encode,
            batched=True,
            remove_columns=["text_a", "text_b", "label"],
            cache_file_name=None if cache_file is None else str(cache_file),
            load_from_cache_file=cache_file is not None,
            # datasets caps fingerprints at 64 characters; the file name is the readable key
            new_fingerprint=None if cache_file is None else hashlib.sha256(cache_file.stem.encode()).hexdigest()[:32],
            desc=f"tokenising {self.spec.name}/{split}",
        )

    def loader(self, split: str) -> DataLoader:
        """Batches of any of the task's splits, in file order (eval batch size)."""
        return DataLoader(
            self.dataset(split),
            batch_size=self.eval_batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=self.collator,
        )
