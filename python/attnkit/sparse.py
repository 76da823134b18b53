"""Sparse research attention: masks, maskers and how far their attention lands from dense.

A configuration is a list of masker objects (the JSON of ``include/attnkit/sparse/``), e.g.::

    import attnkit.sparse as sparse
    ra = sparse.ResearchAttention([{"type": "sink", "sink_size": 128},
                                   {"type": "local", "window_size": 128},
                                   {"type": "oracle_top_k", "heavy_size": 0.1}])
    out, weights = ra.custom_attention(q, k, v)        # q [B, H, Tq, D], k/v [B, Hkv, Tk, D]

    rows = sparse.sparse_eval([cfg_a, cfg_b], lengths=(1024, 4096))
    sparse.plot_sparse_eval(rows, "sparse.png")       # needs matplotlib

``sparse_eval`` computes the rows that ``attnkit sparse-eval`` prints (same data for the same
seed, same masks, same error).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import _C

_sparse = _C.sparse

Mask = _sparse.Mask
MaskerState = _sparse.MaskerState
Masker = _sparse.Masker
make_masker = _sparse.make_masker
masker_types = _sparse.masker_types
dense_attention = _sparse.dense_attention
masked_attention = _sparse.masked_attention
masked_attention_reference = _sparse.masked_attention_reference

MaskerConfigs = Union[str, Sequence[Mapping[str, Any]]]

#: The configurations evaluated when none is given (as ``attnkit sparse-eval``).
DEFAULT_CONFIGS: List[List[Dict[str, Any]]] = [
    [{"type": "sink", "sink_size": 128}, {"type": "local", "window_size": 128},
     {"type": "oracle_top_k", "heavy_size": 0.1}],
    [{"type": "sink", "sink_size": 128}, {"type": "local", "window_size": 128},
     {"type": "random_sampling", "sampling_rate": 0.1}],
]


# What the C++ side raises: c10::Error -> RuntimeError, c10::ValueError -> ValueError, etc.
_CPP_ERRORS = (RuntimeError, ValueError, TypeError, IndexError)


def _first_line(e: BaseException) -> str:
    return str(e).split("\n", 1)[0]


def _config_json(maskers: MaskerConfigs) -> str:
    """A configuration as the JSON array the C++ side parses."""
    if isinstance(maskers, str):
        return maskers
    if isinstance(maskers, Mapping):
        raise TypeError("a masker configuration is a list of masker dicts (or a JSON array "
                        f"string), got a single dict: wrap it in a list: [{dict(maskers)!r}]")
    if not isinstance(maskers, (list, tuple)):
        raise TypeError("a masker configuration is a list of masker dicts or a JSON array "
                        f"string, got {type(maskers).__name__}")
    for i, m in enumerate(maskers):
        if not isinstance(m, Mapping):
            raise TypeError(f"masker {i} of the configuration is {type(m).__name__}, expected a "
                            "dict such as {'type': 'sink', 'sink_size': 128}")
    # Python's json keeps 0.1 / 1.0 as floats (fractions) and 128 as an integer (a count).
    return json.dumps([dict(m) for m in maskers])


class ResearchAttention:
    """Attention under the mask a list of maskers composes (sparse-attention-hub's
    ResearchAttention), on attnkit's sparse kernels.

    ``maskers``: a list of masker dicts, e.g. ``[{"type": "local", "window_size": 128}]``, or the
    same as a JSON string. A bad configuration (unknown type, missing or misspelt key, more than
    one sampling masker) raises ValueError.
    """

    def __init__(self, maskers: MaskerConfigs):
        self.config: str = _config_json(maskers)
        try:
            self._impl = _sparse.ResearchAttention(self.config)
        except _CPP_ERRORS as e:
            raise ValueError(f"bad masker configuration {self.config}: {_first_line(e)}") from e

    @property
    def maskers(self) -> List[Masker]:
        return self._impl.maskers()

    def __repr__(self) -> str:
        return f"attnkit.sparse.ResearchAttention({self.config})"

    @staticmethod
    def _scaling(queries: Tensor, scaling: Optional[float]) -> float:
        return 1.0 / math.sqrt(queries.shape[-1]) if scaling is None else float(scaling)

    def build_mask(self, queries: Tensor, keys: Tensor, values: Tensor,
                   attention_mask: Optional[Tensor] = None, scaling: Optional[float] = None,
                   dropout: float = 0.0, state: Optional[MaskerState] = None,
                   layer_idx: Optional[int] = None) -> Mask:
        """The maskers' mask [B, H, Tq, Tk]. Arguments as ``custom_attention``."""
        state = MaskerState() if state is None else state
        return self._impl.build_mask(queries, keys, values, attention_mask,
                                     self._scaling(queries, scaling), float(dropout), state,
                                     layer_idx)

    def custom_attention(self, queries: Tensor, keys: Tensor, values: Tensor,
                         attention_mask: Optional[Tensor] = None, scaling: Optional[float] = None,
                         dropout: float = 0.0, state: Optional[MaskerState] = None,
                         layer_idx: Optional[int] = None, need_weights: bool = False,
                         training: bool = False, return_mask: bool = False):
        """Attention under the maskers' mask: ``(output, weights)``, like upstream.

        queries [B, H, Tq, D], keys [B, Hkv, Tk, D], values [B, Hkv, Tk, Dv]; attention_mask
        additive [B, 1 or H, Tq, >= Tk] or None; scaling defaults to 1/sqrt(D); state defaults
        to a fresh MaskerState (pass one to keep per-layer caches across calls); dropout applies
        only when ``training``. output is [B, Tq, H, Dv]; weights [B, H, Tq, Tk] when
        ``need_weights``, else None. ``return_mask=True`` adds the Mask as a third element.
        """
        state = MaskerState() if state is None else state
        output, weights, mask = self._impl.custom_attention(
            queries, keys, values, attention_mask, self._scaling(queries, scaling),
            float(dropout), state, layer_idx, bool(need_weights), bool(training))
        return (output, weights, mask) if return_mask else (output, weights)


