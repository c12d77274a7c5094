"""Step: export the ranker to ONNX with preprocess.json (Triton's ranker_preprocess reads it)."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.steps.images import step


@step
def export_ranker(model: Input[Model], data: Input[Dataset], exported: Output[Model], stats: Output[Metrics]):
    """``components.serving.export.export_ranker(model, exported, data)`` (ONNX parity checked on a real batch)."""
    # the local (lightweight) component runs this function's source alone, so its imports live inside it
    import json
    import os

    from components.serving.export import export_ranker as run
    from components.steps.common import dir_size, log_metrics

    out = run(model.path, exported.path, data_dir=data.path)
    with open(os.path.join(out, "preprocess.json")) as f:
        spec = json.load(f)
    exported.metadata["config"] = model.metadata.get("config", {})
    exported.metadata["files"] = sorted(os.listdir(out))
    exported.metadata["tasks"] = spec.get("tasks", [])
    with open(os.path.join(out, "manifest.json")) as f:  # SHA-256 of each file, checked when served
        exported.metadata["sha256"] = json.load(f)["sha256"]
    log_metrics(stats, {"onnx_bytes": os.path.getsize(os.path.join(out, "model.onnx")), "dir_bytes": dir_size(out)})
