"""`python -m aotpt.export`: the compiled table reproduces the reparameterised model; metadata; refusals."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from safetensors.torch import load_file

from aotpt import export as export_cli
from aotpt import train
from aotpt.backbones import load_tokenizer
from aotpt.cli import CONF_DIR
from aotpt.errors import AotptError
from aotpt.methods.aot.artifact import Artifact, compile_tensors
from aotpt.serving import MultiTaskPredictor
from conftest import FIXTURES, REPO, model_conf
from helpers import TEXTS, batch, make_run, plain_backbone

TOL = {"fp16": {"rtol": 1e-3, "atol": 1e-4}, "bf16": {"rtol": 8e-3, "atol": 1e-3}}  # half an ulp and then some


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("reparam", ["kron", "fc"])
def test_compiled_table_reproduces_reparameterised_model(tmp_path, reparam, dtype):
    run_dir, tm = make_run(tmp_path, "rte", reparam)
    path = export_cli.export(run_dir, dtype=dtype, chunk_rows=5000)
    table = load_file(str(path))["table"]
    source = tm.backbone.aot.source
    with torch.no_grad():
        rows = source.rows(torch.arange(source.vocab_size))  # (|V|, L*d) fp32
    assert table.dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype] and table.shape == rows.shape
    torch.testing.assert_close(table.float(), rows, **TOL[dtype])

    artifact = Artifact.load(path)
    tokenizer = load_tokenizer(model_conf("tiny_bert")["pretrained"])
    predictor = MultiTaskPredictor(plain_backbone(tm), [artifact], artifact.record.tokenizer_fingerprint)
    inputs = batch(tokenizer, TEXTS)
    got = torch.stack(predictor(task_ids=torch.zeros(2, dtype=torch.long), **inputs))
    with torch.no_grad():
        want = tm(**inputs)
        plain = tm.head(plain_backbone(tm)(**inputs).last_hidden_state)
    torch.testing.assert_close(got, want, rtol=1e-2, atol=2e-3 if dtype == "fp16" else 2e-2)
    assert (want - plain).abs().max() > 0.05  # the table really changes the output


def test_chunk_size_does_not_change_the_table(tmp_path):
    _, tm = make_run(tmp_path, "rte", "kron")
    source, head = tm.backbone.aot.source, tm.head.state_dict()
    whole = compile_tensors(source, head, torch.float16, chunk_rows=100_000)["table"]
    chunked = compile_tensors(source, head, torch.float16, chunk_rows=777)["table"]
    torch.testing.assert_close(chunked, whole, rtol=0, atol=0)


def test_artifact_holds_table_head_reparam_and_metadata(tmp_path):
    run_dir, tm = make_run(tmp_path, "cb", "kron")
    path = export_cli.export(run_dir, output=tmp_path / "out" / "cb.safetensors")
    keys = set(load_file(str(path)))
    assert keys == {"table", *(f"head.{k}" for k in tm.head.state_dict()), "reparam.W_L", "reparam.W_M", "reparam.W_R"}
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["format"] == "aotpt-aot-table/2" and meta["dtype"] == "fp16" and meta["onthefly"]
    assert meta["table_shape"] == [30522, 2 * 32] and meta["aotpt_version"]
    run = meta["run"]  # the run record, as aotpt.train wrote it: names and options, never class paths
    assert run["task"] == "cb" and run["label_names"] == ["entailment", "contradiction", "neutral"]
    assert run["method"] == {"name": "aot", "reparam": {"name": "kron", "rank": 4, "dropout": 0.0}}
    assert run["max_length"] == 128 and run["init_seed"] == 0 and run["format"] == "aotpt-run/2"
    assert "_target_" not in path.with_suffix(".json").read_text()
    assert not list(path.parent.glob(".*tmp"))  # written atomically, no temporary left


def test_dense_artifact_keeps_only_the_table(tmp_path):
    run_dir, _ = make_run(tmp_path, "rte", "dense")
    path = export_cli.export(run_dir)
    assert not any(k.startswith("reparam.") for k in load_file(str(path)))
    assert json.loads(path.with_suffix(".json").read_text())["onthefly"] is False


def test_export_refuses_non_aot_and_missing_runs(tmp_path):
    run_dir, _ = make_run(tmp_path, "rte", None)
    with pytest.raises(AotptError, match="method=finetune; only method=aot"):
        export_cli.export(run_dir)
    with pytest.raises(AotptError, match="no model/trained.safetensors"):
        export_cli.export(tmp_path / "nowhere")
    with pytest.raises(AotptError, match="unknown dtype='fp8'; accepted: bf16, fp16"):
        export_cli.export(run_dir, dtype="fp8")


def test_cli_config_exports_a_trained_run(train_cfg, tmp_path):
    """The chain train -> export (conf/export.yaml) -> serve, on a real tiny training run."""
    out = train.run(train_cfg("task=rte", "reparam=kron", "trainer.max_epochs=1"))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("export", overrides=[f"run_dir={out['output_dir']}", "dtype=bf16"])
    path = Path(export_cli.run(cfg)["artifact"])
    assert path == Path(out["output_dir"]) / "model" / "table.safetensors"
    predictor, tokenizer = MultiTaskPredictor.load([path])
    (pred,) = predictor.predict(tokenizer, [("rte", *TEXTS[0])])
    assert pred["task"] == "rte" and pred["label"] in ("entailment", "not_entailment")


@pytest.mark.slow
def test_cli_train_folder_feeds_the_export_cli(tmp_path):
    """The folder `aotpt.train` picks (it names the overrides) is accepted as is by `aotpt.export run_dir=`."""
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    train = [sys.executable, "-m", "aotpt.train", "model=tiny_bert", "debug=limit", f"data_dir={FIXTURES}"]
    overrides = ["reparam=fc", "optim.lr=5e-3", "trainer.max_epochs=1", f"paths.root_dir={tmp_path}"]
    subprocess.run([*train, *overrides], check=True, env=env, cwd=REPO, capture_output=True, timeout=300)
    (run_dir,) = (p.parent.parent for p in tmp_path.rglob("model/trained.safetensors"))
    assert run_dir.parent.name == "debug-rte-tiny_bert-aot-fc" and re.fullmatch(r"seed42-[0-9a-f]{8}", run_dir.name)
    export_cmd = [sys.executable, "-m", "aotpt.export", f"run_dir={run_dir}"]
    subprocess.run(export_cmd, check=True, env=env, cwd=REPO, capture_output=True, timeout=300)
    assert (run_dir / "model" / "table.safetensors").exists()


@pytest.mark.parametrize("reparam", ["kron", "fc"])
def test_weights_only_artifact_holds_no_table_and_serves_the_same_rows(tmp_path, reparam):
    """`table=false`: head + reparam weights only (MBs, not the |V| x L*d table); every mode that can serve it
    (rows on the fly, or its table computed at load) gives the full artifact's logits bit for bit."""
    run_dir, tm = make_run(tmp_path, "rte", reparam)
    full = Artifact.load(export_cli.export(run_dir))
    weights = Artifact.load(export_cli.export(run_dir, table=False))
    assert weights.path.name == "weights.safetensors" and not weights.has_table and weights.has_weights
    assert "table" not in load_file(str(weights.path)) and weights.meta["table_shape"] == [30522, 2 * 32]
    assert weights.path.stat().st_size < full.path.stat().st_size / 10
    tokenizer = load_tokenizer(model_conf("tiny_bert")["pretrained"])
    inputs = batch(tokenizer, TEXTS)
    fingerprint = full.record.tokenizer_fingerprint
    reference = MultiTaskPredictor(plain_backbone(tm), [full], fingerprint)
    want = torch.stack(reference(task_ids=torch.zeros(2, dtype=torch.long), **inputs))
    for mode in ("onthefly", "device", "host"):
        predictor = MultiTaskPredictor(plain_backbone(tm), [weights], fingerprint, mode)
        got = torch.stack(predictor(task_ids=torch.zeros(2, dtype=torch.long), **inputs))
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=lambda m, mode=mode: f"{mode}: {m}")
    with pytest.raises(AotptError, match="weights-only artifact .* has no table to map; serve it with mode=onthefly"):
        MultiTaskPredictor(plain_backbone(tm), [weights], fingerprint, "mmap")


def test_weights_only_export_of_a_dense_table_is_refused(tmp_path):
    run_dir, _ = make_run(tmp_path, "rte", "dense")
    with pytest.raises(AotptError, match="table=false: a DenseReparam's weights are as large as its table"):
        export_cli.export(run_dir, table=False)
