"""Golden-value tests of the ranker layers: each against its formula computed by hand on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from components.layers.crossnet import CrossLayer, CrossNet, GatedCrossLayer, LowRankCrossLayer
from components.layers.gates import EPNet, GateNU, PPNet
from components.layers.interactions import DHENLayer, EncoderLayer, FeatureTokenizer, FinalMLP
from components.layers.masknet import InstanceGuidedMask, MaskBlock, ParallelMaskNet, SerialMaskNet


def _set(linear: torch.nn.Linear, weight: list, bias: list | None = None) -> None:
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(weight, dtype=torch.float32))
        if bias is not None:
            linear.bias.copy_(torch.tensor(bias, dtype=torch.float32))


def _ln(v: list[float]) -> list[float]:
    """LayerNorm by hand (weight 1, bias 0, eps 1e-5)."""
    m = sum(v) / len(v)
    var = sum((x - m) ** 2 for x in v) / len(v)
    return [(x - m) / math.sqrt(var + 1e-5) for x in v]


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# ---- DCNv2 / GDCN ---------------------------------------------------------------------------------------------

def test_cross_layer_matches_formula_by_hand():
    layer = CrossLayer(2)
    _set(layer.linear, [[1.0, 2.0], [0.0, -1.0]], [0.5, 1.0])
    x0, xl = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0]])
    # W xl + b = [1*3 + 2*(-1) + 0.5, 0*3 + (-1)(-1) + 1] = [1.5, 2]; x0 * that + xl = [1.5 + 3, 4 - 1]
    assert layer(x0, xl).tolist() == [[4.5, 3.0]]


def test_low_rank_cross_layer_has_relu_between_factors():
    layer = LowRankCrossLayer(2, rank=2)
    _set(layer.v, [[1.0, 0.0], [0.0, 1.0]])
    _set(layer.u, [[1.0, 1.0], [2.0, -1.0]], [0.0, 1.0])
    x0, xl = torch.tensor([[2.0, 3.0]]), torch.tensor([[1.0, -4.0]])
    # V xl = [1, -4] -> ReLU [1, 0] -> U = [1, 2] + b = [1, 3]; x0 * [1, 3] + xl = [2 + 1, 9 - 4]
    assert layer(x0, xl).tolist() == [[3.0, 5.0]]


def test_gated_cross_layer_matches_formula_by_hand():
    layer = GatedCrossLayer(2)
    _set(layer.cross, [[1.0, 0.0], [0.0, 1.0]], [0.0, 1.0])
    _set(layer.gate, [[0.0, 0.0], [1.0, 1.0]])
    x0, xl = torch.tensor([[2.0, 1.0]]), torch.tensor([[1.0, 1.0]])
    # cross = [1, 2], gate = sigmoid([0, 2]); out = x0 * cross * gate + xl
    want = [2 * 1 * 0.5 + 1, 1 * 2 * _sig(2.0) + 1]
    assert torch.allclose(layer(x0, xl), torch.tensor([want]), atol=1e-6)


@pytest.mark.parametrize("kind", ["full", "lowrank", "gated"])
def test_crossnet_stacks_layers_on_the_same_x0(kind):
    torch.manual_seed(0)
    net = CrossNet(4, 3, kind, rank=2)
    x0 = torch.randn(5, 4)
    x = x0
    for layer in net.layers:
        x = layer(x0, x)
    assert torch.equal(net(x0), x)
    assert net(x0).shape == (5, 4)


# ---- MaskNet ----------------------------------------------------------------------------------------------------

def test_instance_guided_mask_is_two_layer_mlp_with_ratio():
    mask = InstanceGuidedMask(2, 3, ratio=2.0)
    assert mask.aggregate.out_features == 4 and mask.project.out_features == 3
    _set(mask.aggregate, [[1, 0], [0, 1], [-1, 0], [0, -1]], [0, 0, 0, 0])
    _set(mask.project, [[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 1]], [0, 1, 2])
    emb = torch.tensor([[2.0, -3.0]])
    # hidden = ReLU([2, -3, -2, 3]) = [2, 0, 0, 3]; out = [5, 2 + 1, 3 + 2]
    assert mask(emb).tolist() == [[5.0, 3.0, 5.0]]


def test_mask_block_on_embedding_matches_formula_by_hand():
    block = MaskBlock(3, 3, 2, ratio=1.0, norm_input=True)
    _set(block.mask.aggregate, torch.eye(3).tolist(), [0, 0, 0])
    _set(block.mask.project, torch.eye(3).tolist(), [1, 1, 1])
    _set(block.hidden, [[1, 0, 0], [0, 1, 1]])
    emb = torch.tensor([[1.0, 2.0, 4.0]])
    mask = [2.0, 3.0, 5.0]  # ReLU(emb) + 1
    masked = [m * v for m, v in zip(mask, _ln([1.0, 2.0, 4.0]))]
    hidden = [masked[0], masked[1] + masked[2]]
    want = [max(0.0, v) for v in _ln(hidden)]
    assert torch.allclose(block(emb, emb), torch.tensor([want]), atol=1e-5)


def test_mask_block_on_hidden_layer_masks_raw_hidden():
    block = MaskBlock(2, 3, 2, norm_input=False)
    x, emb = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 0.1, -0.3]])
    want = torch.relu(block.norm(block.hidden(block.mask(emb) * x)))
    assert torch.equal(block(x, emb), want)


def test_serial_and_parallel_masknet_shapes_and_wiring():
    torch.manual_seed(0)
    emb = torch.randn(4, 6)
    serial = SerialMaskNet(6, [5, 3], ratio=2.0)
    want = serial.blocks[1](serial.blocks[0](emb, emb), emb)
    assert torch.equal(serial(emb), want) and want.shape == (4, 3)
    parallel = ParallelMaskNet(6, num_blocks=3, out_dim=4, ratio=2.0)
    out = parallel(emb)
    assert out.shape == (4, 12) and parallel.out_dim == 12
    assert torch.equal(out[:, 4:8], parallel.blocks[1](emb, emb))
    assert parallel.blocks[0].mask.aggregate.out_features == 12  # ratio 2.0 over a width-6 embedding


# ---- PEPNet -------------------------------------------------------------------------------------------------------

def test_gate_nu_matches_formula_and_stays_in_0_2():
    gate = GateNU(2, 2, hidden_dim=2)
    _set(gate.hidden, [[1, 0], [0, 1]], [0, 0])
    _set(gate.out, [[1, 0], [0, -1]], [0, 0])
    x = torch.tensor([[3.0, 1.0]])
    assert torch.allclose(gate(x), torch.tensor([[2 * _sig(3.0), 2 * _sig(-1.0)]]), atol=1e-6)
    torch.manual_seed(0)
    big = GateNU(8, 16, identity_init=False)  # PyTorch's default init, scaled up below
    with torch.no_grad():
        for p in big.parameters():
            p.mul_(50)
    g = big(torch.randn(512, 8) * 100)
    assert g.min() >= 0 and g.max() <= 2 and g.max() > 1.99 and g.min() < 0.01  # saturates at both ends


def test_epnet_scales_embedding_by_domain_gate_with_stop_gradient():
    torch.manual_seed(0)
    ep = EPNet(domain_dim=2, emb_dim=3, hidden_dim=4)
    emb = torch.randn(5, 3, requires_grad=True)
    dom = torch.randn(5, 2)
    out = ep(emb, dom)
    gate = ep.gate(torch.cat([dom, emb.detach()], -1))
    assert torch.allclose(out, gate * emb)
    # the gate path sees emb only under stop-gradient: d out / d emb = gate (diagonal)
    out.sum().backward()
    assert torch.allclose(emb.grad, gate.detach())


def test_ppnet_gates_every_layer_of_every_tower():
    torch.manual_seed(0)
    pp = PPNet(in_dim=3, personal_dim=2, ep_dim=4, dims=[5], num_tasks=2, gate_hidden=4)
    x, personal, ep = torch.randn(6, 3), torch.randn(6, 2), torch.randn(6, 4)
    gates = pp.gate_values(personal, ep)
    assert [tuple(g.shape) for g in gates] == [(6, 2, 3), (6, 2, 5)]
    want = []
    for k in range(2):
        lin0, lin1 = pp.towers[k]
        h = torch.relu(lin0(gates[0][:, k] * x))
        want.append(lin1(gates[1][:, k] * h))
    assert torch.allclose(pp(x, personal, ep), torch.cat(want, -1), atol=1e-6)


def test_gates_start_as_identity_so_gated_output_equals_ungated():
    """Every Gate NU starts at exactly 1 (zero output layer, 2 * sigmoid(0)), for any input and seed: EPNet
    returns the embedding unchanged and PPNet's towers equal the same towers without gates."""
    for seed in range(3):
        torch.manual_seed(seed)
        gate = GateNU(6, 5, hidden_dim=4)
        assert torch.equal(gate(torch.randn(7, 6) * 10), torch.ones(7, 5))
        assert torch.allclose(GateNU(6, 5, gamma=3.0)(torch.randn(7, 6)), torch.ones(7, 5), atol=1e-6)
        ep = EPNet(domain_dim=2, emb_dim=3, hidden_dim=4)
        emb = torch.randn(5, 3)
        assert torch.equal(ep(emb, torch.randn(5, 2)), emb)
        pp = PPNet(in_dim=3, personal_dim=2, ep_dim=4, dims=[5, 4], num_tasks=2, gate_hidden=4)
        x = torch.randn(6, 3)
        ungated = []
        for tower in pp.towers:
            h = x
            for i, linear in enumerate(tower):
                h = linear(h) if i == len(tower) - 1 else torch.relu(linear(h))
            ungated.append(h)
        assert torch.allclose(pp(x, torch.randn(6, 2), torch.randn(6, 4)), torch.cat(ungated, -1), atol=1e-6)
    # the gates still learn: the output layer gets a gradient at the first step
    gate = GateNU(6, 5, hidden_dim=4)
    gate(torch.randn(7, 6)).pow(2).sum().backward()
    assert gate.out.weight.grad.abs().sum() > 0


