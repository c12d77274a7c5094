"""PinnerFormer (arXiv 2205.04507): a user's action sequence -> one embedding per position.

Letters used in the shape comments:
    B  sequences in the batch          M  positions (actions) per sequence, right-padded
    E  pin embedding width (PinSage)   F  concatenated per-action feature width
    H  transformer width (d_model)     D  output embedding width (embed_dim)
    P  time periods (each time feature has 2P+1 values)   N  pins

Per action (section 3.2): the pin's PinSage embedding, learned action-type and surface embeddings
(rows outside the vocabulary are dropped by the loaders), log(duration), and three time features
(absolute timestamp, time since the latest action, gap to the previous action) each encoded with
sin/cos at P periods. These are concatenated, projected to H, a learned positional encoding is
added, and PreNorm transformer blocks with a causal mask run over the sequence. A per-position MLP
and L2 normalisation give the user embedding at every position (the last valid one is "the" user
embedding). Pins go through their own MLP over the PinSage embedding, L2-normalised, into the same
space. The learned softmax temperature lives here too, clamped at >= min_temperature.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from components.config import PinnerFormerConfig
from components.data.schemas import ACTION_TYPES, SURFACES
from components.layers.mlp import MLP
from components.layers.temperature import clamped_temperature
from components.layers.time_encoding import TimeEncoding
from components.models.checkpoint import load_trained

HOUR, DAY, WEEK = 3600.0, 86_400.0, 604_800.0


class PinnerFormer(nn.Module):
    def __init__(self, cfg: PinnerFormerConfig):
        super().__init__()
        h = cfg.d_model
        self.max_len = cfg.max_seq_len
        self.min_temperature = cfg.min_temperature
        self.action_emb = nn.Embedding(len(ACTION_TYPES), 8)
        self.surface_emb = nn.Embedding(len(SURFACES), 8)
        # absolute time: phase within hour..4 weeks; deltas: log(1 + seconds), periods 1..20 in log units
        self.time_abs = TimeEncoding(cfg.time_periods, HOUR, 4 * WEEK, log_time=False)
        self.time_since_latest = TimeEncoding(cfg.time_periods, 1.0, 20.0, log_time=True)
        self.time_gap = TimeEncoding(cfg.time_periods, 1.0, 20.0, log_time=True)
        feat_dim = cfg.pin_dim + 8 + 8 + 1 + 3 * (2 * cfg.time_periods + 1)
        self.input_proj = nn.Linear(feat_dim, h)
        self.pos_emb = nn.Parameter(torch.randn(cfg.max_seq_len, h) * 0.02)
        self.drop = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(h, cfg.num_heads, dim_feedforward=4 * h, dropout=cfg.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(h)
        self.user_head = MLP(h, [h, cfg.embed_dim])
        # LayerNorm on the (L2-normalised, hence small) PinSage input: without it the freshly initialised
        # towers map every pin to nearly the same direction and weak training signals cannot escape
        self.pin_norm = nn.LayerNorm(cfg.pin_dim)
        self.pin_in = nn.LayerNorm(cfg.pin_dim)
        self.pin_tower = MLP(cfg.pin_dim, [h, h, cfg.embed_dim], layer_norm=True)
        self.pin_skip = nn.Linear(cfg.pin_dim, cfg.embed_dim, bias=False)  # a linear path keeps the PinSage geometry
        self.log_temperature = nn.Parameter(torch.tensor(math.log(cfg.init_temperature)))
        self.register_buffer("causal", torch.triu(torch.ones(cfg.max_seq_len, cfg.max_seq_len, dtype=torch.bool), 1),
                             persistent=False)

    def temperature(self) -> torch.Tensor:
        """The learned softmax temperature, clamped at >= min_temperature."""
        return clamped_temperature(self.log_temperature, self.min_temperature)

    def features(self, pin_emb: torch.Tensor, action: torch.Tensor, surface: torch.Tensor,
                 duration: torch.Tensor, timestamp: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Concatenated per-action features (B, M, F); padded positions (valid False) are zeroed."""
        ts = timestamp.to(torch.float64)
        lengths = valid.sum(1).clamp(min=1)  # (B,)
        latest = ts.gather(1, (lengths - 1)[:, None])  # (B, 1)
        gap = torch.cat([torch.zeros_like(ts[:, :1]), ts[:, 1:] - ts[:, :-1]], dim=1)  # (B, M)
        x = torch.cat([
            self.pin_norm(pin_emb),  # (B, M, E)
            self.action_emb(action),  # (B, M, 8)
            self.surface_emb(surface),  # (B, M, 8)
            torch.log1p(duration.clamp(min=0)).unsqueeze(-1).float(),  # (B, M, 1)
            self.time_abs(ts),  # (B, M, 2P+1)
            self.time_since_latest(latest - ts),  # (B, M, 2P+1)
            self.time_gap(gap),  # (B, M, 2P+1)
        ], dim=-1)  # (B, M, F)
        return x * valid.unsqueeze(-1)

    def forward(self, pin_emb: torch.Tensor, action: torch.Tensor, surface: torch.Tensor,
                duration: torch.Tensor, timestamp: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """User embeddings at every position (B, M, D), L2-normalised; position i sees actions <= i."""
        m = pin_emb.shape[1]
        if m > self.max_len:
            raise ValueError(f"PinnerFormer: sequence length {m} exceeds max_seq_len {self.max_len}")
        x = self.input_proj(self.features(pin_emb, action, surface, duration, timestamp, valid))  # (B, M, H)
        x = self.drop(x + self.pos_emb[:m])  # (B, M, H)
        x = self.encoder(x, mask=self.causal[:m, :m], is_causal=True)  # (B, M, H)
        return F.normalize(self.user_head(self.final_norm(x)), dim=-1)  # (B, M, D)

    def embed_pins(self, pin_emb: torch.Tensor) -> torch.Tensor:
        """Pin tower: (N, E) PinSage embeddings -> (N, D), L2-normalised."""
        x = self.pin_in(pin_emb)  # (N, E)
        return F.normalize(self.pin_tower(x) + self.pin_skip(x), dim=-1)  # (N, D)

    @staticmethod
    def last_valid(out: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The embedding at each sequence's last valid position: (B, M, D) -> (B, D)."""
        idx = (valid.sum(1) - 1).clamp(min=0)  # (B,)
        return out[torch.arange(out.shape[0]), idx]  # (B, D)


def load_model(model_dir: str | Path) -> tuple[PinnerFormer, PinnerFormerConfig, dict]:
    """(model in eval mode, config, extra) from a training output directory (its ``model.pt``)."""
    return load_trained(model_dir, PinnerFormerConfig, lambda cfg, extra: PinnerFormer(cfg),
                        "homefeed train pinnerformer")
