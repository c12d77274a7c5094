"""The ranker's Triton I/O contract: tensor dtypes, file names, the maximum batch and the SHA-256 manifest
of an export, shared by the ONNX exporter, the Triton model configs and the clients.

The model inputs, their shapes and the preprocessing (normalisation, clamps, the bad-input checks) live
beside the model in ``components/models/ranker_inputs.py``, which training uses too. Both files import no
``components`` module: the model repository copies them beside Triton's python-backend ``model.py``.

Raw request (``ranker_ensemble`` / ``ranker_preprocess`` inputs, ``ranker_inputs.RAW_INPUTS``)::

    dense            FP32  [B, n_dense]   raw dense features, in preprocess.json's order
    sparse           INT64 [B, n_sparse]  raw sparse ids, in preprocess.json's order
    surface          INT64 [B, 1]         domain index into schemas.SURFACES
    user_embedding   FP32  [B, D_user]    PinnerFormer user embedding
    pin_embedding    FP32  [B, D_pin]     PinSage pin embedding

Model inputs (``ranker_preprocess`` outputs -> ``ranker`` inputs, ``ranker_inputs.MODEL_INPUTS``): the same
names with the prefix ``x_``. Bad-input policy of ``ranker_preprocess``: ``ranker_inputs.check_request`` and
docs/bad-input.md; unknown sparse ids and clipped dense values are counted in the Triton metrics
``homefeed_preprocess_unknown_sparse_ids_total`` and ``homefeed_preprocess_clipped_dense_total``.

Outputs (``ranker`` and ``ranker_ensemble``)::

    probabilities    FP32  [B, K]   per-task probabilities, K = len(tasks)
    score            FP32  [B, 1]   the combined score (sum of score_weights * probabilities)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

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