# --- evaluation ---------------------------------------------------------------------------------

def _qkv_tensor(d: Mapping[str, Any], key: str, where: str) -> Tensor:
    if key not in d:
        raise ValueError(f"{where} has no tensor {key!r} (expected a dict with 'q', 'k', 'v')")
    t = d[key]
    if not isinstance(t, Tensor):
        raise ValueError(f"{where}: {key!r} is {type(t).__name__}, not a tensor")
    if t.dim() != 4 or not t.is_floating_point():
        raise ValueError(f"{where}: {key!r} must be a 4-D floating tensor, got "
                         f"{list(t.shape)} {t.dtype}")
    # float64 stays float64; float16 / bfloat16 are evaluated in float32 (as the CLI).
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    return t.detach().to("cpu", dtype).contiguous()


def _load_qkv(qkv: Union[Mapping[str, Tensor], str, os.PathLike]) -> Tuple[Tensor, Tensor, Tensor,
                                                                              str]:
    if isinstance(qkv, (str, os.PathLike)):
        where = f"qkv file {os.fspath(qkv)!r}"
        try:
            d = torch.load(qkv, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001 - any unreadable file gets the same message
            raise ValueError(f"{where} is not a torch.save file: {_first_line(e)}") from e
    else:
        where, d = "qkv", qkv
    if not isinstance(d, Mapping):
        raise ValueError(f"{where}: expected a dict {{'q', 'k', 'v'}}, got {type(d).__name__}")
    q, k, v = (_qkv_tensor(d, key, where) for key in ("q", "k", "v"))
    if (q.shape[0] != k.shape[0] or k.shape[0] != v.shape[0] or k.shape[1] != v.shape[1]
            or k.shape[2] != v.shape[2] or q.shape[3] != k.shape[3] or k.shape[1] == 0
            or q.shape[1] % k.shape[1] != 0):
        raise ValueError(f"{where}: expected q [B, H, Tq, D], k [B, Hkv, Tk, D], "
                         f"v [B, Hkv, Tk, Dv] with H divisible by Hkv, got q {list(q.shape)}, "
                         f"k {list(k.shape)}, v {list(v.shape)}")
    return q, k.to(q.dtype), v.to(q.dtype), where


def _median_ms(repeats: int, before, fn):
    times, result = [], None
    for _ in range(max(1, int(repeats))):
        before()
        start = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), result


def _relative_error(a: Tensor, b: Tensor) -> float:
    """||a - b||_F / ||b||_F in float64 (0 when both are zero, inf when only b is)."""
    ref = b.to(torch.float64)
    diff = (a.to(torch.float64) - ref).norm().item()
    norm = ref.norm().item()
    if norm > 0.0:
        return diff / norm
    return 0.0 if diff == 0.0 else math.inf


