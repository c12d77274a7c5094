"""The ranker's serving contract: one source of truth for tensor names, dtypes and shapes, shared by
the ONNX exporter, the Triton model configs and the clients.

Raw request (``ranker_ensemble`` inputs; ``ranker_preprocess`` inputs)::

    dense            FP32  [B, n_dense]   raw dense features, in preprocess.json's order
    sparse           INT64 [B, n_sparse]  raw sparse ids, in preprocess.json's order
    surface          INT64 [B, 1]         domain index into schemas.SURFACES
    user_embedding   FP32  [B, D_user]    PinnerFormer user embedding
    pin_embedding    FP32  [B, D_pin]     PinSage pin embedding

Model inputs (``ranker_preprocess`` outputs -> ``ranker`` inputs): the same names with the prefix
``x_``: ``x_dense`` normalised (z-score with training statistics, clipped), ``x_sparse`` ids clamped to
[0, cardinality) (out-of-range -> 0, the reserved unknown id), ``x_surface``, ``x_user_embedding``,
``x_pin_embedding``.

Outputs (``ranker`` and ``ranker_ensemble``)::

    probabilities    FP32  [B, K]   per-task probabilities, K = len(tasks)
    score            FP32  [B, 1]   the combined score (sum of score_weights * probabilities)
"""

from __future__ import annotations

from dataclasses import dataclass

RAW_INPUTS = ("dense", "sparse", "surface", "user_embedding", "pin_embedding")
MODEL_PREFIX = "x_"
MODEL_INPUTS = tuple(MODEL_PREFIX + n for n in RAW_INPUTS)
OUTPUTS = ("probabilities", "score")
DTYPES = {"dense": "FP32", "sparse": "INT64", "surface": "INT64", "user_embedding": "FP32",
          "pin_embedding": "FP32", "probabilities": "FP32", "score": "FP32"}
PREPROCESS_FILE = "preprocess.json"  # dense mean/std, sparse names+cardinalities, tasks, dims
ONNX_FILE = "model.onnx"
MAX_BATCH = 1024


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


# ---- the preprocessing both training and ranker_preprocess apply (numpy only: the Triton venv has numpy<2) ----
DENSE_CLIP = 5.0  # normalised dense features are clipped to [-DENSE_CLIP, DENSE_CLIP]
MIN_STD = 1e-6


def normalize_dense(dense, mean, std):
    """z-score with the training statistics, clipped: ``clip((x - mean) / max(std, MIN_STD), -5, 5)`` as float32.
    Non-finite inputs become 0 (the training mean)."""
    import numpy as np

    x = np.asarray(dense, dtype=np.float32)
    z = (x - np.asarray(mean, dtype=np.float32)) / np.maximum(np.asarray(std, dtype=np.float32), MIN_STD)
    z = np.where(np.isfinite(z), z, 0.0)
    return np.clip(z, -DENSE_CLIP, DENSE_CLIP).astype(np.float32)


def clamp_sparse(sparse, cardinalities):
    """Sparse ids as int64; an id outside [0, cardinality) becomes 0, the reserved unknown id."""
    import numpy as np

    ids = np.asarray(sparse, dtype=np.int64)
    cards = np.asarray(cardinalities, dtype=np.int64)
    return np.where((ids >= 0) & (ids < cards), ids, 0).astype(np.int64)


def clamp_surface(surface, n_surfaces: int):
    """Surface indices as int64 [B, 1]; out of range -> 0 (homefeed)."""
    import numpy as np

    s = np.asarray(surface, dtype=np.int64).reshape(-1, 1)
    return np.where((s >= 0) & (s < n_surfaces), s, 0).astype(np.int64)
