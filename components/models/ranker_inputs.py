"""The ranker's model inputs and the preprocessing that builds them from a raw request: names, shapes,
normalisation, clamps and the bad-input checks, shared by training (``components.training.ranker``), the
exporter and Triton's ``ranker_preprocess`` model, so a served request is normalised exactly as in training.

Raw request -> model inputs (names: :data:`RAW_INPUTS` -> :data:`MODEL_INPUTS`, the prefix ``x_``)::

    dense            FP32  [B, n_dense]   -> x_dense    z-score with training statistics, clipped to +-DENSE_CLIP
    sparse           INT64 [B, n_sparse]  -> x_sparse   ids clamped to [0, cardinality) (out of range -> 0)
    surface          INT64 [B, 1]         -> x_surface  domain index into schemas.SURFACES
    user_embedding   FP32  [B, D_user]    -> x_user_embedding
    pin_embedding    FP32  [B, D_pin]     -> x_pin_embedding

Bad-input policy (:func:`check_request`; docs/bad-input.md): rejected with an error naming the input, row
and column: a shape or batch mismatch, NaN/inf in a float input, a raw dense value with
``|x| > DENSE_ABS_MAX``, a surface outside ``[0, len(surfaces))``; mapped and counted
(:func:`unknown_sparse_counts`, :func:`clipped_dense_counts`): out-of-range sparse ids, clipped dense values.

This file imports numpy only (no ``components`` import): ``components.serving.model_repository`` copies it
beside Triton's python-backend ``model.py``, which runs in the numpy<2 Triton environment.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RAW_INPUTS = ("dense", "sparse", "surface", "user_embedding", "pin_embedding")
MODEL_PREFIX = "x_"
MODEL_INPUTS = tuple(MODEL_PREFIX + n for n in RAW_INPUTS)


@dataclass(frozen=True)
class RankerShapes:
    n_dense: int
    n_sparse: int
    d_user: int
    d_pin: int
    n_tasks: int

    def raw(self) -> dict[str, tuple[int, ...]]:
        """Per-input shape without the batch dimension."""
        return {"dense": (self.n_dense,), "sparse": (self.n_sparse,), "surface": (1,),
                "user_embedding": (self.d_user,), "pin_embedding": (self.d_pin,)}

    def outputs(self) -> dict[str, tuple[int, ...]]:
        return {"probabilities": (self.n_tasks,), "score": (1,)}


DENSE_CLIP = 5.0  # normalised dense features are clipped to [-DENSE_CLIP, DENSE_CLIP]
MIN_STD = 1e-6
DENSE_ABS_MAX = 1e15  # a raw dense value beyond this is rejected (an overflow upstream, not a feature)


def check_request(x, shapes: RankerShapes, n_surfaces: int) -> None:
    """Reject a raw request that breaks the policy above: ValueError naming the input, row and column.

    ``x``: the five raw inputs (numpy arrays) by name."""
    batch = x["dense"].shape[0]
    if batch == 0:
        raise ValueError("empty batch: every input needs at least one row")
    for name, want in shapes.raw().items():
        got = x[name].shape
        if got[0] != batch or tuple(got[1:]) != want:
            raise ValueError(f"input '{name}' has shape {list(got)}, expected [{batch}, {', '.join(map(str, want))}]"
                             f" (the batch size of 'dense' is {batch})")
    for name in ("dense", "user_embedding", "pin_embedding"):
        bad = ~np.isfinite(x[name])
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ValueError(f"input '{name}' has a non-finite value (NaN or inf) at row {row}, column {col}")
    huge = np.abs(x["dense"]) > DENSE_ABS_MAX
    if huge.any():
        row, col = np.argwhere(huge)[0]
        raise ValueError(f"input 'dense' has {x['dense'][row, col]:.3g} at row {row}, column {col}: beyond "
                         f"+-{DENSE_ABS_MAX:.0e} (ranker_inputs.DENSE_ABS_MAX); expected a raw feature value")
    s = x["surface"]
    bad = (s < 0) | (s >= n_surfaces)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise ValueError(f"input 'surface' is {int(s[row, 0])} at row {row}: expected a surface index in "
                         f"[0, {n_surfaces}) (preprocess.json surfaces)")


def unknown_sparse_counts(sparse, cardinalities):
    """(n_sparse,) int64: per feature, how many ids fall outside [0, cardinality) (mapped to 0)."""
    ids = np.asarray(sparse, dtype=np.int64)
    cards = np.asarray(cardinalities, dtype=np.int64)
    return ((ids < 0) | (ids >= cards)).sum(axis=0).astype(np.int64)


def clipped_dense_counts(dense, mean, std):
    """(n_dense,) int64: per feature, how many values are clipped by :func:`normalize_dense`."""
    x = np.asarray(dense, dtype=np.float32)
    z = (x - np.asarray(mean, dtype=np.float32)) / np.maximum(np.asarray(std, dtype=np.float32), MIN_STD)
    return (np.abs(z) > DENSE_CLIP).sum(axis=0).astype(np.int64)


def normalize_dense(dense, mean, std):
    """z-score with the training statistics, clipped: ``clip((x - mean) / max(std, MIN_STD), -5, 5)`` as float32.
    Non-finite inputs become 0 (the training mean)."""
    x = np.asarray(dense, dtype=np.float32)
    z = (x - np.asarray(mean, dtype=np.float32)) / np.maximum(np.asarray(std, dtype=np.float32), MIN_STD)
    z = np.where(np.isfinite(z), z, 0.0)
    return np.clip(z, -DENSE_CLIP, DENSE_CLIP).astype(np.float32)


def clamp_sparse(sparse, cardinalities):
    """Sparse ids as int64; an id outside [0, cardinality) becomes 0, the reserved unknown id."""
    ids = np.asarray(sparse, dtype=np.int64)
    cards = np.asarray(cardinalities, dtype=np.int64)
    return np.where((ids >= 0) & (ids < cards), ids, 0).astype(np.int64)


def clamp_surface(surface, n_surfaces: int):
    """Surface indices as int64 [B, 1]; out of range -> 0 (homefeed)."""
    s = np.asarray(surface, dtype=np.int64).reshape(-1, 1)
    return np.where((s >= 0) & (s < n_surfaces), s, 0).astype(np.int64)