def _configs_list(configs) -> List[str]:
    if configs is None:
        configs = DEFAULT_CONFIGS
    if isinstance(configs, (str, ResearchAttention)):
        configs = [configs]
    elif isinstance(configs, (list, tuple)) and configs and all(
            isinstance(c, Mapping) for c in configs):
        configs = [configs]  # one configuration given as its list of masker dicts
    if not isinstance(configs, (list, tuple)) or not configs:
        raise TypeError("configs: expected a list of configurations (each a list of masker dicts "
                        "or a JSON string)")
    return [c.config if isinstance(c, ResearchAttention) else _config_json(c) for c in configs]


def sparse_eval(configs=None, lengths: Optional[Sequence[int]] = None, queries: int = 1,
                batch: int = 1, heads: int = 8, kv_heads: int = 2, head_dim: int = 64,
                qkv: Union[None, Mapping[str, Tensor], str, os.PathLike] = None, seed: int = 0,
                repeats: int = 3) -> List[Dict[str, Any]]:
    """Density and relative error against dense attention of each configuration, by key length:
    the rows ``attnkit sparse-eval`` prints.

    configs: a list of configurations, each a list of masker dicts, a JSON string or a
        ResearchAttention (a single list of masker dicts counts as one configuration; None: the
        CLI's defaults, ``DEFAULT_CONFIGS``).
    lengths: key lengths Tk (sorted, duplicates dropped). Default: (1024, 4096) on random data,
        the file's Tk with ``qkv``.
    Random data (``qkv`` None): ``torch.manual_seed(seed)``, then q = randn(batch, heads, queries,
        head_dim), k and v = randn(batch, kv_heads, max(lengths), head_dim); each length uses the
        prefixes k[:, :, :L], v[:, :, :L]. ``qkv``: a dict of tensors q [B, H, Tq, D],
        k [B, Hkv, Tk, D], v [B, Hkv, Tk, Dv] (e.g. from a trained layer), or the path of one
        saved with ``torch.save``; lengths above Tk are skipped with a warning, and every length
        uses all of q. Queries are aligned to the end of the keys (decoding), no attention mask,
        scaling 1/sqrt(D). Tensors other than float64 are evaluated in float32.
    Before every sparse call the sampling maskers are seeded with ``torch.manual_seed(seed + 1)``;
    the global RNG state is restored on return.
    Returns one dict per (config, length), by config then length: ``config`` (index), ``length``,
    ``density`` (Mask.density() of the maskers' mask; 1.0 when it is EMPTY, which runs dense
    attention, flagged by ``empty_mask``), ``rel_error`` = ||out - dense||_F / ||dense||_F,
    ``sparse_ms`` (custom_attention, median of ``repeats``), ``dense_ms`` (dense_attention at
    that length) and ``maskers`` (the configuration's JSON).
    """
    config_texts = _configs_list(configs)
    attentions = []
    for i, text in enumerate(config_texts):
        try:
            attentions.append(_sparse.ResearchAttention(text))
        except _CPP_ERRORS as e:
            raise ValueError(f"config {i} ({text}): {_first_line(e)}") from e

    with torch.random.fork_rng(devices=[]), torch.no_grad():
        if qkv is not None:
            q, k, v, where = _load_qkv(qkv)
            file_len = k.shape[2]
            wanted = [file_len] if lengths is None else [int(n) for n in lengths]
            skipped = [n for n in wanted if n > file_len]
            wanted = [n for n in wanted if n <= file_len]
            if skipped:
                warnings.warn(f"sparse_eval: lengths {skipped} skipped: longer than Tk = "
                              f"{file_len} of the {where}", stacklevel=2)
            if not wanted:
                raise ValueError(f"sparse_eval: every length exceeds the {where}'s Tk = {file_len}")
        else:
            for name, value in (("queries", queries), ("batch", batch), ("heads", heads),
                                ("kv_heads", kv_heads), ("head_dim", head_dim)):
                if int(value) < 1:
                    raise ValueError(f"sparse_eval: {name} must be positive, got {value}")
            if heads % kv_heads != 0:
                raise ValueError(f"sparse_eval: heads {heads} is not divisible by kv_heads "
                                 f"{kv_heads}")
            wanted = [1024, 4096] if lengths is None else [int(n) for n in lengths]
            if not wanted:
                raise ValueError("sparse_eval: no lengths given")
            max_len = max(wanted)
            torch.manual_seed(seed)
            q = torch.randn(batch, heads, queries, head_dim)
            k = torch.randn(batch, kv_heads, max_len, head_dim)
            v = torch.randn(batch, kv_heads, max_len, head_dim)
        lengths_sorted = sorted(set(wanted))
        q_len = q.shape[2]
        for n in lengths_sorted:
            if n < 1 or n < q_len:
                raise ValueError(f"sparse_eval: length {n} is shorter than the {q_len} queries "
                                 "(they are aligned to the end of the keys)")

        scaling = 1.0 / math.sqrt(q.shape[3])
        keys = [k[:, :, :n].contiguous() for n in lengths_sorted]
        values = [v[:, :, :n].contiguous() for n in lengths_sorted]
        dense = []
        for kl, vl in zip(keys, values):
            dense.append(_median_ms(repeats, lambda: None,
                                    lambda: _sparse.dense_attention(q, kl, vl, None, scaling)))

        def reseed():
            torch.manual_seed(seed + 1)

        rows = []
        for c, ra in enumerate(attentions):
            for l, n in enumerate(lengths_sorted):
                def run():
                    return ra.custom_attention(q, keys[l], values[l], None, scaling, 0.0,
                                               MaskerState(), 0, False, False)
                try:
                    sparse_ms, (out, _, mask) = _median_ms(repeats, reseed, run)
                except _CPP_ERRORS as e:
                    raise ValueError(f"config {c} at length {n}: {_first_line(e)}") from e
                empty = mask.is_empty()
                rows.append({
                    "config": c,
                    "length": n,
                    "density": 1.0 if empty else mask.density(),
                    "rel_error": _relative_error(out, dense[l][1]),
                    "sparse_ms": sparse_ms,
                    "dense_ms": dense[l][0],
                    "empty_mask": empty,
                    "maskers": config_texts[c],
                })
    return rows