def test_ppnet_stop_gradient_no_gradient_reaches_epnet_output():
    torch.manual_seed(0)
    pp = PPNet(in_dim=3, personal_dim=2, ep_dim=4, dims=[5], num_tasks=2)
    ep = torch.randn(6, 4, requires_grad=True)
    x = torch.randn(6, 3)
    out = pp(x, torch.randn(6, 2), ep)  # ep enters PPNet only through its gates
    out.sum().backward()
    assert ep.grad is None or torch.count_nonzero(ep.grad) == 0
    # while the personal features do get gradient through the same gates (once they left their identity init)
    with torch.no_grad():
        for g in pp.gates:
            g.out.weight.normal_()
    personal = torch.randn(6, 2, requires_grad=True)
    pp(x, personal, ep.detach()).sum().backward()
    assert personal.grad is not None and personal.grad.abs().sum() > 0


# ---- interactions -----------------------------------------------------------------------------------------------

def test_feature_tokenizer_projects_dense_c_times_and_user_u_times():
    tok = FeatureTokenizer(token_dim=4, dense_dim=3, dense_tokens=2, user_dim=5, user_tokens=3, pin_dim=6)
    sparse, dense, user, pin = torch.randn(2, 7, 4), torch.randn(2, 3), torch.randn(2, 5), torch.randn(2, 6)
    out = tok(sparse, dense, user, pin)
    assert out.shape == (2, 7 + 2 + 3 + 1, 4)
    assert torch.equal(out[:, :7], sparse)
    assert torch.allclose(out[:, 7:9].flatten(1), tok.dense(dense))
    assert torch.allclose(out[:, 9:12].flatten(1), tok.user(user))
    assert torch.allclose(out[:, 12], tok.pin(pin))


