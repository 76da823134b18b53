"""The research-attention surface from Python (attnkit._C.sparse): masks, maskers and
custom_attention against a plain re-implementation of sparse-attention-hub's algorithm."""

import json
import math

import pytest
import torch

import attnkit
from attnkit import _C

S = _C.sparse


def naive_research_attention(q, k, v, cfg, attention_mask=None, scaling=None):
    """Sink / local / oracle top-k maskers and the attention under the mask, written from the
    specification with dense tensors (upstream's "dense" path), for queries aligned to the end
    of the keys. Returns the output [B, Tq, H, D] and the dense mask."""
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    G = H // k.shape[1]
    scaling = 1 / math.sqrt(D) if scaling is None else scaling
    kr, vr = k.repeat_interleave(G, 1).double(), v.repeat_interleave(G, 1).double()
    qd = q.double()
    am = torch.zeros(B, 1, Tq, Tk, dtype=torch.float64) if attention_mask is None \
        else attention_mask[..., :Tk].double()
    mask = None  # None = EMPTY; "full" = FULL
    pos = torch.arange(Tq) + Tk - Tq
    for m in cfg:
        if mask == "full":
            continue
        dense = torch.zeros(B, H, Tq, Tk, dtype=torch.float64) if mask is None else mask
        size = lambda x: int(x * Tk) if isinstance(x, float) else int(x)
        if m["type"] == "sink":
            n = size(m["sink_size"])
            if Tk <= n:
                mask = "full"
                continue
            dense = dense.clone()
            dense[..., :n] = 1.0
        elif m["type"] == "local":
            w = size(m["window_size"])
            if Tk <= w + Tq:
                mask = "full"
                continue
            dense = dense.clone()
            cols = torch.arange(Tk)
            dense[..., cols.view(1, Tk) > pos.view(Tq, 1)] = 0.0
            window = (cols.view(1, Tk) <= pos.view(Tq, 1)) & (cols.view(1, Tk) > pos.view(Tq, 1) - w)
            dense[..., window] = 1.0
        elif m["type"] == "oracle_top_k":
            kk = size(m["heavy_size"])
            if Tk <= kk:
                mask = "full"
                continue
            s = qd @ kr.transpose(-1, -2) + am
            s = s.masked_fill(dense > 0, torch.finfo(torch.float64).min)
            idx = s.topk(kk, -1).indices
            dense = (dense + torch.zeros_like(dense).scatter(-1, idx, 1.0)).clamp(0, 1)
        else:
            raise ValueError(m["type"])
        mask = dense
    s = qd @ kr.transpose(-1, -2) * scaling + am
    e = torch.exp(s - s.max(-1, keepdim=True).values)
    if isinstance(mask, torch.Tensor):
        e = torch.where(mask > 0, e / (mask + 1e-6), torch.zeros_like(e))
    out = (e @ vr) / e.sum(-1, keepdim=True)
    dense_mask = torch.ones(B, H, Tq, Tk) if mask in (None, "full") else mask.float()
    return out.transpose(1, 2), dense_mask


CONFIGS = [
    [{"type": "sink", "sink_size": 4}],
    [{"type": "sink", "sink_size": 4}, {"type": "local", "window_size": 8}],
    [{"type": "sink", "sink_size": 4}, {"type": "local", "window_size": 8},
     {"type": "oracle_top_k", "heavy_size": 0.1}],
    [{"type": "oracle_top_k", "heavy_size": 5}, {"type": "sink", "sink_size": 0.05}],
    [{"type": "local", "window_size": 100}],  # FULL: dense attention
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "+".join(m["type"] for m in c))
@pytest.mark.parametrize("shape", [(1, 4, 2, 1, 96), (2, 4, 1, 6, 64)])
@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_custom_attention_matches_a_naive_implementation(cfg, shape, backend, monkeypatch):
    monkeypatch.setenv("ATTNKIT_BACKEND", backend)
    B, H, Hkv, Tq, Tk = shape
    torch.manual_seed(0)
    q, k, v = torch.randn(B, H, Tq, 16), torch.randn(B, Hkv, Tk, 16), torch.randn(B, Hkv, Tk, 16)
    am = torch.randn(B, 1, Tq, Tk + 3)
    ra = S.ResearchAttention(json.dumps(cfg))
    out, weights, mask = ra.custom_attention(q, k, v, am, 0.25, 0.0, S.MaskerState(), 0, False,
                                             False)
    want, want_mask = naive_research_attention(q, k, v, cfg, am, 0.25)
    assert weights is None
    torch.testing.assert_close(mask.dense(), want_mask)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)


