"""Triton python backend: ``ranker`` running the exported ONNX graph with ONNX Runtime.

The local tritonserver (from the nvidia-pytriton wheel) ships only the python backend, so the CPU
``onnxruntime`` backend's job is done here: the requests of a dynamic batch are concatenated, run in
one ONNX Runtime call, and split back per request. On clusters the same ``model.onnx`` is served by
the ``onnxruntime`` backend (CPU) or as a TensorRT plan (GPU); see components/serving/model_repository.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ranker_io  # noqa: E402  (copied beside this file by components.serving.model_repository)

INPUTS = ("x_dense", "x_sparse", "x_surface", "x_user_embedding", "x_pin_embedding")
OUTPUTS = ("probabilities", "score")


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(params.get("intra_op_threads", "1"))
        opts.inter_op_num_threads = 1
        here = Path(__file__).resolve().parent
        ranker_io.verify_manifest(here, [ranker_io.ONNX_FILE, "ranker_io.py"])  # refuses a modified file
        path = here / "model.onnx"
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def execute(self, requests: list) -> list:
        inputs = [{n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in INPUTS} for r in requests]
        sizes = [x["x_dense"].shape[0] for x in inputs]
        batch = {n: np.concatenate([x[n] for x in inputs]) for n in INPUTS}
        try:
            outputs = self.session.run(list(OUTPUTS), batch)
        except Exception as e:  # noqa: BLE001 - every request of the batch gets the error
            err = pb_utils.TritonError(f"ranker: ONNX Runtime failed: {e}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=err) for _ in requests]
        responses, start = [], 0
        for n in sizes:
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, np.ascontiguousarray(out[start:start + n]))
                                for name, out in zip(OUTPUTS, outputs)]))
            start += n
        return responses
