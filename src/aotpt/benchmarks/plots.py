"""suite=inference's PNG plots (matplotlib, no display needed).

inference_ratio_vs_length.png    ratio to the bare backbone vs sequence length: one panel per batch size,
                                 one line per contender of the method grid, IQR as error bars
inference_throughput_vs_tasks.png sequences/s vs tasks in a batch (mixed cell): AoT per serving mode and
                                 LoRA (unmerged at one task, then mixed adapters), the bare backbone as a line
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit
import matplotlib.pyplot as plt  # noqa: E402

# mixed-cell contenders by line: name prefix -> label
TASK_LINES = {
    "aot_device_T": "AoT device",
    "aot_host_T": "AoT host",
    "aot_onthefly_T": "AoT onthefly",
    "aot_before_T": "AoT before (old path)",
    "lora_mixed_T": "LoRA (T=1: unmerged; then mixed adapters)",
}


MARKERS = "osD^v<>pPX*h"


def _log2_ticks(ax, values: list[int]) -> None:
    """A log2 x axis labelled with the values themselves (64, 128, ...), not powers of two."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(values, [str(v) for v in values])
    ax.minorticks_off()


def _errors(rows: list[dict]) -> list[list[float]]:
    return [[r["ratio"] - r["ratio_q1"] for r in rows], [r["ratio_q3"] - r["ratio"] for r in rows]]


def ratio_vs_length(result: dict, path: Path) -> None:
    grid = [r for r in result["rows"] if r["section"] == "grid" and r["ratio"] is not None]
    batches = sorted({r["batch_size"] for r in grid})
    fig, axes = plt.subplots(1, max(1, len(batches)), figsize=(6 * max(1, len(batches)), 5), squeeze=False)
    names = list(dict.fromkeys(r["name"] for r in grid))
    colors = plt.get_cmap("tab20").colors  # 20 distinct colours: one per contender, the same in every panel
    for ax, batch in zip(axes[0], batches, strict=False):
        here = [r for r in grid if r["batch_size"] == batch]
        for k, name in enumerate(names):
            line = sorted((r for r in here if r["name"] == name), key=lambda r: r["seq_len"])
            if not line:
                continue
            look = {"color": colors[k % len(colors)], "marker": MARKERS[k % len(MARKERS)], "capsize": 3}
            look["linestyle"] = "--" if name.startswith("bare") else "-"
            ax.errorbar(
                [r["seq_len"] for r in line], [r["ratio"] for r in line], yerr=_errors(line), label=name, **look
            )
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set(title=f"batch {batch}", xlabel="sequence length (tokens)", ylabel="time / bare backbone")
        _log2_ticks(ax, sorted({r["seq_len"] for r in here}))
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(f"{result['model']} on {result['device']} ({result['dtype']}): ratio to the bare backbone")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def throughput_vs_tasks(result: dict, path: Path) -> None:
    mixed = [r for r in result["rows"] if r["section"] == "mixed"]
    fig, ax = plt.subplots(figsize=(7, 5))
    for prefix, label in TASK_LINES.items():
        line = [r for r in mixed if r["name"].startswith(prefix)]
        if prefix == "lora_mixed_T":
            line = [r for r in mixed if r["name"] == "lora_unmerged"] + line  # LoRA's one-task point
        line.sort(key=lambda r: r["tasks"])
        if line:
            ax.plot([r["tasks"] for r in line], [r["throughput"] for r in line], marker="o", label=label)
    for r in mixed:
        if r["name"] == "bare":
            ax.axhline(r["throughput"], color="black", linestyle="--", linewidth=0.8, label="bare backbone")
    cell = mixed[0]["cell"].replace("x", " x ") if mixed else ""
    ax.set(xlabel="tasks in a batch (T)", ylabel="sequences / s", title=f"{result['model']}, batch {cell}")
    _log2_ticks(ax, sorted({r["tasks"] for r in mixed}))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(result: dict, output_dir: str) -> list[str]:
    out = Path(output_dir)
    paths = [out / "inference_ratio_vs_length.png", out / "inference_throughput_vs_tasks.png"]
    ratio_vs_length(result, paths[0])
    throughput_vs_tasks(result, paths[1])
    return [str(p) for p in paths]
