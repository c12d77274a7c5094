"""Triton python backend: ``ranker_preprocess`` - raw ranker features -> the model's normalised inputs.

Runs inside Triton's python-backend stub (the ``.venv-triton`` environment: numpy<2, no torch). The
materialised model version directory holds, beside this file, ``preprocess.json`` (the training
statistics written by the exporter), ``ranker_io.py`` (the Triton I/O contract and the manifest check) and
``ranker_inputs.py`` (``components/models/ranker_inputs.py``: the input names and the very numpy functions
training used to normalise).

Bad input (the policy is documented in ``ranker_inputs`` and docs/bad-input.md): a request with a wrong
shape, an empty batch, NaN/inf, a dense value beyond ``DENSE_ABS_MAX`` or a surface out of range is
answered with an error naming the input and row; other requests of the same batch are unaffected.
Sparse ids out of range become the unknown id 0 and dense values beyond the clip are clipped, as in
training, and both are counted in Triton's Prometheus metrics (per feature).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ranker_inputs  # noqa: E402  (copied beside this file by components.serving.model_repository)
import ranker_io  # noqa: E402  (copied beside this file by components.serving.model_repository)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        here = Path(__file__).resolve().parent
        ranker_io.verify_manifest(here, [ranker_io.PREPROCESS_FILE, "ranker_io.py", "ranker_inputs.py"])  # refuses a modified file
        pre = json.loads((here / ranker_io.PREPROCESS_FILE).read_text())
        self.mean = np.asarray(pre["dense"]["mean"], np.float32)
        self.std = np.asarray(pre["dense"]["std"], np.float32)
        self.cards = np.asarray(pre["sparse"]["cardinalities"], np.int64)
        self.n_surfaces = len(pre["surfaces"])
        d = pre["dims"]
        self.shapes = ranker_inputs.RankerShapes(d["n_dense"], d["n_sparse"], d["d_user"], d["d_pin"], d["n_tasks"])
        self.families: list = []  # a MetricFamily must outlive its Metrics: kept on the model
        self.unknown_sparse, self.clipped_dense = self._metrics(pre["sparse"]["names"], pre["dense"]["names"])

    def _metrics(self, sparse_names: list[str], dense_names: list[str]) -> tuple[list, list]:
        """One Prometheus counter per feature (Triton's custom metrics; absent on old Triton builds)."""
        if not hasattr(pb_utils, "MetricFamily"):
            return [], []
        unknown = pb_utils.MetricFamily(name="homefeed_preprocess_unknown_sparse_ids_total",
                                        description="sparse ids outside [0, cardinality) mapped to the unknown id 0",
                                        kind=pb_utils.MetricFamily.COUNTER)
        clipped = pb_utils.MetricFamily(name="homefeed_preprocess_clipped_dense_total",
                                        description="dense values clipped to +-DENSE_CLIP training standard deviations",
                                        kind=pb_utils.MetricFamily.COUNTER)
        self.families = [unknown, clipped]
        return ([unknown.Metric(labels={"feature": n}) for n in sparse_names],
                [clipped.Metric(labels={"feature": n}) for n in dense_names])

    @staticmethod
    def _count(metrics: list, counts) -> None:
        for metric, k in zip(metrics, counts.tolist()):
            if k:
                metric.increment(float(k))

    def _one(self, request) -> list:
        x = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in ranker_inputs.RAW_INPUTS}
        ranker_inputs.check_request(x, self.shapes, self.n_surfaces)
        self._count(self.unknown_sparse, ranker_inputs.unknown_sparse_counts(x["sparse"], self.cards))
        self._count(self.clipped_dense, ranker_inputs.clipped_dense_counts(x["dense"], self.mean, self.std))
        return [
            pb_utils.Tensor("x_dense", ranker_inputs.normalize_dense(x["dense"], self.mean, self.std)),
            pb_utils.Tensor("x_sparse", ranker_inputs.clamp_sparse(x["sparse"], self.cards)),
            pb_utils.Tensor("x_surface", ranker_inputs.clamp_surface(x["surface"], self.n_surfaces)),
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
