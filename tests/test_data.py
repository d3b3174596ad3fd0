"""Readers (fixtures, real files, malformed files, hub offline) and the datamodule."""

from __future__ import annotations

import os
from pathlib import Path

import datasets
import huggingface_hub
import pytest
import torch

from aotpt.backbones import MINILM_HUB_ID, load_tokenizer
from aotpt.data.datamodule import TaskDataModule
from aotpt.data.readers import local_path, read_hub, read_local
from aotpt.errors import AotptError, ConfigError, DataError
from aotpt.tasks import TASKS, get_task

FIXTURES = Path(__file__).parent / "fixtures"
# The real GLUE/SuperGLUE snapshot, when present (see its MANIFEST.md); tests skip what is absent.
REAL = Path(os.environ.get("AOTPT_REAL_DATA", Path(__file__).parents[2] / "shared" / "data"))
REAL_ROWS = {  # row counts from shared/data/MANIFEST.md
    ("cola", "train"): 8551, ("cola", "validation"): 1043, ("cola", "test"): 1063,
    ("sst2", "train"): 67349, ("sst2", "validation"): 872, ("sst2", "test"): 1821,
    ("mrpc", "train"): 3668, ("mrpc", "validation"): 408, ("mrpc", "test"): 1725,
    ("stsb", "train"): 5749, ("stsb", "validation"): 1500, ("stsb", "test"): 1379,
    ("qnli", "validation"): 5463, ("qnli", "test"): 5463,
    ("rte", "train"): 2490, ("rte", "validation"): 277, ("rte", "test"): 3000,
    ("wnli", "train"): 635, ("wnli", "validation"): 71, ("wnli", "test"): 146,
    ("boolq", "validation"): 3270, ("boolq", "test"): 3245,
    ("cb", "train"): 250, ("cb", "validation"): 56, ("cb", "test"): 250,
    ("sg_rte", "train"): 2490, ("sg_rte", "validation"): 277, ("sg_rte", "test"): 3000,
    ("wic", "train"): 5428, ("wic", "validation"): 638, ("wic", "test"): 1400,
    # rows, not examples: COPA has two per question, MultiRC one per answer option (4,848 in 83 val passages)
    ("copa", "train"): 800, ("copa", "validation"): 200, ("copa", "test"): 1000,
    ("multirc", "train"): 27243, ("multirc", "validation"): 4848, ("multirc", "test"): 9693,
    ("wsc", "train"): 554, ("wsc", "validation"): 104, ("wsc", "test"): 146,
    ("ax", "validation"): 1104, ("ax", "test"): 1104,
    ("axb", "validation"): 1104, ("axb", "test"): 1104,
    ("axg", "validation"): 356, ("axg", "test"): 356,
}  # fmt: skip
ALL_SPLITS = [(name, split) for name, spec in TASKS.items() for split in spec.splits]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(MINILM_HUB_ID)


def one_line_error(exc_type, fn, *args) -> str:
    with pytest.raises(exc_type) as err:
        fn(*args)
    message = str(err.value)
    assert "\n" not in message
    return message


# ---- fixtures and real files ------------------------------------------------------------


@pytest.mark.parametrize("name, split", ALL_SPLITS)
def test_every_split_reads_from_fixtures(name, split):
    spec = get_task(name)
    examples = read_local(spec, FIXTURES, split)
    assert len(examples) >= 8
    assert all(isinstance(e["text_a"], str) and e["text_a"] for e in examples)
    assert len({e["idx"] for e in examples}) == len(examples)
    labels = [e["label"] for e in examples]
    if split in spec.test_splits:
        assert labels == [None] * len(examples)
    elif spec.is_regression:
        assert all(0.0 <= y <= 5.0 for y in labels)
    else:
        assert set(labels) == set(range(spec.num_labels))  # every label present


@pytest.mark.parametrize("name, split", sorted(REAL_ROWS))
def test_real_files_parse(name, split):
    spec = get_task(name)
    if not local_path(spec, REAL, split).is_file():
        pytest.skip(f"real data absent: {local_path(spec, REAL, split)}")
    assert len(read_local(spec, REAL, split)) == REAL_ROWS[name, split]


def test_real_label_mapping():
    if not (REAL / "glue" / "WNLI").is_dir():
        pytest.skip("real data absent")
    wnli = get_task("wnli")
    first = read_local(wnli, REAL, "train")[0]  # "The carrot had a hole." is labelled 1
    assert wnli.label_names[first["label"]] == "entailment"
    rte = read_local(get_task("rte"), REAL, "train")[0]  # labelled not_entailment
    assert get_task("rte").label_names[rte["label"]] == "not_entailment"
    boolq = get_task("boolq")
    assert boolq.label_names[read_local(boolq, REAL, "validation")[0]["label"]] == "False"


