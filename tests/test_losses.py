"""Sampled softmax: logQ correction, masking of the user's own positives, temperature clamp, user weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from components.training.losses import clamped_temperature, sampled_softmax_loss, user_weights


def _setup(p: int = 6, d: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(p, d, generator=g), dim=-1)
    v = F.normalize(torch.randn(p, d, generator=g), dim=-1)
    return q, v


def test_in_batch_matches_hand_computed_softmax_with_logq():
    q, v = _setup()
    ids = torch.arange(6)
    users = torch.arange(6)  # one pair per user: nothing masked but the diagonal
    tau = torch.tensor(0.5)
    logq = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]))
    got = sampled_softmax_loss(q, v, ids, users, tau, logq_positive=logq)
    logits = q @ v.T / tau - logq[None, :]
    want = F.cross_entropy(logits, torch.arange(6))  # mean over 6 users, each weight 1/6
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    # without the correction the loss differs: logQ actually does something
    plain = sampled_softmax_loss(q, v, ids, users, tau)
    assert plain.item() == pytest.approx(F.cross_entropy(q @ v.T / tau, torch.arange(6)).item(), rel=1e-5)
    assert abs(plain.item() - got.item()) > 1e-3


def test_logq_reduces_the_push_on_popular_negatives():
    # a popular item (high Q) is a negative for many pairs; logQ lowers its negative logits, so the
    # gradient pushing it away from the other users shrinks
    q, v = _setup()
    ids, users, tau = torch.arange(6), torch.arange(6), torch.tensor(0.2)
    logq = torch.zeros(6)
    logq[0] = math.log(50.0)
    grads = []
    for lq in (None, logq):
        vv = v.clone().requires_grad_(True)
        sampled_softmax_loss(q, vv, ids, users, tau, logq_positive=lq).backward()
        grads.append(vv.grad)
    # item 0's gradient from being a negative of pairs 1..5 is smaller with the correction
    push_plain = (grads[0][0]).norm().item()
    push_logq = (grads[1][0]).norm().item()
    assert push_logq != pytest.approx(push_plain)


def test_own_positives_and_duplicate_pins_are_masked():
    q, v = _setup()
    tau = torch.tensor(0.3)
    users = torch.tensor([0, 0, 1, 2, 3, 4])  # pairs 0 and 1 belong to the same user
    ids = torch.tensor([10, 11, 12, 13, 14, 10])  # pair 5's positive is the same pin as pair 0's
    got = sampled_softmax_loss(q, v, ids, users, tau)
    logits = q @ v.T / tau
    mask = (users[:, None] == users[None, :]) | (ids[:, None] == ids[None, :])
    mask.fill_diagonal_(False)
    per = F.cross_entropy(logits.masked_fill(mask, float("-inf")), torch.arange(6), reduction="none")
    w = torch.tensor([0.5, 0.5, 1, 1, 1, 1]) / 5  # user 0 has two pairs: each weighs half
    assert got.item() == pytest.approx((per * w).sum().item(), rel=1e-5)
    # changing the masked column (pair 1's positive, a positive of user 0) does not change pair 0's loss
    v2 = v.clone()
    v2[1] = -v2[1]
    per2 = F.cross_entropy((q @ v2.T / tau).masked_fill(mask, float("-inf")), torch.arange(6), reduction="none")
    assert per2[0].item() == pytest.approx(per[0].item(), rel=1e-6)
    assert sampled_softmax_loss(q, v2, ids, users, tau).item() != pytest.approx(got.item())  # others see it


def test_random_and_mixed_pools():
    q, v = _setup()
    g = torch.Generator().manual_seed(1)
    neg = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    neg_ids = torch.tensor([100, 101, 2, 103, 104])  # id 2 is pair 2's positive: an accidental hit
    ids, users, tau = torch.arange(6), torch.arange(6), torch.tensor(0.5)
    got = sampled_softmax_loss(q, v, ids, users, tau, in_batch=False, random_negatives=neg, random_ids=neg_ids)
    pos = (q * v).sum(-1, keepdim=True) / tau
    sim = (q @ neg.T / tau).masked_fill(neg_ids[None, :] == ids[:, None], float("-inf"))
    want = F.cross_entropy(torch.cat([pos, sim], 1), torch.zeros(6, dtype=torch.long))
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    mixed = sampled_softmax_loss(q, v, ids, users, tau, in_batch=True, random_negatives=neg, random_ids=neg_ids)
    assert mixed.item() > got.item()  # a bigger pool of negatives -> a larger loss
    with pytest.raises(ValueError, match="in-batch negatives, random negatives or both"):
        sampled_softmax_loss(q, v, ids, users, tau, in_batch=False)


def test_temperature_clamped_at_minimum():
    log_t = torch.tensor(math.log(0.001), requires_grad=True)
    t = clamped_temperature(log_t, 0.01)
    assert t.item() == pytest.approx(0.01)
    t.backward()
    assert log_t.grad.item() == 0.0  # clamped: no gradient pushes it lower
    log_t2 = torch.tensor(math.log(0.07), requires_grad=True)
    assert clamped_temperature(log_t2, 0.01).item() == pytest.approx(0.07)


def test_model_temperature_is_clamped():
    from components import config
    from components.models.pinnerformer import PinnerFormer

    m = PinnerFormer(config.load("pinnerformer_tiny"))
    with torch.no_grad():
        m.log_temperature.fill_(math.log(1e-4))
    assert m.temperature().item() == pytest.approx(0.01)


def test_user_weights_sum_to_one_per_batch():
    w = user_weights(torch.tensor([3, 3, 3, 7, 9, 9]))
    assert w.sum().item() == pytest.approx(1.0)
    assert w[0].item() == pytest.approx(1 / 9) and w[3].item() == pytest.approx(1 / 3)


def test_the_model_uses_the_tested_temperature_and_the_trainer_the_tested_loss():
    import inspect

    from components.layers import temperature
    from components.models import pinnerformer as model_mod
    from components.training import losses
    from components.training import pinnerformer as trainer

    assert losses.clamped_temperature is temperature.clamped_temperature is model_mod.clamped_temperature
    assert trainer.sampled_softmax_loss is losses.sampled_softmax_loss
    assert "clamped_temperature(" in inspect.getsource(model_mod.PinnerFormer.temperature)
