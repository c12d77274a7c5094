"""The homefeed ranker (arXiv 2412.01985) with PEPNet gates (arXiv 2302.01115): a multi-task model that
scores (user, pin, context) for K actions at once.

Inputs are the serving contract's model inputs (components/models/ranker_inputs.py): ``x_dense`` already
normalised with the training statistics, ``x_sparse`` ids, ``x_surface`` (the domain), the user
(PinnerFormer) and pin (PinSage) embeddings. Preprocessing inside the model: sparse ids through learned
tables sized by cardinality, embeddings projected down, sparse and embedding features L2-normalised,
then concatenated with the dense features into x_0.

Architectures (``cfg.arch``), each on x_0, optionally behind EPNet:
- ``mlp``            h = x_0
- ``dcnv2_baseline`` h = [CrossNet_full^4(x_0); x_0]
- ``dcnv2_lowrank``  h = [CrossNet_lowrank(x_0); x_0] (ReLU between the factors)
- ``gdcn``           h = [CrossNet_gated(x_0); x_0]
- ``masknet_dcnv2``  h = CrossNet_full^4(ParallelMaskNet_3(x_0)), no concat with x_0 (the paper's final model)
- ``transformer``    h = Encoder(feature tokens) flattened
- ``finalmlp``       h = FinalMLP(x_0 | user ctx, pin ctx)
- ``dhen``           h = DHEN layers(x_0)
Then a shared MLP -> K logits, or with ``cfg.pepnet`` K PPNet-gated task towers.

Shapes: B batch, S sparse features, N dense features, E sparse embedding width, P projected embedding
width, F = N + (S+1)*E + 2P (+ P with ``user_pin_product``) the width of x_0, H the interaction output
width, K tasks, T tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as fn
from torch import nn

from components.config import RankerConfig
from components.data.schemas import SURFACES
from components.layers.crossnet import CrossNet
from components.layers.gates import EPNet, PPNet
from components.layers.interactions import DHENLayer, FeatureTokenizer, FinalMLP, TransformerInteraction
from components.layers.masknet import ParallelMaskNet
from components.layers.mlp import MLP
from components.models.checkpoint import CheckpointError, load_trained


@dataclass(frozen=True)
class ArchDims:
    """What an interaction module needs to know about x_0."""

    F: int  # width of x_0
    widths: list[int]  # dense, sparse, surface, user, pin slices of x_0
    user_dim: int  # width of the user-side features (FinalMLP's user context)
    pin_dim: int  # width of the pin-side features


class Interaction(nn.Module):
    """TorchRec-style Arch module: every architecture has the one signature
    ``forward(x0 (B, F), user_side (B, |user|), pin_side (B, |pin|)) -> (B, out_dim)``."""

    out_dim: int


ARCHS: dict[str, type[Interaction]] = {}  # cfg.arch -> module; config.RankerArch lists the same names


def register(name: str):
    """Class decorator: make an Interaction selectable as ``arch: <name>``."""

    def add(cls: type[Interaction]) -> type[Interaction]:
        ARCHS[name] = cls
        return cls

    return add


@register("mlp")
class Identity(Interaction):
    """h = x_0 (the shared MLP / PPNet towers do all the work)."""

    def __init__(self, cfg: RankerConfig, d: ArchDims):
        super().__init__()
        self.out_dim = d.F

    def forward(self, x0: torch.Tensor, user_side: torch.Tensor, pin_side: torch.Tensor) -> torch.Tensor:
        return x0  # (B, F)


class CrossConcat(Interaction):
    """h = [CrossNet_kind^L(x_0); x_0] (DCNv2, arXiv 2008.13535; GDCN, arXiv 2311.04635)."""

    kind = "full"

    def __init__(self, cfg: RankerConfig, d: ArchDims):
        super().__init__()
        self.cross = CrossNet(d.F, cfg.num_cross_layers, self.kind, cfg.low_rank)
        self.out_dim = 2 * d.F

    def forward(self, x0: torch.Tensor, user_side: torch.Tensor, pin_side: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.cross(x0), x0], dim=-1)  # (B, 2F)


@register("dcnv2_baseline")
class DCNv2(CrossConcat):
    kind = "full"


@register("dcnv2_lowrank")
class DCNv2LowRank(CrossConcat):
    kind = "lowrank"


@register("gdcn")
class GDCN(CrossConcat):
    kind = "gated"


@register("masknet_dcnv2")
class MaskNetDCNv2(Interaction):
    """h = CrossNet_full^L(ParallelMaskNet(x_0)), no concat with x_0: the paper's final model."""

    def __init__(self, cfg: RankerConfig, d: ArchDims):
        super().__init__()
        self.masknet = ParallelMaskNet(d.F, cfg.num_masknet_blocks, cfg.masknet_out, cfg.masknet_ratio)
        self.cross = CrossNet(self.masknet.out_dim, cfg.num_cross_layers, "full")
        self.out_dim = self.masknet.out_dim

    def forward(self, x0: torch.Tensor, user_side: torch.Tensor, pin_side: torch.Tensor) -> torch.Tensor:
        return self.cross(self.masknet(x0))  # (B, blocks * masknet_out)


