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

Bad-input policy of ``ranker_preprocess`` (:func:`check_request`; docs/bad-input.md):

- rejected with an error naming the input, row and column: a shape or batch mismatch, NaN/inf in a
  float input, a raw dense value with ``|x| > DENSE_ABS_MAX`` (1e15: no real feature is that large;
  it is an overflow or a unit bug upstream), a surface outside ``[0, len(surfaces))`` (the surface
  picks PEPNet's gates, so a wrong one would score silently as another surface);
- mapped and counted: a sparse id outside ``[0, cardinality)`` (2^62, -1, a category first seen after
  training) becomes the reserved unknown id 0, as in training, counted per feature in the Triton
  metric ``homefeed_preprocess_unknown_sparse_ids_total``; a dense value more than ``DENSE_CLIP``
  standard deviations from the training mean is clipped, as in training, counted in
  ``homefeed_preprocess_clipped_dense_total``.

Outputs (``ranker`` and ``ranker_ensemble``)::

    probabilities    FP32  [B, K]   per-task probabilities, K = len(tasks)
    score            FP32  [B, 1]   the combined score (sum of score_weights * probabilities)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

RAW_INPUTS = ("dense", "sparse", "surface", "user_embedding", "pin_embedding")
MODEL_PREFIX = "x_"
MODEL_INPUTS = tuple(MODEL_PREFIX + n for n in RAW_INPUTS)
OUTPUTS = ("probabilities", "score")
DTYPES = {"dense": "FP32", "sparse": "INT64", "surface": "INT64", "user_embedding": "FP32",
          "pin_embedding": "FP32", "probabilities": "FP32", "score": "FP32"}
PREPROCESS_FILE = "preprocess.json"  # dense mean/std, sparse names+cardinalities, tasks, dims
ONNX_FILE = "model.onnx"
MAX_BATCH = 1024
MANIFEST_FILE = "manifest.json"  # {"sha256": {file name: hex digest}} of an export / a model version folder


class ArtifactError(ValueError):
    """An artifact that does not match the SHA-256 recorded when it was written (or has no record)."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: str | Path, names: list[str]) -> dict[str, str]:
    """Record the SHA-256 of ``folder/<name>`` for each name in ``folder/manifest.json``."""
    folder = Path(folder)
    digests = {n: sha256_file(folder / n) for n in names}
    (folder / MANIFEST_FILE).write_text(json.dumps({"sha256": digests}, indent=2, sort_keys=True) + "\n")
    return digests


def verify_manifest(folder: str | Path, names: list[str]) -> None:
    """Refuse ``folder`` unless each of ``names`` has the SHA-256 recorded in its manifest: ArtifactError
    naming the file, the recorded and the actual digest (a tampered, corrupted or swapped file)."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    try:
        recorded = json.loads(path.read_text())["sha256"]
        if not isinstance(recorded, dict):
            raise TypeError("'sha256' is not an object")
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing; the artifacts' SHA-256 digests cannot be checked (re-export with "
                            "`homefeed export ranker`)") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ArtifactError(f"{path}: malformed ({e!r}); expected {{\"sha256\": {{file: digest}}}}") from None
    for name in names:
        if name not in recorded:
            raise ArtifactError(f"{folder / name}: no SHA-256 recorded in {path}")
        if not (folder / name).exists():
            raise ArtifactError(f"{folder / name}: missing (recorded in {path})")
        actual = sha256_file(folder / name)
        if actual != recorded[name]:
            raise ArtifactError(f"{folder / name}: SHA-256 {actual[:16]}... does not match {recorded[name][:16]}... "
                                f"recorded in {path}; the file was modified after export, refusing to serve it")


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
DENSE_ABS_MAX = 1e15  # a raw dense value beyond this is rejected (an overflow upstream, not a feature)


def check_request(x, shapes: RankerShapes, n_surfaces: int) -> None:
    """Reject a raw request that breaks the policy above: ValueError naming the input, row and column.

    ``x``: the five raw inputs (numpy arrays) by name."""
    import numpy as np

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
                         f"+-{DENSE_ABS_MAX:.0e} (ranker_io.DENSE_ABS_MAX); expected a raw feature value")
    s = x["surface"]
    bad = (s < 0) | (s >= n_surfaces)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise ValueError(f"input 'surface' is {int(s[row, 0])} at row {row}: expected a surface index in "
                         f"[0, {n_surfaces}) (preprocess.json surfaces)")


def unknown_sparse_counts(sparse, cardinalities):
    """(n_sparse,) int64: per feature, how many ids fall outside [0, cardinality) (mapped to 0)."""
    import numpy as np

    ids = np.asarray(sparse, dtype=np.int64)
    cards = np.asarray(cardinalities, dtype=np.int64)
    return ((ids < 0) | (ids >= cards)).sum(axis=0).astype(np.int64)


def clipped_dense_counts(dense, mean, std):
    """(n_dense,) int64: per feature, how many values are clipped by :func:`normalize_dense`."""
    import numpy as np

    x = np.asarray(dense, dtype=np.float32)
    z = (x - np.asarray(mean, dtype=np.float32)) / np.maximum(np.asarray(std, dtype=np.float32), MIN_STD)
    return (np.abs(z) > DENSE_CLIP).sum(axis=0).astype(np.int64)


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
