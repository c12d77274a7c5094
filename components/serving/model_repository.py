"""Materialise the ranker's Triton model repository from an export directory, for a target.

An export directory (``components.serving.export.export_ranker``) holds ``model.onnx`` and
``preprocess.json``. ``materialize(export_dir, repo_dir, target)`` writes::

    repo_dir/
      ranker_preprocess/config.pbtxt, 1/{model.py, ranker_io.py, ranker_inputs.py, preprocess.json}  (python backend)
      ranker/config.pbtxt, 1/<the model for the target>                            (dynamic batching)
      ranker_ensemble/config.pbtxt, 1/                                             (platform "ensemble")

Targets of ``ranker``:
- ``python_onnx``: the python backend running ONNX Runtime (``triton_models/ranker/1/model.py``); the
  local tritonserver of the nvidia-pytriton wheel has only the python backend.
- ``onnxruntime``: Triton's ``onnxruntime`` backend on CPU (Triton containers on CPU clusters).
- ``tensorrt_plan``: a TensorRT plan on GPU (built from the ONNX by ``export.build_tensorrt`` unless the
  export directory already holds ``model.plan``).

Every config is generated from ``ranker_io`` and ``components.models.ranker_inputs`` (names, dtypes,
shapes: the contract shared with the exporter and training). The repository is built in a temporary
directory beside ``repo_dir`` and swapped in only
when complete, so a failed build leaves the served repository intact.

Integrity: the export's ``manifest.json`` (SHA-256 of each file, written by the exporter) is checked
before anything is copied, and each python-backend model version folder gets its own manifest,
which its ``model.py`` checks when Triton loads it: a file modified after export is refused.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from components.data.durable import replace_dir
from components.models import ranker_inputs
from components.models.ranker_inputs import MODEL_INPUTS, MODEL_PREFIX, RankerShapes
from components.serving import ranker_io
from components.serving.ranker_io import DTYPES, ONNX_FILE, OUTPUTS, PREPROCESS_FILE

SOURCES = Path(__file__).resolve().parents[2] / "triton_models"
TARGETS = ("python_onnx", "onnxruntime", "tensorrt_plan")
PREPROCESS, RANKER, ENSEMBLE = "ranker_preprocess", "ranker", "ranker_ensemble"
PLAN_FILE = "model.plan"


class ModelRepositoryError(ValueError):
    """A problem with an export directory or a repository build, naming the file and what was expected."""


@dataclass
class RepositoryOptions:
    max_batch: int = ranker_io.MAX_BATCH
    max_queue_delay_us: int = 2_000  # dynamic batching on the ranker
    preferred_batch: tuple[int, ...] = (64, 256)
    ranker_instances: int = 1
    preprocess_instances: int = 1
    intra_op_threads: int = 1


def read_export(export_dir: str | Path) -> tuple[dict, RankerShapes]:
    """(preprocess.json, shapes) of an export directory, checked against the contract."""
    export_dir = Path(export_dir)
    for f in (ONNX_FILE, PREPROCESS_FILE):
        if not (export_dir / f).exists():
            raise ModelRepositoryError(f"{export_dir / f}: missing (export the ranker with `homefeed export ranker`)")
    try:
        ranker_io.verify_manifest(export_dir, [ONNX_FILE, PREPROCESS_FILE])
    except ranker_io.ArtifactError as e:
        raise ModelRepositoryError(str(e)) from None
    try:
        pre = json.loads((export_dir / PREPROCESS_FILE).read_text())
        d = pre["dims"]
        shapes = RankerShapes(int(d["n_dense"]), int(d["n_sparse"]), int(d["d_user"]), int(d["d_pin"]),
                                        int(d["n_tasks"]))
        checks = {"dense.mean": len(pre["dense"]["mean"]) == shapes.n_dense,
                  "dense.std": len(pre["dense"]["std"]) == shapes.n_dense,
                  "sparse.cardinalities": len(pre["sparse"]["cardinalities"]) == shapes.n_sparse,
                  "tasks": len(pre["tasks"]) == shapes.n_tasks}
    except (KeyError, TypeError, ValueError) as e:
        raise ModelRepositoryError(f"{export_dir / PREPROCESS_FILE}: malformed ({e!r}); expected dims, dense, "
                                   "sparse and tasks as written by export_ranker") from e
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        raise ModelRepositoryError(f"{export_dir / PREPROCESS_FILE}: {bad} disagree with dims {d}")
    return pre, shapes


def _tensor(name: str, dims: tuple[int, ...], dtype: str) -> str:
    return f'  {{ name: "{name}" data_type: TYPE_{dtype} dims: [ {", ".join(map(str, dims))} ] }}'


def _io_block(kind: str, tensors: list[tuple[str, tuple[int, ...], str]]) -> str:
    return f"{kind} [\n" + ",\n".join(_tensor(*t) for t in tensors) + "\n]\n"


def _raw_tensors(shapes: RankerShapes) -> list[tuple[str, tuple[int, ...], str]]:
    return [(n, s, DTYPES[n]) for n, s in shapes.raw().items()]


def _model_tensors(shapes: RankerShapes) -> list[tuple[str, tuple[int, ...], str]]:
    return [(MODEL_PREFIX + n, s, DTYPES[n]) for n, s in shapes.raw().items()]


def _out_tensors(shapes: RankerShapes) -> list[tuple[str, tuple[int, ...], str]]:
    return [(n, s, DTYPES[n]) for n, s in shapes.outputs().items()]


def preprocess_config(shapes: RankerShapes, opt: RepositoryOptions) -> str:
    return (f'name: "{PREPROCESS}"\nbackend: "python"\nmax_batch_size: {opt.max_batch}\n'
            + _io_block("input", _raw_tensors(shapes)) + _io_block("output", _model_tensors(shapes))
            + f"instance_group [ {{ kind: KIND_CPU count: {opt.preprocess_instances} }} ]\n")


def ranker_config(shapes: RankerShapes, opt: RepositoryOptions, target: str) -> str:
    head = {"python_onnx": 'backend: "python"',
            "onnxruntime": f'platform: "onnxruntime_onnx"\ndefault_model_filename: "{ONNX_FILE}"',
            "tensorrt_plan": f'platform: "tensorrt_plan"\ndefault_model_filename: "{PLAN_FILE}"'}[target]
    kind = "KIND_GPU" if target == "tensorrt_plan" else "KIND_CPU"
    preferred = ", ".join(str(b) for b in opt.preferred_batch if b <= opt.max_batch)
    text = (f'name: "{RANKER}"\n{head}\nmax_batch_size: {opt.max_batch}\n'
            + _io_block("input", _model_tensors(shapes)) + _io_block("output", _out_tensors(shapes))
            + f"dynamic_batching {{\n  preferred_batch_size: [ {preferred} ]\n"
              f"  max_queue_delay_microseconds: {opt.max_queue_delay_us}\n}}\n"
            + f"instance_group [ {{ kind: {kind} count: {opt.ranker_instances} }} ]\n")
    if target != "tensorrt_plan":
        key = "intra_op_threads" if target == "python_onnx" else "intra_op_thread_count"
        text += f'parameters {{ key: "{key}" value: {{ string_value: "{opt.intra_op_threads}" }} }}\n'
    return text


def ensemble_config(shapes: RankerShapes, opt: RepositoryOptions) -> str:
    def maps(kind: str, pairs: list[tuple[str, str]]) -> str:
        return "".join(f'      {kind} {{ key: "{k}" value: "{v}" }}\n' for k, v in pairs)

    raw = list(shapes.raw())
    step1 = (f'    {{\n      model_name: "{PREPROCESS}"\n      model_version: -1\n'
             + maps("input_map", [(n, n) for n in raw]) + maps("output_map", [(m, m) for m in MODEL_INPUTS]) + "    }")
    step2 = (f'    {{\n      model_name: "{RANKER}"\n      model_version: -1\n'
             + maps("input_map", [(m, m) for m in MODEL_INPUTS]) + maps("output_map", [(o, o) for o in OUTPUTS])
             + "    }")
    return (f'name: "{ENSEMBLE}"\nplatform: "ensemble"\nmax_batch_size: {opt.max_batch}\n'
            + _io_block("input", _raw_tensors(shapes)) + _io_block("output", _out_tensors(shapes))
            + f"ensemble_scheduling {{\n  step [\n{step1},\n{step2}\n  ]\n}}\n")


def materialize(export_dir: str | Path, repo_dir: str | Path, target: str = "python_onnx",
                options: RepositoryOptions | None = None) -> Path:
    """Write the model repository for ``target`` at ``repo_dir`` (atomically: build, then swap)."""
    if target not in TARGETS:
        raise ModelRepositoryError(f"unknown Triton target '{target}'; expected one of {', '.join(TARGETS)}")
    opt = options or RepositoryOptions()
    if not 1 <= opt.max_batch <= ranker_io.MAX_BATCH:
        raise ModelRepositoryError(f"max_batch {opt.max_batch} must be in [1, {ranker_io.MAX_BATCH}]")
    export_dir, repo_dir = Path(export_dir), Path(repo_dir)
    _, shapes = read_export(export_dir)
    repo_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{repo_dir.name}.", dir=repo_dir.parent))
    tmp.chmod(0o755)
    try:
        pre = tmp / PREPROCESS / "1"
        pre.mkdir(parents=True)
        shutil.copy2(SOURCES / PREPROCESS / "1" / "model.py", pre / "model.py")
        shutil.copy2(Path(ranker_io.__file__), pre / "ranker_io.py")
        shutil.copy2(Path(ranker_inputs.__file__), pre / "ranker_inputs.py")
        shutil.copy2(export_dir / PREPROCESS_FILE, pre / PREPROCESS_FILE)
        ranker_io.write_manifest(pre, ["model.py", "ranker_io.py", "ranker_inputs.py", PREPROCESS_FILE])
        (tmp / PREPROCESS / "config.pbtxt").write_text(preprocess_config(shapes, opt))

        rk = tmp / RANKER / "1"
        rk.mkdir(parents=True)
        if target == "python_onnx":
            shutil.copy2(SOURCES / RANKER / "1" / "model.py", rk / "model.py")
            shutil.copy2(export_dir / ONNX_FILE, rk / ONNX_FILE)
            shutil.copy2(Path(ranker_io.__file__), rk / "ranker_io.py")
            ranker_io.write_manifest(rk, ["model.py", "ranker_io.py", ONNX_FILE])
        elif target == "onnxruntime":
            shutil.copy2(export_dir / ONNX_FILE, rk / ONNX_FILE)
        else:
            if (export_dir / PLAN_FILE).exists():
                shutil.copy2(export_dir / PLAN_FILE, rk / PLAN_FILE)
            else:
                # export imports torch and the training code; only a TensorRT target without a plan needs it
                from components.serving.export import build_tensorrt

                build_tensorrt(export_dir / ONNX_FILE, rk / PLAN_FILE, max_batch=opt.max_batch)
        (tmp / RANKER / "config.pbtxt").write_text(ranker_config(shapes, opt, target))

        (tmp / ENSEMBLE / "1").mkdir(parents=True)
        (tmp / ENSEMBLE / "config.pbtxt").write_text(ensemble_config(shapes, opt))
        (tmp / "export.json").write_text(json.dumps({"export_dir": str(export_dir.resolve()), "target": target},
                                                    indent=2) + "\n")
        replace_dir(tmp, repo_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return repo_dir
