"""A client of the ``ranker_ensemble`` over gRPC or HTTP (tritonclient), built on the ranker_io contract
and the raw input names of ``components.models.ranker_inputs``."""

from __future__ import annotations

import numpy as np

from components.models import ranker_inputs
from components.serving import ranker_io
from components.serving.model_repository import ENSEMBLE

_NP = {"FP32": np.float32, "INT64": np.int64}


class RankerClient:
    """``score(raw) -> (probabilities (B, K), score (B,))`` for raw inputs named as ``ranker_inputs.RAW_INPUTS``.

    ``infer`` sends exactly what it is given (the server validates); ``score`` casts to the contract's
    dtypes and splits batches larger than ``max_batch`` into several requests.
    """

    def __init__(self, url: str, protocol: str = "grpc", model: str = ENSEMBLE, timeout_s: float = 30.0):
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http', got '{protocol}'")
        self.protocol, self.model, self.timeout_s = protocol, model, timeout_s
        # only the chosen protocol's client: tritonclient.grpc pulls grpc, tritonclient.http gevent/geventhttpclient
        if protocol == "grpc":
            import tritonclient.grpc as lib  # only the protocol used: each client pulls its own stack
        else:
            import tritonclient.http as lib  # (grpc, or gevent/geventhttpclient)
        self._lib = lib
        self.client = lib.InferenceServerClient(url)

    def infer(self, inputs: dict[str, np.ndarray], datatypes: dict[str, str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One request with exactly these arrays (names, dtypes and shapes as given)."""
        tensors = []
        for name, arr in inputs.items():
            dtype = (datatypes or {}).get(name) or _triton_dtype(arr.dtype)
            t = self._lib.InferInput(name, list(arr.shape), dtype)
            t.set_data_from_numpy(arr)
            tensors.append(t)
        outputs = [self._lib.InferRequestedOutput(n) for n in ranker_io.OUTPUTS]
        kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        res = self.client.infer(self.model, tensors, outputs=outputs, **kwargs)
        return res.as_numpy("probabilities"), res.as_numpy("score")

    def score(self, raw: dict[str, np.ndarray], max_batch: int = ranker_io.MAX_BATCH) -> tuple[np.ndarray, np.ndarray]:
        missing = [n for n in ranker_inputs.RAW_INPUTS if n not in raw]
        if missing:
            raise ValueError(f"ranker request is missing inputs {missing}; expected {list(ranker_inputs.RAW_INPUTS)}")
        arrays = {n: np.ascontiguousarray(raw[n], _NP[ranker_io.DTYPES[n]]) for n in ranker_inputs.RAW_INPUTS}
        arrays["surface"] = arrays["surface"].reshape(-1, 1)
        n = len(arrays["dense"])
        if n == 0:
            raise ValueError("empty batch: a ranker request needs at least one row")
        probs, scores = [], []
        for s in range(0, n, max_batch):
            p, sc = self.infer({k: v[s:s + max_batch] for k, v in arrays.items()})
            probs.append(p)
            scores.append(sc[:, 0])
        return np.concatenate(probs), np.concatenate(scores)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> RankerClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _triton_dtype(dtype: np.dtype) -> str:
    return {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.int64): "INT64",
            np.dtype(np.int32): "INT32"}.get(np.dtype(dtype), "BYTES")