@register("transformer")
class Transformer(Interaction):
    """h = Encoder(feature tokens of x_0's slices), flattened."""

    def __init__(self, cfg: RankerConfig, d: ArchDims):
        super().__init__()
        N, E, P = d.widths[0], cfg.sparse_dim, cfg.embedding_proj_dim
        S = d.widths[1] // E
        self.widths = d.widths
        self.tokenizer = FeatureTokenizer(E, N, cfg.dense_groups, P, cfg.user_seq_tokens, P)
        T = S + 1 + cfg.dense_groups + cfg.user_seq_tokens + 1
        self.encoder = TransformerInteraction(E, cfg.transformer_layers, cfg.transformer_heads, T, cfg.dropout)
        self.out_dim = self.encoder.out_dim

    def forward(self, x0: torch.Tensor, user_side: torch.Tensor, pin_side: torch.Tensor) -> torch.Tensor:
        dense, sparse, surface, user, pin, *product = torch.split(x0, self.widths, dim=-1)
        pin = pin + product[0] if product else pin  # the user x pin slice (if any) joins the pin token
        sparse = torch.cat([sparse, surface], dim=-1).unflatten(-1, (-1, surface.shape[-1]))  # (B, S+1, E)
        return self.encoder(self.tokenizer(sparse, dense, user, pin))  # (B, T*E)


@register("finalmlp")
class FinalMLPArch(Interaction):
    """h = FinalMLP(x_0 | user context, pin context) (arXiv 2304.00902)."""

    def __init__(self, cfg: RankerConfig, d: ArchDims):
        super().__init__()
        self.finalmlp = FinalMLP(d.F, d.user_dim, d.pin_dim, cfg.finalmlp_dims, cfg.finalmlp_dims,
                                 cfg.finalmlp_heads, cfg.finalmlp_dims[-1], cfg.dropout)
        self.out_dim = cfg.finalmlp_dims[-1]

    def forward(self, x0: torch.Tensor, user_side: torch.Tensor, pin_side: torch.Tensor) -> torch.Tensor:
        return self.finalmlp(x0, user_side, pin_side)  # (B, H)


@register("dhen")
class DHEN(Interaction):
    """h = DHEN layers (DCNv2 + MaskNet ensemble per layer, arXiv 2203.11014) on x_0."""

    def __init__(self, cfg: RankerConfig, d: ArchDims):
        super().__init__()
        self.dhen = nn.Sequential(*[DHENLayer(d.F, cfg.masknet_ratio) for _ in range(cfg.dhen_layers)])
        self.out_dim = d.F

    def forward(self, x0: torch.Tensor, user_side: torch.Tensor, pin_side: torch.Tensor) -> torch.Tensor:
        return self.dhen(x0)  # (B, F)



