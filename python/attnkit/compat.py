"""Checkpoint conversion from the reference libraries to attnkit.

attnkit's mechanisms were ported from three PyTorch libraries: attnhut (0.4.0 and 0.5.0), attzoo
0.1.0 and d9d. Their modules hold the same weights under other names, sometimes fused into one
matrix. This module holds one table row per reference class: the attnkit mechanism it becomes,
how its configuration is read off the reference module, and how its state_dict keys map to
attnkit's keys (renames, splits of fused matrices, dropped buffers).

    import attnkit.compat as compat
    ref = attnhut.StandardAttention(64, 4, causal=True)
    mine = compat.from_reference(ref)                  # same configuration, same weights
    compat.load_reference_state_dict(mine, ref.state_dict(), library="attnhut",
                                     version="0.5.0", mechanism="StandardAttention")

Pure Python: only torch and attnkit are imported, so this works without the reference
libraries installed (a state_dict saved by them is enough for ``load_reference_state_dict``).

Where the references disagree on a default, each row reproduces its own library: attnhut's MLA
always has a query bottleneck (``dim / 2`` when ``q_lora_rank`` is None) while d9d's projects
the query directly when ``q_lora_rank`` is None; attnhut rotates MLA rope channels rotate-half
while attnkit's default is interleaved; attnhut 0.4.0's MiniMax has no QK norms, no detached
index branch and full RoPE, 0.5.0's has all three.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

__all__ = [
    "Rule", "Conversion", "CONVERSIONS", "rename", "split", "drop",
    "find_conversion", "convert_state_dict", "load_reference_state_dict",
    "reference_config", "from_reference", "identify",
]


# --------------------------------------------------------------------------------------------
# Key rules


@dataclass(frozen=True)
class Rule:
    """One key rule. ``source`` is a regular expression matched against a reference key's
    module path (the key without its last ``.weight`` / ``.bias`` / ... component) or against
    the whole key; ``targets`` are templates (``\\1`` refers to the source's groups) that get
    the same last component back. ``split`` cuts the tensor into ``len(targets)`` equal pieces
    along dim 0 (or into ``sizes``), ``drop`` discards the key."""

    kind: str  # "rename" | "split" | "drop"
    source: str
    targets: Tuple[str, ...] = ()
    sizes: Optional[Tuple[int, ...]] = None

    def match(self, key: str):
        return re.fullmatch(f"(?:{self.source})(?P<_leaf>(?:\\.[^.]+)?)", key)


def rename(source: str, target: str) -> Rule:
    return Rule("rename", source, (target,))


def split(source: str, *targets: str) -> Rule:
    return Rule("split", source, tuple(targets))


def drop(source: str) -> Rule:
    return Rule("drop", source)


def _apply_rules(rules: Sequence[Rule], key: str, tensor: torch.Tensor) -> List[Tuple[str, torch.Tensor]]:
    for rule in rules:
        m = rule.match(key)
        if m is None:
            continue
        leaf = m.group("_leaf")
        if rule.kind == "drop":
            return []
        names = [m.expand(t) + leaf for t in rule.targets]
        if rule.kind == "rename":
            return [(names[0], tensor)]
        if rule.kind == "split":
            if rule.sizes is not None:
                pieces = torch.split(tensor, list(rule.sizes), dim=0)
            else:
                if tensor.shape[0] % len(names):
                    raise ValueError(f"attnkit.compat: cannot split {key} {tuple(tensor.shape)} "
                                     f"into {len(names)} equal row blocks")
                pieces = torch.chunk(tensor, len(names), dim=0)
            return [(n, p.clone()) for n, p in zip(names, pieces)]
        raise ValueError(f"attnkit.compat: unknown rule kind {rule.kind!r}")
    return [(key, tensor)]  # no rule: same name in attnkit


# --------------------------------------------------------------------------------------------
# The table


@dataclass(frozen=True)
class Conversion:
    """How one reference class becomes an attnkit mechanism."""

    library: str  # "attnhut" | "attzoo" | "d9d"
    versions: Tuple[str, ...]  # reference versions this row is for ("*" = any)
    reference: str  # the reference class name
    mechanism: str  # attnkit's short name (attnkit.make)
    rules: Tuple[Rule, ...] = ()
    # reference module -> attnkit options (JSON-able: what attnkit.make takes)
    options: Optional[Callable[[Any], Dict[str, Any]]] = None
    # wrapped modules: attribute names of the reference's inner mechanisms, whose keys are
    # converted by their own rows under the same prefix
    wrapped: Tuple[str, ...] = ()
    note: str = ""


# Fused projections and renames shared by several rows.
_QKV_SPLIT = split(r"qkv", "q_proj", "k_proj", "v_proj")
_PROJ_TO_O = rename(r"proj", "o_proj")
_ATTNHUT_QKV = (_QKV_SPLIT, _PROJ_TO_O)  # attnhut's fused qkv [3 dim, dim] rows [q | k | v]
_ATTNHUT_SEPARATE = (rename(r"q", "q_proj"), rename(r"k", "k_proj"), rename(r"v", "v_proj"),
                     _PROJ_TO_O)
_ATTZOO_PROJ = (rename(r"w_q", "q_proj"), rename(r"w_k", "k_proj"), rename(r"w_v", "v_proj"),
                rename(r"w_o", "o_proj"))


def _has_bias(linear) -> bool:
    return getattr(linear, "bias", None) is not None


def _first_attr(obj, names: Iterable[str], default=None):
    for n in names:
        if hasattr(obj, n):
            return getattr(obj, n)
    return default


# ---- attnhut


def _attnhut_standard(m) -> Dict[str, Any]:
    return dict(dim=m.qkv.in_features, num_heads=m.num_heads, causal=bool(m.causal),
                dropout=float(m.dropout), bias=_has_bias(m.qkv))


def _attnhut_mqa(m) -> Dict[str, Any]:
    return dict(dim=m.q.in_features, num_heads=m.num_heads, causal=bool(m.causal),
                dropout=float(m.dropout), bias=_has_bias(m.q))


def _attnhut_gqa(m) -> Dict[str, Any]:
    return dict(dim=m.q.in_features, num_heads=m.num_heads, num_kv_heads=m.num_kv_heads,
                causal=bool(m.causal), dropout=float(m.dropout), bias=_has_bias(m.q))


def _attnhut_mla(m) -> Dict[str, Any]:
    # attnhut always has the query bottleneck (q_lora_rank None means dim // 2), so it is passed
    # explicitly: attnkit's None means a direct q_proj (d9d's default). RoPE is rotate-half.
    # bias=True puts a bias on all five Linears (q_down, q_up, kv_down, kv_up, proj): attnkit's
    # bias option does the same.
    return dict(dim=m.q_down.in_features, num_heads=m.num_heads, q_lora_rank=m.q_lora_rank,
                kv_lora_rank=m.kv_lora_rank, qk_nope_head_dim=m.qk_nope_head_dim,
                qk_rope_head_dim=m.qk_rope_head_dim, v_head_dim=m.v_head_dim,
                causal=bool(m.causal), norm_eps=1e-6, bias=_has_bias(m.q_down),
                rope={"style": "half", "theta": float(m.rope_theta)})


def _attnhut_bigbird(m) -> Dict[str, Any]:
    return dict(dim=m.qkv.in_features, num_heads=m.num_heads, block_size=m.block_size,
                num_window_blocks=m.window, num_random_blocks=m.random,
                num_global_blocks=m.globals, causal=bool(m.causal), seed=int(m.seed),
                bias=_has_bias(m.qkv))


def _attnhut_dsa(m) -> Dict[str, Any]:
    return dict(dim=m.qkv.in_features, num_heads=m.num_heads, top_k=m.top_k,
                num_index_heads=m.indexer.num_heads, index_head_dim=m.indexer.head_dim,
                causal=bool(m.causal), bias=_has_bias(m.qkv))


def _attnhut_minimax_common(m) -> Dict[str, Any]:
    return dict(dim=m.q.in_features, num_heads=m.num_heads, num_kv_groups=m.num_kv_groups,
                block_size=m.block_size, top_k=m.top_k, index_dim=m.index_dim,
                causal=bool(m.causal), use_rope=bool(m.use_rope), rope_theta=float(m.rope_theta),
                force_current_block=bool(m.force_current_block), bias=_has_bias(m.q))


def _attnhut_minimax_050(m) -> Dict[str, Any]:
    opts = _attnhut_minimax_common(m)
    opts.update(rope_dim=m.rope_dim, partial_rope=True, qk_norm=True, qk_norm_eps=1e-6,
                detach_index=True)
    return opts


def _attnhut_minimax_040(m) -> Dict[str, Any]:
    # 0.4.0: full RoPE on the main (head_dim) and index (index_dim) heads, no QK norms, and the
    # index branch sees x itself.
    opts = _attnhut_minimax_common(m)
    opts.update(partial_rope=False, qk_norm=False, detach_index=False)
    return opts


def _attnhut_hca(m) -> Dict[str, Any]:
    return dict(dim=m.kv.in_features, num_heads=m.num_heads, compression_rate=m.rate,
                kv_dim=m.kv_dim, q_lora_rank=m.q_down.out_features,
                num_groups=m.proj.num_groups, window=m.window, bias=_has_bias(m.kv))


def _attnhut_csa(m) -> Dict[str, Any]:
    return dict(dim=m.kv_a.in_features, num_heads=m.num_heads, compression_rate=m.rate,
                top_k=m.top_k, kv_dim=m.kv_dim, q_lora_rank=m.q_down.out_features,
                num_index_heads=m.num_index_heads, index_dim=m.index_dim,
                num_groups=m.proj.num_groups, window=m.window, bias=_has_bias(m.kv_a))


def _attnhut_delta(m) -> Dict[str, Any]:
    return dict(dim=m.qkv.in_features, num_heads=m.num_heads, window=m.window, sink=m.sink,
                stride=m.stride, bias=_has_bias(m.qkv))


def _depth_from_lambda_init(lambda_init: float) -> int:
    # lambda_init(depth) = 0.8 - 0.6 exp(-0.3 depth): attnhut keeps only the value.
    return int(round(-math.log((0.8 - lambda_init) / 0.6) / 0.3))


def _attnhut_diff(m) -> Dict[str, Any]:
    return dict(dim=m.q.in_features, num_heads=m.num_heads,
                depth=_depth_from_lambda_init(m.lambda_init), causal=bool(m.causal),
                bias=_has_bias(m.q))


# ---- attzoo (projections w_q, w_k, w_v, w_o; dropout 0.1 by default, on the weights)


def _rope_interleaved(m) -> Dict[str, Any]:
    # attzoo's rope=True: pairs (2i, 2i + 1) over the whole head, theta 10000 (RopeOptions'
    # default theta and dim 0 = the whole head)
    return {"rope": {"style": "interleaved"}} if getattr(m, "rope", False) else {}


def _temperature(m, always: bool) -> Dict[str, Any]:
    t = float(getattr(m, "temperature", 1.0))
    return {"temperature": t} if always or t != 1.0 else {}


def _check_input_dim(m):
    if getattr(m, "input_dim", m.d_model) != m.d_model:
        raise ValueError(f"attnkit.compat: {type(m).__name__} has input_dim {m.input_dim} != "
                         f"d_model {m.d_model}; attnkit mechanisms map dim to dim")


def _attzoo_common(m, heads: int) -> Dict[str, Any]:
    _check_input_dim(m)
    return dict(dim=m.d_model, num_heads=heads, dropout=float(m.dropout_prob),
                bias=_has_bias(m.w_q))


def _attzoo_vanilla(m) -> Dict[str, Any]:
    # one head over the whole model width; temperature and rope are sent only when set, so a
    # plain module's config stays the plain StandardAttention options
    return {**_attzoo_common(m, 1), **_temperature(m, False), **_rope_interleaved(m)}


def _attzoo_mhsa(m) -> Dict[str, Any]:
    return {**_attzoo_common(m, m.num_heads), **_temperature(m, False), **_rope_interleaved(m)}


def _attzoo_grouped(m) -> Dict[str, Any]:
    opts = _attzoo_common(m, m.num_query_heads)
    opts["num_kv_heads"] = m.num_kv_heads
    return {**opts, **_temperature(m, False), **_rope_interleaved(m)}


def _attzoo_local(m) -> Dict[str, Any]:
    return {**_attzoo_common(m, m.num_heads), "window_size": m.window_size, "causal": False,
            **_temperature(m, True), **_rope_interleaved(m)}


def _attzoo_dilated(m) -> Dict[str, Any]:
    return {**_attzoo_common(m, m.num_heads), "dilation_rate": m.dilation_rate,
            **_temperature(m, True), **_rope_interleaved(m)}


def _attzoo_block(m) -> Dict[str, Any]:
    return {**_attzoo_common(m, m.num_heads), "block_size": m.block_size,
            "overlap": bool(m.overlap), **_temperature(m, True), **_rope_interleaved(m)}


def _attzoo_longformer(m) -> Dict[str, Any]:
    return {**_attzoo_common(m, m.num_heads), "window_size": m.window_size,
            **_temperature(m, True), **_rope_interleaved(m)}


def _attzoo_alibi(m) -> Dict[str, Any]:
    return {**_attzoo_common(m, m.num_heads), "causal": False, **_temperature(m, True)}


def _attzoo_lsh(m) -> Dict[str, Any]:
    return {**_attzoo_common(m, m.num_heads), "bucket_size": m.bucket_size,
            "num_hashes": m.num_hashes, **_temperature(m, True), **_rope_interleaved(m)}


def _attzoo_linear(m) -> Dict[str, Any]:
    # attzoo's linear attention is single-head and non-causal; its dropout acts on the output
    # (attnkit's linear attention has none).
    _check_input_dim(m)
    return {"dim": m.d_model, "num_heads": 1, "feature_dim": m.feature_dim, "eps": float(m.eps),
            "causal": False, "bias": _has_bias(m.w_q), **_rope_interleaved(m)}


def _gate_options(m) -> Dict[str, Any]:
    gate = list(m.gate)
    hidden = gate[0].out_features if len(gate) > 2 else 0
    dropout = float(gate[2].p) if len(gate) > 2 else 0.0
    return dict(gate_hidden=hidden, gate_bias=_has_bias(gate[0]), dropout=dropout)


def _attzoo_gated(m) -> Dict[str, Any]:
    if isinstance(m.x_proj, torch.nn.Linear):
        raise ValueError("attnkit.compat: GatedSelfAttention with input_dim != d_model has no "
                         "attnkit equivalent (attnkit mechanisms map dim to dim)")
    return {"attn": _wrapped_spec(m.attn), **_gate_options(m)}


def _attzoo_combined(m) -> Dict[str, Any]:
    if m.input_dim != m.d_model:
        raise ValueError("attnkit.compat: CombinedAttention with input_dim != d_model has no "
                         "attnkit equivalent")
    return {"attn_a": _wrapped_spec(m.attn_a), "attn_b": _wrapped_spec(m.attn_b),
            **_gate_options(m)}


# ---- d9d (module attributes are private; read them defensively)


def _d9d_rope_style(m) -> str:
    style = _first_attr(getattr(m, "rope", None), ("style", "_style"), None)
    name = getattr(style, "name", str(style)).upper()
    return "interleaved" if "INTERLEAVED" in name else "half"


def _d9d_eps(norm, default=1e-6) -> float:
    return float(_first_attr(norm, ("eps", "_eps", "variance_epsilon"), default))


def _d9d_gqa(m) -> Dict[str, Any]:
    hd = m._head_dim
    opts = dict(dim=m.q_proj.in_features, num_heads=m.q_proj.out_features // hd,
                num_kv_heads=m.k_proj.out_features // hd, head_dim=hd,
                causal=bool(m._is_causal), output_gate=getattr(m, "gate_proj", None) is not None)
    if getattr(m, "q_norm", None) is not None:
        opts["qk_norm_eps"] = _d9d_eps(m.q_norm)
        opts["qk_norm_zero_centered"] = bool(_first_attr(m.q_norm, ("zero_centered",
                                                                    "_zero_centered"), False))
    # d9d's cos/sin come from the caller: theta is not on the module (attnkit's default 10000)
    opts["rope"] = {"style": _d9d_rope_style(m), "dim": int(m._rope_dim or 0)}
    kernel = getattr(m, "kernel", None)
    if kernel is not None and getattr(kernel, "sinks", None) is not None:
        opts["sinks"] = True
    return opts


def _d9d_mla(m) -> Dict[str, Any]:
    # d9d: q_lora_rank None means a direct q_proj, as attnkit's None
    return dict(dim=m.kv_down_proj.in_features, num_heads=m._n_heads,
                q_lora_rank=m._q_lora_rank, kv_lora_rank=m._kv_lora_rank,
                qk_nope_head_dim=m._qk_nope_head_dim, qk_rope_head_dim=m._qk_rope_head_dim,
                v_head_dim=m._v_head_dim, norm_eps=_d9d_eps(m.kv_down_norm),
                causal=bool(m._is_causal), rope={"style": _d9d_rope_style(m)})


def _d9d_gdn(m) -> Dict[str, Any]:
    gate = m.decay_gate
    if hasattr(gate, "A_log"):
        decay = {"type": "mamba", "normalizer": float(gate._normalizer),
                 "dt_min": float(gate._dt_min), "dt_max": float(gate._dt_max),
                 "dt_init_floor": float(gate._dt_init_floor)}
    else:
        decay = {"type": "log_sigmoid", "normalizer": float(gate._normalizer)}
    return dict(dim=m._hidden_size, num_qk_heads=m._num_qk_heads, num_v_heads=m._num_v_heads,
                head_qk_dim=m._head_qk_dim, head_v_dim=m._head_v_dim,
                norm_eps=_d9d_eps(m.out_norm), conv_size=int(m.qkv_conv1d._kernel_size),
                decay_gate=decay, use_qk_l2norm=bool(m._use_qk_l2norm))


_ATTNHUT_ALL = ("0.4.0", "0.5.0")

CONVERSIONS: Tuple[Conversion, ...] = (
    # ---------------- attnhut
    Conversion("attnhut", _ATTNHUT_ALL, "StandardAttention", "standard", _ATTNHUT_QKV,
               _attnhut_standard, note="qkv rows [q | k | v] split; proj -> o_proj"),
    Conversion("attnhut", _ATTNHUT_ALL, "MultiQueryAttention", "mqa",
               (rename(r"q", "q_proj"), split(r"kv", "k_proj", "v_proj"), _PROJ_TO_O),
               _attnhut_mqa, note="kv rows [k | v] split"),
    Conversion("attnhut", _ATTNHUT_ALL, "GroupedQueryAttention", "gqa", _ATTNHUT_SEPARATE,
               _attnhut_gqa),
    Conversion("attnhut", _ATTNHUT_ALL, "MultiHeadLatentAttention", "mla",
               (rename(r"q_down", "q_a_proj"), rename(r"q_norm", "q_a_layernorm.weight"),
                rename(r"q_up", "q_b_proj"), rename(r"kv_down", "kv_a_proj_with_mqa"),
                rename(r"kv_norm", "kv_a_layernorm.weight"), rename(r"kv_up", "kv_b_proj"),
                _PROJ_TO_O),
               _attnhut_mla, note="DeepSeek names; bottleneck always present; rotate-half RoPE"),
    Conversion("attnhut", _ATTNHUT_ALL, "BigBirdAttention", "bigbird", _ATTNHUT_QKV,
               _attnhut_bigbird),
    Conversion("attnhut", _ATTNHUT_ALL, "DeepSeekSparseAttention", "dsa", (), _attnhut_dsa,
               note="attnhut names kept (qkv, proj, indexer.wq/wk/ww)"),
    Conversion("attnhut", ("0.5.0",), "MiniMaxSparseAttention", "minimax", (),
               _attnhut_minimax_050, note="attnhut names kept; QK norms, partial RoPE"),
    Conversion("attnhut", ("0.4.0",), "MiniMaxSparseAttention", "minimax", (),
               _attnhut_minimax_040, note="no QK norms, full RoPE, index branch not detached"),
    Conversion("attnhut", _ATTNHUT_ALL, "HeavilyCompressedAttention", "hca", (), _attnhut_hca,
               note="attnhut names kept"),
    Conversion("attnhut", _ATTNHUT_ALL, "CompressedSparseAttention", "csa", (), _attnhut_csa,
               note="attnhut names kept"),
    Conversion("attnhut", _ATTNHUT_ALL, "DeltaAttention", "delta", _ATTNHUT_QKV,
               _attnhut_delta),
    Conversion("attnhut", _ATTNHUT_ALL, "DifferentialAttention", "diff", _ATTNHUT_SEPARATE,
               _attnhut_diff, note="depth recovered from lambda_init"),
    # set-to-set modules: key maps only (attnkit.make does not build them)
    Conversion("attnhut", _ATTNHUT_ALL, "SlotAttention", "slot", (), None,
               note="same names"),
    Conversion("attnhut", _ATTNHUT_ALL, "CausalJEPAAttention", "cjepa",
               (split(r"blocks\.(\d+)\.attn\.qkv", r"blocks.\1.attn.q_proj",
                      r"blocks.\1.attn.k_proj", r"blocks.\1.attn.v_proj"),
                rename(r"blocks\.(\d+)\.attn\.proj", r"blocks.\1.attn.o_proj")),
               None, note="each block's fused qkv split, proj -> o_proj"),
    # ---------------- attzoo 0.1.0
    Conversion("attzoo", ("0.1.0",), "VanillaSelfAttention", "standard", _ATTZOO_PROJ,
               _attzoo_vanilla, note="one head over the model width"),
    Conversion("attzoo", ("0.1.0",), "MultiHeadSelfAttention", "standard", _ATTZOO_PROJ,
               _attzoo_mhsa),
    Conversion("attzoo", ("0.1.0",), "GroupedSelfAttention", "gqa", _ATTZOO_PROJ,
               _attzoo_grouped),
    Conversion("attzoo", ("0.1.0",), "LocalSelfAttention", "local", _ATTZOO_PROJ,
               _attzoo_local),
    Conversion("attzoo", ("0.1.0",), "DilatedSelfAttention", "dilated", _ATTZOO_PROJ,
               _attzoo_dilated),
    Conversion("attzoo", ("0.1.0",), "BlockSelfAttention", "block", _ATTZOO_PROJ,
               _attzoo_block),
    Conversion("attzoo", ("0.1.0",), "LongformerSelfAttention", "longformer", _ATTZOO_PROJ,
               _attzoo_longformer, note="global tokens: pass global_positions= as an override"),
    Conversion("attzoo", ("0.1.0",), "AlibiSelfAttention", "alibi",
               _ATTZOO_PROJ + (drop(r"slopes"), drop(r"alibi_bias")), _attzoo_alibi,
               note="slopes / alibi_bias buffers dropped (attnkit computes the bias)"),
    Conversion("attzoo", ("0.1.0",), "LSHSelfAttention", "lsh", _ATTZOO_PROJ, _attzoo_lsh),
    Conversion("attzoo", ("0.1.0",), "LinearSelfAttention", "linear", _ATTZOO_PROJ,
               _attzoo_linear, note="one head"),
    Conversion("attzoo", ("0.1.0",), "GatedSelfAttention", "gated", (), _attzoo_gated,
               wrapped=("attn",), note="attn.* by the wrapped module's row; gate.* kept"),
    Conversion("attzoo", ("0.1.0",), "CombinedAttention", "combined", (), _attzoo_combined,
               wrapped=("attn_a", "attn_b"), note="attn_a.*, attn_b.* by their rows"),
    # ---------------- d9d (maps written from its documented layout)
    Conversion("d9d", ("*",), "GroupedQueryAttention", "gqa",
               (rename(r"kernel\.sinks", "sinks"), rename(r"sdpa\.sinks", "sinks")), _d9d_gqa,
               note="same names (Qwen3 layout)"),
    Conversion("d9d", ("*",), "MultiHeadLatentAttention", "mla",
               (rename(r"q_proj\.down_proj", "q_a_proj"), rename(r"q_proj\.norm", "q_a_layernorm"),
                rename(r"q_proj\.up_proj", "q_b_proj"),
                rename(r"kv_down_proj", "kv_a_proj_with_mqa"),
                rename(r"kv_down_norm", "kv_a_layernorm"), rename(r"kv_up_proj", "kv_b_proj")),
               _d9d_mla, note="q_lora_rank None: direct q_proj (kept as q_proj)"),
    Conversion("d9d", ("*",), "GatedDeltaNet", "gdn", (), _d9d_gdn, note="same names"),
)


# --------------------------------------------------------------------------------------------
# Lookup


def _version_matches(row: Conversion, version: Optional[str]) -> bool:
    return version is None or "*" in row.versions or version in row.versions


def find_conversion(library: str, mechanism: str, version: Optional[str] = None) -> Conversion:
    """The table row for ``mechanism`` (reference class name, or attnkit short name when it is
    unambiguous) of ``library`` at ``version``."""
    lib = library.lower()
    rows = [r for r in CONVERSIONS if r.library == lib and _version_matches(r, version)]
    hits = [r for r in rows if r.reference.lower() == mechanism.lower()]
    if not hits:
        hits = [r for r in rows if r.mechanism == mechanism.lower()]
    if len(hits) == 1 or (hits and all(h.rules == hits[0].rules for h in hits)):
        return hits[0]
    if not hits:
        known = sorted({r.reference for r in CONVERSIONS if r.library == lib})
        raise KeyError(f"attnkit.compat: no conversion for {library} {version or ''} "
                       f"{mechanism!r}; known: {known}")
    raise KeyError(f"attnkit.compat: {mechanism!r} is ambiguous for {library}; name the "
                   f"reference class ({[h.reference for h in hits]}) or the version")


def identify(ref_module) -> Tuple[str, Optional[str], str]:
    """(library, version, class name) of a reference module, from its Python module path and,
    for attnhut's MiniMax, the parameters only 0.5.0 has."""
    cls = type(ref_module)
    root = cls.__module__.split(".")[0].lower()
    for lib in ("attnhut", "attzoo", "d9d"):
        if root.startswith(lib):
            break
    else:
        raise ValueError(f"attnkit.compat: {cls.__module__}.{cls.__name__} is not from attnhut, "
                         "attzoo or d9d")
    version = None
    if lib == "attnhut" and cls.__name__ == "MiniMaxSparseAttention":
        version = "0.5.0" if hasattr(ref_module, "q_norm") else "0.4.0"
    elif lib == "attzoo":
        version = "0.1.0"
    return lib, version, cls.__name__


def _wrapped_spec(ref_module) -> Dict[str, Any]:
    name, opts = reference_config(ref_module)
    return {"type": name, **opts}


# --------------------------------------------------------------------------------------------
# Conversion


def convert_state_dict(ref_state_dict: Mapping[str, torch.Tensor], library: str = "attnhut",
                       version: Optional[str] = "0.5.0", mechanism: str = "",
                       inner: Optional[Mapping[str, str]] = None) -> Dict[str, torch.Tensor]:
    """The reference ``state_dict`` under attnkit's keys. ``inner`` names the reference classes
    of wrapped modules (attzoo's gated / combined): ``{"attn": "LocalSelfAttention"}``."""
    row = find_conversion(library, mechanism, version)
    out: Dict[str, torch.Tensor] = {}
    groups: Dict[str, Dict[str, torch.Tensor]] = {w: {} for w in row.wrapped}
    for key, tensor in ref_state_dict.items():
        prefix = key.split(".", 1)[0]
        if prefix in groups and "." in key:
            groups[prefix][key.split(".", 1)[1]] = tensor
            continue
        for new_key, new_tensor in _apply_rules(row.rules, key, tensor):
            if new_key in out:
                raise ValueError(f"attnkit.compat: two reference keys map to {new_key}")
            out[new_key] = new_tensor
    for prefix, sub in groups.items():
        if not sub:
            continue
        if not inner or prefix not in inner:
            raise ValueError(f"attnkit.compat: {row.reference} wraps {prefix!r}: name its "
                             f"reference class in inner={{{prefix!r}: ...}}")
        converted = convert_state_dict(sub, library, version, inner[prefix])
        out.update({f"{prefix}.{k}": v for k, v in converted.items()})
    return out


def load_reference_state_dict(attnkit_module: torch.nn.Module,
                              ref_state_dict: Mapping[str, torch.Tensor],
                              library: str = "attnhut", version: Optional[str] = "0.4.0",
                              mechanism: str = "", inner: Optional[Mapping[str, str]] = None,
                              strict: bool = True):
    """Loads a reference library's state_dict into an attnkit module built with the matching
    options (see :func:`from_reference`). Tensors are cast to the module's dtype and device."""
    converted = convert_state_dict(ref_state_dict, library, version, mechanism, inner)
    own = attnkit_module.state_dict()
    for k, v in list(converted.items()):
        if k in own:
            converted[k] = v.to(dtype=own[k].dtype, device=own[k].device)
    return attnkit_module.load_state_dict(converted, strict=strict)


def _inner_classes(ref_module, row: Conversion) -> Dict[str, str]:
    return {w: type(getattr(ref_module, w)).__name__ for w in row.wrapped}


def reference_config(ref_module) -> Tuple[str, Dict[str, Any]]:
    """(attnkit short name, attnkit options) for a reference module."""
    library, version, cls = identify(ref_module)
    row = find_conversion(library, cls, version)
    if row.options is None:
        raise NotImplementedError(f"attnkit.compat: attnkit.make cannot build {cls} "
                                  "(set-to-set module); convert its state_dict instead")
    return row.mechanism, row.options(ref_module)


def from_reference(ref_module, **overrides):
    """An attnkit module with ``ref_module``'s configuration and weights (same dtype).
    ``overrides`` replace or add attnkit options (e.g. ``global_positions`` for Longformer)."""
    import attnkit  # deferred: this file imports without the compiled extension

    library, version, cls = identify(ref_module)
    row = find_conversion(library, cls, version)
    name, options = reference_config(ref_module)
    options.update(overrides)
    module = attnkit.make(name, **options)
    params = list(ref_module.parameters())
    if params:
        module = module.to(dtype=params[0].dtype)
    load_reference_state_dict(module, ref_module.state_dict(), library, version, cls,
                              inner=_inner_classes(ref_module, row))
    module.train(ref_module.training)
    return module
