"""Feature-interaction modules compared in the homefeed ranker (arXiv 2412.01985, sec. 5.3):
a Transformer encoder over feature tokens, FinalMLP and DHEN.

Shapes: B batch, T tokens, D token width, A heads, F input width, S sparse features.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from components.layers.crossnet import CrossLayer
from components.layers.gates import GateNU
from components.layers.masknet import MaskBlock
from components.layers.mlp import MLP


class FeatureTokenizer(nn.Module):
    """Feature tokens as the homefeed ranker's Transformer variant builds them (arXiv 2412.01985, 5.3.1):
    one token per sparse feature, the dense features projected C times, the user-sequence embedding
    projected U times, and the pin embedding projected once.

    tokens = [e_1, ..., e_S, W^d_1 x_d, ..., W^d_C x_d, W^u_1 u, ..., W^u_U u, W^p p]

    Args:
        token_dim: D (each sparse embedding must already be D wide).
        dense_dim: width of x_d.
        dense_tokens: C.
        user_dim: width of the user-sequence (PinnerFormer) embedding u.
        user_tokens: U.
        pin_dim: width of the pin embedding p.

    Returns: (B, S + C + U + 1, D).
    """

    def __init__(self, token_dim: int, dense_dim: int, dense_tokens: int, user_dim: int, user_tokens: int,
                 pin_dim: int):
        super().__init__()
        self.token_dim = token_dim
        self.dense = nn.Linear(dense_dim, dense_tokens * token_dim)
        self.user = nn.Linear(user_dim, user_tokens * token_dim)
        self.pin = nn.Linear(pin_dim, token_dim)

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor, user: torch.Tensor, pin: torch.Tensor) -> torch.Tensor:
        d = self.dense(dense).unflatten(-1, (-1, self.token_dim))  # (B, C, D)
        u = self.user(user).unflatten(-1, (-1, self.token_dim))  # (B, U, D)
        p = self.pin(pin).unsqueeze(1)  # (B, 1, D)
        return torch.cat([sparse, d, u, p], dim=1)  # (B, T, D)


class EncoderLayer(nn.Module):
    """A pre-norm Transformer encoder layer (Vaswani et al., arXiv 1706.03762) over feature tokens,
    no mask and no positions (each token is a fixed feature slot).

    y = x + W_o softmax(Q K^T / sqrt(D/A)) V  with Q, K, V = LN(x) W_{q,k,v} per head;  out = y + FFN(LN(y))

    Args:
        dim: D.
        heads: A (must divide D).
        ffn_mult: FFN hidden width = ffn_mult * D.
        dropout: dropout on the attention weights and FFN output.

    Returns: (B, T, D).
    """

    def __init__(self, dim: int, heads: int, ffn_mult: int = 2, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"token width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_mult * dim), nn.ReLU(), nn.Linear(ffn_mult * dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(x)).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)  # (B, A, T, D/A)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)  # (B, A, T, T)
        y = (self.dropout(att) @ v).transpose(1, 2).flatten(2)  # (B, T, D)
        x = x + self.proj(y)
        return x + self.dropout(self.ffn(self.norm2(x)))


class TransformerInteraction(nn.Module):
    """Stacked encoder layers over feature tokens, flattened for the MLP on top.

    Args:
        dim: D.
        num_layers: number of encoder layers.
        heads: A.
        num_tokens: T.
        dropout: see EncoderLayer.

    Returns: (B, T*D).
    """

    def __init__(self, dim: int, num_layers: int, heads: int, num_tokens: int, dropout: float = 0.0):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, dropout=dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.out_dim = num_tokens * dim

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            tokens = layer(tokens)
        return self.norm(tokens).flatten(1)  # (B, T*D)


class FinalMLP(nn.Module):
    """FinalMLP (Mao et al., arXiv 2304.00902): two MLP streams over feature-selected inputs fused by
    multi-head bilinear fusion.

    x_i = 2 sigmoid(MLP(c_i)) * x           (stream-specific feature selection from context c_i)
    o_i = MLP_i(x_i)
    y = sum_h [W_1h o_1h + W_2h o_2h + o_1h^T W_3h o_2h] + b   (o_i split into A heads)

    With ``out_dim`` = 1 this is the paper's logit; the ranker fuses to a vector for its task heads.

    Args:
        in_dim: F, width of x.
        ctx1_dim, ctx2_dim: widths of the contexts c_1, c_2 (e.g. user features, pin features).
        dims1, dims2: hidden widths of the two streams (the last widths must be divisible by heads).
        heads: A.
        out_dim: width of y.
        dropout: dropout in the streams.

    Returns: (B, out_dim).
    """

    def __init__(self, in_dim: int, ctx1_dim: int, ctx2_dim: int, dims1: list[int], dims2: list[int],
                 heads: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        if dims1[-1] % heads or dims2[-1] % heads:
            raise ValueError(f"FinalMLP stream widths {dims1[-1]}, {dims2[-1]} must be divisible by {heads} heads")
        self.select1 = GateNU(ctx1_dim, in_dim)
        self.select2 = GateNU(ctx2_dim, in_dim)
        self.stream1 = MLP(in_dim, dims1, dropout=dropout, last_activation=True)
        self.stream2 = MLP(in_dim, dims2, dropout=dropout, last_activation=True)
        self.heads = heads
        h1, h2 = dims1[-1] // heads, dims2[-1] // heads
        self.w1 = nn.Parameter(torch.randn(heads, h1, out_dim) / math.sqrt(h1))
        self.w2 = nn.Parameter(torch.randn(heads, h2, out_dim) / math.sqrt(h2))
        self.w3 = nn.Parameter(torch.randn(heads, h1, h2, out_dim) / math.sqrt(h1 * h2))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor, ctx1: torch.Tensor, ctx2: torch.Tensor) -> torch.Tensor:
        o1 = self.stream1(self.select1(ctx1) * x).unflatten(-1, (self.heads, -1))  # (B, A, d1/A)
        o2 = self.stream2(self.select2(ctx2) * x).unflatten(-1, (self.heads, -1))  # (B, A, d2/A)
        linear = torch.einsum("bhi,hio->bo", o1, self.w1) + torch.einsum("bhj,hjo->bo", o2, self.w2)  # (B, out)
        bilinear = torch.einsum("bhi,hijo,bhj->bo", o1, self.w3, o2)  # (B, out)
        return linear + bilinear + self.bias


class DHENLayer(nn.Module):
    """A DHEN layer (Zhang et al., arXiv 2203.11014) with a DCNv2 cross and a MaskBlock as its ensemble:
    each module sees the layer input, their outputs are concatenated, projected back and added to a
    shortcut.

    y = LN(W [CrossLayer(x, x); MaskBlock(x, x)] + b + x)

    Args:
        dim: F, the layer's input and output width.
        ratio: the MaskBlock's projection ratio.

    Returns: (B, F).
    """

    def __init__(self, dim: int, ratio: float = 2.0):
        super().__init__()
        self.cross = CrossLayer(dim)
        self.mask = MaskBlock(dim, dim, dim, ratio)
        self.combine = nn.Linear(2 * dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ensemble = torch.cat([self.cross(x, x), self.mask(x, x)], dim=-1)  # (B, 2F)
        return self.norm(self.combine(ensemble) + x)  # (B, F)
