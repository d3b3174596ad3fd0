"""What suite=inference times: the bare backbone and each method, each a forward of one batch to the last hidden
states, built around one backbone whose weights every contender shares.

Each contender is a structural copy of the backbone (`share_weights`: new
modules, the same parameter tensors), so twenty contenders of DeBERTa-v2-
xlarge hold one set of weights; a method then attaches to its copy as in
training. Heads are left out: every method needs one, and the same one.
Random method weights (std 0.02) stand in for trained ones: LoRA's B and the
adapters' up-projections would otherwise be zero and their tasks identical.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn
from transformers import PreTrainedModel

from aotpt.methods import adapter, lora, ptuning_v1, ptuning_v2
from aotpt.methods.aot.hooks import AotHooks


class Batch(NamedTuple):
    ids: torch.Tensor  # (B, n) token ids
    mask: torch.Tensor  # (B, n) attention mask
    task_ids: torch.Tensor  # (B,) each row's task, 0 .. T-1, on the device
    tasks: list[int] | None = None  # the same on the host (what a server knows from its requests)


@dataclass
class Contender:
    """One timed setting: `run(batch)` -> last hidden states (B, n, d)."""

    name: str
    method: str  # cost model and plot label: bare, aot, aot_host, aot_onthefly, aot_before, ptuning_v2, ...
    run: Callable[[Batch], torch.Tensor]
    tasks: int = 1  # distinct tasks in a batch (T <= batch size)
    options: dict = field(default_factory=dict)  # sizes the analytic cost needs (length, rank, ...)
    held_bytes: int = 0  # memory the setting holds beside the shared backbone (tables, weights, cache)
    extra_positions: int = 0  # positions it adds to every sequence (the soft prompt)
    model: nn.Module | None = None  # what `run` calls (its AoT hooks, the module torch.compile wraps)
    stats: dict = field(default_factory=dict)  # counters `run` keeps (onthefly cache hits), reported per cell
    compile_info: dict | None = None  # torch.compile variants: backend, graphs compiled so far


class Skip(Exception):
    """A contender that cannot run in this setting; the message says why (it is reported, never dropped)."""


def share_weights(backbone: nn.Module) -> nn.Module:
    """A copy of `backbone` with its own modules (hooks, attached methods) over the same parameter and buffer
    tensors: no second copy of the weights."""
    memo = {id(t): t for t in (*backbone.parameters(), *backbone.buffers())}
    return copy.deepcopy(backbone, memo)


def _placed(model: nn.Module, backbone: nn.Module) -> nn.Module:
    """`model` (a copy of `backbone` with a method attached: its new modules are fp32 on the CPU) on the
    backbone's device and in its dtype, in eval mode; the shared weights are already there and stay shared."""
    reference = next(backbone.parameters())
    return model.to(reference.device, reference.dtype).eval()


def _new_bytes(model: nn.Module, backbone: nn.Module) -> int:
    """Bytes of the tensors `model` holds that `backbone` does not (what a method attached)."""
    shared = {id(t) for t in (*backbone.parameters(), *backbone.buffers())}
    held = model.state_dict(keep_vars=True).values()  # the tensors themselves, not detached copies
    return sum(t.numel() * t.element_size() for t in held if id(t) not in shared)


def _randomize(params, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=generator) * 0.02)


def _forward(model: nn.Module, batch: Batch) -> torch.Tensor:
    return model(input_ids=batch.ids, attention_mask=batch.mask).last_hidden_state


def bare(backbone: nn.Module, name: str = "bare") -> Contender:
    return Contender(name, "bare", lambda batch: _forward(backbone, batch), model=backbone)


def aot(model: nn.Module, name: str, method: str, tasks: int, held_bytes: int, options: dict) -> Contender:
    """A backbone carrying AoT hooks (`hooked`), serving batches of `tasks` tasks from its stacked source."""

    def run(batch: Batch) -> torch.Tensor:
        with model.aot.tasks(batch.task_ids):
            return _forward(model, batch)

    return Contender(name, method, run, tasks, options, held_bytes, model=model)


def hooked(backbone: nn.Module, source: nn.Module) -> nn.Module:
    """A weight-sharing copy of `backbone` with AoT hooks reading `source`."""
    model = share_weights(backbone)
    model.add_module("aot", AotHooks(model, source))
    return model


