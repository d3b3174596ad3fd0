"""Each method learns: MiniLM on real SST-2, a few hundred steps with the method's default learning rate.

Slow (minutes per method on CPU): `pytest -m slow tests/test_methods_learn.py -s` prints every score.
"""

from __future__ import annotations

import csv

import pytest

from aotpt import train
from aotpt.methods import METHODS
from conftest import SHARED_DATA

SST2 = SHARED_DATA / "glue" / "SST-2"
STEPS, BATCH = 200, 8
MARGIN = 0.10  # "clearly above": at least 10 accuracy points over always answering the majority class


def _majority_accuracy() -> float:
    with open(SST2 / "dev.tsv", newline="") as f:
        labels = [row["label"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    return max(labels.count(label) for label in set(labels)) / len(labels)


@pytest.mark.slow
@pytest.mark.skipif(not SST2.exists(), reason="needs ../shared/data")
@pytest.mark.parametrize("method", METHODS)
def test_method_learns_sst2(train_cfg, method):
    cfg = train_cfg(
        "model=minilm",
        "task=sst2",
        f"method={method}",
        f"data_dir={SHARED_DATA}",
        f"data.limit_examples={STEPS * BATCH}",  # train: the first 1,600 sentences; dev: all 872
        f"data.batch_size={BATCH}",
        "data.eval_batch_size=64",
        "data.max_length=48",
        "trainer.max_epochs=1",
        "trainer.detect_anomaly=false",
    )
    out = train.run(cfg)
    accuracy, majority = out["best"]["val/acc"], _majority_accuracy()
    print(f"\n{method}: SST-2 dev accuracy {accuracy:.3f} after {STEPS} steps (majority class {majority:.3f})")
    assert accuracy > majority + MARGIN
