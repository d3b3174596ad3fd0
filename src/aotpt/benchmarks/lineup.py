"""Who runs in suite=inference, built from `conf/inference/*.yaml`: the contenders of the method grid and of the
mixed-task cell, the AoT tables within the memory budget, and what was skipped (with why and what it needs).

    grid  : bare, bare_again, aot (device), aot_before, ptuning_v2_p{8,32,128}, ptuning_v1_p20,
            lora_merged, lora_unmerged, adapter, bare_compiled, aot_compiled              (one task)
    mixed : bare, bare_again, aot_{device,host,onthefly,before}_T{t}, lora_unmerged, lora_mixed_T{t}

One stacked table per serving mode, of the most tasks that fit (`cap_tasks`),
serves every T up to it: a batch of T tasks reads tasks 0..T-1. On a CPU the
old path (`aot_before`) reads the host mode's table (same layout, same
memory); on an accelerator it has its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig, OmegaConf

from aotpt.benchmarks import contenders as C
from aotpt.benchmarks.costs import table_bytes
from aotpt.benchmarks.fabricate import memory_artifacts
from aotpt.benchmarks.reference import RowMajorTable
from aotpt.cli import log
from aotpt.methods.adapter import AdapterConfig
from aotpt.methods.aot.artifact import DTYPES as TABLE_DTYPES
from aotpt.methods.aot.artifact import nbytes
from aotpt.methods.lora import LoraConfig
from aotpt.serving import build_source
from aotpt.serving.cache import BOOKKEEPING

GB = 1e9
MODE_METHOD = {"device": "aot", "host": "aot_host", "onthefly": "aot_onthefly", "before": "aot_before"}


@dataclass
class Lineup:
    grid: list[C.Contender] = field(default_factory=list)
    mixed: list[C.Contender] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {section, name, reason[, bytes_needed]}
    tables: dict[str, dict] = field(default_factory=dict)  # mode -> {tasks, bytes, location}


def build(ic: DictConfig, backbone: torch.nn.Module, device: torch.device) -> Lineup:
    lineup = Lineup()
    for section in (lineup.grid, lineup.mixed):
        section += [C.bare(backbone), C.bare(backbone, "bare_again")]
    _aot(ic, backbone, device, lineup)
    grid_bare = lineup.grid[0]
    lineup.grid += [C.ptuning_v2_prefix(backbone, p) for p in ic.ptuning_v2]
    lineup.grid.append(C.ptuning_v1_prompt(backbone, ic.ptuning_v1))
    lora_cfg = LoraConfig(**OmegaConf.to_container(ic.lora, resolve=True))
    unmerged = C.lora_single(backbone, lora_cfg, merged=False)
    lineup.grid += [C.lora_single(backbone, lora_cfg, merged=True), unmerged]
    lineup.grid.append(C.houlsby(backbone, AdapterConfig(**OmegaConf.to_container(ic.adapter, resolve=True))))
    lineup.mixed.append(unmerged)  # LoRA's one-task point beside its mixed batches
    for tasks in sorted(t for t in ic.mixed.tasks if t > 1):
        try:
            lineup.mixed.append(C.lora_mixed(backbone, tasks, lora_cfg))
        except C.Skip as why:
            lineup.skipped.append({"section": "mixed", "name": f"lora_mixed_T{tasks}", "reason": str(why)})
    if ic.compile.backend:
        aot_one = [c for c in lineup.grid if c.name == "aot"]
        lineup.grid += [C.compiled(c, ic.compile.backend) for c in [grid_bare, *aot_one]]
    return lineup


def _aot(ic: DictConfig, backbone: torch.nn.Module, device: torch.device, lineup: Lineup) -> None:
    """Fabricate the tasks, cap T per mode by the memory budget, build one hooked backbone per mode."""
    config = backbone.config
    vocab, layers, hidden = config.vocab_size, config.num_hidden_layers, config.hidden_size
    itemsize = TABLE_DTYPES[ic.table_dtype].itemsize
    mixed_tasks = sorted(set(ic.mixed.tasks))
    modes = list(ic.mixed.modes)
    wanted = {"device": sorted({1, *(mixed_tasks if "device" in modes else [])})}
    wanted.update({mode: mixed_tasks for mode in ("host", "onthefly") if mode in modes})
    share_host = ic.before and device.type == "cpu" and "host" in wanted
    if ic.before and not share_host:
        wanted["before"] = wanted["device"]
    where = {mode: "cpu" if mode == "host" else device.type for mode in wanted}
    one = memory_artifacts(backbone, OmegaConf.to_container(ic.aot, resolve=True), 1, ic.table_dtype)[0]
    # the onthefly cache's budget in bytes: cache_rows rows and their keys and stamps (aotpt.serving.cache)
    weights, cache = nbytes(one.weights.values()), ic.cache_rows * (layers * hidden * itemsize + BOOKKEEPING)

    def need(mode: str, tasks: int) -> int:
        return tasks * weights + cache if mode == "onthefly" else table_bytes(vocab, layers, hidden, tasks, itemsize)

    budgets = {"cpu": ic.memory_budget_gb.host * GB, device.type: ic.memory_budget_gb.device * GB}
    if device.type == "cpu":
        budgets = {"cpu": ic.memory_budget_gb.host * GB}
    caps, refused = C.cap_tasks(wanted, where, need, budgets)
    if share_host:
        caps["before"], where["before"] = caps["host"], "cpu"
        wanted["before"] = wanted["device"]
        refused += [{**r, "mode": "before", "shares": "host"} for r in refused if r["mode"] == "host"]
    for r in refused:
        held, budget = r["held_bytes"] / GB, r["budget_bytes"] / GB
        reason = (
            f"needs {r['bytes_needed'] / GB:.2f} GB on {r['location']}; {held:.2f} of its {budget:.2f} GB budget held"
        )
        if r.get("shares"):
            reason += " (reads the host mode's table)"
        for section, name in _names(r["mode"], r["tasks"]):
            lineup.skipped.append(
                {"section": section, "name": name, "reason": reason, "bytes_needed": r["bytes_needed"]}
            )
    most = max(caps.values(), default=0)
    if not most:
        return
    log.info(
        "AoT: %d random tasks (%s, %s tables); tables per mode: %s", most, ic.aot.reparam.name, ic.table_dtype, caps
    )
    artifacts = memory_artifacts(backbone, OmegaConf.to_container(ic.aot, resolve=True), most, ic.table_dtype)
    dtype = next(backbone.parameters()).dtype
    sources = {}
    for mode in ("device", "host", "onthefly"):
        if caps.get(mode):
            sources[mode] = build_source(mode, artifacts[: caps[mode]], backbone, cache if mode == "onthefly" else 0)
    if caps.get("before"):
        host = sources.get("host")
        if share_host:
            sources["before"] = RowMajorTable(host.table, layers, hidden, dtype)
        else:
            sources["before"] = RowMajorTable.stack(artifacts[: caps["before"]], device, dtype)
    options = {"rank": getattr(ic.aot.reparam, "rank", 0), "reparam": ic.aot.reparam.name}
    for mode, source in sources.items():
        model = C.hooked(backbone, source)
        lineup.tables[mode] = {"tasks": caps[mode], "bytes": need(mode, caps[mode]), "location": where[mode]}
        for tasks in (t for t in wanted[mode] if t <= caps[mode]):
            for section, name in _names(mode, tasks):
                contender = C.aot(model, name, MODE_METHOD[mode], tasks, need(mode, tasks), options)
                (lineup.grid if section == "grid" else lineup.mixed).append(contender)


def _names(mode: str, tasks: int) -> list[tuple[str, str]]:
    """(section, contender name) of an AoT mode at T tasks: the grid times the device and old paths at one task."""
    names = [("mixed", f"aot_{mode}_T{tasks}")]
    if tasks == 1 and mode in ("device", "before"):
        names.insert(0, ("grid", "aot" if mode == "device" else "aot_before"))
    return names
