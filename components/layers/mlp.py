"""A plain multi-layer perceptron, shared by the models."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """Linear -> (LayerNorm) -> activation -> (dropout), repeated; the last layer is linear only
    unless ``last_activation``.

    Args:
        in_dim: input width.
        dims: widths of each layer; the last is the output width.
        dropout: dropout after each hidden activation.
        layer_norm: LayerNorm after each hidden linear layer.
        last_activation: apply the activation after the last layer too.

    Returns: (..., dims[-1]).
    """

    def __init__(self, in_dim: int, dims: list[int], dropout: float = 0.0, layer_norm: bool = False,
                 last_activation: bool = False, activation: type[nn.Module] = nn.ReLU):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_dim
        for i, d in enumerate(dims):
            layers.append(nn.Linear(prev, d))
            hidden = i < len(dims) - 1 or last_activation
            if hidden:
                if layer_norm:
                    layers.append(nn.LayerNorm(d))
                layers.append(activation())
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
            prev = d
        self.net = nn.Sequential(*layers)
        self.out_dim = prev

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
