"""The set-to-set modules (slot attention, the C-JEPA predictor) against attnhut, in float64 on
shared weights and shared random draws."""

import pytest
import torch

import attnkit
from attnkit import compat
from conftest import load_reference


@pytest.mark.parametrize("version", ["0.4.0", "0.5.0"])
def test_slot_attention_matches_attnhut(version):
    lib = load_reference("attnhut", version)
    torch.manual_seed(0)
    ref = lib.SlotAttention(16, 5, num_iters=3, hidden_dim=24).double()
    ours = attnkit.SlotAttention(16, 5, num_iters=3, hidden_dim=24).double()
    compat.load_reference_state_dict(ours, ref.state_dict(), "attnhut", version, "SlotAttention")
    x = torch.randn(2, 30, 16, dtype=torch.float64)
    torch.manual_seed(7)
    want = ref(x)
    torch.manual_seed(7)  # the same initial-slot noise from the global generator
    got = ours(x)
    assert got.shape == (2, 5, 16)
    assert (got - want).abs().max() <= 1e-10


@pytest.mark.parametrize("version", ["0.4.0", "0.5.0"])
def test_cjepa_predictor_and_loss_match_attnhut(version):
    lib = load_reference("attnhut", version)
    torch.manual_seed(0)
    ref = lib.CausalJEPAAttention(16, 4, 3, 3, pred_frames=1, depth=2).double().eval()
    ours = attnkit.CausalJEPAAttention(16, 4, 3, 3, pred_frames=1, depth=2).double().eval()
    compat.load_reference_state_dict(ours, ref.state_dict(), "attnhut", version,
                                     "CausalJEPAAttention")
    slots = torch.randn(2, 3, 3, 16, dtype=torch.float64)
    mask = torch.tensor([1])
    want_pred, _ = ref(slots, mask)
    got = ours(slots, mask)
    assert (got.pred - want_pred).abs().max() <= 1e-10
    target = torch.randn_like(got.pred)
    loss = attnkit.cjepa_masked_loss(got.pred, target, got.mask_slots, 3)
    assert abs(loss - lib.cjepa_masked_loss(want_pred, target, mask, 3)) <= 1e-10
    assert ours.predict(slots).shape == (2, 1, 3, 16)


def test_set_modules_train_and_convert():
    m = attnkit.SlotAttention(8, 3)
    m(torch.randn(1, 10, 8)).sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    m.to(torch.float64)
    assert m(torch.randn(1, 10, 8, dtype=torch.float64)).dtype == torch.float64
