"""Export a trained ranker for serving: ONNX (opset >= 17, dynamic batch) plus the preprocessing statistics
(``preprocess.json``) and the config, checked against PyTorch with ONNX Runtime; and a TensorRT plan build
for GPU nodes (TensorRT's Python builder, or the equivalent ``trtexec`` command).

EXPORT_DIR (names from components/models/ranker_inputs.py and components/serving/ranker_io.py)::

    model.onnx        inputs x_dense, x_sparse, x_surface, x_user_embedding, x_pin_embedding [B, ...]
                      outputs probabilities [B, K], score [B, 1]
    preprocess.json   dense names/mean/std/clip, sparse names/cardinalities, surfaces, tasks, score_weights, dims
    config.yaml       the model's resolved config
    parity.json       max |onnxruntime - torch| on the checked batches
    manifest.json     the SHA-256 of each file above; the model repository build (and the Triton python
                      models) refuse a file whose digest no longer matches

The directory is written beside its destination and renamed into place: a failed export leaves a
previous export intact.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components import config as config_mod
from components.data import io
from components.data.durable import atomic_write_bytes, replace_dir
from components.data.schemas import SURFACES
from components.models import ranker_inputs
from components.models.ranker import FeatureSpec, load_model
from components.models.ranker_examples import random_inputs, shapes_of
from components.models.ranker_inputs import MODEL_INPUTS, RankerShapes
from components.serving import ranker_io
from components.serving.ranker_io import ONNX_FILE, OUTPUTS, PREPROCESS_FILE
from components.training.ranker import embedding_tables, load_impressions, to_arrays

OPSET = 17
PARITY_TOL = 1e-5


class ServingRanker(torch.nn.Module):
    """The exported graph: the model's inputs -> (probabilities, score)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x_dense: torch.Tensor, x_sparse: torch.Tensor, x_surface: torch.Tensor,
                x_user_embedding: torch.Tensor, x_pin_embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.predict(x_dense, x_sparse, x_surface, x_user_embedding, x_pin_embedding)


def real_inputs(extra: dict[str, Any], data_dir: str | Path, batch: int) -> dict[str, np.ndarray]:
    """Model inputs for the first ``batch`` evaluation impressions of ``data_dir``, built as training builds
    them, normalised with the model's own training statistics."""
    spec = FeatureSpec.from_dict(extra["spec"])
    users, pins = embedding_tables(data_dir, extra.get("user_embeddings_path"), extra.get("pin_embeddings_path"))
    if (users.dim, pins.dim) != (spec.user_dim, spec.pin_dim):
        raise ValueError(f"{data_dir}: embeddings of widths {users.dim}/{pins.dim}, the model expects "
                         f"{spec.user_dim}/{spec.pin_dim}")
    df = load_impressions(data_dir, spec, extra["tasks"])
    df = df[df["timestamp"].to_numpy() >= int(io.read_meta(data_dir)["split_timestamp"])].head(batch)
    data, _ = to_arrays(df, spec, extra["tasks"], extra["dense_mean"], extra["dense_std"], users, pins)
    return dict(zip(MODEL_INPUTS, (t.numpy() for t in data.inputs())))


def preprocess_spec(cfg: Any, extra: dict[str, Any]) -> dict[str, Any]:
    spec, sh = extra["spec"], shapes_of(extra)
    return {
        "dense": {"names": spec["dense"], "mean": extra["dense_mean"], "std": extra["dense_std"],
                  "clip": ranker_inputs.DENSE_CLIP, "min_std": ranker_inputs.MIN_STD},
        "sparse": {"names": spec["sparse"], "cardinalities": spec["cardinalities"], "unknown_id": 0},
        "surfaces": list(extra.get("surfaces", SURFACES)),  # the training data's surfaces (meta.json)
        "tasks": list(extra["tasks"]),
        "score_weights": list(extra["score_weights"]),
        "dims": {"n_dense": sh.n_dense, "n_sparse": sh.n_sparse, "d_user": sh.d_user, "d_pin": sh.d_pin,
                 "n_tasks": sh.n_tasks},
        "inputs": list(MODEL_INPUTS), "outputs": list(OUTPUTS), "max_batch": ranker_io.MAX_BATCH,
        "arch": cfg.arch, "pepnet": cfg.pepnet, "opset": OPSET,
        # the model_version of the embedding tables the ranker was trained on: serving refuses other ones
        "embedding_versions": {"user": extra.get("user_embeddings"), "pin": extra.get("pin_embeddings")},
    }


def check_parity(model: torch.nn.Module, onnx_path: str | Path, batches: dict[str, dict[str, np.ndarray]],
                 tol: float = PARITY_TOL) -> dict[str, float]:
    """Max abs difference of every output between onnxruntime and torch per batch; raises above ``tol``."""
    import onnxruntime as ort  # only for the parity check at export time (serving never loads it here)

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    wrapper = ServingRanker(model).eval()
    out = {}
    for name, x in batches.items():
        got = sess.run(list(OUTPUTS), x)
        with torch.no_grad():
            want = wrapper(*(torch.from_numpy(x[n]) for n in MODEL_INPUTS))
        diff = max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want))
        out[name] = diff
        if not diff <= tol:
            raise AssertionError(f"{onnx_path}: ONNX Runtime differs from torch by {diff:.3g} > {tol} on {name} batch")
    return out


