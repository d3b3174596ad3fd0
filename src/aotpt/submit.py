"""Leaderboard submission files of trained runs: `python -m aotpt.submit runs=[<run folder>,...] data_dir=...`.

Each run folder holds `model/trained.safetensors` + its run record (written
by aotpt.train); the model is rebuilt from the record (`model.load_run`) and
predicts its task's test splits with the max length it was trained with, in
the formats the leaderboards grade:

- GLUE: one TSV per test split (CoLA.tsv ... MNLI-m.tsv, MNLI-mm.tsv, AX.tsv),
  header `index<TAB>prediction`, labels as in the task's files (0/1, NLI
  strings, STS-B floats).
- SuperGLUE: one JSONL per task ({"idx", "label"}); COPA the choice index,
  ReCoRD the entity text per query, MultiRC nested
  {"idx": p, "passage": {"questions": [{"idx": q, "answers": [{"idx": a, "label": 0/1}]}]}}.

A run trained on a diagnostic's `model_task` (MNLI for AX, SuperGLUE RTE for
AX-b/AX-g) also predicts the diagnostic and scores it on its labelled copy
(MCC; AX-g accuracy and gender parity) into diagnostics.json. With zip=true
the files are bundled as glue.zip / superglue.zip, files at the root, which
is what both upload pages take.
"""

from __future__ import annotations

import json
import zipfile
from collections import defaultdict
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from aotpt.atomic import write_json_atomic
from aotpt.cli import CONF_DIR, entry, log, one_line_errors
from aotpt.data.task_data import TaskData
from aotpt.errors import AotptError, ConfigError
from aotpt.model import load_run
from aotpt.tasks import Example, TaskSpec, diagnostics_of, get_task
from aotpt.tasks.metrics import compute_metrics, group_argmax
from aotpt.tasks.predictions import predict_rows


class Run:
    """A trained run folder, able to predict its task and the diagnostics that share its labels."""

    def __init__(self, folder: str | Path, device: torch.device) -> None:
        self.folder = Path(folder)
        self.model, self.record, self.tokenizer = load_run(self.folder, "runs")
        self.model.to(device)
        self.task = self.record.task
        self.device = device

    def predict(self, spec: TaskSpec, datamodule: TaskData, split: str) -> dict[str, torch.Tensor]:
        """Every row's prediction (and group/score/labels where the split has them), sorted by row id.

        A diagnostic shares its model task's labels and head, so the run's own model predicts it.
        """
        return predict_rows(self.model, spec, datamodule.loader(split), self.device)


def _label(spec: TaskSpec, pred: torch.Tensor):
    if spec.is_regression:
        return round(float(pred), 4)
    return spec.leaderboard_labels[int(pred)]


def records(spec: TaskSpec, examples: list[Example], rows: dict[str, torch.Tensor]) -> list:
    """The leaderboard's records for one test split: (index, label) pairs for GLUE, dicts for SuperGLUE."""
    by_idx = {example["idx"]: example for example in examples}
    if len(rows["idx"]) != len(by_idx):
        raise AotptError(f"task {spec.name}: {len(rows['idx'])} predictions for {len(by_idx)} rows")
    if spec.grouping == "choice":  # COPA, ReCoRD: the top-scoring row's answer, per question
        chosen = group_argmax(rows["group"], rows["score"])
        return [{"idx": int(rows["group"][i]), "label": by_idx[int(rows["idx"][i])]["meta"]["answer"]} for i in chosen]
    if spec.grouping == "question":  # MultiRC: nested passage -> question -> answers, in file order
        nested: dict[int, dict[int, list]] = defaultdict(lambda: defaultdict(list))
        for idx, pred in zip(rows["idx"].tolist(), rows["preds"], strict=True):
            example = by_idx[idx]
            answer = {"idx": example["meta"]["answer"], "label": _label(spec, pred)}
            nested[example["meta"]["paragraph"]][example["group"]].append(answer)
        return [
            {"idx": p, "passage": {"questions": [{"idx": q, "answers": a} for q, a in questions.items()]}}
            for p, questions in nested.items()
        ]
    labels = [_label(spec, pred) for pred in rows["preds"]]
    if spec.benchmark == "glue":
        return list(zip(rows["idx"].tolist(), labels, strict=True))
    return [{"idx": idx, "label": label} for idx, label in zip(rows["idx"].tolist(), labels, strict=True)]


def write_file(path: Path, spec: TaskSpec, recs: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if spec.benchmark == "glue":
        lines = ["index\tprediction", *(f"{idx}\t{label}" for idx, label in recs)]
    else:
        lines = [json.dumps(rec) for rec in recs]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def submit_task(run: Run, task: str, cfg: DictConfig, out_dir: Path) -> dict:
    """Write `task`'s leaderboard files; for a diagnostic also return its metrics on the labelled copy."""
    spec = get_task(task)
    datamodule = TaskData(
        task, run.tokenizer, data_dir=cfg.data_dir, max_length=run.record.max_length, eval_batch_size=cfg.batch_size
    )
    for split, name in zip(spec.test_splits, spec.submit_files, strict=True):
        rows = run.predict(spec, datamodule, split)
        path = out_dir / spec.benchmark / name
        recs = records(spec, datamodule.examples[split], rows)
        write_file(path, spec, recs)
        log.info("%s: %s (%d records from %d rows) by %s", task, path, len(recs), len(rows["idx"]), run.folder)
    if spec.trainable:
        return {}
    rows = run.predict(spec, datamodule, spec.eval_splits[0])
    return compute_metrics(spec, **{k: v for k, v in rows.items() if k != "idx"})


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run(cfg: DictConfig) -> dict:
    """Predict every run's test splits (and diagnostics); returns {"files": [...], "diagnostics": {...}}."""
    if not cfg.runs:
        raise ConfigError("runs=[] is empty; give run folders: runs=[logs/runs/<name>/seed42,...]")
    out_dir = Path(cfg.out_dir)
    runs = [Run(folder, _device(cfg.device)) for folder in cfg.runs]
    seen: dict[str, Path] = {}
    for r in runs:
        if r.task in seen:
            raise ConfigError(f"runs: two runs of task {r.task} ({seen[r.task]}, {r.folder}); keep one")
        seen[r.task] = r.folder
    diagnostics = {}
    for r in runs:
        submit_task(r, r.task, cfg, out_dir)
        for task in diagnostics_of(r.task) if cfg.diagnostics else []:
            diagnostics[task] = submit_task(r, task, cfg, out_dir)
    if diagnostics:
        write_json_atomic(out_dir / "diagnostics.json", diagnostics)
    files = sorted(str(p) for p in out_dir.glob("*/*") if p.suffix in (".tsv", ".jsonl"))
    archives = [bundle(out_dir / benchmark) for benchmark in ("glue", "superglue")] if cfg.zip else []
    return {"files": files, "archives": [str(a) for a in archives if a], "diagnostics": diagnostics}


def bundle(folder: Path) -> Path | None:
    """Zip a benchmark's files, at the archive root; None when there are none."""
    files = sorted(p for p in folder.glob("*") if p.suffix in (".tsv", ".jsonl"))
    if not files:
        return None
    archive = folder.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in files:
            zf.write(path, arcname=path.name)
    return archive


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="submit")
@one_line_errors
def main(cfg: DictConfig) -> None:
    out = run(cfg)
    print(json.dumps({k: out[k] for k in ("archives", "diagnostics")}, indent=2))


if __name__ == "__main__":
    entry(main)
