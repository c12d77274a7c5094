"""PinSage (Ying et al., "Graph Convolutional Neural Networks for Web-Scale Recommender Systems",
arXiv 1806.01973): K CONVOLVE layers over importance-based neighbourhoods, then a dense network.

Letters used in shape comments:
    B  nodes computed by a layer (targets of a minibatch block, or a chunk in layer-wise inference)
    N  nodes of the previous layer
    T  neighbours per node (top-T visited pins)
    F  input content features per pin
    H  hidden width (every CONVOLVE output)
    D  output embedding width

Forward on a minibatch follows Algorithm 1: ``h0`` holds the features of layer 0's nodes, and each
:class:`~components.graph.sampling.Block` says which previous-layer rows are a node's self and neighbours.
Layer-wise inference (``components.inference.pinsage``) calls the same :class:`Convolve` layers on every
pin at once, chunk by chunk, so both paths compute the same function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F_
from torch import nn

from components.config import PinSageConfig
from components.layers.mlp import MLP
from components.models.checkpoint import load_trained


class Convolve(nn.Module):
    """CONVOLVE of PinSage (Algorithm 1):

        n_u = gamma({ReLU(Q h_v + q) : v in N(u)}, alpha)     gamma = weighted mean with weights alpha
        z_u = ReLU(W [h_u ; n_u] + w)
        z_u = z_u / ||z_u||_2

    Args:
        in_dim: width of the input representations h.
        hidden_dim: width of the transformed neighbour vectors (Q's output).
        out_dim: width of z.

    Returns: (B, out_dim), L2-normalised rows.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.Q = nn.Linear(in_dim, hidden_dim)
        self.W = nn.Linear(in_dim + hidden_dim, out_dim)

    def forward(self, h_self: torch.Tensor, h_nbr: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """h_self (B, in), h_nbr (B, T, in), weights (B, T) >= 0 (rows of zeros pool to zero)."""
        m = F_.relu(self.Q(h_nbr))  # (B, T, H)
        w = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)  # (B, T)
        n = torch.bmm(w.unsqueeze(1), m).squeeze(1)  # (B, H)
        z = F_.relu(self.W(torch.cat([h_self, n], dim=-1)))  # (B, out)
        return F_.normalize(z, dim=-1, eps=1e-12)


class PinSage(nn.Module):
    """K CONVOLVE layers with separate parameters, then the final dense network G2 ReLU(G1 z + g).

    The final output is L2-normalised so the max-margin loss on dot products has a fixed scale.
    ``num_layers = 0`` is the content-only baseline: the dense network on the features alone.
    """

    def __init__(self, cfg: PinSageConfig):
        super().__init__()
        self.pooling = cfg.pooling
        self.num_layers = cfg.num_layers
        dims = [cfg.feature_dim] + [cfg.hidden_dim] * cfg.num_layers
        self.layers = nn.ModuleList([Convolve(dims[k], cfg.hidden_dim, dims[k + 1]) for k in range(cfg.num_layers)])
        self.head = MLP(dims[-1], [cfg.hidden_dim, cfg.embed_dim])

    def pool_weights(self, w: torch.Tensor) -> torch.Tensor:
        """Importance weights as sampled, or uniform over the real (non-padding) neighbours."""
        return w if self.pooling == "importance" else (w > 0).to(w.dtype)

    def convolve(self, k: int, h_prev: torch.Tensor, self_idx: torch.Tensor, nbr_idx: torch.Tensor,
                 nbr_w: torch.Tensor) -> torch.Tensor:
        """Layer k+1 for the B nodes at rows ``self_idx`` of ``h_prev`` (N, .) -> (B, H)."""
        return self.layers[k](h_prev[self_idx], h_prev[nbr_idx], self.pool_weights(nbr_w))  # (B, H)

    def embed(self, z: torch.Tensor) -> torch.Tensor:
        """The final dense network on layer-K representations: (B, H) -> (B, D), L2-normalised."""
        return F_.normalize(self.head(z), dim=-1, eps=1e-12)  # (B, D)

    def forward(self, h0: torch.Tensor, blocks: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """h0 (N_0, F) features of layer 0's nodes; blocks[k] = {self_idx, nbr_idx, nbr_w} for layer k+1.

        Returns: (B_K, D) embeddings of layer K's nodes (the targets).
        """
        h = h0
        for k, b in enumerate(blocks):
            h = self.convolve(k, h, b["self_idx"], b["nbr_idx"], b["nbr_w"])  # (N_{k+1}, H)
        return self.embed(h)


def build_model(cfg: PinSageConfig) -> PinSage:
    return PinSage(cfg)


def load_model(model_dir: str | Path) -> tuple[PinSage, PinSageConfig, dict[str, Any]]:
    """(model in eval mode, cfg, extra) from a training output directory (``model.pt`` + ``config.yaml``)."""
    return load_trained(model_dir, PinSageConfig, lambda cfg, extra: build_model(cfg), "homefeed train pinsage")
