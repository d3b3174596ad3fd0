"""suite=inference's tables: every row as CSV, and a markdown report to paste into the README.

Markdown sections: the method grid (ratio to the bare backbone per cell,
then throughput), the analytic cost per method, the mixed-task cell, torch.compile's graphs, the noise, and
everything skipped with the reason and the memory it would need.
"""

from __future__ import annotations

import csv
from pathlib import Path

# the CSV's columns: every scalar of a row (the per-round times stay in the JSON)
COLUMNS = [
    "section", "cell", "batch_size", "seq_len", "name", "method", "tasks", "rounds", "median_s", "q1_s", "q3_s",
    "ratio", "ratio_q1", "ratio_q3", "throughput", "extra_flops_per_token", "extra_bytes_per_token",
    "analytic_ratio", "held_bytes", "peak_bytes", "distinct_outputs", "cache_hit_rate",
]  # fmt: skip


def write(result: dict, output_dir: str) -> list[str]:
    """bench_inference.csv and bench_inference.md in `output_dir`; returns their paths."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "bench_inference.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(result["rows"])
    (out / "bench_inference.md").write_text(markdown(result) + "\n")
    return [str(out / "bench_inference.csv"), str(out / "bench_inference.md")]


def _ratio(row: dict) -> str:
    if row["ratio"] is None:
        return "1 (reference)"
    return f"{row['ratio']:.3f} ({row['ratio_q1']:.3f}–{row['ratio_q3']:.3f})"


def _table(head: list[str], lines: list[list[str]], text: int = 1) -> str:
    """A markdown table; the first `text` columns left-aligned, the rest (numbers) right-aligned."""
    rule = ["---"] * text + ["---:"] * (len(head) - text)
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [head, rule, *lines])


def _grid(result: dict, rows: list[dict]) -> str:
    """Per batch size: each contender's measured ratio beside its analytic one, per sequence length; then the
    throughput of every cell and the per-token costs behind the analytic ratios."""
    names = list(dict.fromkeys(r["name"] for r in rows))
    lengths = list(dict.fromkeys(r["seq_len"] for r in rows))
    at = {(r["name"], r["batch_size"], r["seq_len"]): r for r in rows}
    parts = [
        f"**Ratio to the bare backbone**: median (interquartile range) of {result['rounds']} per-round paired "
        "ratios, beside the analytic ratio; `bare_again` is the bare backbone timed as a second entry (the noise)"
    ]
    for batch in dict.fromkeys(r["batch_size"] for r in rows):
        head = ["method", *[h for n in lengths for h in (f"n={n}", "analytic")]]
        lines = []
        for name in names:
            cells = [at.get((name, batch, n)) for n in lengths]
            lines.append([name, *[v for r in cells for v in _ratio_and_analytic(r)]])
        parts += [f"batch {batch}:", _table(head, lines)]
    cells = list(dict.fromkeys((r["batch_size"], r["seq_len"]) for r in rows))
    speed = [
        [name, *[f"{at[(name, *c)]['throughput']:.1f}" if (name, *c) in at else "—" for c in cells]] for name in names
    ]
    parts += [
        "**Throughput** (sequences/s at the median time)",
        _table(["method", *[f"{b} x {n}" for b, n in cells]], speed),
    ]
    costs = []
    for name in names:
        first = next(r for r in rows if r["name"] == name)
        costs.append([name, f"{first['extra_flops_per_token']:,.0f}", f"{first['extra_bytes_per_token']:,.0f}"])
    parts += [
        f"**Analytic cost per token** beside the backbone's {result['backbone_flops_per_token']} FLOPs per token by "
        "length (at the first length for `ptuning_v1`, whose cost grows with n; `aot_onthefly`: every row computed)",
        _table(["method", "extra FLOPs/token", "extra bytes/token"], costs),
    ]
    return "\n\n".join(parts)


def _ratio_and_analytic(row: dict | None) -> list[str]:
    if row is None:
        return ["skipped", "—"]
    return [_ratio(row), f"{row['analytic_ratio']:.4f}"]


def _mixed(rows: list[dict]) -> str:
    head = ["contender", "T", "ratio (IQR)", "seq/s", "analytic", "holds MB", "peak MB", "distinct", "cache hits"]
    lines = []
    for r in rows:
        hits = f"{r['cache_hit_rate']:.0%}" if "cache_hit_rate" in r else ""
        distinct = {True: "yes", False: "NO"}.get(r.get("distinct_outputs"), "")
        lines.append(
            [
                r["name"], str(r["tasks"]), _ratio(r), f"{r['throughput']:.1f}", f"{r['analytic_ratio']:.4f}",
                f"{r['held_bytes'] / 1e6:,.1f}", f"{r['peak_bytes'] / 1e6:,.1f}", distinct, hits,
            ]
        )  # fmt: skip
    cell = rows[0]["cell"].replace("x", " x ") if rows else ""
    return f"**Mixed-task batches** (batch {cell}; rows take tasks 0..T-1 in turn)\n\n" + _table(head, lines)


def markdown(result: dict) -> str:
    grid = [r for r in result["rows"] if r["section"] == "grid"]
    mixed = [r for r in result["rows"] if r["section"] == "mixed"]
    arch = result["architecture"]
    shape = f"{arch['model_type']}, L={arch['num_hidden_layers']}, d={arch['hidden_size']}, |V|={arch['vocab_size']:,}"
    parts = [
        f"### suite=inference: {result['model']} ({shape}; {result['weights']} weights), {result['device']} "
        f"({result['device_name']}), {result['torch_threads']} threads, backbone {result['dtype']}, "
        f"tables {result['table_dtype']}, {result['warmup']} warm-up + {result['rounds']} rounds, torch "
        f"{result['torch_version']}" + ("" if result["reportable"] else " — FEWER THAN 20 ROUNDS: not for reporting"),
        _grid(result, grid) if grid else "",
        _mixed(mixed) if mixed else "",
    ]
    if result["compile"]:
        lines = [
            [name, g["backend"], "; ".join(g["reasons"]) or "—", str(g["graph_count"]), str(g["graph_breaks"]),
             str(g.get("graphs_compiled_in_run", ""))]
            for name, g in result["compile"].items()
        ]  # fmt: skip
        head = ["contender", "backend", "break reasons", "graphs", "graph breaks", "graphs in the run"]
        parts.append("**torch.compile** (dynamic=True; graphs and breaks of the first compilation; the run adds "
                     "recompilations for new shapes)\n\n" + _table(head, lines, text=3))  # fmt: skip
    memory = result["memory"]
    tables = ", ".join(
        f"{m}: T={t['tasks']} {t['bytes'] / 1e9:.2f} GB ({t['location']})" for m, t in memory["tables"].items()
    )
    parts.append(f"**Memory**: backbone {memory['backbone_bytes'] / 1e9:.2f} GB; AoT tables held: {tables or 'none'}; "
                 f"budget {memory['budget_gb']} GB")  # fmt: skip
    if result["skipped"]:
        lines = [
            [s["section"], s.get("cell", "all"), s["name"], s["reason"],
             f"{s['bytes_needed'] / 1e9:.2f}" if "bytes_needed" in s else "—"]
            for s in result["skipped"]
        ]  # fmt: skip
        parts.append("**Skipped**\n\n" + _table(["section", "cell", "contender", "why", "needs GB"], lines, text=4))
    return "\n\n".join(p for p in parts if p)