@dataclass
class FeatureSpec:
    """What the data says about the features (from meta.json), saved with the model."""

    dense: list[str]  # N names, in x_dense order
    sparse: list[str]  # S names, in x_sparse order
    cardinalities: list[int]  # table size of each sparse feature
    user_dim: int  # width of the user embedding
    pin_dim: int  # width of the pin embedding
    user_features: list[str]  # user-side names among dense + sparse (PPNet, FinalMLP context)
    pin_features: list[str]  # pin-side names

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        return cls(**d)


def _surface_ids(x_surface: torch.Tensor) -> torch.Tensor:
    """(B, 1) surface indices -> (B,), out of range -> 0 (as ranker_inputs.clamp_surface)."""
    s = x_surface[:, 0]
    return torch.where((s >= 0) & (s < len(SURFACES)), s, 0)


class Ranker(nn.Module):
    """Multi-task ranker: forward(x_dense, x_sparse, x_surface, x_user_embedding, x_pin_embedding) -> (B, K) logits."""

    def __init__(self, cfg: RankerConfig, spec: FeatureSpec):
        super().__init__()
        if cfg.arch not in ARCHS:
            raise ValueError(f"ranker arch '{cfg.arch}' unknown; expected one of {', '.join(ARCHS)}")
        self.pepnet = cfg.pepnet
        E, P, N, S = cfg.sparse_dim, cfg.embedding_proj_dim, len(spec.dense), len(spec.sparse)
        K = len(cfg.tasks)
        self.register_buffer("cardinalities", torch.tensor(spec.cardinalities, dtype=torch.long), persistent=False)
        self.register_buffer("score_weights", torch.tensor(cfg.score_weights, dtype=torch.float32))
        self.sparse_tables = nn.ModuleList(nn.Embedding(c, E) for c in spec.cardinalities)
        self.surface_table = nn.Embedding(len(SURFACES), E)
        self.user_proj = nn.Linear(spec.user_dim, P)
        self.pin_proj = nn.Linear(spec.pin_dim, P)
        F = N + (S + 1) * E + 2 * P
        self.widths = [N, S * E, E, P, P]  # dense, sparse, surface, user, pin slices of x_0
        # the explicit user x pin slice (the element-wise product LR and GBDT get): of the raw embeddings when
        # their widths agree (one space, e.g. content vectors), else of the two projections
        self.product = cfg.user_pin_product
        self.raw_product = cfg.user_pin_product and spec.user_dim == spec.pin_dim
        if self.raw_product:
            self.product_proj = nn.Linear(spec.user_dim, P)
        if self.product:
            F += P
            self.widths.append(P)  # (..., user x pin)

        # user/pin-side slices of x_0 (personal features for PPNet, contexts for FinalMLP)
        def side(names: list[str], emb_slice: tuple[int, int]) -> list[int]:
            idx = [spec.dense.index(n) for n in names if n in spec.dense]
            for n in names:
                if n in spec.sparse:
                    start = N + spec.sparse.index(n) * E
                    idx += list(range(start, start + E))
            return idx + list(range(*emb_slice))

        user_start = N + (S + 1) * E
        self.register_buffer("user_idx", torch.tensor(side(spec.user_features, (user_start, user_start + P))),
                             persistent=False)
        self.register_buffer("pin_idx", torch.tensor(side(spec.pin_features, (user_start + P, user_start + 2 * P))),
                             persistent=False)

        if cfg.pepnet:
            self.domain_table = nn.Embedding(len(SURFACES), E)  # EPNet's domain features, separate from x_0's
            self.epnet = EPNet(E, F, cfg.gate_hidden)

        self.interaction = ARCHS[cfg.arch](cfg, ArchDims(F, self.widths, len(self.user_idx), len(self.pin_idx)))
        H = self.interaction.out_dim

        if cfg.pepnet:
            self.towers = PPNet(H, len(self.user_idx) + len(self.pin_idx), F, cfg.mlp_dims, K, cfg.dropout,
                                 cfg.gate_hidden)
        else:
            self.mlp = MLP(H, [*cfg.mlp_dims, K], dropout=cfg.dropout)

    def embed(self, x_dense: torch.Tensor, x_sparse: torch.Tensor, x_surface: torch.Tensor,
              x_user_embedding: torch.Tensor, x_pin_embedding: torch.Tensor) -> torch.Tensor:
        """x_0: dense ++ L2-normalised sparse, surface and projected embeddings. Returns (B, F)."""
        ids = torch.where((x_sparse >= 0) & (x_sparse < self.cardinalities), x_sparse, 0)  # (B, S) unknown -> 0
        sparse = [fn.normalize(t(ids[:, i]), dim=-1) for i, t in enumerate(self.sparse_tables)]  # S x (B, E)
        surface = fn.normalize(self.surface_table(_surface_ids(x_surface)), dim=-1)  # (B, E)
        user = fn.normalize(self.user_proj(x_user_embedding), dim=-1)  # (B, P)
        pin = fn.normalize(self.pin_proj(x_pin_embedding), dim=-1)  # (B, P)
        if not self.product:
            return torch.cat([x_dense, *sparse, surface, user, pin], dim=-1)  # (B, F)
        if self.raw_product:  # sum_d w_d u_d p_d per output: LR's product column, P of them
            prod = self.product_proj(fn.normalize(x_user_embedding, dim=-1) * fn.normalize(x_pin_embedding, dim=-1))
            prod = prod * x_user_embedding.shape[-1]  # (B, P); unit vectors' products are ~1/D each: O(1) after
        else:  # a rank-P bilinear form of the projections
            prod = user * pin * user.shape[-1]  # (B, P)
        return torch.cat([x_dense, *sparse, surface, user, pin, prod], dim=-1)  # (B, F)

    def forward(self, x_dense: torch.Tensor, x_sparse: torch.Tensor, x_surface: torch.Tensor,
                x_user_embedding: torch.Tensor, x_pin_embedding: torch.Tensor) -> torch.Tensor:
        x0 = self.embed(x_dense, x_sparse, x_surface, x_user_embedding, x_pin_embedding)  # (B, F)
        # user/pin-side features (PPNet's personal priors, FinalMLP's contexts) come from the embedding layer
        # itself, so PPNet's only view of the EPNet output is the stop-gradient one
        user_side, pin_side = x0[:, self.user_idx], x0[:, self.pin_idx]  # (B, |user|), (B, |pin|)
        if self.pepnet:
            domain = self.domain_table(_surface_ids(x_surface))  # (B, E)
            x0 = self.epnet(x0, domain)  # (B, F)

        h = self.interaction(x0, user_side, pin_side)  # (B, H)

        if self.pepnet:
            return self.towers(h, torch.cat([user_side, pin_side], dim=-1), x0)  # (B, K)
        return self.mlp(h)  # (B, K)

    def predict(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities (B, K), score (B, 1) = probabilities @ score_weights): the serving outputs."""
        probs = torch.sigmoid(self(*inputs))  # (B, K)
        return probs, (probs * self.score_weights).sum(-1, keepdim=True)  # (B, 1)


def build(cfg: RankerConfig, spec: FeatureSpec) -> Ranker:
    return Ranker(cfg, spec)


def load_model(model_dir: str | Path) -> tuple[Ranker, RankerConfig, dict[str, Any]]:
    """(Ranker in eval mode, its config, extra) from a model directory written by training.ranker."""

    def build_from(cfg: RankerConfig, extra: dict[str, Any]) -> Ranker:
        if "spec" not in extra:
            raise CheckpointError(f"{model_dir}/model.pt: checkpoint has no feature spec in 'extra' (not a ranker?)")
        return Ranker(cfg, FeatureSpec.from_dict(extra["spec"]))

    return load_trained(model_dir, RankerConfig, build_from, "homefeed train ranker")


def spec_dict(spec: FeatureSpec) -> dict[str, Any]:
    return asdict(spec)
