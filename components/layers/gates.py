"""PEPNet (Chang et al., arXiv 2302.01115): Gate NU, EPNet and PPNet.

Shapes: B batch, E embedding-layer width, G domain-feature width, P personal-feature width,
I task-tower input width, K tasks.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class GateNU(nn.Module):
    """Gate Neural Unit (PEPNet eq. 1-2): a ReLU layer, then gamma * sigmoid, so every gate is in [0, gamma].

    delta = gamma * sigmoid(W_2 ReLU(W_1 x + b_1) + b_2)

    Args:
        in_dim: width of x.
        out_dim: width of the gate.
        hidden_dim: width of the ReLU layer (default: out_dim).
        gamma: the scaling factor, 2 in the paper (a gate can amplify a signal up to 2x).
        identity_init: start the output layer at zero, so every gate starts at exactly gamma * sigmoid(0)
            (= 1 with gamma = 2): the gated network starts as the ungated one and learns its rescaling.
            With PyTorch's default init every seed instead starts from a different fixed rescaling of
            each dimension (0.77-1.27 on a constant domain input), a source of PEPNet's seed variance on
            single-domain data (docs/evaluation.md). The ReLU layer keeps its default init, so W_2 gets a
            gradient from the first step.

    Returns: (B, out_dim), values in [0, gamma].
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None, gamma: float = 2.0,
                 identity_init: bool = True):
        super().__init__()
        hidden_dim = hidden_dim or out_dim
        self.hidden = nn.Linear(in_dim, hidden_dim)
        self.out = nn.Linear(hidden_dim, out_dim)
        self.gamma = gamma
        if identity_init:
            nn.init.zeros_(self.out.weight)
            # gamma * sigmoid(b) = 1 at b = -log(gamma - 1) (0 for the paper's gamma = 2); gamma <= 1 cannot reach 1
            nn.init.constant_(self.out.bias, -math.log(gamma - 1.0) if gamma > 1.0 else 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma * torch.sigmoid(self.out(torch.relu(self.hidden(x))))


class EPNet(nn.Module):
    """Embedding Personalized Network (PEPNet eq. 3-4): scales the embedding layer by a gate computed
    from the domain features (here the surface) and the embedding under stop-gradient.

    O_ep = GateNU(E(F_d) ++ sg(E)) * E

    Args:
        domain_dim: G, width of the domain-feature embedding E(F_d).
        emb_dim: E, width of the embedding layer.
        hidden_dim: width of the Gate NU's ReLU layer.

    Returns: (B, E).
    """

    def __init__(self, domain_dim: int, emb_dim: int, hidden_dim: int | None = None):
        super().__init__()
        self.gate = GateNU(domain_dim + emb_dim, emb_dim, hidden_dim)

    def forward(self, emb: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        delta = self.gate(torch.cat([domain, emb.detach()], dim=-1))  # (B, E)
        return delta * emb


class PPNet(nn.Module):
    """Parameter Personalized Network (PEPNet eq. 5-7): one tower per task; every layer's input is
    scaled by a Gate NU over the personal features (user, pin, author) and the EPNet output under
    stop-gradient, so the towers personalise without disturbing the embedding layer.

    O^(l)_k = delta^(l)_k * H^(l)_k,  H^(l+1)_k = ReLU(W^(l)_k O^(l)_k + b^(l)_k),  logit_k = w_k O^(L)_k + c_k
    [delta^(l)_1, ..., delta^(l)_K] = GateNU_l(P ++ sg(O_ep)),  H^(0)_k = the tower input

    Args:
        in_dim: I, the tower input width.
        personal_dim: P.
        ep_dim: E, width of the EPNet output.
        dims: hidden widths of each task tower.
        num_tasks: K.
        dropout: dropout after each hidden layer.
        gate_hidden: width of each Gate NU's ReLU layer.

    Returns: (B, K) logits.
    """

    def __init__(self, in_dim: int, personal_dim: int, ep_dim: int, dims: list[int], num_tasks: int,
                 dropout: float = 0.0, gate_hidden: int = 64):
        super().__init__()
        self.num_tasks = num_tasks
        widths = [in_dim, *dims]  # the input of every linear layer, including the output layer
        self.gates = nn.ModuleList(GateNU(personal_dim + ep_dim, num_tasks * w, gate_hidden) for w in widths)
        self.towers = nn.ModuleList(
            nn.ModuleList([nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:])] + [nn.Linear(widths[-1], 1)])
            for _ in range(num_tasks))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def gate_values(self, personal: torch.Tensor, ep_out: torch.Tensor) -> list[torch.Tensor]:
        """The gates of every layer: a list of (B, K, width_l)."""
        z = torch.cat([personal, ep_out.detach()], dim=-1)  # (B, P+E), stop-gradient on O_ep
        return [g(z).unflatten(-1, (self.num_tasks, -1)) for g in self.gates]  # (B, K, width_l)

    def forward(self, x: torch.Tensor, personal: torch.Tensor, ep_out: torch.Tensor) -> torch.Tensor:
        gates = self.gate_values(personal, ep_out)
        logits = []
        for k, tower in enumerate(self.towers):
            h = x
            for l, linear in enumerate(tower):
                h = linear(gates[l][:, k] * h)  # (B, width_{l+1})
                if l < len(tower) - 1:
                    h = self.dropout(torch.relu(h))
            logits.append(h)  # (B, 1)
        return torch.cat(logits, dim=-1)  # (B, K)
