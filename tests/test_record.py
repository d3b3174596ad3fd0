"""The run record and the seams that read it: export builds only what it needs, loading checks the vocabulary,
inference never imports Lightning."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from aotpt import backbones
from aotpt.backbones import MINILM_HUB_ID, load_backbone, load_word_embeddings
from aotpt.errors import AotptError
from aotpt.export import export
from aotpt.methods.aot.artifact import Artifact
from aotpt.model import load_run
from aotpt.record import RunMeta, read_run, record_path
from aotpt.serving import MultiTaskPredictor
from helpers import make_run


def test_record_round_trips_and_reads_the_first_format(tmp_path):
    run_dir, tm = make_run(tmp_path, "rte", "fc")
    _, record = read_run(run_dir)
    assert RunMeta.from_dict(json.loads(record_path(run_dir).read_text())) == record
    assert record.setup == "aot/fc" and record.trainable == tm.trainable and record.init_seed == 0
    first = {k: v for k, v in record.to_dict().items() if k not in ("format", "max_length", "init_seed", "choices")}
    first["method"] = {
        "_target_": "aotpt.methods.aot.AotConfig",
        "reparam": {"_target_": "aotpt.methods.aot.reparam.FcConfig", "rank": 8},
    }
    old = RunMeta.from_dict(first)
    assert old.method["name"] == "aot" and old.method["reparam"]["name"] == "fc" and old.max_length == 128


def test_a_random_backbone_is_rebuilt_from_its_seed():
    random_init = {
        "model_type": "bert",
        "vocab_size": 500,
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 8,
    }
    one, two = (load_backbone(MINILM_HUB_ID, random_init, seed=3) for _ in range(2))
    other = load_backbone(MINILM_HUB_ID, random_init, seed=4)
    for (name, a), b in zip(one.state_dict().items(), two.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert not torch.equal(one.embeddings.word_embeddings.weight, other.embeddings.word_embeddings.weight)


def test_load_run_refuses_another_vocabulary(tmp_path):
    run_dir, _ = make_run(tmp_path, "rte", "kron")
    path = record_path(run_dir)
    path.write_text(json.dumps({**json.loads(path.read_text()), "tokenizer_fingerprint": "0123456789abcdef"}))
    with pytest.raises(AotptError, match="trained with tokenizer_fingerprint='0123456789abcdef'"):
        load_run(run_dir)


def test_export_of_kron_builds_no_backbone(tmp_path, monkeypatch):
    run_dir, _ = make_run(tmp_path, "rte", "kron")

    def no_backbone(*args, **kwargs):
        raise AssertionError("export built a backbone")

    monkeypatch.setattr(backbones, "load_backbone", no_backbone)
    monkeypatch.setattr("aotpt.model.load_backbone", no_backbone)
    monkeypatch.setattr("aotpt.export.load_word_embeddings", no_backbone)
    assert Artifact.load(export(run_dir)).record.setup == "aot/kron"


def test_fc_reads_the_pretrained_word_embeddings_alone(monkeypatch):
    """From the checkpoint's safetensors, without building the model (DeBERTa-v2-xlarge is 900M parameters)."""
    want = load_backbone(MINILM_HUB_ID).embeddings.word_embeddings.weight

    def no_model(*args, **kwargs):
        raise AssertionError("the whole backbone was built")

    monkeypatch.setattr("transformers.AutoModel.from_pretrained", no_model)
    got = load_word_embeddings(MINILM_HUB_ID)
    assert torch.equal(got.weight, want) and not got.weight.requires_grad


def test_predict_truncates_as_the_run_was_trained(tmp_path):
    run_dir, _ = make_run(tmp_path, "rte", "kron")
    path = record_path(run_dir)
    path.write_text(json.dumps({**json.loads(path.read_text()), "max_length": 9}))
    predictor, tokenizer = MultiTaskPredictor.load([export(run_dir)])
    long = ("word " * 50, "another " * 50)
    encoded = predictor.encode(tokenizer, [long], torch.tensor([0]))
    assert encoded["input_ids"].shape == (1, 9)
    assert predictor.encode(tokenizer, [long], torch.tensor([0]), max_length=20)["input_ids"].shape == (1, 20)


def test_inference_paths_import_no_lightning():
    code = (
        "import sys, aotpt.export, aotpt.predict, aotpt.serving, aotpt.model, aotpt.record, aotpt.methods; "
        "import aotpt.serve, aotpt.serving.server, aotpt.serving.launch, aotpt.benchmarks.server; "  # LitServe too
        "import aotpt.submit, aotpt.data.task_data; "  # leaderboard files: TaskData, not the LightningDataModule
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')); "
        "assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