def _short_label(config_json: str) -> str:
    """'sink 128 + local 128 + oracle_top_k 0.1' from a configuration's JSON."""
    try:
        maskers = json.loads(config_json)
        parts = []
        for m in maskers:
            params = [str(v) for k, v in m.items() if k != "type"]
            parts.append(" ".join([str(m.get("type", "?"))] + params))
        text = " + ".join(parts)
    except (ValueError, TypeError, AttributeError):
        text = config_json
    return text if len(text) <= 80 else text[:77] + "..."


def plot_sparse_eval(rows: Sequence[Mapping[str, Any]], path: Union[str, os.PathLike],
                     log_y: Optional[bool] = None, title: Optional[str] = None):
    """Draws relative error (y) against density (x) from ``sparse_eval`` rows into ``path`` (a
    PNG, or any format matplotlib infers from the suffix): one line per configuration, its points
    joined in length order. The y axis is log10 when ``log_y``, or by default when the positive
    errors span more than two decades. Needs matplotlib; returns ``path``."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("attnkit.sparse.plot_sparse_eval needs matplotlib, which is not "
                          "installed: pip install matplotlib") from e
    rows = list(rows)
    if not rows:
        raise ValueError("plot_sparse_eval: no rows to draw")
    errors = [r["rel_error"] for r in rows if math.isfinite(r["rel_error"])]
    positive = [e for e in errors if e > 0]
    if log_y is None:
        log_y = len(positive) >= 2 and max(positive) / min(positive) > 100

    # The Agg canvas directly: no pyplot, so no global figure state and no GUI backend.
    fig = Figure(figsize=(7, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for c in sorted({r["config"] for r in rows}):
        mine = sorted((r for r in rows if r["config"] == c), key=lambda r: r["length"])
        label = f"config {c}"
        if "maskers" in mine[0]:
            label += ": " + _short_label(mine[0]["maskers"])
        xs = [r["density"] for r in mine]
        ys = [r["rel_error"] for r in mine]
        if log_y:
            floor = min(positive) if positive else 1e-12
            ys = [max(y, floor) for y in ys]  # a zero error sits on the lowest decade
        ax.plot(xs, ys, marker="o", label=label)
        for r, x, y in zip(mine, xs, ys):
            ax.annotate(str(r["length"]), (x, y), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)
    if log_y:
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
    ax.set_xlim(left=0)
    ax.set_xlabel("density (kept fraction of the query-key pairs)")
    ax.set_ylabel("relative error ||sparse - dense||_F / ||dense||_F")
    ax.set_title(title or "sparse attention: error against density (labels: key length)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    return path


__all__ = ["Mask", "MaskerState", "Masker", "make_masker", "masker_types", "dense_attention",
           "masked_attention", "masked_attention_reference", "ResearchAttention",
           "DEFAULT_CONFIGS", "sparse_eval", "plot_sparse_eval"]
