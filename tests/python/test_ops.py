"""The kernels as torch.library operators: values against plain torch, gradients (gradcheck in
float64), torch.compile against eager, names in the profiler, and property tests."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import attnkit


def naive_attention(q, k, v, keep=None, scale=None):
    """softmax(q k^T * scale) v per head, GQA by repetition; rows with nothing kept give 0."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = q @ k.transpose(-1, -2) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return p @ v


def rand(*shape, dtype=torch.float32, grad=False):
    return torch.randn(*shape, dtype=dtype, requires_grad=grad)


def test_flex_matches_sdpa_causal():
    q, k, v = rand(2, 4, 64, 32), rand(2, 4, 64, 32), rand(2, 4, 64, 32)
    torch.testing.assert_close(attnkit.flex_attention(q, k, v, causal=True),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True),
                               rtol=1e-5, atol=1e-5)


def test_flex_window_gqa_and_block_mask():
    q, k, v = rand(1, 4, 40, 16), rand(1, 2, 40, 16), rand(1, 2, 40, 16)
    i = torch.arange(40)
    keep = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] <= 7)
    torch.testing.assert_close(attnkit.flex_attention(q, k, v, causal=True, window_left=7),
                               naive_attention(q, k, v, keep), rtol=1e-5, atol=1e-5)
    bm = attnkit.create_block_mask(lambda b, h, qi, ki: (qi >= ki) & (qi - ki <= 7), 1, 4, 40, 40,
                                   block_q=8, block_k=8)
    assert 0 < bm.density() < 1
    torch.testing.assert_close(attnkit.flex_attention(q, k, v, block_mask=bm),
                               naive_attention(q, k, v, keep), rtol=1e-5, atol=1e-5)


def test_flex_fully_masked_row_is_zero():
    q, k, v = rand(1, 2, 8, 16), rand(1, 2, 8, 16), rand(1, 2, 8, 16)
    mask = torch.ones(8, 8, dtype=torch.bool)
    mask[3] = False
    out = attnkit.flex_attention(q, k, v, mask=mask)
    assert torch.isfinite(out).all() and out[:, :, 3].abs().max() == 0


def gather_reference(q, k, v, idx):
    B, Hq, Tq, D = q.shape
    Tk = k.shape[2]
    keep = torch.zeros(B, k.shape[1], Tq, Tk + 1, dtype=torch.bool)  # column Tk takes the -1s
    keep.scatter_(-1, torch.where(idx >= 0, idx, Tk), True)
    return naive_attention(q, k, v, keep[..., :Tk].repeat_interleave(Hq // k.shape[1], 1))


def test_gather_matches_reference():
    q, k, v = rand(2, 4, 12, 16), rand(2, 2, 20, 16), rand(2, 2, 20, 16)
    idx = torch.stack([torch.randperm(20)[:6] for _ in range(2 * 2 * 12)]).view(2, 2, 12, 6)
    idx[..., -1] = -1
    torch.testing.assert_close(attnkit.gather_attention(q, k, v, idx), gather_reference(q, k, v, idx),
                               rtol=1e-5, atol=1e-5)


def test_index_topk_matches_reference():
    q, k, w = rand(1, 1, 10, 2, 8), rand(1, 30, 8), rand(1, 1, 10, 2).abs()
    idx = attnkit.index_topk(q, k, w, top_k=5)
    scores = (w[..., None] * torch.relu(q @ k[:, None, None].transpose(-1, -2).squeeze(2))).sum(-2)
    assert idx.shape == (1, 1, 10, 5) and idx.dtype == torch.int64
    ref = scores.topk(5, -1).indices
    assert torch.equal(idx.sort(-1).values, ref.sort(-1).values)


def gdr_reference(q, k, v, g, beta):
    B, H, T, dk = q.shape
    S = torch.zeros(B, H, dk, v.shape[-1], dtype=q.dtype)
    outs = []
    scale = dk ** -0.5
    for t in range(T):
        kt, vt = k[:, :, t], v[:, :, t]
        S = S * g[:, :, t].exp()[..., None, None]
        pred = torch.einsum("bhk,bhkv->bhv", kt, S)
        S = S + torch.einsum("bhk,bhv->bhkv", kt, beta[:, :, t, None] * (vt - pred))
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t] * scale, S))
    return torch.stack(outs, 2), S


def test_gated_delta_rule_matches_recurrence():
    B, H, T, dk, dv = 1, 2, 20, 8, 8
    q, v = rand(B, H, T, dk), rand(B, H, T, dv)
    k = F.normalize(rand(B, H, T, dk), dim=-1)
    g, beta = -torch.rand(B, H, T) * 0.5, torch.rand(B, H, T)
    out, state = attnkit.gated_delta_rule(q, k, v, g, beta, chunk_size=8)
    ref_out, ref_state = gdr_reference(q, k, v, g, beta)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state, ref_state, rtol=1e-4, atol=1e-5)


def test_gradcheck_kernels_float64():
    d = dict(dtype=torch.float64, grad=True)
    q, k, v = rand(1, 2, 6, 4, **d), rand(1, 1, 6, 4, **d), rand(1, 1, 6, 4, **d)
    sinks = rand(2, **d)
    assert torch.autograd.gradcheck(
        lambda q, k, v, s: attnkit.flex_attention(q, k, v, causal=True, sinks=s), (q, k, v, sinks))
    idx = torch.tensor([[[[0, 1, -1], [1, 2, 0], [3, -1, 2], [0, 3, 4], [5, 4, 1], [2, 5, 0]]]])
    w = torch.rand(1, 1, 6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, v, w: attnkit.gather_attention(q, k, v, idx, w), (q, k, v, w))
    qg, kg, vg = rand(1, 1, 5, 4, **d), rand(1, 1, 5, 4, **d), rand(1, 1, 5, 4, **d)
    g = (-torch.rand(1, 1, 5, dtype=torch.float64)).requires_grad_()
    beta = torch.rand(1, 1, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *a: attnkit.gated_delta_rule(*a, chunk_size=2), (qg, kg, vg, g, beta))