def test_fixture_label_mapping_and_texts():
    mnli = get_task("mnli")
    ex = read_local(mnli, FIXTURES, "validation_matched")
    assert [mnli.label_names[e["label"]] for e in ex[:3]] == ["entailment", "neutral", "contradiction"]
    mrpc = read_local(get_task("mrpc"), FIXTURES, "train")  # BOM before the Quality header
    assert mrpc[1]["text_b"].startswith('"') and mrpc[1]["label"] == 1
    cola = read_local(get_task("cola"), FIXTURES, "train")  # headerless
    assert cola[0]["idx"] == 0 and cola[0]["text_b"] is None
    assert read_local(get_task("wic"), FIXTURES, "validation")[0]["text_a"].startswith("bank: ")


# ---- malformed inputs ---------------------------------------------------------------------


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_wrong_column_count_names_path_and_line(tmp_path):
    path = write(tmp_path, "glue/RTE/train.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\n")
    message = one_line_error(DataError, read_local, get_task("rte"), tmp_path, "train")
    assert f"{path}:3" in message and "3 tab-separated columns, expected 4" in message


def test_missing_column_names_the_field(tmp_path):
    path = write(tmp_path, "glue/RTE/dev.tsv", "index\tpremise\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    message = one_line_error(DataError, read_local, get_task("rte"), tmp_path, "validation")
    assert f"{path}:2" in message and "'sentence1'" in message


def test_invalid_json_line_names_path_and_line(tmp_path):
    good = '{"premise": "a", "hypothesis": "b", "label": "neutral", "idx": 0}\n'
    path = write(tmp_path, "superglue/CB/train.jsonl", good + '{"premise": "a", \n')
    message = one_line_error(DataError, read_local, get_task("cb"), tmp_path, "train")
    assert f"{path}:2" in message and "invalid JSON" in message


def test_missing_json_field(tmp_path):
    path = write(tmp_path, "superglue/CB/val.jsonl", '{"premise": "a", "label": "neutral", "idx": 0}\n')
    message = one_line_error(DataError, read_local, get_task("cb"), tmp_path, "validation")
    assert f"{path}:1" in message and "'hypothesis'" in message


def test_unknown_label_lists_accepted_labels(tmp_path):
    write(
        tmp_path,
        "glue/MNLI/train.tsv",
        (FIXTURES / "glue/MNLI/train.tsv").read_text().replace("\tneutral\n", "\tmaybe\n", 1),
    )
    message = one_line_error(DataError, read_local, get_task("mnli"), tmp_path, "train")
    assert "'maybe'" in message and "accepted: 'entailment', 'neutral', 'contradiction'" in message
    write(tmp_path, "superglue/BoolQ/train.jsonl", '{"question": "q", "passage": "p", "idx": 0, "label": "yes"}\n')
    message = one_line_error(DataError, read_local, get_task("boolq"), tmp_path, "train")
    assert "'yes'" in message and "accepted: False, True" in message


def test_non_numeric_stsb_score(tmp_path):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    path = write(tmp_path, "glue/STS-B/train.tsv", header + "0\tg\tf\t2012\t1\tnone\tnone\ta\tb\thigh\n")
    message = one_line_error(DataError, read_local, get_task("stsb"), tmp_path, "train")
    assert f"{path}:2" in message and "'high' is not a number" in message


def test_missing_file_names_path_task_and_split(tmp_path):
    message = one_line_error(DataError, read_local, get_task("sst2"), tmp_path, "validation")
    assert str(tmp_path / "glue" / "SST-2" / "dev.tsv") in message and "sst2" in message and "validation" in message


def test_empty_split(tmp_path):
    path = write(tmp_path, "glue/SST-2/train.tsv", "sentence\tlabel\n")
    message = one_line_error(DataError, read_local, get_task("sst2"), tmp_path, "train")
    assert str(path) in message and "no examples" in message


def test_unknown_split():
    message = one_line_error(ConfigError, read_local, get_task("rte"), FIXTURES, "validation_matched")
    assert "accepted: test, train, validation" in message


# ---- hub path, without network --------------------------------------------------------------


def test_hub_offline_fails_with_one_line_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def no_network(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (OfflineModeIsEnabled)\nsecond line")

    monkeypatch.setattr(datasets, "load_dataset", no_network)
    message = one_line_error(AotptError, read_hub, get_task("rte"), "validation")
    assert "nyu-mll/glue (rte, split validation)" in message and "data_dir=" in message


def test_hub_unreachable_fails_before_downloading(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)

    def unreachable(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    def must_not_run(*args, **kwargs):
        raise AssertionError("load_dataset called although the hub is unreachable")

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", unreachable)
    monkeypatch.setattr(datasets, "load_dataset", must_not_run)
    message = one_line_error(AotptError, read_hub, get_task("sg_rte"), "train")
    assert "aps/super_glue (rte, split train)" in message and "HF_HUB_OFFLINE=1" in message


def test_hub_rows_map_to_examples(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    rows = [{"word": "bank", "sentence1": "a", "sentence2": "b", "idx": 7, "label": -1}]
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_list(rows))
    assert read_hub(get_task("wic"), "test") == [{"idx": 7, "text_a": "bank: a", "text_b": "b", "label": None}]
    rows[0]["label"] = 1
    assert read_hub(get_task("wic"), "train")[0]["label"] == 1


@pytest.mark.parametrize(
    ("rel", "encoding"),
    [("glue/RTE/train.tsv", "cp1252"), ("superglue/CB/train.jsonl", "utf_16")],
)
def test_non_utf8_file_names_the_file_and_the_encoding_found(tmp_path, rel, encoding):
    rows = {
        "glue/RTE/train.tsv": "index\tsentence1\tsentence2\tlabel\n"
        + "".join(f"{i}\tCaf\u00e9 d\u00e9j\u00e0 vu, na\u00efve\tb\tentailment\n" for i in range(20)),
        "superglue/CB/train.jsonl": "".join(
            f'{{"premise": "d\u00e9j\u00e0", "hypothesis": "b", "label": "neutral", "idx": {i}}}\n' for i in range(20)
        ),
    }[rel]
    path = tmp_path / rel
    path.parent.mkdir(parents=True)
    path.write_bytes(rows.encode(encoding))
    message = one_line_error(DataError, read_local, get_task(rel.split("/")[1].lower()), tmp_path, "train")
    assert str(path) in message and "not UTF-8" in message
    found = message.split("it looks like ")[1].split(":")[0]
    assert "\u00e9" in path.read_bytes().decode(found)  # the encoding named reads it (detection may pick a sibling)


# ---- datamodule ------------------------------------------------------------------------------


def test_datamodule_batches(tokenizer):
    dm = TaskDataModule("rte", tokenizer, data_dir=str(FIXTURES), max_length=16, batch_size=4, eval_batch_size=3)
    dm.setup("fit")
    assert dm.spec is get_task("rte")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels", "idx"}
    assert batch["input_ids"].dtype == batch["labels"].dtype == batch["idx"].dtype == torch.long
    assert batch["input_ids"].shape[0] == 4
    # dynamic padding: as long as the longest row, never longer than max_length
    assert batch["input_ids"].shape[1] == batch["attention_mask"].sum(1).max() <= 16
    (val,) = dm.val_dataloader()
    assert next(iter(val))["input_ids"].shape[0] == 3
    (test,) = dm.test_dataloader()
    assert "labels" not in next(iter(test))


def test_group_by_length_orders_the_train_rows_by_their_token_counts(tokenizer):
    def loader(group: bool):
        dm = TaskDataModule("rte", tokenizer, data_dir=str(FIXTURES), batch_size=2, group_by_length=group)
        dm.setup("fit")
        return dm, dm.train_dataloader()

    (dm, plain), (_, grouped) = loader(False), loader(True)
    assert plain.sampler.lengths is None
    assert (
        grouped.sampler.lengths
        == [len(ids) for ids in dm.dataset("train")["input_ids"]]
        != [grouped.sampler.lengths[0]] * 16
    )
    assert grouped.sampler.batch_size == 2
    positions = {idx: pos for pos, idx in enumerate(dm.dataset("train")["idx"])}
    trained = [positions[i] for b in grouped for i in b["idx"].tolist()]
    assert trained == grouped.sampler.order() != [positions[i] for b in plain for i in b["idx"].tolist()]


def test_datamodule_regression_and_single_sentence(tokenizer):
    stsb = TaskDataModule("stsb", tokenizer, data_dir=str(FIXTURES), batch_size=4)
    assert next(iter(stsb.train_dataloader()))["labels"].dtype == torch.float32
    sst2 = TaskDataModule("sst2", tokenizer, data_dir=str(FIXTURES), batch_size=4, limit_examples=5)
    assert len(sst2.dataset("train")) == 5
    assert not next(iter(sst2.train_dataloader()))["token_type_ids"].any()  # one segment


def test_mnli_has_two_val_loaders(tokenizer):
    dm = TaskDataModule("mnli", tokenizer, data_dir=str(FIXTURES), batch_size=4)
    dm.setup("validate")
    matched, mismatched = dm.val_dataloader()
    assert len(matched.dataset) == len(read_local(dm.spec, FIXTURES, "validation_matched"))
    assert len(dm.test_dataloader()) == 2


def test_tokenised_splits_are_cached(tokenizer, tmp_path):
    first = TaskDataModule("cb", tokenizer, data_dir=str(FIXTURES), cache_dir=str(tmp_path))
    cache_file = first.cache_file("train", read_local(first.spec, FIXTURES, "train"))
    first.setup("fit")
    assert cache_file.is_file()
    second = TaskDataModule("cb", tokenizer, data_dir=str(FIXTURES), cache_dir=str(tmp_path))
    dataset = second.dataset("train")
    assert [Path(f["filename"]) for f in dataset.cache_files] == [cache_file]  # loaded, not rebuilt
    assert dataset["input_ids"] == first.dataset("train")["input_ids"]
    other = TaskDataModule("cb", tokenizer, data_dir=str(FIXTURES), cache_dir=str(tmp_path), max_length=32)
    assert other.cache_file("train", read_local(first.spec, FIXTURES, "train")) != cache_file


def test_datamodule_rejects_bad_options(tokenizer):
    with pytest.raises(ConfigError, match="data.batch_size=0"):
        TaskDataModule("rte", tokenizer, batch_size=0)
    with pytest.raises(ConfigError, match="unknown task='rtee'"):
        TaskDataModule("rtee", tokenizer)