def compiled(contender: Contender, backend: str) -> Contender:
    """`torch.compile(dynamic=True)` of the contender's model, run inside the same context (AoT's task ids).

    The backend is wrapped to count the graphs it is handed (`compile_info`):
    one per compiled frame, so a graph break, or a recompilation for new
    shapes, shows up as more than one.
    """
    model, info = contender.model, {"backend": backend, "graphs_compiled": 0}
    real = torch._dynamo.lookup_backend(backend)

    def counting(graph, example_inputs):
        out = real(graph, example_inputs)  # may raise to make dynamo restart its analysis: not a graph (yet)
        info["graphs_compiled"] += 1
        return out

    fast = torch.compile(model, dynamic=True, backend=counting)

    def run(batch: Batch) -> torch.Tensor:
        if hasattr(model, "aot"):
            with model.aot.tasks(batch.task_ids):
                return _forward(fast, batch)
        return _forward(fast, batch)

    name = f"{contender.name}_compiled"
    return Contender(
        name, contender.method, run, 1, contender.options, contender.held_bytes, model=model, compile_info=info
    )


def ptuning_v2_prefix(backbone: nn.Module, length: int) -> Contender:
    model = share_weights(backbone)
    ptuning_v2.attach(model, ptuning_v2.PtuningV2Config(length=length, dropout=0.0))
    model = _placed(model, backbone)
    run = lambda batch: _forward(model, batch)  # noqa: E731
    name, held = f"ptuning_v2_p{length}", _new_bytes(model, backbone)
    return Contender(name, "ptuning_v2", run, options={"length": length}, held_bytes=held, model=model)


def ptuning_v1_prompt(backbone: nn.Module, length: int) -> Contender:
    model = share_weights(backbone)
    ptuning_v1.attach(model, ptuning_v1.PtuningV1Config(length=length))
    model = _placed(model, backbone)
    run = lambda batch: _forward(model, batch)  # noqa: E731
    name, held = f"ptuning_v1_p{length}", _new_bytes(model, backbone)
    return Contender(name, "ptuning_v1", run, options={"length": length}, held_bytes=held, extra_positions=length)


def houlsby(backbone: nn.Module, cfg: adapter.AdapterConfig) -> Contender:
    model = share_weights(backbone)
    trained = adapter.attach(model, cfg)
    _randomize([p for name, p in trained.items() if ".adapter." in name], seed=0)
    model = _placed(model, backbone)
    run = lambda batch: _forward(model, batch)  # noqa: E731
    return Contender("adapter", "adapter", run, options={"size": cfg.size}, held_bytes=_new_bytes(model, backbone))


def _lora(backbone: nn.Module, cfg: lora.LoraConfig, own_targets: bool = False) -> nn.Module:
    """A copy with LoRA on its targets, B random; `own_targets`: the targeted weights copied (merging writes them)."""
    model = share_weights(backbone)
    if own_targets:
        for name in lora.target_names(model, cfg):
            target = model.get_submodule(name)
            target.weight = nn.Parameter(target.weight.detach().clone(), requires_grad=False)
    trained = lora.attach(model, cfg)
    _randomize([p for name, p in trained.items() if ".lora_B." in name], seed=0)
    return _placed(model, backbone)


def _lora_options(backbone: nn.Module, cfg: lora.LoraConfig) -> dict:
    """LoRA's sizes for the analytic cost, read from the plain backbone (its targets are still nn.Linear)."""
    targets = len(lora.target_names(backbone, cfg)) // backbone.config.num_hidden_layers
    return {"rank": cfg.rank, "targets": targets}


def lora_single(backbone: nn.Module, cfg: lora.LoraConfig, merged: bool) -> Contender:
    """One LoRA task: unmerged (the A, B branch beside W_q, W_v) or merged into the weights (PEFT
    `merge_and_unload`: plain linear layers again, one backbone per task)."""
    model = _lora(backbone, cfg, own_targets=merged)
    options = _lora_options(backbone, cfg)
    held = _new_bytes(model, backbone)
    if merged:
        model = lora.tuner(model).merge_and_unload()
        held = 0  # the merged weights replace the backbone's: no memory beside it, but a backbone per task
    run = lambda batch: _forward(model, batch)  # noqa: E731
    name = "lora_merged" if merged else "lora_unmerged"
    return Contender(name, name, run, options=options, held_bytes=held, model=model)


