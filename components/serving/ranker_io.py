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
