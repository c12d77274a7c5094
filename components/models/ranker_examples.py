"""Random ranker model inputs shaped like a checkpoint's: the example batch the exporter traces and checks
ONNX parity on, and the batch the evaluation harness times inference with.

``extra`` is the checkpoint's model extra (``components.training.ranker.prepare_data``): its ``spec``
(dense/sparse names, cardinalities, embedding widths) and ``tasks`` give the shapes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from components.data.schemas import SURFACES
from components.models.ranker_inputs import RankerShapes


def shapes_of(extra: dict[str, Any]) -> RankerShapes:
    """The input and output shapes of the model a checkpoint's ``extra`` describes."""
    spec = extra["spec"]
    return RankerShapes(n_dense=len(spec["dense"]), n_sparse=len(spec["sparse"]), d_user=spec["user_dim"],
                        d_pin=spec["pin_dim"], n_tasks=len(extra["tasks"]))


def random_inputs(extra: dict[str, Any], batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A random batch of model inputs, including out-of-range sparse ids (which the model maps to 0)."""
    rng = np.random.default_rng(seed)
    spec, sh = extra["spec"], shapes_of(extra)
    cards = np.asarray(spec["cardinalities"])
    return {
        "x_dense": rng.normal(size=(batch, sh.n_dense)).astype(np.float32),  # (B, n_dense)
        "x_sparse": rng.integers(-1, cards + 2, size=(batch, sh.n_sparse)).astype(np.int64),  # (B, n_sparse)
        "x_surface": rng.integers(0, len(SURFACES), size=(batch, 1)).astype(np.int64),  # (B, 1)
        "x_user_embedding": rng.normal(size=(batch, sh.d_user)).astype(np.float32),  # (B, D_user)
        "x_pin_embedding": rng.normal(size=(batch, sh.d_pin)).astype(np.float32),  # (B, D_pin)
    }