def test_mask_operations_and_capping():
    a = S.Mask.from_dense([1, 3], torch.tensor([[0.5, 0.0, 0.25]]))
    b = S.Mask.from_row_wise([1, 3], torch.tensor([[0, 2]]), torch.tensor([[0.8, 0.25]]))
    m = a.merge(b)
    assert m.form == "dense"
    torch.testing.assert_close(m.dense(), torch.tensor([[1.0, 0.0, 0.5]]))
    idx, ptr, data = b.index()
    assert idx.tolist() == [0, 2] and ptr.tolist() == [0, 2]
    assert b.density() == pytest.approx(2 / 3)
    x = torch.ones(1, 3)
    torch.testing.assert_close(b.apply_inverse(x), torch.tensor([[1 / (0.8 + 1e-6), 0, 4 / (1 + 4e-6)]]))
    assert S.Mask.full([2, 2]).is_full() and S.Mask.empty([2, 2]).density() == 0
    assert "form=index" in repr(b)


def test_maskers_registry_and_errors():
    types = S.masker_types()
    for t in ["sink", "local", "causal", "oracle_top_k", "oracle_top_p", "hash_attention_top_k",
              "quest_top_k", "double_sparsity_top_k", "random_sampling", "magic_pig",
              "adaptive_sampling"]:
        assert t in types
    m = S.make_masker('{"type": "sink", "sink_size": 2}')
    assert (m.type, m.kind) == ("sink", "fixed")
    with pytest.raises(attnkit.Error, match="unknown type 'nope'"):
        S.make_masker('{"type": "nope"}')
    with pytest.raises(attnkit.Error, match=r"LocalMasker: window_size must be > 0, got 0"):
        S.make_masker('{"type": "local", "window_size": 0}')
    two = [{"type": "random_sampling", "sampling_rate": 0.1},
           {"type": "magic_pig", "lsh_l": 4, "lsh_k": 4}]
    with pytest.raises(attnkit.Error, match="at most one sampling masker"):
        S.ResearchAttention(json.dumps(two))


def test_add_mask_with_state_and_layer():
    torch.manual_seed(1)
    q, k = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 32, 8)
    state = S.MaskerState()
    pig = S.make_masker('{"type": "magic_pig", "lsh_l": 8, "lsh_k": 2}')
    with pytest.raises(attnkit.Error, match="layer_idx"):
        pig.add_mask(k, q, k, None, 1.0, 0.0, state, S.Mask.empty([1, 2, 1, 32]))
    m = pig.add_mask(k, q, k, None, 1.0, 0.0, state, S.Mask.empty([1, 2, 1, 32]), 3)
    assert len(state) > 0 and all(layer == 3 for _, layer in state.keys())
    assert 0 < m.density() <= 1


def test_research_module_trains_and_decodes():
    torch.manual_seed(2)
    layer = attnkit.ResearchAttentionModule(
        32, 4, 2, maskers=[{"type": "sink", "sink_size": 2}, {"type": "oracle_top_k", "heavy_size": 3}])
    x = torch.randn(1, 10, 32)
    y = layer(x)
    y.square().mean().backward()
    assert all(p.grad is not None for p in layer.parameters())
    state = layer.init_state(1)
    with torch.no_grad():
        steps = [layer(x[:, t:t + 1], state=state) for t in range(10)]
    torch.testing.assert_close(torch.cat(steps, 1), y.detach(), rtol=1e-5, atol=1e-5)
