"""GLUE tasks: hub `nyu-mll/glue`, local files as written by the GLUE download script.

Local quirks handled here by renaming columns to the hub's field names:
MRPC's `Quality`/`#1 String`/`#2 String`, MNLI's `gold_label` and
sentence1/sentence2 (premise/hypothesis on the hub), QQP's `is_duplicate`,
STS-B's `score`. QQP's `id` column is the Quora pair id, not the hub's row
index, so QQP keeps the row number as idx.

AX (the diagnostic set) has no training split: an MNLI model predicts it.
Its labelled copy `diagnostic-full.tsv` (no index column, CRLF, capitalised
headers) is the evaluation split, `diagnostic.tsv` the leaderboard's test
split; the rows are in the same order. Leaderboard files are named as the
GLUE site expects (CoLA.tsv ... AX.tsv) with labels as in the local files
(0/1, NLI label strings, STS-B floats).
"""

from __future__ import annotations

from aotpt.tasks.spec import TaskSpec, TextFields

_BINARY = ("0", "1")  # raw labels of CoLA, SST-2, MRPC, QQP and WNLI files
_NLI2 = ("entailment", "not_entailment")
_MNLI = ("entailment", "neutral", "contradiction")

GLUE_TASKS = (
    TaskSpec(
        name="cola",
        submit_files=("CoLA.tsv",),
        benchmark="glue",
        hub=("nyu-mll/glue", "cola"),
        folder="CoLA",
        build=TextFields("sentence"),
        label_names=("unacceptable", "acceptable"),
        local_labels=_BINARY,
        metrics=("mcc",),
        headerless=("source", "label", "orig_label", "sentence"),
    ),
    TaskSpec(
        name="sst2",
        submit_files=("SST-2.tsv",),
        benchmark="glue",
        hub=("nyu-mll/glue", "sst2"),
        folder="SST-2",
        build=TextFields("sentence"),
        label_names=("negative", "positive"),
        local_labels=_BINARY,
        metrics=("acc",),
    ),
    TaskSpec(
        name="mrpc",
        submit_files=("MRPC.tsv",),
        benchmark="glue",
        hub=("nyu-mll/glue", "mrpc"),
        folder="MRPC",
        build=TextFields("sentence1", "sentence2"),
        label_names=("not_equivalent", "equivalent"),
        local_labels=_BINARY,
        metrics=("f1", "acc"),
        local_rename=(("index", "idx"), ("Quality", "label"), ("#1 String", "sentence1"), ("#2 String", "sentence2")),
    ),
    TaskSpec(
        name="stsb",
        submit_files=("STS-B.tsv",),
        benchmark="glue",
        hub=("nyu-mll/glue", "stsb"),
        folder="STS-B",
        build=TextFields("sentence1", "sentence2"),
        label_names=(),
        metrics=("pearson", "spearman"),
        local_rename=(("index", "idx"), ("score", "label")),
    ),
    TaskSpec(
        name="qqp",
        submit_files=("QQP.tsv",),
        benchmark="glue",
        hub=("nyu-mll/glue", "qqp"),
        folder="QQP",
        build=TextFields("question1", "question2"),
        label_names=("not_duplicate", "duplicate"),
        local_labels=_BINARY,
        metrics=("f1", "acc"),
        local_rename=(("is_duplicate", "label"),),
    ),
    TaskSpec(
        name="mnli",
        submit_files=("MNLI-m.tsv", "MNLI-mm.tsv"),
        benchmark="glue",
        hub=("nyu-mll/glue", "mnli"),
        folder="MNLI",
        build=TextFields("premise", "hypothesis"),
        label_names=_MNLI,
        metrics=("acc",),
        eval_splits=("validation_matched", "validation_mismatched"),
        test_splits=("test_matched", "test_mismatched"),
        local_rename=(
            ("index", "idx"),
            ("gold_label", "label"),
            ("sentence1", "premise"),
            ("sentence2", "hypothesis"),
        ),
    ),
    TaskSpec(
        name="qnli",
        submit_files=("QNLI.tsv",),
        benchmark="glue",
        hub=("nyu-mll/glue", "qnli"),
        folder="QNLI",
        build=TextFields("question", "sentence"),
        label_names=_NLI2,
        metrics=("acc",),
    ),
    TaskSpec(
        name="rte",
        submit_files=("RTE.tsv",),
        benchmark="glue",
        hub=("nyu-mll/glue", "rte"),
        folder="RTE",
        build=TextFields("sentence1", "sentence2"),
        label_names=_NLI2,
        metrics=("acc",),
    ),
    TaskSpec(
        name="wnli",
        submit_files=("WNLI.tsv",),
        benchmark="glue",
        hub=("nyu-mll/glue", "wnli"),
        folder="WNLI",
        build=TextFields("sentence1", "sentence2"),
        # The reverse of RTE/QNLI: the files write 1 for entailment.
        label_names=("not_entailment", "entailment"),
        local_labels=_BINARY,
        metrics=("acc",),
    ),
    TaskSpec(
        name="ax",
        submit_files=("AX.tsv",),
        benchmark="glue",
        hub=("nyu-mll/glue", "ax"),
        folder="AX",
        build=TextFields("premise", "hypothesis"),
        label_names=_MNLI,
        metrics=("mcc",),
        model_task="mnli",
        in_score=False,
        files=(("validation", "diagnostic-full.tsv"), ("test", "diagnostic.tsv")),
        local_rename=(
            ("index", "idx"),
            ("sentence1", "premise"),
            ("sentence2", "hypothesis"),
            ("Premise", "premise"),
            ("Hypothesis", "hypothesis"),
            ("Label", "label"),
        ),
    ),
)
