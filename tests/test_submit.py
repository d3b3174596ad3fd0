"""Leaderboard files from tiny trained runs: names, row counts equal to the test splits, formats that parse."""

from __future__ import annotations

import csv
import json
import zipfile

import pytest
import torch
from omegaconf import OmegaConf

from aotpt import submit, train
from aotpt.cli import CONF_DIR
from aotpt.data.readers import local_path
from aotpt.errors import ConfigError
from aotpt.tasks import get_task
from conftest import FIXTURES

# GLUE: strings, floats, two test files + AX; SuperGLUE: choice, nested, entity text, RTE + AX-b/AX-g.
RUN_TASKS = ("mnli", "stsb", "copa", "multirc", "record", "sg_rte")


@pytest.fixture(scope="module")
def submission(tmp_path_factory):
    from conftest import FAST, compose_train

    root = tmp_path_factory.mktemp("runs")
    runs = []
    for task in RUN_TASKS:
        overrides = ["model=tiny_bert", f"data_dir={FIXTURES}", *FAST, f"task={task}", "+trainer.limit_train_batches=1"]
        runs.append(train.run(compose_train(overrides, root / task))["output_dir"])
    out_dir = root / "submission"
    return submit.run(submit_cfg(runs=runs, data_dir=str(FIXTURES), out_dir=str(out_dir), batch_size=8)), out_dir


def submit_cfg(**overrides):
    """conf/submit.yaml (without its hydra section) with `overrides`."""
    cfg = OmegaConf.load(CONF_DIR / "submit.yaml")
    del cfg["hydra"]
    return OmegaConf.merge(cfg, {"device": "cpu", **overrides})


def _lines(path):
    return [line for line in path.read_text().splitlines() if line.strip()]


def _source_count(task: str, split: str) -> int:
    """Rows of the local test file: lines of a TSV (minus its header) or JSONL objects."""
    spec = get_task(task)
    lines = _lines(local_path(spec, FIXTURES, split))
    return len(lines) - 1 if spec.benchmark == "glue" else len(lines)


def test_glue_files(submission):
    _, out = submission
    names = sorted(p.name for p in (out / "glue").iterdir())
    assert names == ["AX.tsv", "MNLI-m.tsv", "MNLI-mm.tsv", "STS-B.tsv"]
    for name, task, split in [
        ("MNLI-m.tsv", "mnli", "test_matched"),
        ("MNLI-mm.tsv", "mnli", "test_mismatched"),
        ("STS-B.tsv", "stsb", "test"),
        ("AX.tsv", "ax", "test"),
    ]:
        with (out / "glue" / name).open() as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        assert len(rows) == _source_count(task, split)
        assert list(rows[0]) == ["index", "prediction"]
        if task == "stsb":
            assert all(isinstance(float(r["prediction"]), float) for r in rows)
        else:
            assert {r["prediction"] for r in rows} <= {"entailment", "neutral", "contradiction"}
        indices = [int(r["index"]) for r in rows]
        assert indices == sorted(set(indices))


def test_superglue_files(submission):
    _, out = submission
    names = sorted(p.name for p in (out / "superglue").iterdir())
    assert names == ["AX-b.jsonl", "AX-g.jsonl", "COPA.jsonl", "MultiRC.jsonl", "RTE.jsonl", "ReCoRD.jsonl"]
    read = {name: [json.loads(line) for line in _lines(out / "superglue" / name)] for name in names}
    for name, task in [("COPA.jsonl", "copa"), ("MultiRC.jsonl", "multirc"), ("RTE.jsonl", "sg_rte")]:
        assert len(read[name]) == _source_count(task, "test")  # one line per question / passage / pair
    assert {r["label"] for r in read["COPA.jsonl"]} <= {0, 1}
    assert {r["label"] for r in read["RTE.jsonl"] + read["AX-b.jsonl"]} <= {"entailment", "not_entailment"}
    # MultiRC: every answer option of the test file, nested passage -> question -> answers
    source = [json.loads(line) for line in _lines(local_path(get_task("multirc"), FIXTURES, "test"))]
    expected = {(p["idx"], q["idx"], a["idx"]) for p in source for q in p["passage"]["questions"] for a in q["answers"]}
    written = {
        (p["idx"], q["idx"], a["idx"])
        for p in read["MultiRC.jsonl"]
        for q in p["passage"]["questions"]
        for a in q["answers"]
    }
    assert written == expected
    labels = {a["label"] for p in read["MultiRC.jsonl"] for q in p["passage"]["questions"] for a in q["answers"]}
    assert labels <= {0, 1}
    # ReCoRD: one prediction per query, an entity of its passage
    source = [json.loads(line) for line in _lines(local_path(get_task("record"), FIXTURES, "test"))]
    entities = {
        qa["idx"]: {p["passage"]["text"][e["start"] : e["end"] + 1] for e in p["passage"]["entities"]}
        for p in source
        for qa in p["qas"]
    }
    assert {r["idx"] for r in read["ReCoRD.jsonl"]} == set(entities)
    assert all(r["label"] in entities[r["idx"]] for r in read["ReCoRD.jsonl"])


def test_diagnostics_are_scored_and_bundled(submission):
    out, folder = submission
    assert set(out["diagnostics"]) == {"ax", "axb", "axg"}
    assert set(out["diagnostics"]["axg"]) == {"acc", "gender_parity", "score"}
    assert 0.0 <= out["diagnostics"]["axg"]["gender_parity"] <= 1.0
    assert json.loads((folder / "diagnostics.json").read_text()) == out["diagnostics"]
    with zipfile.ZipFile(folder / "superglue.zip") as zf:
        assert sorted(zf.namelist()) == sorted(p.name for p in (folder / "superglue").iterdir())
    with zipfile.ZipFile(folder / "glue.zip") as zf:
        assert "AX.tsv" in zf.namelist()


@pytest.mark.parametrize(
    "task, preds, expected",
    [
        ("cola", [1, 0], ["1", "0"]),
        ("wnli", [1, 0], ["1", "0"]),  # WNLI's files write 1 for entailment, label id 1
        ("boolq", [1, 0], ["true", "false"]),
        ("wic", [0, 1], ["false", "true"]),
        ("wsc", [1, 0], ["True", "False"]),
        ("cb", [2, 1], ["neutral", "contradiction"]),
        ("qnli", [0, 1], ["entailment", "not_entailment"]),
    ],
)
def test_leaderboard_label_names(task, preds, expected):
    spec = get_task(task)
    examples = [{"idx": i, "text_a": "a", "text_b": None, "label": None} for i in (3, 7)]
    rows = {"idx": torch.tensor([3, 7]), "preds": torch.tensor(preds)}
    recs = submit.records(spec, examples, rows)
    if spec.benchmark == "glue":
        assert recs == [(3, expected[0]), (7, expected[1])]
    else:
        assert recs == [{"idx": 3, "label": expected[0]}, {"idx": 7, "label": expected[1]}]


def test_bad_runs_are_one_line_errors(tmp_path):
    cfg = submit_cfg(out_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="runs=\\[\\] is empty"):
        submit.run(cfg)
    cfg.runs = [str(tmp_path)]
    with pytest.raises(ConfigError, match="no model/trained.safetensors"):
        submit.run(cfg)
