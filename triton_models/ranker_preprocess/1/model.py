"""Triton python backend: ``ranker_preprocess`` - raw ranker features -> the model's normalised inputs.

Runs inside Triton's python-backend stub (the ``.venv-triton`` environment: numpy<2, no torch). The
materialised model version directory holds, beside this file, ``preprocess.json`` (the training
statistics written by the exporter) and ``ranker_io.py`` (the shared contract and the very numpy
functions training used to normalise). A request with a NaN/inf value or an empty batch is answered
with an error naming the input and row; other requests of the same batch are unaffected.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ranker_io  # noqa: E402  (copied beside this file by components.serving.model_repository)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        here = Path(__file__).resolve().parent
        pre = json.loads((here / ranker_io.PREPROCESS_FILE).read_text())
        self.mean = np.asarray(pre["dense"]["mean"], np.float32)
        self.std = np.asarray(pre["dense"]["std"], np.float32)
        self.cards = np.asarray(pre["sparse"]["cardinalities"], np.int64)
        self.n_surfaces = len(pre["surfaces"])
        d = pre["dims"]
        self.shapes = ranker_io.RankerShapes(d["n_dense"], d["n_sparse"], d["d_user"], d["d_pin"], d["n_tasks"])

    def _one(self, request) -> list:
        x = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in ranker_io.RAW_INPUTS}
        batch = x["dense"].shape[0]
        if batch == 0:
            raise ValueError("empty batch: every input needs at least one row")
        for name, want in self.shapes.raw().items():
            got = x[name].shape
            if got[0] != batch or tuple(got[1:]) != want:
                raise ValueError(f"input '{name}' has shape {list(got)}, expected [{batch}, {', '.join(map(str, want))}]"
                                 f" (the batch size of 'dense' is {batch})")
        for name in ("dense", "user_embedding", "pin_embedding"):
            bad = ~np.isfinite(x[name])
            if bad.any():
                row, col = np.argwhere(bad)[0]
                raise ValueError(f"input '{name}' has a non-finite value (NaN or inf) at row {row}, column {col}")
        return [
            pb_utils.Tensor("x_dense", ranker_io.normalize_dense(x["dense"], self.mean, self.std)),
            pb_utils.Tensor("x_sparse", ranker_io.clamp_sparse(x["sparse"], self.cards)),
            pb_utils.Tensor("x_surface", ranker_io.clamp_surface(x["surface"], self.n_surfaces)),
            pb_utils.Tensor("x_user_embedding", np.ascontiguousarray(x["user_embedding"], np.float32)),
            pb_utils.Tensor("x_pin_embedding", np.ascontiguousarray(x["pin_embedding"], np.float32)),
        ]

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=self._one(request)))
            except ValueError as e:
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"ranker_preprocess: {e}")))
        return responses