def test_encoder_layer_matches_attention_by_hand():
    torch.manual_seed(0)
    layer = EncoderLayer(dim=4, heads=2).eval()
    x = torch.randn(3, 5, 4)
    h = layer.norm1(x)
    q, k, v = layer.qkv(h).split(4, dim=-1)
    heads = []
    for a in range(2):
        sl = slice(2 * a, 2 * a + 2)
        att = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(2), dim=-1)
        heads.append(att @ v[..., sl])
    y = x + layer.proj(torch.cat(heads, -1))
    want = y + layer.ffn(layer.norm2(y))
    assert torch.allclose(layer(x), want, atol=1e-5)
    # permuting the tokens permutes the output (no positions: tokens are feature slots)
    perm = torch.tensor([4, 2, 0, 1, 3])
    assert torch.allclose(layer(x[:, perm]), layer(x)[:, perm], atol=1e-5)


def test_finalmlp_selection_streams_and_bilinear_fusion_by_hand():
    torch.manual_seed(0)
    f = FinalMLP(in_dim=3, ctx1_dim=2, ctx2_dim=2, dims1=[4], dims2=[2], heads=2, out_dim=1)
    x, c1, c2 = torch.randn(5, 3), torch.randn(5, 2), torch.randn(5, 2)
    g1, g2 = f.select1(c1), f.select2(c2)
    assert g1.min() >= 0 and g1.max() <= 2  # feature selection gates are 2 * sigmoid
    o1, o2 = f.stream1(g1 * x), f.stream2(g2 * x)
    want = torch.zeros(5, 1) + f.bias
    for h in range(2):
        a, b = o1[:, 2 * h:2 * h + 2], o2[:, h:h + 1]
        want = want + a @ f.w1[h] + b @ f.w2[h]
        want = want + torch.einsum("bi,ij,bj->b", a, f.w3[h, :, :, 0], b)[:, None]
    assert torch.allclose(f(x, c1, c2), want, atol=1e-5)


def test_dhen_layer_concats_cross_and_maskblock_with_shortcut():
    torch.manual_seed(0)
    layer = DHENLayer(4)
    x = torch.randn(3, 4)
    want = layer.norm(layer.combine(torch.cat([layer.cross(x, x), layer.mask(x, x)], -1)) + x)
    assert torch.allclose(layer(x), want)
    assert layer(x).shape == (3, 4)
