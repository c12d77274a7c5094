"""Explicit feature crossing: DCNv2 cross layers (full rank, low rank) and GDCN's gated cross layer.

Shapes: B batch, D feature width, R low rank.
"""

from __future__ import annotations

import torch
from torch import nn


class CrossLayer(nn.Module):
    """DCNv2 full-rank cross layer (Wang et al., arXiv 2008.13535, eq. 1).

    x_{l+1} = x_0 * (W x_l + b) + x_l

    Args:
        dim: D, the width of x_0 and x_l.

    Returns: (B, D).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim)

    def forward(self, x0: torch.Tensor, xl: torch.Tensor) -> torch.Tensor:
        return x0 * self.linear(xl) + xl


class LowRankCrossLayer(nn.Module):
    """DCNv2 low-rank cross layer with a ReLU between the two factors, as Pinterest's homefeed ranker
    (arXiv 2412.01985, sec. 5.3) uses it.

    x_{l+1} = x_0 * (U ReLU(V x_l) + b) + x_l,  V: D -> R (no bias), U: R -> D

    Args:
        dim: D.
        rank: R.

    Returns: (B, D).
    """

    def __init__(self, dim: int, rank: int):
        super().__init__()
        self.v = nn.Linear(dim, rank, bias=False)
        self.u = nn.Linear(rank, dim)

    def forward(self, x0: torch.Tensor, xl: torch.Tensor) -> torch.Tensor:
        return x0 * self.u(torch.relu(self.v(xl))) + xl  # (B, R) inside, (B, D) out


class GatedCrossLayer(nn.Module):
    """GDCN gated cross layer (Wang et al., "Towards Deeper, Lighter and Interpretable Cross Network",
    arXiv 2311.04635, eq. 1).

    c_{l+1} = c_0 * (W_c c_l + b_c) * sigmoid(W_g c_l) + c_l

    Args:
        dim: D.

    Returns: (B, D).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.cross = nn.Linear(dim, dim)
        self.gate = nn.Linear(dim, dim, bias=False)

    def forward(self, x0: torch.Tensor, xl: torch.Tensor) -> torch.Tensor:
        return x0 * self.cross(xl) * torch.sigmoid(self.gate(xl)) + xl


class CrossNet(nn.Module):
    """``num_layers`` stacked cross layers sharing x_0 (DCNv2's cross network, or GDCN's).

    x_1 = layer_1(x_0, x_0), ..., x_L = layer_L(x_0, x_{L-1})

    Args:
        dim: D.
        num_layers: L.
        kind: ``full`` (CrossLayer), ``lowrank`` (LowRankCrossLayer) or ``gated`` (GatedCrossLayer).
        rank: R for ``lowrank``.

    Returns: (B, D), x_L.
    """

    def __init__(self, dim: int, num_layers: int, kind: str = "full", rank: int = 32):
        super().__init__()
        makers = {"full": lambda: CrossLayer(dim), "lowrank": lambda: LowRankCrossLayer(dim, rank),
                  "gated": lambda: GatedCrossLayer(dim)}
        if kind not in makers:
            raise ValueError(f"cross layer kind '{kind}' unknown; expected one of {sorted(makers)}")
        self.layers = nn.ModuleList(makers[kind]() for _ in range(num_layers))
        self.out_dim = dim

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = layer(x0, x)
        return x
