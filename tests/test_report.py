"""Selection, benchmark scores and report files computed from results.json files with known numbers."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from aotpt import report
from aotpt.errors import ConfigError
from aotpt.report.build import _benchmarks
from aotpt.report.runs import read_runs
from aotpt.report.select import select, sweep_benchmark
from aotpt.sweeps import load_sweep
from conftest import FIXTURES, REPO

AOT = {"name": "aot", "reparam": {"name": "kron", "rank": 16, "dropout": 0.0}}
LORA = {"name": "lora", "rank": 8, "alpha": 8.0, "dropout": 0.0, "targets": None}
PTV2 = {"name": "ptuning_v2", "length": 20, "dropout": 0.1, "projection": False, "projection_hidden": 512}
METRICS = {"rte": ("acc",), "mrpc": ("f1", "acc"), "cola": ("mcc",), "cb": ("acc", "macro_f1"), "copa": ("choice_acc",)}
SIZES = {"minilm": 22_713_216, "roberta_base": 124_645_632}


def fake_run(
    root: Path,
    task: str,
    seed: int,
    score: float,
    *,
    method: dict = AOT,
    lr: float = 1e-3,
    model: str = "minilm",
    status: str = "completed",
    identity: bool = True,
    trainer: dict | None = None,
    data: dict | None = None,
    run_name: str | None = None,
    params: int = 744_034,
    wall: float = 60.0,
    error: str | None = None,
    threads: int | None = None,
    cpu: str = "a CPU",
) -> Path:
    """A results.json as aotpt.train writes it; every metric of the task equals `score` unless it is MRPC/CB."""
    config = {
        "run_name": run_name or f"{task}-{model}-{method['name']}",
        "seed": seed,
        "model": {"name": model},
        "task": {"name": task},
        "method": method,
        "optim": {"lr": lr, "weight_decay": 0.01},
        "trainer": {"max_epochs": 3, **(trainer or {})},
        "data": {"max_length": 128, "limit_examples": None, **(data or {})},
    }
    settings = {k: config[k] for k in ("model", "task", "method", "optim", "trainer", "data", "seed")}
    run_id = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    metrics = {m: score for m in METRICS[task]}
    if task == "mrpc":
        metrics = {"f1": score + 0.05, "acc": score - 0.05}
    best = {"epoch": 1, **{f"val/{k}": v for k, v in metrics.items()}, "val/score": score, "val/score_best": score}
    result = {
        "status": status,
        "error": error,
        "config": config,
        "trainable_params": params,
        "total_params": SIZES[model] + params,
        "trainable_pct_of_backbone": 100 * params / SIZES[model],
        "epochs": [{"epoch": 0, "val/score": score - 0.1}, {"epoch": 1, "val/score": score}],
        "best": best if status != "running" else {},
        "wall_time_s": wall,
    }
    if threads is not None:  # results.json records the machine since the study's one-thread workers
        result["machine"] = {"cpu": cpu, "cores": 2, "threads": threads, "gpu": None, "torch": "2.13.0"}
    if identity:
        result |= {"identity": settings, "run_id": run_id}
    folder = root / f"{task}-{model}-{method['name']}" / f"seed{seed}" / f"lr{lr}-{run_id}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(result))
    return folder


def test_best_mean_config_wins_over_the_best_single_run_and_configs_are_never_pooled(tmp_path):
    for seed, score in zip((1, 2, 3), (0.80, 0.60, 0.61), strict=True):  # best single run, worse mean
        fake_run(tmp_path, "rte", seed, score, lr=1e-3)
    for seed, score in zip((1, 2, 3), (0.70, 0.71, 0.69), strict=True):
        fake_run(tmp_path, "rte", seed, score, lr=5e-3)
    sel = select(read_runs(tmp_path))
    cell = sel.cell("minilm", "aot/kron", "rte")
    assert len(cell.configs) == 2 and cell.chosen.n == 3  # 3 seeds, not 6 runs of "one setup"
    assert cell.chosen.settings["optim.lr"] == 5e-3
    assert cell.chosen.stat() == pytest.approx((0.70, 0.01))
    assert cell.varying == ["optim.lr"] and cell.shown(["optim.lr"]) == {"optim.lr": 5e-3}
    assert cell.complete


def test_benchmark_scores_from_the_selected_rows(tmp_path):
    for seed in (1, 2):
        fake_run(tmp_path, "mrpc", seed, 0.80 + 0.1 * (seed - 1))  # 0.8, 0.9
        fake_run(tmp_path, "cola", seed, 0.50)
        fake_run(tmp_path, "cola", seed, 0.10, lr=5e-3)  # a worse grid point: not in the score
        fake_run(tmp_path, "copa", seed, 0.60)
        fake_run(tmp_path, "rte", seed, 0.90, method=LORA)
    sel = select(read_runs(tmp_path))
    glue = sel.macro("minilm", "aot/kron", "glue")
    assert glue.mean == pytest.approx((0.85 + 0.50) / 2)
    assert glue.std == pytest.approx(math.sqrt(statistics.stdev([0.8, 0.9]) ** 2 + 0) / 2)
    assert glue.tasks == ["cola", "mrpc"] and len(glue.missing) == 7 and not glue.complete
    mrpc = sel.cell("minilm", "aot/kron", "mrpc").chosen
    assert mrpc.stat("f1") == pytest.approx((0.90, statistics.stdev([0.85, 0.95])))
    assert sel.macro("minilm", "aot/kron", "superglue").mean == pytest.approx(0.60)
    assert sel.macro("minilm", "lora", "glue").mean == pytest.approx(0.90)
    assert sel.setups == ["aot/kron", "lora"] and sel.tasks == ["cola", "mrpc", "rte", "copa"]


def test_a_sweeps_macro_averages_the_tasks_it_trains_across_benchmarks(tmp_path):
    """benchmarks=[sweep]: one score over the sweep's tasks (the study's 7 cross GLUE and SuperGLUE), in its own
    column, the majority class averaged the same way; a wrong name or no sweep is a one-line error."""
    study = _benchmarks(["sweep"], load_sweep("study_minilm"))
    assert [(b.key, b.label, b.tasks) for b in study] == [
        ("macro", "Macro", ("cola", "mrpc", "stsb", "rte", "cb", "copa", "wic"))
    ]
    for seed in (1, 2):
        fake_run(tmp_path / "runs", "mrpc", seed, 0.80 + 0.1 * (seed - 1))  # 0.8, 0.9
        fake_run(tmp_path / "runs", "cola", seed, 0.50)
        fake_run(tmp_path / "runs", "copa", seed, 0.60)
    macro = sweep_benchmark(["mrpc", "cola", "copa", "rte"])
    sel = select(read_runs(tmp_path / "runs"), benchmarks=[macro])
    m = sel.macro("minilm", "aot/kron", "macro")
    assert m.mean == pytest.approx((0.85 + 0.50 + 0.60) / 3) and m.missing == ["rte"]
    assert sel.macro("minilm", "aot/kron", "glue") is None  # only the benchmarks asked for
    with pytest.raises(
        ConfigError, match=r"^benchmarks='gleu' is not a benchmark score; accepted: glue, superglue, sweep$"
    ):
        _benchmarks(["glue", "gleu"], None)
    with pytest.raises(ConfigError, match=r"^benchmarks=\[sweep\] needs sweep="):
        _benchmarks(["sweep"], None)
    _report(tmp_path, benchmarks=["glue"], figure_formats=[], data_dir=str(FIXTURES))
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| setup | params % | cola | mrpc | copa | GLUE |" in md and "SuperGLUE" not in md.split("## Figures")[0]


def test_debug_shortened_unfinished_and_unidentified_runs_are_listed_not_used(tmp_path):
    fake_run(tmp_path, "cb", 1, 0.70)
    fake_run(tmp_path, "cb", 2, 0.99, run_name="debug-cb-minilm-aot")
    fake_run(tmp_path, "cb", 3, 0.99, trainer={"limit_train_batches": 4})
    fake_run(tmp_path, "cb", 4, 0.99, trainer={"max_steps": 10})
    fake_run(tmp_path, "cb", 5, 0.99, trainer={"fast_dev_run": True})
    fake_run(tmp_path, "cb", 6, 0.99, trainer={"overfit_batches": 2})
    fake_run(tmp_path, "cb", 7, 0.99, data={"limit_examples": 16})
    fake_run(tmp_path, "cb", 8, 0.99, trainer={"limit_val_batches": 1})  # one batch (an int), not all (1.0)
    fake_run(tmp_path, "cb", 9, 0.70, trainer={"limit_val_batches": 1.0, "max_steps": -1, "fast_dev_run": False})
    fake_run(tmp_path, "cb", 10, 0.10, status="failed", error="RuntimeError: CUDA out of memory\nmore")
    fake_run(tmp_path, "cb", 11, 0.10, status="running")
    fake_run(tmp_path, "cb", 12, 0.99, identity=False)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{")
    runs = read_runs(tmp_path)
    states = {r.seed: (r.state, r.reason) for r in runs if r.seed}
    assert [s for s, (state, _) in states.items() if state == "excluded"] == [2, 3, 4, 5, 6, 7, 8]
    assert states[3][1] == "shortened: trainer.limit_train_batches=4"
    assert states[7][1] == "shortened: data.limit_examples=16"
    assert states[9][0] == "included" and states[1][0] == "included"
    assert states[10] == ("failed", "RuntimeError: CUDA out of memory")
    assert states[11][0] == "running" and states[12][0] == "unidentified"
    assert [r.state for r in runs if r.path == "broken"] == ["unreadable"]
    cell = select(runs).cell("minilm", "aot/kron", "cb")
    assert cell.chosen.n == 1 and cell.chosen.stat()[0] == pytest.approx(0.70)  # seed 9 differs in trainer settings
    assert [r.seed for r in cell.unfinished] == [10, 11] and "1 failed, 1 running run(s)" in cell.problems


def test_completed_only_leaves_unfinished_runs_out_of_the_report(tmp_path):
    """`completed_only=true` (the study's committed page): a run still going, killed or failed is not listed,
    so the page built beside a running sweep equals the one built from the committed (completed) runs."""
    fake_run(tmp_path / "runs", "cb", 1, 0.70)
    fake_run(tmp_path / "runs", "cb", 2, 0.10, status="running")
    fake_run(tmp_path / "runs", "cb", 3, 0.10, status="interrupted")
    fake_run(tmp_path / "runs", "cb", 4, 0.10, status="failed", error="ValueError: boom")
    assert sorted(r.state for r in _report(tmp_path / "all", runs_dir=str(tmp_path / "runs")).runs) == [
        "failed", "included", "interrupted", "running"
    ]  # fmt: skip
    only = _report(tmp_path / "only", runs_dir=str(tmp_path / "runs"), completed_only=True)
    assert [(r.seed, r.state) for r in only.runs] == [(1, "included")]
    assert "Not used" not in (tmp_path / "only" / "out" / "report.md").read_text().split("## Results")[0]


def test_incomplete_grids_are_marked_and_half_finished_configs_cannot_win(tmp_path):
    for seed in (1, 2, 3):
        fake_run(tmp_path, "rte", seed, 0.60)
    fake_run(tmp_path, "rte", 1, 0.95, lr=5e-3)  # one lucky seed of another config
    for seed in (1, 2, 3):
        fake_run(tmp_path, "copa", seed, 0.55)
    sel = select(read_runs(tmp_path))
    rte = sel.cell("minilm", "aot/kron", "rte")
    assert rte.chosen.settings["optim.lr"] == 1e-3 and rte.chosen.stat()[0] == pytest.approx(0.60)
    assert rte.problems == ["1 of 2 configs have fewer than 3 seeds"] and not rte.complete
    assert sel.cell("minilm", "aot/kron", "copa").complete
    glue = sel.macro("minilm", "aot/kron", "glue")
    assert glue.incomplete == ["rte"] and not glue.complete


def test_incomplete_cells_are_explained_once_per_reason_not_once_per_cell(tmp_path):
    """A grid with one seed of three in marks every cell for the same reason: the table says so in one line
    (a study's page had 56 identical footnotes), and a reason of some cells names them per setup."""
    from aotpt.report.tables import problems

    runs = tmp_path / "runs"
    for task in ("rte", "mrpc", "cb"):
        for method in (AOT, LORA):
            for seed in (1, 2, 3):
                fake_run(runs, task, seed, 0.6, method=method)
            fake_run(runs, task, 1, 0.5, method=method, lr=5e-3)  # a second config, one seed of three in
    reason = "1 of 2 configs have fewer than 3 seeds"
    assert problems(_report(tmp_path, benchmarks=[]), "minilm") == [f"every cell: {reason}"]

    for seed in (2, 3):  # AoT's second config finished on RTE
        fake_run(runs, "rte", seed, 0.5, lr=5e-3)
    expected = f"aot/kron on mrpc, cb; lora on every task: {reason}"
    assert problems(_report(tmp_path, benchmarks=[]), "minilm") == [expected]


def test_cells_marked_for_several_reasons_are_named_once():
    """The study's page named its 34 unfinished cells twice, once for "2 of 3 runs of the sweep not finished" and
    again for "fewer than 2 seeds": the same cells get one line with both reasons; other cells keep their own."""
    from types import SimpleNamespace as NS

    from aotpt.report.tables import problems

    unfinished, seeds = "2 of 3 runs of the sweep not finished", "1 of 1 configs have fewer than 2 seeds"
    marks = {("aot", "rte"): [unfinished, seeds], ("aot", "cb"): ["1 of 3 runs of the sweep not finished"],
             ("lora", "rte"): [unfinished, seeds], ("lora", "cb"): [unfinished, seeds]}  # fmt: skip
    cells = [NS(backbone="minilm", setup=s, task=t, problems=p) for (s, t), p in marks.items()]
    report = NS(selection=NS(tasks=["rte", "cb"], cells=cells, macros=[]))
    assert problems(report, "minilm") == [
        f"aot on rte; lora on every task: {unfinished}; {seeds}",
        "aot on cb: 1 of 3 runs of the sweep not finished",
    ]
    for cell in cells:
        cell.problems = [unfinished, seeds]
    assert problems(report, "minilm") == [f"every cell: {unfinished}; {seeds}"]


def test_registry_names_never_class_names(tmp_path):
    fake_run(tmp_path, "rte", 1, 0.6, method=PTV2)
    legacy = {"_target_": "aotpt.methods.ptuning_v2.PtuningV2Config", "length": 20}  # first results format
    fake_run(tmp_path, "rte", 2, 0.6, method={**legacy, "name": "ptuning_v2"})
    assert {r.setup for r in read_runs(tmp_path)} == {"ptuning_v2"}


def _report(tmp_path: Path, **options) -> dict:
    cfg = {"runs_dir": str(tmp_path / "runs"), "out_dir": str(tmp_path / "out"), **options}
    return report.run(OmegaConf.merge(OmegaConf.load(REPO / "conf" / "report.yaml"), cfg))


def _grid(root: Path) -> None:
    for model in ("minilm", "roberta_base"):
        for seed in (1, 2, 3):
            for i, task in enumerate(("rte", "mrpc", "cb")):
                fake_run(root, task, seed, 0.6 + 0.01 * seed + 0.05 * i, model=model)
                fake_run(root, task, seed, 0.5 + 0.01 * seed, model=model, method=LORA, params=100_000)
                fake_run(root, task, seed, 0.5, model=model, method=LORA, lr=5e-3, params=100_000)


def test_report_files_are_complete_deterministic_and_free_of_absolute_paths(tmp_path, monkeypatch):
    _grid(tmp_path / "runs")
    fake_run(tmp_path / "runs", "rte", 4, 0.1, status="failed", error="ValueError: boom")
    fake_run(tmp_path / "runs", "cola", 1, 0.6, threads=1, wall=3000.0)
    fake_run(tmp_path / "pilot", "rte", 1, 0.55, lr=1e-3)
    fake_run(tmp_path / "pilot", "rte", 1, 0.65, lr=5e-3)
    monkeypatch.chdir(tmp_path)
    options = {"runs_dir": "runs", "pilot_dir": "pilot", "data_dir": str(FIXTURES), "commands": ["make study"]}
    report.run(OmegaConf.merge(OmegaConf.load(REPO / "conf" / "report.yaml"), {**options, "out_dir": "a"}))
    report.run(OmegaConf.merge(OmegaConf.load(REPO / "conf" / "report.yaml"), {**options, "out_dir": "b"}))
    files = sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*") if p.is_file())
    for name in ("report.md", "report.tex", "report.json", "tables/scores.csv", "tables/macro.csv"):
        assert name in files
    for name in ("tables/params.csv", "tables/runs.csv", "tables/pilot.csv", "tables/majority.csv"):
        assert name in files
    for figure in ("macro", "params", "backbones", "tasks_minilm", "tasks_roberta_base"):
        assert f"figures/{figure}.png" in files and f"figures/{figure}.csv" in files
        assert (tmp_path / "a" / "figures" / f"{figure}.png").read_bytes()[:4] == b"\x89PNG"
    for name in files:
        if not name.endswith(".png"):
            text = (tmp_path / "a" / name).read_text()
            assert text == (tmp_path / "b" / name).read_text().replace("out_dir=b", "out_dir=a"), name
            assert str(tmp_path) not in text and "/tmp" not in text, name
    md = (tmp_path / "a" / "report.md").read_text()
    assert "| aot/kron |" in md and "**" in md and "Built from 55 of the 56 runs" in md
    # the wall time is read beside the machine it ran on ("not recorded" for records from before `machine`)
    cola = [line for line in md.splitlines() if line.startswith("| minilm | aot/kron | cola |")]
    assert len(cola) == 1 and cola[0].replace(" ", "").endswith("|50.0|aCPU,1thread|"), cola
    runs_csv = (tmp_path / "a" / "tables" / "runs.csv").read_text().splitlines()
    assert [line for line in runs_csv if "cola" in line][0].endswith(',3000.0,1,"a CPU, 1 thread",744034')
    assert "1 failed" in md and "ValueError: boom" in md and "make study" in md
    assert "majority class" in md and "## Pilot" in md and "![" in md
    # the macro figure draws the majority class averaged like each benchmark column (its CSV holds the line)
    majority_row = next(line for line in md.splitlines() if line.startswith("| majority class |"))
    glue_majority = majority_row.split("|")[-3].split()[0]  # the GLUE column: "<mean> (k/n)"
    figure_rows = (tmp_path / "a" / "figures" / "macro.csv").read_text().splitlines()
    assert any(r.startswith("minilm,majority class,glue,") and f"{float(r.split(',')[3]):.1f}" == glue_majority
               for r in figure_rows), (glue_majority, figure_rows)  # fmt: skip
    # check=true rebuilds in memory and names what would change; the discussion block is not generated
    checked = {**options, "out_dir": "a", "check": True}
    page = tmp_path / "a" / "report.md"
    page.write_text(page.read_text().replace("<!-- discussion:end -->", "Hand-written.\n<!-- discussion:end -->"))
    report.run(OmegaConf.merge(OmegaConf.load(REPO / "conf" / "report.yaml"), checked))
    (tmp_path / "a" / "figures" / "macro.csv").write_text("edited")
    with pytest.raises(ConfigError, match=r"check=true: rebuilding the report changes a/figures/macro.csv;"):
        report.run(OmegaConf.merge(OmegaConf.load(REPO / "conf" / "report.yaml"), checked))
    tex = (tmp_path / "a" / "report.tex").read_text()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex and "ptuning" not in tex


def test_minutes_per_run_compare_setups_on_one_machine_and_one_mix_of_tasks(tmp_path):
    """Seed 1 of both setups ran on one CPU, LoRA's seed 2 on one three times slower (the study's seeds did):
    the compute table must not read the slower machine as the slower method."""
    runs = tmp_path / "runs"
    for task, minutes in (("rte", 20), ("cb", 10)):
        fake_run(runs, task, 1, 0.6, threads=1, wall=60.0 * minutes, cpu="Xeon")
        fake_run(runs, task, 1, 0.5, method=LORA, params=100_000, threads=1, wall=60.0 * minutes, cpu="Xeon")
        fake_run(runs, task, 2, 0.5, method=LORA, params=100_000, threads=1, wall=180.0 * minutes, cpu="EPYC")
    fake_run(runs, "mrpc", 1, 0.5, method=LORA, params=100_000, threads=1, wall=60.0 * 30, cpu="EPYC")
    _report(tmp_path, figure_formats=[])
    params = {row[1]: row for row in csv.reader((tmp_path / "out/tables/params.csv").read_text().splitlines())}
    assert params["aot/kron"][5:] == ["Xeon, 1 thread", "2", "2", "900.0", "0.50"]  # (20 + 10) / 2 min on Xeon
    assert params["lora"][5:] == ["Xeon, 1 thread", "2", "3", "900.0", "2.50"]  # mrpc ran on EPYC only: 2/3 tasks
    md = (tmp_path / "out" / "report.md").read_text()
    compute = md.split("## Trainable parameters and compute")[1].split("##")[0]
    rows = {line.split("|")[2].strip(): [c.strip() for c in line.split("|")[6:8]] for line in compute.splitlines()
            if line.startswith("| minilm |")}  # fmt: skip
    assert rows == {"aot/kron": ["15.0", "0.50"], "lora": ["15.0 (2/3)", "2.50"]}, rows
    assert "on Xeon, 1 thread, the machine that ran 4 of the 7 runs" in compute
    assert "runs on others (EPYC, 1 thread: 3) count only in hours in all" in compute


def test_summary_fills_the_readme_block_with_the_averaged_scores_and_stays_checked(tmp_path):
    """summary=README.md: the block between the page's markers gets the averaged columns, the macro figure and a
    link to the page, the rest of the file untouched; check=true holds it to the runs; no block: a one-line error."""
    _grid(tmp_path / "runs")
    readme = tmp_path / "README.md"
    begin, end = "<!-- summary of out/report.md: begin -->", "<!-- summary of out/report.md: end -->"
    readme.write_text(f"# Project\n\nBefore.\n\n{begin}\nold text\n{end}\n\nAfter.\n")
    (tmp_path / "plain.md").write_text("# no block\n")
    with pytest.raises(ConfigError, match=r"^summary=plain.md has no block to fill: it needs the lines <!-- summary"):
        _report_in(tmp_path, summary="plain.md")
    _report_in(tmp_path, summary="README.md", data_dir=str(FIXTURES))
    text = readme.read_text()
    block = text.split(begin)[1].split(end)[0]
    assert text.startswith("# Project\n\nBefore.\n\n") and text.endswith(f"{end}\n\nAfter.\n")
    assert "old text" not in block and "Built from 54 of the 54 runs found under `runs`" in block
    assert "[out/report.md](out/report.md)" in block and "![macro scores](out/figures/macro.png)" in block
    assert "| setup | params % | GLUE | SuperGLUE |" in block and "| majority class |" in block
    assert "| rte |" not in block  # per-task columns stay on the page
    _report_in(tmp_path, summary="README.md", data_dir=str(FIXTURES), check=True)
    readme.write_text(text.replace("| lora |", "| LoRA |"))
    with pytest.raises(ConfigError, match=r"check=true: rebuilding the report changes .*README.md"):
        _report_in(tmp_path, summary="README.md", data_dir=str(FIXTURES), check=True)


def _report_in(root: Path, **options) -> None:
    """The report run from `root` with relative paths, as make study-page runs it from the repository."""
    cwd = Path.cwd()
    os.chdir(root)
    try:
        cfg = {"runs_dir": "runs", "out_dir": "out", **options}
        report.run(OmegaConf.merge(OmegaConf.load(REPO / "conf" / "report.yaml"), cfg))
    finally:
        os.chdir(cwd)


def test_discussion_block_survives_regeneration(tmp_path):
    _grid(tmp_path / "runs")
    _report(tmp_path, figure_formats=[])
    page = tmp_path / "out" / "report.md"
    text = page.read_text()
    begin, end = "<!-- discussion:begin -->", "<!-- discussion:end -->"
    assert begin in text and end in text
    mine = "\nAoT wins on RTE; kron and fc differ by 0.3 points.\n"
    page.write_text(text.split(begin)[0] + begin + mine + end + text.split(end)[1])
    _report(tmp_path, figure_formats=[])
    assert page.read_text() == text.split(begin)[0] + begin + mine + end + text.split(end)[1]


def test_majority_class_row_from_dev_labels(tmp_path):
    from aotpt.report.baseline import majority_scores

    scores = majority_scores(["rte", "cola", "stsb", "copa"], FIXTURES)
    assert 0.5 <= scores["rte"]["score"] <= 1 and scores["cola"]["score"] == 0.0  # MCC of a constant
    assert "stsb" not in scores  # a constant has no correlation
    assert 0 < scores["copa"]["score"] <= 1


def test_empty_runs_dir_is_a_one_line_error(tmp_path):
    (tmp_path / "runs").mkdir()
    with pytest.raises(ConfigError, match="no results.json"):
        _report(tmp_path)


def test_cli_prints_the_table_and_writes_the_report(tmp_path):
    fake_run(tmp_path / "runs", "cb", 1, 0.8)
    proc = subprocess.run(
        [sys.executable, "-m", "aotpt.report", f"runs_dir={tmp_path / 'runs'}", f"out_dir={tmp_path / 'out'}"]
        + ["figure_formats=[]"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "superglue 80.00 ± 0.00 over 1/8 tasks" in proc.stdout
    assert (tmp_path / "out" / "report.md").is_file() and not list(tmp_path.glob("*.log"))


# -- end to end: a real two-job multirun of the paper sweep (narrowed to a tiny model), then its report --------------

NARROW = ["model=tiny_bert", "task=rte", "seed=1", "method=aot,bitfit", "reparam=kron", "optim.lr=0.001"]
NARROW += ["++trainer.max_epochs=2", f"data_dir={FIXTURES}", "trainer=cpu", "logger=csv", "data.num_workers=0"]
NARROW += ["data.batch_size=4"]


def _needs_identity():
    pytest.importorskip("aotpt.identity", reason="results.json names run identities once the run-lifecycle work lands")


def _check_report(root: Path, out: Path) -> None:
    cfg = {
        "runs_dir": str(root / "logs" / "multiruns" / "paper_minilm"),
        "out_dir": str(out),
        "sweep": "paper_minilm",
        "sweep_overrides": NARROW,
        "data_dir": str(FIXTURES),
        "figure_formats": ["png", "pdf"],
    }
    rep = report.run(OmegaConf.merge(OmegaConf.load(REPO / "conf" / "report.yaml"), cfg))
    assert [(c.setup, c.task, c.chosen.n) for c in rep.selection.cells] == [
        ("aot/kron", "rte", 1),
        ("bitfit", "rte", 1),
    ]
    md = (out / "report.md").read_text()
    assert "Built from 2 of the 2 runs of the sweep `paper_minilm`" in md
    for name in ("report.tex", "report.json", "tables/scores.csv", "tables/macro.csv", "tables/params.csv"):
        assert (out / name).is_file(), name
    for figure in ("macro", "params", "tasks_tiny_bert"):
        for ext in ("png", "pdf", "csv"):
            assert (out / "figures" / f"{figure}.{ext}").stat().st_size > 0


def test_two_jobs_of_the_paper_sweep_in_process_then_the_report(tmp_path):
    """The fast version: the sweep's jobs (as GridsSweeper expands them) run in-process, then the report."""
    _needs_identity()
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict, read_write

    from aotpt import train
    from aotpt.cli import CONF_DIR
    from aotpt.sweeps import SWEEPS_DIR, sweep_jobs

    jobs = sweep_jobs("paper_minilm", NARROW)
    assert len(jobs) == 2
    for job in jobs:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(SWEEPS_DIR), version_base="1.3"):
            overrides = [f"hydra.searchpath=[file://{CONF_DIR}]", *job, f"paths.root_dir={tmp_path}"]
            cfg = compose("paper_minilm", overrides=overrides, return_hydra_config=True)
        GlobalHydra.instance().clear()
        HydraConfig.instance().set_config(cfg)
        with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
            cfg.hydra.runtime.output_dir = str(Path(cfg.hydra.sweep.dir) / str(cfg.hydra.sweep.subdir))
        HydraConfig.instance().set_config(cfg)
        with read_write(cfg), open_dict(cfg):
            del cfg["hydra"]
        assert train.run(cfg)["status"] == "completed"
    _check_report(tmp_path, tmp_path / "report")


@pytest.mark.slow
def test_two_job_hydra_multirun_of_the_paper_sweep_then_the_report(tmp_path):
    """`python -m aotpt.train -m` through the grids sweeper and Hydra's launcher, then the report in every format."""
    _needs_identity()
    cmd = [sys.executable, "-m", "aotpt.train", "-m", "--config-dir", "sweeps", "--config-name", "paper_minilm"]
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [*cmd, *NARROW, f"paths.root_dir={tmp_path}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Launching 2 jobs locally" in proc.stdout + proc.stderr
    _check_report(tmp_path, tmp_path / "report")
