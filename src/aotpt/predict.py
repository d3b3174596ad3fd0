"""Predict a JSONL file of mixed-task requests with one backbone and N compiled tasks.

    python -m aotpt.predict artifacts='[rte.safetensors,sst2.safetensors]' input=requests.jsonl [mode=host] [dtype=bf16]

Each input line is a JSON object: "task" plus the task's hub field names, e.g.
{"task": "rte", "sentence1": "...", "sentence2": "..."} or {"task": "sst2",
"sentence": "..."}, optionally an "id". The task's own `TaskSpec.build` turns
it into model text, exactly as in training. The whole file is checked before
the model runs; a bad line is a one-line error naming path:line. Each output
line: {"line", "id" (if given), "task", "label", "scores"}, in input order.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig
from tqdm import tqdm

from aotpt.atomic import atomic_open
from aotpt.cli import CONF_DIR, entry, one_line_errors
from aotpt.errors import ConfigError, DataError
from aotpt.serving import MultiTaskPredictor
from aotpt.tasks import get_task


def read_requests(path: Path, tasks: list[str]) -> list[tuple[int, dict, str, str | None]]:
    """(line number, request, text_a, text_b) per non-blank line; any bad line is a DataError naming path:line."""
    if not path.is_file():
        raise ConfigError(f"input={path} does not exist")
    requests = []
    with path.open(encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict) or row.get("task") not in tasks:
                task = row.get("task") if isinstance(row, dict) else None
                raise DataError(f"{where}: task={task!r} is not loaded; accepted: {', '.join(tasks)}")
            try:
                example = get_task(row["task"]).build({**row, "idx": line_no, "label": None})
            except KeyError as err:
                raise DataError(f"{where}: task {row['task']} needs field {err.args[0]!r}") from None
            texts = (example["text_a"], example["text_b"])
            if not all(isinstance(t, str) for t in texts if t is not None):
                raise DataError(f"{where}: the text fields of task {row['task']} must be strings")
            requests.append((line_no, row, *texts))
    return requests


def predict_file(
    predictor: MultiTaskPredictor,
    tokenizer,
    input_path: Path,
    output_path: Path,
    batch_size: int = 32,
    max_length: int | None = None,
) -> int:
    """Predict every request of `input_path` into `output_path` (written atomically); returns the count."""
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be a positive integer")
    requests = read_requests(input_path, predictor.tasks)
    with atomic_open(output_path) as f, tqdm(total=len(requests), desc="predicting", unit="req", disable=None) as bar:
        for start in range(0, len(requests), batch_size):
            chunk = requests[start : start + batch_size]
            preds = predictor.predict(tokenizer, [(row["task"], a, b) for _, row, a, b in chunk], max_length)
            for (line_no, row, _, _), pred in zip(chunk, preds, strict=True):
                ident = {"id": row["id"]} if "id" in row else {}
                f.write(json.dumps({"line": line_no, **ident, **pred}, ensure_ascii=False) + "\n")
            bar.update(len(chunk))
    return len(requests)


def run(cfg: DictConfig) -> dict:
    if not cfg.input:
        raise ConfigError("input is required: python -m aotpt.predict artifacts='[a.safetensors,...]' input=req.jsonl")
    predictor, tokenizer = MultiTaskPredictor.load(
        list(cfg.artifacts), cfg.mode, cfg.device, cfg.pretrained, cfg.cache_rows, cfg.dtype
    )
    output = Path(cfg.output)
    count = predict_file(predictor, tokenizer, Path(cfg.input), output, cfg.batch_size, cfg.max_length)
    held = {k: v for k, v in predictor.held_bytes().items() if v}
    print(f"written: {output} ({count} predictions, tasks {', '.join(predictor.tasks)}, mode={cfg.mode}, {held})")
    return {"output": str(output), "count": count, "held_bytes": held}


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="predict")
@one_line_errors
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    entry(main)