def lora_mixed(backbone: nn.Module, tasks: int, cfg: lora.LoraConfig) -> Contender:
    """T LoRA adapters (distinct random B) beside one backbone; each row of a batch runs its task's adapter
    (PEFT `adapter_names`, through the tuner `aotpt.methods.lora` keeps)."""
    config = backbone.config
    if config.model_type == "deberta-v2" and getattr(config, "share_att_key", False):
        raise Skip(
            "PEFT adapter_names cannot split DeBERTa-v2's query/key projections of the shared relative embeddings"
        )
    model = _lora(backbone, cfg)
    tuner = lora.tuner(model)
    names = [lora.ADAPTER] + [f"task{t}" for t in range(1, tasks)]
    for name in names[1:]:
        tuner.peft_config[name] = tuner.peft_config[lora.ADAPTER]
        tuner.inject_adapter(tuner.model, name)
    for seed, name in enumerate(names[1:], start=1):
        _randomize([p for n, p in model.named_parameters() if n.endswith(f"lora_B.{name}.weight")], seed)
    model = _placed(model, backbone).requires_grad_(False)

    def run(batch: Batch) -> torch.Tensor:
        rows = batch.tasks if batch.tasks is not None else batch.task_ids.tolist()
        with lora.tuner(model)._enable_peft_forward_hooks(adapter_names=[names[t] for t in rows]):
            return _forward(model, batch)

    options, held = _lora_options(backbone, cfg), _new_bytes(model, backbone)
    return Contender(f"lora_mixed_T{tasks}", "lora_mixed", run, tasks, options, held, model=model)


@torch.no_grad()
def distinct_outputs(contender: Contender, ids: torch.Tensor, mask: torch.Tensor) -> bool:
    """Do the T tasks of a mixed contender compute different things? One sequence, repeated T times, runs as
    tasks 0..T-1 and as task 0 throughout: row 0 must agree (within rounding) and the T rows of the first run must
    all differ from each other (by more than rounding)."""
    rows = contender.tasks
    same, same_mask = ids[:1].expand(rows, -1), mask[:1].expand(rows, -1)  # (T, n)
    own = torch.arange(rows, device=ids.device)
    mixed = contender.run(Batch(same, same_mask, own, own.tolist())).flatten(1).float()  # (T, n*d)
    zero = torch.zeros_like(own)
    first = contender.run(Batch(same, same_mask, zero, zero.tolist())).flatten(1).float()
    tolerance = 1e-3 * float(first[0].abs().max())  # rounding of a different batch composition (fp16 included)
    apart = (mixed[:, None] - mixed[None]).abs().amax(-1) + torch.eye(rows, device=mixed.device) * 2 * tolerance
    return float((mixed[0] - first[0]).abs().max()) <= tolerance and bool((apart > tolerance).all())


def cap_tasks(
    wanted: dict[str, list[int]], where: dict[str, str], need: Callable[[str, int], int], budgets: dict[str, int]
) -> tuple[dict[str, int], list[dict]]:
    """The most tasks each serving mode may stack within the memory budget of its location.

    Modes are served in the order of `where` (mode -> location: "cpu" or
    "cuda"); each mode takes its `wanted` T ascending while its table of
    `need(mode, T)` bytes fits beside what earlier modes hold there (one table
    of T tasks also serves every smaller T). Returns {mode: T_max (0: none
    fits)} and one entry per refused (mode, T) with the bytes it needs.
    """
    held = dict.fromkeys(budgets, 0)
    caps, skipped = {}, []
    for mode, location in where.items():
        caps[mode], holds, full = 0, 0, False
        for count in sorted(wanted[mode]):
            bytes_needed = need(mode, count)
            if not full and held[location] - holds + bytes_needed <= budgets[location]:
                held[location] += bytes_needed - holds
                caps[mode], holds = count, bytes_needed
                continue
            full = True
            skipped.append(
                {
                    "mode": mode,
                    "tasks": count,
                    "location": location,
                    "bytes_needed": bytes_needed,
                    "budget_bytes": budgets[location],
                    "held_bytes": held[location],
                }
            )
    return caps, skipped


def usable_positions(config) -> int | None:
    """Token positions a sequence may use (None: no absolute positions, as DeBERTa-v2 without
    position_biased_input); RoBERTa's positions start after its padding id."""
    if not getattr(config, "position_biased_input", True):
        return None
    offset = config.pad_token_id + 1 if config.model_type in ("roberta", "xlm-roberta") else 0
    return config.max_position_embeddings - offset


def backbone_bytes(backbone: PreTrainedModel) -> int:
    return sum(t.numel() * t.element_size() for t in (*backbone.parameters(), *backbone.buffers()))
