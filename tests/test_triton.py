"""A real tritonserver serving the ranker ensemble: parity with torch, concurrency, bad requests, repository builds."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from google.protobuf import text_format
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from components.data.baseline import content_embeddings
from components.data.schemas import SURFACES
from components.data.validate import load_table
from components.models import ranker_inputs
from components.serving import model_repository as mr
from components.serving import ranker_io
from components.serving.triton import TritonServer
from components.serving.triton_client import RankerClient
from components.training.ranker import add_pin_engagement


@pytest.fixture(scope="module")
def exported(tiny_ranker_export):
    """The run's tiny ranker (``model/``) and its export (``export/``): tests/conftest.py, read-only."""
    return tiny_ranker_export


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):
    repo = mr.materialize(exported / "export", tmp_path_factory.mktemp("triton") / "repository", target="python_onnx")
    srv = TritonServer(repo)
    srv.start()
    pgid = os.getpgid(srv.process.pid)
    yield srv
    srv.stop()
    with pytest.raises(ProcessLookupError):  # nothing of the server's process group is left
        os.killpg(pgid, 0)


def raw_inputs(tiny_data: Path, pre: dict, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    # the point-in-time pin engagement columns are computed from all impressions, as training does
    df = add_pin_engagement(load_table(tiny_data, "impressions"), pre["dense"]["names"]).sample(n, random_state=seed)
    pins, users = content_embeddings(tiny_data)
    return {
        "dense": df[pre["dense"]["names"]].to_numpy(np.float32),
        "sparse": df[pre["sparse"]["names"]].to_numpy(np.int64),
        "surface": pd.Categorical(df["surface"], categories=list(SURFACES)).codes.astype(np.int64).reshape(-1, 1),
        "user_embedding": users.lookup(df["user_id"].to_numpy())[0],
        "pin_embedding": pins.lookup(df["pin_id"].to_numpy())[0],
    }


def torch_reference(model_dir: Path, raw: dict[str, np.ndarray], pre: dict) -> tuple[np.ndarray, np.ndarray]:
    """The trained torch model in eager mode on the same raw features, normalised as training does."""
    from components.models.ranker import load_model

    model, _, _ = load_model(model_dir)
    x = (ranker_inputs.normalize_dense(raw["dense"], pre["dense"]["mean"], pre["dense"]["std"]),
         ranker_inputs.clamp_sparse(raw["sparse"], pre["sparse"]["cardinalities"]),
         ranker_inputs.clamp_surface(raw["surface"], len(pre["surfaces"])), raw["user_embedding"], raw["pin_embedding"])
    with torch.no_grad():
        p, s = model.predict(*(torch.from_numpy(np.ascontiguousarray(a)) for a in x))
    return p.numpy(), s.numpy()


@pytest.fixture(scope="module")
def reference(exported, tiny_data):
    import json

    pre = json.loads((exported / "export" / "preprocess.json").read_text())
    raw = raw_inputs(tiny_data, pre, 300)
    raw["sparse"][:3, 0] = [-5, 10**6, 23]  # out-of-range ids are mapped to the unknown id 0 on both sides
    probs, score = torch_reference(exported / "model", raw, pre)
    return {"raw": raw, "probs": probs, "score": score, "pre": pre}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_ensemble_equals_torch(server, reference, protocol):
    raw, url = reference["raw"], server.grpc_url if protocol == "grpc" else server.url
    with RankerClient(url, protocol) as client:
        for rows in (slice(0, 1), slice(0, 37), slice(0, 300)):
            probs, score = client.score({k: v[rows] for k, v in raw.items()})
            np.testing.assert_allclose(probs, reference["probs"][rows], atol=1e-5, rtol=0)
            np.testing.assert_allclose(score, reference["score"][rows, 0], atol=1e-5, rtol=0)
            assert probs.shape == (len(range(300)[rows]), len(reference["pre"]["tasks"]))


def test_eight_concurrent_clients(server, reference):
    raw, want_p = reference["raw"], reference["probs"]
    errors: list[str] = []
    counts = [0] * 8
    stop = time.monotonic() + 4.0

    def worker(i: int) -> None:
        rng = np.random.default_rng(i)
        protocol = "grpc" if i % 2 == 0 else "http"
        with RankerClient(server.grpc_url if protocol == "grpc" else server.url, protocol) as client:
            while time.monotonic() < stop:
                start = int(rng.integers(0, 280))
                n = int(rng.integers(1, 20))
                try:
                    p, _ = client.score({k: v[start:start + n] for k, v in raw.items()})
                    if not np.allclose(p, want_p[start:start + n], atol=1e-5, rtol=0):
                        errors.append(f"client {i}: wrong outputs for rows {start}:{start + n}")
                except Exception as e:  # noqa: BLE001 - every failure is counted
                    errors.append(f"client {i}: {e}")
                counts[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert min(counts) > 5, counts
    stats = RankerClient(server.url, "http").client.get_inference_statistics("ranker")["model_stats"][0]
    requests = int(stats["inference_stats"]["success"]["count"])
    assert int(stats["execution_count"]) < requests  # the dynamic batcher merged requests into one execution


def _expect_error(client: RankerClient, inputs: dict, match: str, datatypes: dict | None = None) -> str:
    with pytest.raises(InferenceServerException) as info:
        client.infer(inputs, datatypes)
    msg = str(info.value)
    assert match.lower() in msg.lower(), msg
    return msg


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(server, reference, protocol):
    raw = {k: v[:4] for k, v in reference["raw"].items()}
    client = RankerClient(server.grpc_url if protocol == "grpc" else server.url, protocol)
    n_dense = raw["dense"].shape[1]
    cases = [
        ("wrong shape", {**raw, "dense": np.zeros((4, n_dense + 2), np.float32)},
         f"unexpected shape for input 'dense' for model 'ranker_ensemble'. Expected [-1,{n_dense}], got [4,{n_dense + 2}]", None),
        ("wrong dtype", {**raw, "dense": raw["dense"].astype(np.float64)}, "input 'dense' data-type is 'FP64'", None),
        ("missing input", {k: v for k, v in raw.items() if k != "pin_embedding"},
         "missing required input(s) ['pin_embedding']", None),
        ("NaN", {**raw, "user_embedding": np.where(np.arange(raw["user_embedding"].size).reshape(
            raw["user_embedding"].shape) == 70, np.nan, raw["user_embedding"]).astype(np.float32)},
         "non-finite value (NaN or inf) at row 1", None),
        ("empty batch", {k: v[:0] for k, v in raw.items()}, "input byte size mismatch", None),
        ("batch over the maximum", {k: np.repeat(v[:1], ranker_io.MAX_BATCH + 1, axis=0) for k, v in raw.items()},
         f"batch-size must be <= {ranker_io.MAX_BATCH}", None),
    ]
    for _name, inputs, match, dtypes in cases:
        _expect_error(client, inputs, match, dtypes)
        p, _ = client.infer(raw)  # still serving, still correct
        np.testing.assert_allclose(p, reference["probs"][:4], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="empty batch"):  # the client says it plainly before sending
        client.score({k: v[:0] for k, v in raw.items()})
    client.close()


def test_repository_configs_parse_for_every_target(exported, tmp_path):
    pre, shapes = mr.read_export(exported / "export")
    opt = mr.RepositoryOptions()
    texts = {"ranker_preprocess": mr.preprocess_config(shapes, opt), "ranker_ensemble": mr.ensemble_config(shapes, opt)}
    texts.update({f"ranker[{t}]": mr.ranker_config(shapes, opt, t) for t in mr.TARGETS})
    for name, text in texts.items():
        cfg = text_format.Parse(text, model_config_pb2.ModelConfig())  # the real protobuf schema of Triton
        assert cfg.max_batch_size == ranker_io.MAX_BATCH, name
    ort_cfg = text_format.Parse(texts["ranker[onnxruntime]"], model_config_pb2.ModelConfig())
    assert ort_cfg.platform == "onnxruntime_onnx" and ort_cfg.dynamic_batching.max_queue_delay_microseconds > 0
    trt_cfg = text_format.Parse(texts["ranker[tensorrt_plan]"], model_config_pb2.ModelConfig())
    assert trt_cfg.platform == "tensorrt_plan" and trt_cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    ens = text_format.Parse(texts["ranker_ensemble"], model_config_pb2.ModelConfig())
    assert [s.model_name for s in ens.ensemble_scheduling.step] == ["ranker_preprocess", "ranker"]
    assert [i.name for i in ens.input] == list(ranker_inputs.RAW_INPUTS)
    assert [list(i.dims) for i in ens.input] == [list(s) for s in shapes.raw().values()]
    # the onnxruntime target writes the same ONNX file the python backend serves
    repo = mr.materialize(exported / "export", tmp_path / "ort", target="onnxruntime")
    assert (repo / "ranker" / "1" / "model.onnx").read_bytes() == (exported / "export" / "model.onnx").read_bytes()
    assert not (repo / "ranker" / "1" / "model.py").exists()


def test_failed_build_leaves_the_served_repository_intact(exported, tmp_path):
    repo = mr.materialize(exported / "export", tmp_path / "repo")
    before = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    broken = tmp_path / "broken_export"
    broken.mkdir()
    (broken / "model.onnx").write_bytes((exported / "export" / "model.onnx").read_bytes())
    with pytest.raises(mr.ModelRepositoryError, match="preprocess.json: missing"):
        mr.materialize(broken, repo)
    (broken / "preprocess.json").write_text('{"dims": {"n_dense": 3}}')
    ranker_io.write_manifest(broken, ["model.onnx", "preprocess.json"])  # intact, but malformed
    with pytest.raises(mr.ModelRepositoryError, match="preprocess.json: malformed"):
        mr.materialize(broken, repo)
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="TensorRT is not installed"):  # no GPU here: fails midway
            mr.materialize(exported / "export", repo, target="tensorrt_plan")
    after = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dirs left behind


# ---------------------------------------------------------------------------------------------
# Bad-input policy of ranker_preprocess (ranker_inputs.check_request; docs/bad-input.md)
# ---------------------------------------------------------------------------------------------


def _metric(text: str, name: str, feature: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and f'feature="{feature}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _settled(server: TritonServer, name: str, feature: str, want: float | None = None) -> float:
    """The metric once Triton's metrics page shows it (the page lags the counters by up to ~2 s)."""
    last, deadline = None, time.monotonic() + 30
    while time.monotonic() < deadline:
        value = _metric(server.metrics(), name, feature)
        if (want is None and value == last) or value == want:
            return value
        last = value
        time.sleep(2.5)
    return value


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_out_of_range_surface_and_absurd_dense_are_rejected_naming_the_input(server, reference, protocol):
    raw = {k: v[:4].copy() for k, v in reference["raw"].items()}
    client = RankerClient(server.grpc_url if protocol == "grpc" else server.url, protocol)
    for value in (99, -7):
        surface = raw["surface"].copy()
        surface[2, 0] = value
        _expect_error(client, {**raw, "surface": surface},
                      f"input 'surface' is {value} at row 2: expected a surface index in [0, {len(SURFACES)})")
    dense = raw["dense"].copy()
    dense[3, 0] = 1e30
    _expect_error(client, {**raw, "dense": dense}, "input 'dense' has 1e+30 at row 3, column 0: beyond +-1e+15")
    p, _ = client.infer(raw)  # the server keeps serving, unchanged
    np.testing.assert_allclose(p, reference["probs"][:4], atol=1e-5, rtol=0)
    client.close()


def test_unknown_sparse_ids_and_clipped_dense_are_mapped_and_counted(server, reference):
    raw = {k: v[:3].copy() for k, v in reference["raw"].items()}
    pre = reference["pre"]
    sparse_name, dense_name = pre["sparse"]["names"][0], pre["dense"]["names"][0]
    unknown = "homefeed_preprocess_unknown_sparse_ids_total"
    clipped = "homefeed_preprocess_clipped_dense_total"
    before_unknown, before_clipped = _settled(server, unknown, sparse_name), _settled(server, clipped, dense_name)
    raw["sparse"][:, 0] = 0  # (the reference rows hold out-of-range ids too; count only the planted ones)
    with RankerClient(server.url, "http") as client:
        want, _ = client.infer(raw)
        huge = raw["sparse"].copy()
        huge[:, 0] = [2**62, -1, 2**62]  # three unknown ids: scored as the unknown id 0
        got, _ = client.infer({**raw, "sparse": huge})
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
        far = raw["dense"].copy()
        far[:, 0] = 1e12  # within DENSE_ABS_MAX, far beyond DENSE_CLIP standard deviations: clipped
        client.infer({**raw, "dense": far})
    assert _settled(server, unknown, sparse_name, before_unknown + 3) == before_unknown + 3
    assert _settled(server, clipped, dense_name) >= before_clipped + 3


def test_tampered_artifacts_are_refused(exported, tmp_path):
    import shutil

    export = tmp_path / "export"
    shutil.copytree(exported / "export", export)
    assert set(json_load(export / ranker_io.MANIFEST_FILE)["sha256"]) >= {"model.onnx", "preprocess.json"}
    repo = mr.materialize(export, tmp_path / "repo")
    # an export file changed after export: the repository build refuses it, naming the file
    onnx = export / "model.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    with pytest.raises(mr.ModelRepositoryError, match=r"model.onnx: SHA-256 .* does not match"):
        mr.materialize(export, repo)
    (export / ranker_io.MANIFEST_FILE).unlink()
    with pytest.raises(mr.ModelRepositoryError, match=r"manifest.json: missing"):
        mr.materialize(export, repo)
    # a served repository file changed on disk: Triton's python model refuses to load it
    pre = repo / "ranker_preprocess" / "1" / "preprocess.json"
    pre.write_text(pre.read_text().replace('"std"', '"std" ', 1))
    from components.serving.triton import TritonError

    with pytest.raises(TritonError, match=r"(?s)exited .*ranker_preprocess.*preprocess.json: SHA-256 .* does not "
                                          r"match"):
        TritonServer(repo).start(timeout_s=120)  # exits (--exit-on-error); start() stops its process group


def json_load(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


@settings(max_examples=12, deadline=None, derandomize=True, database=None)
@given(name=st.sampled_from(list(ranker_inputs.RAW_INPUTS)), row=st.integers(0, 4), col=st.integers(0, 99),
       value=st.sampled_from([float("nan"), float("inf"), 1e30, -1e16, 1e12, 2.0**62, -7.0, 99.0, -1.0]))
def test_random_request_corruptions_are_rejected_or_scored_as_documented(server, reference, name, row, col, value):
    """Property (hypothesis, against the running server): a corrupted cell is rejected naming the input,
    or the scores equal those of the same request with unknown sparse ids mapped to 0."""
    x = {k: v[:5].copy() for k, v in reference["raw"].items()}
    a = x[name]
    if a.dtype == np.int64:  # sparse ids, surface: the integer nearest the value
        value = int(np.clip(value, -(2**62), 2**62)) if np.isfinite(value) else 2**62
    a[row, col % a.shape[1]] = value
    with RankerClient(server.url, "http") as client:
        try:
            p, _ = client.infer(x)
        except InferenceServerException as e:
            assert f"input '{name}'" in str(e), e
            return
        cards = np.asarray(reference["pre"]["sparse"]["cardinalities"])
        mapped = {**x, "sparse": np.where((x["sparse"] >= 0) & (x["sparse"] < cards), x["sparse"], 0)}
        want, _ = client.infer(mapped)
    np.testing.assert_allclose(p, want, atol=1e-6, rtol=0)