def test_fp32_backward_matches_sdpa():
    q, k, v = rand(1, 2, 48, 16, grad=True), rand(1, 2, 48, 16, grad=True), rand(1, 2, 48, 16, grad=True)
    dout = torch.randn(1, 2, 48, 16)
    g1 = torch.autograd.grad(attnkit.flex_attention(q, k, v, causal=True), (q, k, v), dout)
    g2 = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, is_causal=True), (q, k, v), dout)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


class TinyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(16, 48)

    def forward(self, x):
        q, k, v = self.proj(x).view(1, 12, 3, 1, 16).permute(2, 0, 3, 1, 4)
        return attnkit.flex_attention(q, k, v, causal=True).sum() + \
            attnkit.gather_attention(q, k, v, torch.zeros(1, 1, 12, 2, dtype=torch.long)).sum()


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_matches_eager(backend):
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = TinyModel()
    x = torch.randn(1, 12, 16)
    eager = torch.autograd.grad(m(x), m.proj.weight)[0]
    compiled = torch.compile(m, backend=backend, fullgraph=True)
    got = torch.autograd.grad(compiled(x), m.proj.weight)[0]
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-6)


def test_ops_show_in_profiler():
    q = rand(1, 2, 16, 8)
    with torch.profiler.profile() as prof:
        attnkit.flex_attention(q, q, q)
    assert any("attnkit::flex_attention" in e.key for e in prof.key_averages())


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 2), Hkv=st.integers(1, 2), rep=st.sampled_from([1, 2]),
       Tq=st.integers(1, 40), Tk=st.integers(1, 40), D=st.sampled_from([8, 16, 24]),
       dtype=st.sampled_from([torch.float32, torch.float64]), causal=st.booleans(),
       masked=st.booleans(), transposed=st.booleans(), seed=st.integers(0, 1000))
def test_flex_property(B, Hkv, rep, Tq, Tk, D, dtype, causal, masked, transposed, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hkv * rep, Tq, D, generator=g, dtype=dtype)
    k = torch.randn(B, Tk, Hkv, D, generator=g, dtype=dtype).transpose(1, 2)  # strided
    v = torch.randn(B, Hkv, Tk, D, generator=g, dtype=dtype)
    if transposed:
        q = q.transpose(1, 2).contiguous().transpose(1, 2)
    keep = torch.ones(Tq, Tk, dtype=torch.bool)
    if causal:  # bottom-right aligned, as decoding continues a prefix
        keep &= torch.arange(Tq)[:, None] + (Tk - Tq) >= torch.arange(Tk)[None, :]
    mask = None
    if masked:
        mask = torch.rand(Tq, Tk, generator=g) > 0.3
        keep &= mask
    out = attnkit.flex_attention(q, k, v, causal=causal, mask=mask)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(out, naive_attention(q, k, v, keep), rtol=tol, atol=tol)


@settings(max_examples=20, deadline=None)
@given(B=st.integers(1, 2), Hkv=st.integers(1, 2), rep=st.sampled_from([1, 2]),
       Tq=st.integers(1, 24), Tk=st.integers(1, 30), K=st.integers(1, 8),
       D=st.sampled_from([4, 16, 20]), dtype=st.sampled_from([torch.float32, torch.float64]),
       shared=st.booleans(), seed=st.integers(0, 1000))
def test_gather_property(B, Hkv, rep, Tq, Tk, K, D, dtype, shared, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hkv * rep, Tq, D, generator=g, dtype=dtype)
    k = torch.randn(B, Hkv, Tk, D, generator=g, dtype=dtype)
    v = torch.randn(B, Tk, Hkv, D, generator=g, dtype=dtype).transpose(1, 2)  # strided
    lists = 1 if shared else Hkv
    idx = torch.stack([torch.randperm(Tk, generator=g)[:K] for _ in range(B * lists * Tq)])
    idx = torch.cat([idx, torch.full((idx.shape[0], K - idx.shape[1]), -1)], 1)  # K > Tk pads
    idx = idx.view(B, lists, Tq, K)
    idx = idx.masked_fill(torch.rand(idx.shape, generator=g) < 0.2, -1)
    out = attnkit.gather_attention(q, k, v, idx)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(out, gather_reference(q, k, v, idx.expand(B, Hkv, Tq, K)),
                               rtol=tol, atol=tol)


@settings(max_examples=15, deadline=None)
@given(H=st.integers(1, 3), T=st.integers(1, 40), dk=st.sampled_from([4, 8, 16]),
       chunk=st.sampled_from([4, 16, 64]), dtype=st.sampled_from([torch.float32, torch.float64]),
       seed=st.integers(0, 1000))
def test_gated_delta_rule_property(H, T, dk, chunk, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, H, T, dk, generator=g, dtype=dtype)
    k = F.normalize(torch.randn(1, H, T, dk, generator=g, dtype=dtype), dim=-1)
    v = torch.randn(1, H, T, dk, generator=g, dtype=dtype)
    gate = -torch.rand(1, H, T, generator=g, dtype=dtype)
    beta = torch.rand(1, H, T, generator=g, dtype=dtype)
    out, state = attnkit.gated_delta_rule(q, k, v, gate, beta, chunk_size=chunk)
    ref_out, ref_state = gdr_reference(q, k, v, gate, beta)
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(out, ref_out, rtol=tol, atol=tol)
    torch.testing.assert_close(state, ref_state, rtol=tol, atol=tol)