def export_ranker(model_dir: str | Path, out_dir: str | Path, data_dir: str | Path | None = None,
                  check: bool = True) -> Path:
    """Export MODEL_DIR to EXPORT_DIR; returns EXPORT_DIR.

    ``data_dir`` (default: the data directory the model was trained on, if it still exists) gives the real
    batch of the parity check; a random batch of 37 and a batch of 1 are always checked.
    """
    model, cfg, extra = load_model(model_dir)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)
    try:
        wrapper = ServingRanker(model).eval()
        example = random_inputs(extra, 4)
        onnx_path = tmp / ONNX_FILE
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter: no onnxscript needed
            torch.onnx.export(
                wrapper, tuple(torch.from_numpy(example[n]) for n in MODEL_INPUTS), str(onnx_path),
                input_names=list(MODEL_INPUTS), output_names=list(OUTPUTS),
                dynamic_axes={n: {0: "batch"} for n in (*MODEL_INPUTS, *OUTPUTS)},
                opset_version=OPSET, dynamo=False, do_constant_folding=True)
        import onnx  # only at export time

        onnx.checker.check_model(str(onnx_path))
        (tmp / PREPROCESS_FILE).write_text(json.dumps(preprocess_spec(cfg, extra), indent=2) + "\n")
        config_mod.save(cfg, tmp / "config.yaml")
        parity: dict[str, float] = {}
        if check:
            batches = {"random_37": random_inputs(extra, 37, seed=1), "random_1": random_inputs(extra, 1, seed=2)}
            data_dir = data_dir if data_dir is not None else extra.get("data_dir")
            if data_dir is not None and Path(data_dir, "meta.json").exists():
                batches["real_256"] = real_inputs(extra, data_dir, 256)
            parity = check_parity(model, onnx_path, batches)
        (tmp / "parity.json").write_text(json.dumps({"tolerance": PARITY_TOL, "max_abs_diff": parity}, indent=2) + "\n")
        ranker_io.write_manifest(tmp, [ONNX_FILE, PREPROCESS_FILE, "config.yaml", "parity.json"])
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


# ---- TensorRT (GPU nodes) -------------------------------------------------------------------------------------


def _profile_shapes(export_dir: Path, opt_batch: int, max_batch: int) -> dict[str, tuple[tuple[int, ...], ...]]:
    pre = json.loads((export_dir / PREPROCESS_FILE).read_text())
    d = pre["dims"]
    sh = RankerShapes(d["n_dense"], d["n_sparse"], d["d_user"], d["d_pin"], d["n_tasks"])
    return {ranker_inputs.MODEL_PREFIX + name: ((1, *s), (opt_batch, *s), (max_batch, *s)) for name, s in sh.raw().items()}


def trtexec_command(onnx_path: str | Path, plan_path: str | Path, fp16: bool = False, opt_batch: int = 512,
                    max_batch: int = ranker_io.MAX_BATCH) -> list[str]:
    """The ``trtexec`` command line equivalent to :func:`build_tensorrt` (run it on a GPU node)."""
    shapes = _profile_shapes(Path(onnx_path).parent, opt_batch, max_batch)

    def fmt(i: int) -> str:
        return ",".join(f"{n}:{'x'.join(map(str, s[i]))}" for n, s in shapes.items())

    cmd = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={plan_path}", f"--minShapes={fmt(0)}",
           f"--optShapes={fmt(1)}", f"--maxShapes={fmt(2)}"]
    return cmd + (["--fp16"] if fp16 else [])


def build_tensorrt(onnx_path: str | Path, plan_path: str | Path, fp16: bool = False, opt_batch: int = 512,
                   max_batch: int = ranker_io.MAX_BATCH, workspace_bytes: int = 1 << 30) -> Path:
    """Build a TensorRT plan from the exported ONNX with TensorRT's Python builder (dynamic batch 1..max_batch,
    optimised for ``opt_batch``; FP16 optional). Needs the ``tensorrt`` package and a GPU."""
    try:
        import tensorrt as trt  # optional: only on a GPU node building a plan
    except ImportError as e:
        raise RuntimeError(
            "TensorRT is not installed (pip install tensorrt; it needs an NVIDIA GPU and driver). On a GPU node run "
            f"this again, or use the trtexec equivalent: {' '.join(trtexec_command(onnx_path, plan_path, fp16))}"
        ) from e
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT < 10; explicit batch is the default since
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT could not parse the ONNX model: {errors}")
    cfg = builder.create_builder_config()
    cfg.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16:
        cfg.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in _profile_shapes(onnx_path.parent, opt_batch, max_batch).items():
        profile.set_shape(name, lo, opt, hi)
    cfg.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, cfg)
    if plan is None:
        raise RuntimeError(f"{onnx_path}: TensorRT failed to build a plan (see the log above)")
    return atomic_write_bytes(plan_path, bytes(plan))
