"""Analytic inference cost of each method per token, printed beside the measured ratio (suite=inference).

The backbone, per token and layer (d hidden, d_ff intermediate, n tokens in
the sequence; a multiply-add counts 2 FLOPs):

    Q, K, V, O projections   8·d²
    FFN                      4·d·d_ff          (16·d² for d_ff = 4d)
    scores + context         4·n·d

What each method adds per token (L layers):

    aot          a gather of L·d table values and L additions of d values (host: the rows copied once more;
                 onthefly: at most one row computed per token, kron 2·r²·L·d, fc 2·d·r + 2·r·L·d, an upper
                 bound since cached rows cost a gather; before: the (B, n, L, d) tensor and per-layer casts)
    ptuning_v2   p prefix keys/values in every attention: 4·p·d per layer
    ptuning_v1   m prompt positions run through the whole encoder: m/n more tokens, each attending n + m
    lora         each target (r ≪ d): x A then (x A) B, 4·r·d per target per layer (0 once merged)
    adapter      two bottlenecks of m per layer: 2 · 4·d·m

`analytic_ratio` = 1 + extra FLOPs / backbone FLOPs: what the method costs
if time follows FLOPs. AoT's additions are memory-bound, so its bytes are
given as well (values read and written beside the backbone's activations).
"""

from __future__ import annotations


def table_bytes(vocab: int, layers: int, hidden: int, tasks: int, itemsize: int) -> int:
    """Bytes of T stacked AoT tables plus the zero row of padding: (T·|V| + 1) x L·d values."""
    return (tasks * vocab + 1) * layers * hidden * itemsize


def backbone_flops_per_token(arch: dict, seq_len: int) -> int:
    """FLOPs of the bare encoder per token of a sequence of `seq_len` tokens (matrix products only)."""
    d, d_ff, layers = arch["hidden_size"], arch["intermediate_size"], arch["num_hidden_layers"]
    return layers * (8 * d * d + 4 * d * d_ff + 4 * seq_len * d)


def _extra(method: str, options: dict, arch: dict, seq_len: int, act: int, table: int) -> tuple[float, float]:
    """(extra FLOPs, extra bytes) per token of `method` over the bare backbone."""
    d, layers = arch["hidden_size"], arch["num_hidden_layers"]
    if method in ("bare", "lora_merged"):
        return 0.0, 0.0
    if method == "aot":  # gather L·d table values, read + write the hidden states at each add
        return layers * d, layers * d * (table + 2 * act)
    if method == "aot_before":  # + the (B, n, L, d) copy written and read, and the per-layer cast written and read
        return layers * d, layers * d * (table + 2 * table + table + act + 2 * act)
    if method == "aot_host":  # + the batch's rows gathered into a staging buffer, copied, gathered again
        return layers * d, layers * d * (3 * table + table + 2 * act)
    if method == "aot_onthefly":  # upper bound: every token's row computed (no cache hit), then as host
        r, rows = options["rank"], layers * d
        compute = 2 * r * r * rows + r * r if options["reparam"] == "kron" else 2 * d * r + 2 * r * rows
        return layers * d + compute, layers * d * (4 * table + 2 * act)
    if method == "ptuning_v2":
        p = options["length"]
        return layers * 4 * p * d, 2 * layers * p * d * act / seq_len  # prefix keys/values read once per sequence
    if method == "ptuning_v1":
        m = options["length"]
        longer = (seq_len + m) * backbone_flops_per_token(arch, seq_len + m)
        return longer / seq_len - backbone_flops_per_token(arch, seq_len), m * layers * 2 * d * act / seq_len
    if method in ("lora_unmerged", "lora_mixed"):
        r, targets = options["rank"], options["targets"]
        return layers * targets * 4 * r * d, layers * targets * 2 * (d + r) * act
    if method == "adapter":
        m = options["size"]
        return layers * 2 * 4 * d * m, layers * 2 * 2 * (d + m) * act
    raise ValueError(f"no analytic cost for method {method!r}")


def analytic(method: str, options: dict, arch: dict, seq_len: int, act_bytes: int = 4, table_itemsize: int = 2) -> dict:
    """Extra FLOPs and bytes per token of `method` (options: its sizes) and the ratio to the backbone they imply;
    `act_bytes`, `table_itemsize`: bytes per value of the hidden states and of AoT tables."""
    flops, moved = _extra(method, options, arch, seq_len, act_bytes, table_itemsize)
    return {
        "extra_flops_per_token": flops,
        "extra_bytes_per_token": moved,
        "analytic_ratio": 1 + flops / backbone_flops_per_token(arch, seq_len),
    }
