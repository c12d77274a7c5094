"""MaskNet (Wang et al., arXiv 2102.07619): instance-guided masks, MaskBlocks, serial and parallel MaskNet.

Shapes: B batch, E width of the raw feature embedding, D width of a block's input, H block output.
"""

from __future__ import annotations

import torch
from torch import nn


class InstanceGuidedMask(nn.Module):
    """Instance-guided mask (MaskNet eq. 3-4): a two-layer MLP over the raw feature embedding whose
    hidden width is the projection ratio r times its input width.

    V_mask = W_2 ReLU(W_1 V_emb + b_1) + b_2,  W_1: E -> r*E, W_2: r*E -> D

    Args:
        emb_dim: E, width of V_emb.
        out_dim: D, width of the tensor the mask multiplies.
        ratio: r, the projection ratio (the paper's reduction ratio; 2.0 in the homefeed ranker).

    Returns: (B, D).
    """

    def __init__(self, emb_dim: int, out_dim: int, ratio: float = 2.0):
        super().__init__()
        hidden = max(1, int(round(ratio * emb_dim)))
        self.aggregate = nn.Linear(emb_dim, hidden)
        self.project = nn.Linear(hidden, out_dim)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.project(torch.relu(self.aggregate(emb)))  # (B, r*E) -> (B, D)


class MaskBlock(nn.Module):
    """MaskBlock (MaskNet eq. 6-8): the mask multiplied into the (LayerNorm'ed) input, then a hidden
    layer with LayerNorm and ReLU.

    on the feature embedding:  V_out = ReLU(LN(W (V_mask * LN(V_emb))))
    on a hidden layer:         V_out = ReLU(LN(W (V_mask * V_hid)))

    Args:
        in_dim: D, width of the input x (V_emb itself, or the previous block's output).
        emb_dim: E, width of the raw embedding the mask is computed from.
        out_dim: H.
        ratio: projection ratio of the instance-guided mask.
        norm_input: LayerNorm the input before masking (True for a block on the feature embedding).

    Returns: (B, H).
    """

    def __init__(self, in_dim: int, emb_dim: int, out_dim: int, ratio: float = 2.0, norm_input: bool = True):
        super().__init__()
        self.mask = InstanceGuidedMask(emb_dim, in_dim, ratio)
        self.input_norm = nn.LayerNorm(in_dim) if norm_input else nn.Identity()
        self.hidden = nn.Linear(in_dim, out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        masked = self.mask(emb) * self.input_norm(x)  # (B, D)
        return torch.relu(self.norm(self.hidden(masked)))  # (B, H)


class SerialMaskNet(nn.Module):
    """Serial MaskNet: MaskBlocks stacked, each masked by the same raw embedding.

    h_1 = MaskBlock_1(V_emb, V_emb), h_k = MaskBlock_k(h_{k-1}, V_emb)

    Args:
        emb_dim: E.
        dims: output width of each block; the last is H.
        ratio: projection ratio of every mask.

    Returns: (B, dims[-1]).
    """

    def __init__(self, emb_dim: int, dims: list[int], ratio: float = 2.0):
        super().__init__()
        blocks, prev = [], emb_dim
        for i, d in enumerate(dims):
            blocks.append(MaskBlock(prev, emb_dim, d, ratio, norm_input=i == 0))
            prev = d
        self.blocks = nn.ModuleList(blocks)
        self.out_dim = prev

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        h = emb
        for block in self.blocks:
            h = block(h, emb)
        return h


class ParallelMaskNet(nn.Module):
    """Parallel MaskNet: ``num_blocks`` MaskBlocks on the feature embedding side by side, concatenated.

    h = [MaskBlock_1(V_emb, V_emb); ...; MaskBlock_k(V_emb, V_emb)]

    Args:
        emb_dim: E.
        num_blocks: k (3 in the homefeed ranker).
        out_dim: H per block (512 in the homefeed ranker).
        ratio: projection ratio of every mask (2.0 in the homefeed ranker).

    Returns: (B, k*H).
    """

    def __init__(self, emb_dim: int, num_blocks: int, out_dim: int, ratio: float = 2.0):
        super().__init__()
        self.blocks = nn.ModuleList(MaskBlock(emb_dim, emb_dim, out_dim, ratio) for _ in range(num_blocks))
        self.out_dim = num_blocks * out_dim

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return torch.cat([block(emb, emb) for block in self.blocks], dim=-1)  # (B, k*H)
