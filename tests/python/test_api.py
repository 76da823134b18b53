"""The package surface: every mechanism as an nn.Module over the C++ module."""

import copy

import pytest
import torch

import attnkit
from mechanism_configs import CONFIGS, with_causal

NAMES = sorted(CONFIGS)
T = 16


def build(name, seed=0, **extra):
    torch.manual_seed(seed)
    return attnkit.make(name, **{**CONFIGS[name], **extra})


def test_catalog_covers_every_mechanism():
    names = {m["name"] for m in attnkit.mechanisms()}
    assert names == set(CONFIGS)
    for info in attnkit.mechanisms():
        cls = getattr(attnkit, info["class_name"])
        assert issubclass(cls, attnkit.Attention)


@pytest.mark.parametrize("name", NAMES)
def test_forward_shape_and_parameters(name):
    m = build(name)
    x = torch.randn(2, T, 32)
    y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    params = dict(m.named_parameters())
    assert params, "every mechanism has parameters"
    assert all(isinstance(p, torch.nn.Parameter) for p in params.values())
    assert set(m.state_dict()) >= set(params)


@pytest.mark.parametrize("name", NAMES)
def test_optimizer_step_reaches_the_cpp_forward(name):
    m = build(name)
    x = torch.randn(2, T, 32)
    before = m(x).detach()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m(x).square().sum().backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    opt.step()
    assert not torch.allclose(m(x).detach(), before)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_and_to_float64(name):
    a, b = build(name, seed=0), build(name, seed=1)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, T, 32)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    a.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in a.parameters())
    assert a(x.double()).dtype == torch.float64
    torch.testing.assert_close(a(x.double()).float(), b(x), rtol=1e-4, atol=1e-5)


def test_parameter_names_are_the_cpp_names():
    m = attnkit.GroupedQueryAttention(32, 4, 2, qk_norm_eps=1e-6, output_gate=True, sinks=True)
    assert set(m.state_dict()) == {"q_proj.weight", "k_proj.weight", "v_proj.weight",
                                   "o_proj.weight", "gate_proj.weight", "q_norm.weight",
                                   "k_norm.weight", "sinks"}
    assert m.state_dict()["k_proj.weight"].shape == (16, 32)


def test_positional_and_reference_argument_names():
    a = attnkit.GroupedQueryAttention(32, 4, 2, causal=True)
    b = attnkit.GroupedQueryAttention(d_model=32, num_heads=4, num_kv_heads=2, causal=True)
    assert a.options == b.options and a.supports_decoding


@pytest.mark.parametrize("name", NAMES)
def test_decoding_equals_full_forward(name):
    options = {o["name"] for o in next(i for i in attnkit.mechanisms() if i["name"] == name)["options"]}
    torch.manual_seed(0)
    wraps = name in ("gated", "combined")
    m = attnkit.make(name, **(with_causal(name, True) if "causal" in options or wraps else CONFIGS[name]))
    if not m.supports_decoding:
        pytest.skip(f"{name} does not decode")
    m.eval()
    x = torch.randn(2, T, 32)
    full = m(x)
    state = m.init_state(2)
    parts = [m(x[:, :5], state=state)] + [m(x[:, t:t + 1], state=state) for t in range(5, T)]
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-4, atol=1e-5)
    assert state.length == T and state.bytes() > 0


def test_forward_with_aux_dataclass():
    m = build("dsa", causal=True)
    aux = m.forward_with_aux(torch.randn(1, T, 32))
    assert isinstance(aux, attnkit.AttentionAux)
    assert aux.attn_weights.shape == (1, 4, T, T)
    assert aux.index_scores is not None and aux.selected_indices is not None
    loss = attnkit.dsa_index_aux_loss(aux.index_scores, aux.attn_weights)
    assert loss.ndim == 0 and torch.isfinite(loss)
    dense = build("gqa").forward_with_aux(torch.randn(1, T, 32))
    assert dense.index_scores is None
    torch.testing.assert_close(dense.attn_weights.sum(-1), torch.ones(1, 4, T))


def test_mask_fully_masked_row_gives_zeros():
    m = build("gqa")
    x = torch.randn(1, 4, 32)
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[2] = False
    y = m(x, mask)
    assert torch.isfinite(y).all()


def test_errors_are_clear_exceptions():
    with pytest.raises(attnkit.Error, match="GroupedQueryAttention.*num_kv_heads"):
        attnkit.make("gqa", dim=32, num_heads=4, num_kv_heads=3)
    with pytest.raises(attnkit.Error, match="causal"):
        attnkit.make("gqa", dim=32, num_heads=4, num_kv_heads=2, causal="yes")
    with pytest.raises(attnkit.Error, match="no_such_option"):
        attnkit.make("gqa", dim=32, num_heads=4, num_kv_heads=2, no_such_option=1)
    with pytest.raises(ValueError, match="unknown mechanism"):
        attnkit.make("nope")
    m = build("gqa")
    with pytest.raises(attnkit.Error, match="GroupedQueryAttention"):
        m(torch.randn(2, T, 31))
    with pytest.raises(attnkit.Error, match="GroupedQueryAttention"):
        m.init_state(1)  # not causal: no decoding
    assert issubclass(attnkit.Error, ValueError)


def test_cpp_archive_round_trip(tmp_path):
    a, b = build("mla", seed=0), build("mla", seed=1)
    a.save_cpp(tmp_path / "mla.pt")
    b.load_cpp(tmp_path / "mla.pt")
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb)


def test_deepcopy_is_deep():
    a = build("gqa")
    b = copy.deepcopy(a)
    x = torch.randn(1, T, 32)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    with torch.no_grad():
        b.q_proj.weight.add_(1.0)
    assert not torch.allclose(a(x), b(x))


def test_train_eval_reaches_cpp():
    m = build("gqa", dropout=0.5)
    x = torch.randn(1, T, 32)
    m.eval()
    assert not m.cpp.training
    torch.testing.assert_close(m(x), m(x), rtol=0, atol=0)
    m.train()
    assert m.cpp.training


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name):
    m = build(name).to(torch.float64).eval()
    x = torch.randn(1, 8, 32, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: m(t), (x,), eps=1e-6, atol=1e-5, rtol=1e-4)
