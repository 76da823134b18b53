"""attnkit's kernels as torch.library operators (``torch.ops.attnkit.*``).

Each operator runs the C++ functional (the fused CPU kernel where one applies, else the
composed reference) and has a fake-tensor implementation, so ``torch.compile`` traces through
it, and an autograd formula. flex_attention's backward is the fused backward kernel, from the
forward's output and log-sum-exp; the other backward operators (and flex_attention's in float64)
recompute the forward under the C++ autograd and return its vector-Jacobian product (one extra
forward per backward).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import _C


def _lse_dtype(q: Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


# --- flex attention ---------------------------------------------------------------------------

@torch.library.custom_op("attnkit::flex_attention", mutates_args=())
def _flex(q: Tensor, k: Tensor, v: Tensor, scale: Optional[float], causal: bool,
          window_left: Optional[int], window_right: Optional[int], sinks: Optional[Tensor],
          softcap: float, alibi_slopes: Optional[Tensor], bias: Optional[Tensor],
          mask: Optional[Tensor], block_keep: Optional[Tensor], block_q: int,
          block_k: int) -> Tuple[Tensor, Tensor]:
    out, lse = _C.flex_attention(q, k, v, scale, causal, window_left, window_right, sinks,
                                 softcap, alibi_slopes, bias, mask, block_keep, block_q, block_k)
    return out, lse.to(_lse_dtype(q))


@_flex.register_fake
def _(q, k, v, scale, causal, window_left, window_right, sinks, softcap, alibi_slopes, bias,
      mask, block_keep, block_q, block_k):
    out = q.new_empty((*q.shape[:-1], v.shape[-1]))
    return out, q.new_empty(q.shape[:-1], dtype=_lse_dtype(q))


@torch.library.custom_op("attnkit::flex_attention_backward", mutates_args=())
def _flex_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                   scale: Optional[float], causal: bool, window_left: Optional[int],
                   window_right: Optional[int], sinks: Optional[Tensor], softcap: float,
                   alibi_slopes: Optional[Tensor], bias: Optional[Tensor], mask: Optional[Tensor],
                   block_keep: Optional[Tensor], block_q: int,
                   block_k: int) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    g = _C.flex_attention_vjp(dout, q, k, v, out, lse, scale, causal, window_left, window_right,
                              sinks, softcap, alibi_slopes, bias, mask, block_keep, block_q,
                              block_k)
    like = (q, k, v, sinks, bias)
    return tuple(_grad_or_zeros(gi, t) for gi, t in zip(g, like))


@_flex_backward.register_fake
def _(dout, q, k, v, out, lse, scale, causal, window_left, window_right, sinks, softcap,
      alibi_slopes, bias, mask, block_keep, block_q, block_k):
    return tuple(_empty_like_or_0(t, q) for t in (q, k, v, sinks, bias))


def _grad_or_zeros(g: Optional[Tensor], like: Optional[Tensor]) -> Tensor:
    # Custom operators return tensors, not None: an absent input's gradient is an empty tensor.
    if like is None:
        return torch.empty(0)
    return torch.zeros_like(like) if g is None else g


def _empty_like_or_0(t: Optional[Tensor], q: Tensor) -> Tensor:
    return q.new_empty(0, dtype=torch.float32) if t is None else torch.empty_like(t)


def _flex_setup(ctx, inputs, output):
    ctx.inputs = inputs
    ctx.save_for_backward(*output)  # (saving the outputs as attributes would form a cycle)


def _flex_grad(ctx, dout, dlse):
    i = ctx.inputs
    out, lse = ctx.saved_tensors
    dq, dk, dv, dsinks, dbias = _flex_backward(dout, i[0], i[1], i[2], out, lse, *i[3:])
    return (dq, dk, dv, None, None, None, None, dsinks if i[7] is not None else None, None, None,
            dbias if i[10] is not None else None, None, None, None, None)


_flex.register_autograd(_flex_grad, setup_context=_flex_setup)


@dataclass
class BlockMask:
    """Which (query block, key block) pairs are visited, from an element keep mask
    [B or 1, H or 1, Tq, Tk] (True = attend). Build it with :func:`create_block_mask`."""

    keep: Tensor
    block_q: int = 128
    block_k: int = 128

    def density(self) -> float:
        """Fraction of (query, key) pairs kept."""
        return float(self.keep.float().mean())


def create_block_mask(mask_mod: Union[Callable, Tensor], B: int, H: int, Q_LEN: int, KV_LEN: int,
                      block_q: int = 128, block_k: int = 128) -> BlockMask:
    """A block mask from ``mask_mod(b, h, q_idx, kv_idx) -> bool`` (evaluated on broadcast index
    tensors, as torch's ``create_block_mask``) or from a boolean tensor [B, H, Tq, Tk]."""
    if isinstance(mask_mod, Tensor):
        keep = mask_mod
    else:
        b = torch.arange(B).view(B, 1, 1, 1)
        h = torch.arange(H).view(1, H, 1, 1)
        qi = torch.arange(Q_LEN).view(1, 1, Q_LEN, 1)
        ki = torch.arange(KV_LEN).view(1, 1, 1, KV_LEN)
        keep = torch.as_tensor(mask_mod(b, h, qi, ki), dtype=torch.bool)
    keep = keep.to(torch.bool).expand(B, H, Q_LEN, KV_LEN).contiguous()
    return BlockMask(keep, block_q, block_k)


def flex_attention(q: Tensor, k: Tensor, v: Tensor, *, scale: Optional[float] = None,
                   causal: bool = False, window_left: Optional[int] = None,
                   window_right: Optional[int] = None, sinks: Optional[Tensor] = None,
                   softcap: float = 0.0, alibi_slopes: Optional[Tensor] = None,
                   bias: Optional[Tensor] = None, mask: Optional[Tensor] = None,
                   block_mask: Optional[BlockMask] = None, return_lse: bool = False):
    """Block-sparse flash attention with built-in mask and score rules.

    q [B, Hq, Tq, D], k [B, Hkv, Tk, D], v [B, Hkv, Tk, Dv] (Hq a multiple of Hkv) ->
    [B, Hq, Tq, Dv]; with ``return_lse`` also the log-sum-exp [B, Hq, Tq]. Rules: ``causal``,
    a sliding window (``window_left``/``window_right`` keys before/after), per-head ``sinks``
    logits, tanh ``softcap``, ``alibi_slopes`` [Hq], an additive ``bias`` and a boolean or
    additive ``mask`` broadcastable to [B, Hq, Tq, Tk], and a ``block_mask``."""
    keep, bq, bk = None, 128, 128
    if block_mask is not None:
        # The block mask says which blocks to visit; inside partial blocks the element mask
        # decides, so it travels too (combined with a user mask).
        keep, bq, bk = block_mask.keep, block_mask.block_q, block_mask.block_k
        if mask is None:
            mask = keep
        elif mask.dtype == torch.bool:
            mask = mask & keep
        else:
            mask = mask.masked_fill(~keep, float("-inf"))
    out, lse = _flex(q, k, v, scale, causal, window_left, window_right, sinks, softcap,
                     alibi_slopes, bias, mask, keep, bq, bk)
    return (out, lse) if return_lse else out


# --- gather attention -------------------------------------------------------------------------

@torch.library.custom_op("attnkit::gather_attention", mutates_args=())
def _gather(q: Tensor, k: Tensor, v: Tensor, indices: Tensor, weights: Optional[Tensor],
            scale: Optional[float], sinks: Optional[Tensor], block_size: int,
            causal: bool) -> Tuple[Tensor, Tensor]:
    out, lse = _C.gather_attention(q, k, v, indices, weights, scale, sinks, block_size, causal)
    return out, lse.to(_lse_dtype(q))


@_gather.register_fake
def _(q, k, v, indices, weights, scale, sinks, block_size, causal):
    return (q.new_empty((*q.shape[:-1], v.shape[-1])),
            q.new_empty(q.shape[:-1], dtype=_lse_dtype(q)))


@torch.library.custom_op("attnkit::gather_attention_backward", mutates_args=())
def _gather_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, indices: Tensor,
                     weights: Optional[Tensor], scale: Optional[float], sinks: Optional[Tensor],
                     block_size: int, causal: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    g = _C.gather_attention_vjp(dout, q, k, v, indices, weights, scale, sinks, block_size, causal)
    return tuple(_grad_or_zeros(gi, t) for gi, t in zip(g, (q, k, v, weights, sinks)))


@_gather_backward.register_fake
def _(dout, q, k, v, indices, weights, scale, sinks, block_size, causal):
    return tuple(_empty_like_or_0(t, q) for t in (q, k, v, weights, sinks))


def _gather_setup(ctx, inputs, output):
    ctx.inputs = inputs


def _gather_grad(ctx, dout, dlse):
    q, k, v, indices, weights, scale, sinks, block_size, causal = ctx.inputs
    dq, dk, dv, dw, ds = _gather_backward(dout, q, k, v, indices, weights, scale, sinks,
                                          block_size, causal)
    return (dq, dk, dv, None, dw if weights is not None else None, None,
            ds if sinks is not None else None, None, None)


_gather.register_autograd(_gather_grad, setup_context=_gather_setup)


def gather_attention(q: Tensor, k: Tensor, v: Tensor, indices: Tensor,
                     weights: Optional[Tensor] = None, *, scale: Optional[float] = None,
                     sinks: Optional[Tensor] = None, block_size: int = 1, causal: bool = False,
                     return_lse: bool = False):
    """Attention over per-query key lists: q [B, Hq, Tq, D], k [B, Hkv, Tk, D],
    v [B, Hkv, Tk, Dv], indices [B, Hkv or 1, Tq, K] (-1 = unused; block ids when
    block_size > 1), optional non-negative weights of the shape of indices -> [B, Hq, Tq, Dv]."""
    out, lse = _gather(q, k, v, indices, weights, scale, sinks, block_size, causal)
    return (out, lse) if return_lse else out


# --- index top-k ------------------------------------------------------------------------------

@torch.library.custom_op("attnkit::index_topk", mutates_args=())
def _index_topk(q: Tensor, k: Tensor, w: Optional[Tensor], top_k: int, causal: bool, relu: bool,
                scale: float, block_size: int, mask: Optional[Tensor],
                key_limit: Optional[Tensor]) -> Tensor:
    return _C.index_topk(q, k, w, top_k, causal, relu, scale, block_size, mask, key_limit)


@_index_topk.register_fake
def _(q, k, w, top_k, causal, relu, scale, block_size, mask, key_limit):
    return q.new_empty((*q.shape[:3], top_k), dtype=torch.int64)


def index_topk(q: Tensor, k: Tensor, w: Optional[Tensor] = None, *, top_k: int = 64,
               causal: bool = False, relu: bool = True, scale: float = 1.0, block_size: int = 1,
               mask: Optional[Tensor] = None, key_limit: Optional[Tensor] = None) -> Tensor:
    """The top_k keys (or key blocks) per query by indexer score
    sum_h w[i,h] act(scale q[i,h].k[j]): q [B, G, Tq, Hi, Di], k [B, Tk, Di],
    w [B, G, Tq, Hi] -> int64 [B, G, Tq, top_k] (-1 pads rows with fewer visible keys)."""
    return _index_topk(q, k, w, top_k, causal, relu, scale, block_size, mask, key_limit)


# --- gated delta rule -------------------------------------------------------------------------

@torch.library.custom_op("attnkit::gated_delta_rule", mutates_args=())
def _gdr(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor,
         initial_state: Optional[Tensor], scale: Optional[float],
         chunk_size: int) -> Tuple[Tensor, Tensor]:
    return _C.gated_delta_rule(q, k, v, g, beta, initial_state, scale, chunk_size)


@_gdr.register_fake
def _(q, k, v, g, beta, initial_state, scale, chunk_size):
    B, Hv, T, dv = v.shape
    return v.new_empty((B, Hv, T, dv)), v.new_empty((B, Hv, k.shape[-1], dv))


@torch.library.custom_op("attnkit::gated_delta_rule_backward", mutates_args=())
def _gdr_backward(dout: Tensor, dstate: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor,
                  g: Tensor, beta: Tensor, initial_state: Optional[Tensor],
                  scale: Optional[float], chunk_size: int) -> Tuple[Tensor, Tensor, Tensor,
                                                                     Tensor, Tensor, Tensor]:
    grads = _C.gated_delta_rule_vjp(dout, dstate, q, k, v, g, beta, initial_state, scale,
                                    chunk_size)
    return tuple(_grad_or_zeros(gi, t) for gi, t in zip(grads, (q, k, v, g, beta, initial_state)))


@_gdr_backward.register_fake
def _(dout, dstate, q, k, v, g, beta, initial_state, scale, chunk_size):
    return tuple(_empty_like_or_0(t, q) for t in (q, k, v, g, beta, initial_state))


def _gdr_setup(ctx, inputs, output):
    ctx.inputs = inputs


def _gdr_grad(ctx, dout, dstate):
    q, k, v, g, beta, s0, scale, chunk = ctx.inputs
    dq, dk, dv, dg, db, ds0 = _gdr_backward(dout, dstate, q, k, v, g, beta, s0, scale, chunk)
    return dq, dk, dv, dg, db, ds0 if s0 is not None else None, None, None


_gdr.register_autograd(_gdr_grad, setup_context=_gdr_setup)


def gated_delta_rule(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor,
                     initial_state: Optional[Tensor] = None, *, scale: Optional[float] = None,
                     chunk_size: int = 64) -> Tuple[Tensor, Tensor]:
    """The gated delta rule (Gated DeltaNet's recurrence), chunked: q, k [B, Hqk, T, dk],
    v [B, Hv, T, dv], g (log decay <= 0) and beta [B, Hv, T], initial_state [B, Hv, dk, dv] ->
    (output [B, Hv, T, dv], final state [B, Hv, dk, dv])."""
    return _gdr(q, k, v, g, beta, initial_state, scale, chunk_size)
