"""The Helm chart (helm/homefeed), with a real helm (v4.3.1 from `make helm`) and offline schema validation.

Scenarios: defaults (GPU Triton, TrainJob off), ci/gpu-values.yaml (GPU, model repository from object storage,
TrainJob on, Feast registry URL from a Secret, Cilium service-account policies), ci/cpu-values.yaml (CPU only, ONNX
Runtime ranker, TrainJob off, recommend service over TLS with a ServiceMonitor), ci/cpu-training-values.yaml (CPU
TrainJob on). Each is linted with `helm lint --strict`, rendered with `helm template`, validated with
`kubernetes-validate --strict` (Kubernetes OpenAPI schemas shipped in the package), the custom resources (TrainJob,
ServiceMonitor, CiliumNetworkPolicy) against CRD schema subsets in helm/schemas/, and checked by policy tests
(restricted Pod Security on every pod template, no Secret rendered, least-privilege RBAC, default-deny network
policies, clients admitted by namespace). The stack file the chart renders is parsed by components.stackconfig, and
the rendered commands of the feature server, the recommend service and the CronJob run for real, as does a real
tritonserver with the chart's restricted-API arguments.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "homefeed"
CRD_SUBSET = REPO / "helm" / "schemas" / "trainer.kubeflow.org_trainjobs.v1alpha1.subset.yaml"
CRD_SUBSETS = {("monitoring.coreos.com/v1", "ServiceMonitor"):
               REPO / "helm" / "schemas" / "monitoring.coreos.com_servicemonitors.v1.subset.yaml",
               ("cilium.io/v2", "CiliumNetworkPolicy"):
               REPO / "helm" / "schemas" / "cilium.io_ciliumnetworkpolicies.v2.subset.yaml"}
DASHBOARD = CHART / "dashboards" / "homefeed.json"
KUBE_VERSION = "1.33.0"
NAMESPACE = "homefeed"
RELEASE = "hf"

SCENARIOS: dict[str, list[str]] = {
    "defaults": [],
    "gpu": ["-f", str(CHART / "ci" / "gpu-values.yaml")],
    "cpu": ["-f", str(CHART / "ci" / "cpu-values.yaml")],
    "cpu-training": ["-f", str(CHART / "ci" / "cpu-training-values.yaml")],
}
WITH_TRAINJOB = {"gpu", "cpu-training"}
CUSTOM_KINDS = {("trainer.kubeflow.org/v1alpha1", "TrainJob"), *CRD_SUBSETS}
# custom resources each scenario renders (kubernetes-validate has no schema for them: validated against CRD subsets)
SCENARIO_CUSTOM_KINDS = {"defaults": set(), "cpu": {"ServiceMonitor"}, "cpu-training": {"TrainJob"},
                         "gpu": {"TrainJob", "CiliumNetworkPolicy"}}

# Restricted Pod Security Standard (https://kubernetes.io/docs/concepts/security/pod-security-standards/).
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret"}


def helm_binary() -> str:
    local = REPO / "tools" / "bin" / "helm"
    if local.exists():
        return str(local)
    found = shutil.which("helm")
    if found is None:
        pytest.fail("helm not found at tools/bin/helm or on PATH: run `make helm` (installs helm v4.3.1)")
    return found


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, HELM_CACHE_HOME="/tmp/homefeed-helm/cache", HELM_CONFIG_HOME="/tmp/homefeed-helm/config",
               HELM_DATA_HOME="/tmp/homefeed-helm/data", NO_COLOR="1")
    proc = subprocess.run([helm_binary(), *args], capture_output=True, text=True, env=env, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def template(*extra: str, check: bool = True) -> subprocess.CompletedProcess:
    return helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION, *extra,
                check=check)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, tuple[Path, list[dict[str, Any]]]]:
    """scenario -> (rendered manifest file, its documents)."""
    out = tmp_path_factory.mktemp("helm")
    result = {}
    for name, args in SCENARIOS.items():
        text = template(*args).stdout
        path = out / f"{name}.yaml"
        path.write_text(text)
        docs = [d for d in yaml.safe_load_all(text) if d]
        assert docs, f"{name}: helm template rendered nothing"
        result[name] = (path, docs)
    return result


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, component: str) -> dict:
    found = [d for d in by_kind(docs, kind)
             if d["metadata"]["labels"].get("app.kubernetes.io/component") == component]
    assert len(found) == 1, f"expected one {kind} of component {component}, found {len(found)}"
    return found[0]


def pod_templates(docs: list[dict]) -> list[tuple[str, dict, dict]]:
    """(where, pod metadata, pod spec) of every pod this rendering can create, resources filled in for TrainJob."""
    pods = []
    for d in docs:
        where = f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            pods.append((where, d["spec"]["template"]["metadata"], d["spec"]["template"]["spec"]))
        elif d["kind"] == "CronJob":
            t = d["spec"]["jobTemplate"]["spec"]["template"]
            pods.append((where, t["metadata"], t["spec"]))
        elif d["kind"] == "Pod":
            pods.append((where, d["metadata"], d["spec"]))
        elif d["kind"] == "TrainJob":
            # The runtime's `node` pods: security, volumes and scheduling come from runtimePatches, the
            # container's image/command/resources from spec.trainer.
            patches = d["spec"].get("runtimePatches", [])
            jobs = [j for p in patches for j in p["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]]
            assert [j["name"] for j in jobs] == ["node"], f"{where}: expected one patch of the `node` job"
            t = jobs[0]["template"]["spec"]["template"]
            spec = copy.deepcopy(t["spec"])
            for c in spec["containers"]:
                c.setdefault("resources", d["spec"]["trainer"]["resourcesPerNode"])
            pods.append((where, t["metadata"], spec))
    return pods


# ------------------------------------------------------------------------------------------------
# helm lint and template, kubernetes-validate
# ------------------------------------------------------------------------------------------------


def test_chart_has_no_remote_dependencies():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "homefeed"
    assert not chart.get("dependencies"), "the chart must render offline: no chart dependencies"
    assert not (CHART / "charts").exists()
    assert not (CHART / "crds").exists(), "helm would install anything in crds/ as a CRD"


def test_helm_is_v4():
    out = helm("version", "--short").stdout
    assert out.startswith("v4."), out


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_lint_strict(scenario):
    proc = helm("lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART), *SCENARIOS[scenario])
    assert "0 chart(s) failed" in proc.stdout, proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_kubernetes_validate_cli_strict(rendered, scenario):
    """The kubernetes-validate CLI in strict mode (unknown fields are errors) over the whole rendering."""
    path, docs = rendered[scenario]
    exe = Path(sys.executable).parent / "kubernetes-validate"
    proc = subprocess.run([str(exe), "--strict", "-k", KUBE_VERSION, str(path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    passed = re.findall(r"^INFO .* passed for resource (\S+)", proc.stdout, re.M)
    assert len(passed) == len([d for d in docs if (d["apiVersion"], d["kind"]) not in CUSTOM_KINDS]), proc.stdout
    # The only resources without a Kubernetes schema are the custom resources (validated against their CRDs below).
    warned = re.findall(r"^WARN .*kind (\S+) with api version (\S+)", proc.stdout, re.M)
    assert {(v, k) for k, v in warned} <= CUSTOM_KINDS, proc.stdout
    assert {k for k, _ in warned} == SCENARIO_CUSTOM_KINDS[scenario]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_builtin_resource_has_a_schema(rendered, scenario):
    """Also against the oldest Kubernetes the chart supports (Chart.yaml kubeVersion >= 1.29)."""
    _, docs = rendered[scenario]
    floor = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    assert floor == ">=1.29.0-0"
    for d in docs:
        if (d["apiVersion"], d["kind"]) in CUSTOM_KINDS:
            continue
        for version in ("1.29.0", KUBE_VERSION):  # raises SchemaNotFoundError/ValidationError
            kubernetes_validate.validate(d, version, strict=True)


def test_kubernetes_validate_strict_rejects_unknown_field(rendered):
    """The validation above can fail: a misspelt field in the Triton Deployment is an error."""
    _, docs = rendered["defaults"]
    dep = copy.deepcopy(one(docs, "Deployment", "triton"))
    dep["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/", "port": 8000}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, KUBE_VERSION, strict=True)
    dep = copy.deepcopy(one(docs, "Deployment", "triton"))
    dep["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, KUBE_VERSION, strict=True)


# ------------------------------------------------------------------------------------------------
# TrainJob against the Kubeflow Trainer CRD
# ------------------------------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """Unknown fields are errors (the API server's fieldValidation=Strict): close every object that lists properties."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def trainjob_validator() -> jsonschema.Draft7Validator:
    doc = yaml.safe_load(CRD_SUBSET.read_text())
    schema = _strict({**doc["openAPIV3Schema"], "definitions": doc["definitions"]})
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def validate_trainjob(obj: dict, validator: jsonschema.Draft7Validator) -> None:
    validator.validate(obj)
    # The CRD's CEL rules that apply at creation.
    name = obj["metadata"]["name"]
    if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 63:
        raise jsonschema.ValidationError(f"metadata.name {name!r} is not an RFC 1035 label of <= 63 characters")
    managed = obj["spec"].get("managedBy")
    if managed is not None and managed not in ("trainer.kubeflow.org/trainjob-controller", "kueue.x-k8s.io/multikueue"):
        raise jsonschema.ValidationError(f"spec.managedBy {managed!r} is not allowed")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_trainjob_against_crd_schema(rendered, trainjob_validator, scenario):
    _, docs = rendered[scenario]
    jobs = by_kind(docs, "TrainJob")
    assert len(jobs) == (1 if scenario in WITH_TRAINJOB else 0)
    for job in jobs:
        assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1"
        validate_trainjob(job, trainjob_validator)


@pytest.mark.parametrize("scenario", sorted(WITH_TRAINJOB))
def test_trainjob_round_trips_through_kubeflow_trainer_models(rendered, scenario):
    """The Kubeflow SDK's generated models (kubeflow_trainer_api) read the TrainJob and write it back unchanged."""
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

    (job,) = by_kind(rendered[scenario][1], "TrainJob")
    assert TrainerV1alpha1TrainJob.from_dict(job).to_dict() == job


def test_trainjob_crd_schema_rejects_bad_objects(rendered, trainjob_validator):
    (job,) = by_kind(rendered["gpu"][1], "TrainJob")
    validate_trainjob(job, trainjob_validator)
    bad = []
    j = copy.deepcopy(job); j["spec"]["trainer"]["numNodes"] = "2"; bad.append(j)  # noqa: E702
    j = copy.deepcopy(job); j["spec"]["trainer"]["replicas"] = 2; bad.append(j)  # noqa: E702
    j = copy.deepcopy(job); del j["spec"]["runtimeRef"]; bad.append(j)  # noqa: E702
    j = copy.deepcopy(job); j["spec"]["runtimeRef"]["name"] = ""; bad.append(j)  # noqa: E702
    j = copy.deepcopy(job); j["metadata"]["name"] = "Bad_Name"; bad.append(j)  # noqa: E702
    j = copy.deepcopy(job); j["spec"]["managedBy"] = "me"; bad.append(j)  # noqa: E702
    j = copy.deepcopy(job); j["spec"]["trainer"]["resourcesPerNode"]["limits"]["cpu"] = "lots"; bad.append(j)  # noqa: E702
    j = copy.deepcopy(job)
    pod = j["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    pod["template"]["spec"]["template"]["spec"]["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    bad.append(j)
    for b in bad:
        with pytest.raises(jsonschema.ValidationError):
            validate_trainjob(b, trainjob_validator)


def test_launcher_trainjob_against_crd_schema(trainjob_validator):
    """The TrainJob that components.launch creates from a pipeline step satisfies the same CRD schema."""
    from components.launch import ClusterSettings, TrainCall
    from components.launch.jobs import build_trainjob

    call = TrainCall(entry="components.training.pinsage:train", experiment="pinsage",
                     kwargs={"data_dir": "/data/prepared", "out_dir": "/data/models/pinsage"},
                     path_kwargs=["data_dir"])
    settings = ClusterSettings(namespace="homefeed", image="ghcr.io/homefeed/homefeed-steps:0.1.0-gpu",
                               gpus_per_node=2, secret_env={"HOMEFEED_MILVUS_TOKEN": "milvus-auth/token"})
    job = build_trainjob(call, num_nodes=3, nproc_per_node=2, settings=settings, name="hf-pinsage-crd")
    validate_trainjob(job, trainjob_validator)


def test_trainjob_runs_torchrun_on_the_data_pvc(rendered):
    (job,) = by_kind(rendered["gpu"][1], "TrainJob")
    spec = job["spec"]
    assert spec["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                  "name": "torch-distributed"}
    t = spec["trainer"]
    assert t["command"] == ["torchrun", "-m", "components.training.pinsage"]
    assert t["args"][:6] == ["--experiment", "pinsage", "--data", "/data/prepared", "--out", "/data/models/pinsage"]
    assert t["args"][6:] == ["--set", "epochs=20"]
    assert (t["numNodes"], t["numProcPerNode"]) == (2, 4)
    assert t["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == 4
    assert t["resourcesPerNode"]["requests"]["nvidia.com/gpu"] == 4
    assert t["image"].endswith(":0.1.0-gpu")
    (_, _, pod), = [p for p in pod_templates([job])]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "homefeed-data"}} in pod["volumes"]
    (cpu_job,) = by_kind(rendered["cpu-training"][1], "TrainJob")
    assert "nvidia.com/gpu" not in str(cpu_job)
    assert cpu_job["spec"]["trainer"]["image"].endswith(":0.1.0-cpu")
    assert cpu_job["spec"]["trainer"]["command"][-1] == "components.training.ranker"


# ------------------------------------------------------------------------------------------------
# Components
# ------------------------------------------------------------------------------------------------


def test_defaults_render_every_component(rendered):
    _, docs = rendered["defaults"]
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == ["ConfigMap", "CronJob", "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy",
                     "PodDisruptionBudget", "Role", "RoleBinding", "Service", "ServiceAccount"]
    for component in ("triton", "feature-server", "recommend"):
        pdb = one(docs, "PodDisruptionBudget", component)
        dep = one(docs, "Deployment", component)
        assert pdb["spec"]["selector"] == dep["spec"]["selector"] and pdb["spec"]["maxUnavailable"] == 1
    assert {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in by_kind(docs, "Deployment")} == {
        "triton", "feature-server", "recommend"}
    assert len(by_kind(docs, "NetworkPolicy")) == 5  # default deny + recommend, triton, feature server, CronJob
    assert {c["metadata"]["labels"]["app.kubernetes.io/component"] for c in by_kind(docs, "ConfigMap")} == {
        "stack", "feature-server", "endpoints", "dashboard"}


def test_triton_gpu_deployment(rendered):
    _, docs = rendered["defaults"]
    dep = one(docs, "Deployment", "triton")
    assert "replicas" not in dep["spec"], "the HPA owns the replica count"
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "nvcr.io/nvidia/tritonserver:25.10-py3"
    assert c["command"] == ["tritonserver"] and "--model-repository=/models" in c["args"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1 and c["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    mount = next(m for m in c["volumeMounts"] if m["name"] == "model-repository")
    assert mount == {"name": "model-repository", "mountPath": "/models", "subPath": "triton/tensorrt_plan",
                     "readOnly": True}
    assert {"name": "model-repository", "persistentVolumeClaim": {"claimName": "homefeed-data", "readOnly": True}} \
        in pod["volumes"]
    assert "initContainers" not in pod
    hpa = one(docs, "HorizontalPodAutoscaler", "triton")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": dep["metadata"]["name"]}
    svc = one(docs, "Service", "triton")
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()


def test_triton_model_repository_from_object_storage(rendered):
    _, docs = rendered["gpu"]
    pod = one(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["image"].startswith("docker.io/rclone/rclone:")
    assert init["args"] == ["copy", "--checksum", "remote:homefeed/triton/tensorrt_plan", "/models"]
    env = {e["name"]: e for e in init["env"]}
    assert env["RCLONE_CONFIG_REMOTE_ENDPOINT"]["value"] == "http://minio.storage.svc:9000"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "homefeed-s3",
                                                                         "key": "AWS_SECRET_ACCESS_KEY"}
    assert {"name": "model-repository", "emptyDir": {"sizeLimit": "10Gi"}} in pod["volumes"]
    assert any(m["name"] == "model-repository" for m in init["volumeMounts"])


def test_cpu_only_uses_the_onnxruntime_ranker(rendered):
    _, docs = rendered["cpu"]
    assert "nvidia.com/gpu" not in yaml.safe_dump_all(docs), "no GPU anywhere in the CPU-only rendering"
    pod = one(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "ghcr.io/homefeed/tritonserver-onnxruntime-cpu:25.10"
    assert {"name": "HOMEFEED_RANKER_BACKEND", "value": "onnxruntime"} in c["env"]
    assert next(m for m in c["volumeMounts"] if m["name"] == "model-repository")["subPath"] == "triton/onnxruntime"
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert not by_kind(docs, "TrainJob")


def test_feature_server(rendered):
    _, docs = rendered["defaults"]
    dep = one(docs, "Deployment", "feature-server")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["feast"]
    assert c["args"][:3] == ["--chdir", "/feature_repo", "serve"]
    assert c["args"][c["args"].index("--port") + 1] == "6566"
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    env = {e["name"]: e for e in c["env"]}
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "redis-auth", "key": "redis-password"}
    assert env["FEAST_REGISTRY_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "feast-registry",
                                                                           "key": "password"}
    assert env["HOMEFEED_STACK"]["value"] == "/etc/homefeed/stack.yaml"
    assert "MILVUS_TOKEN" not in env and not any(k.startswith("AWS_") for k in env), "only the stores it reads"
    cm = one(docs, "ConfigMap", "feature-server")
    store = yaml.safe_load(cm["data"]["feature_store.yaml"])
    assert store["online_store"]["connection_string"] == "redis-master:6379,password=${REDIS_PASSWORD}"
    assert store["registry"]["registry_type"] == "sql"
    assert store["registry"]["path"] == "postgresql+psycopg://feast:${FEAST_REGISTRY_PASSWORD}@postgresql:5432/feast"
    assert "s3://" not in yaml.safe_dump_all(docs), "no object-storage registry left"
    assert one(docs, "Service", "feature-server")["spec"]["ports"][0]["port"] == 6566


def test_feature_store_yaml_is_a_valid_feast_config(rendered, tmp_path, monkeypatch):
    """Feast itself parses the rendered feature_store.yaml (the Redis online store, the SQL registry, the secrets
    expanded from the environment variables the pod gets from Secrets)."""
    from feast.repo_config import load_repo_config

    cm = one(rendered["cpu"][1], "ConfigMap", "feature-server")
    (tmp_path / "feature_store.yaml").write_text(cm["data"]["feature_store.yaml"])
    monkeypatch.setenv("REDIS_PASSWORD", "from-the-secret")
    monkeypatch.setenv("FEAST_REGISTRY_PASSWORD", "registry-secret")
    cfg = load_repo_config(tmp_path, tmp_path / "feature_store.yaml")
    assert cfg.project == "homefeed"
    assert type(cfg.online_store).__name__ == "RedisOnlineStoreConfig"
    assert cfg.online_store.connection_string == "redis-master:6379,password=from-the-secret"
    assert type(cfg.registry).__name__ == "SqlRegistryConfig"
    assert cfg.registry.path == "postgresql+psycopg://feast:registry-secret@postgresql:5432/feast"
    assert cfg.registry.serve_features_while_materializing is True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running(cmd: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> Iterator[subprocess.Popen]:
    """A process in its own process group, stopped by its id (SIGTERM, then SIGKILL) when the block ends."""
    log = log_path.open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                            start_new_session=True)
    try:
        yield proc
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


def http(url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None,
         context: ssl.SSLContext | None = None, timeout_s: float = 10) -> tuple[int, bytes]:
    """(status, body) of one request; HTTP errors are answers too."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s, context=context) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_for(url: str, proc: subprocess.Popen, log_path: Path, timeout_s: float = 180,
             context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    """The first answer of ``url`` (any status), failing with the log if the process dies or never answers."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            return http(url, context=context)
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} never answered (exit {proc.poll()}):\n{log_path.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """A real PostgreSQL on 127.0.0.1 and a free port (components.stack's server, superuser postgres with a random
    password), stopped by its process group at the end. Yields (host, port, password)."""
    from components.stack.processes import alive, stop_group
    from components.stack.servers import start_postgres

    password = secrets.token_hex(12)
    proc = start_postgres(tmp_path_factory.mktemp("postgres"), password)
    try:
        host, port = proc.endpoint.rsplit(":", 1)
        yield host, int(port), password
    finally:
        stop_group(proc.pgid, proc.stop_signal)
        assert not alive(proc.pgid), "PostgreSQL left running"


def test_feature_server_command_starts_feast_and_passes_its_probe(tmp_path, postgres):
    """The feature server container as rendered (command, args, feature_store.yaml from the ConfigMap, mounted
    read-only, FEAST_REGISTRY_PASSWORD as its Secret would give it) starts a real `feast serve` on Feast's SQL
    registry in a real PostgreSQL, and its readiness probe path answers 200. Only the ConfigMap's mount point
    (--chdir), the port and the registry's address are moved to this machine. The Redis online store is only
    contacted on a feature request, which no probe makes."""
    import psycopg

    host, pg_port, password = postgres
    port = free_port()
    text = template("--show-only", "templates/feature-server.yaml", "--set", f"endpoints.registry.host={host}",
                    "--set", f"endpoints.registry.port={pg_port}", "--set", "endpoints.registry.user=postgres",
                    "--set", "endpoints.registry.database=postgres", "--set", "featureServer.workers=1",
                    "--set", f"featureServer.service.port={port}").stdout
    docs = [d for d in yaml.safe_load_all(text) if d]
    cm = one(docs, "ConfigMap", "feature-server")
    dep = one(docs, "Deployment", "feature-server")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    secret_env = [e["name"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})]
    assert sorted(secret_env) == ["FEAST_REGISTRY_PASSWORD", "REDIS_PASSWORD"]
    repo = tmp_path / "feature_repo"
    repo.mkdir()
    for name, content in cm["data"].items():
        (repo / name).write_text(content)
        (repo / name).chmod(0o444)
    repo.chmod(0o555)  # the ConfigMap volume is read-only
    mount = next(m for m in c["volumeMounts"] if m["name"] == "feature-repo")
    args = [str(repo) if a == mount["mountPath"] else a for a in c["args"]]
    assert args != c["args"], "the rendered args no longer --chdir into the ConfigMap mount"
    exe = Path(sys.executable).parent / c["command"][0]
    run_env = dict(os.environ, HOME=str(tmp_path), OMP_NUM_THREADS="1", REDIS_PASSWORD=secrets.token_hex(8),
                   FEAST_REGISTRY_PASSWORD=password)
    probe = c["readinessProbe"]["httpGet"]
    log_path = tmp_path / "feast.log"
    try:
        with running([str(exe), *args], run_env, tmp_path, log_path) as proc:
            status, _ = wait_for(f"http://127.0.0.1:{port}{probe['path']}", proc, log_path)
            assert status == 200, log_path.read_text()[-3000:]
    finally:
        repo.chmod(0o755)
    with psycopg.connect(host=host, port=pg_port, user="postgres", password=password, dbname="postgres") as conn:
        tables = {r[0] for r in conn.execute("select tablename from pg_tables where schemaname = 'public'")}
    assert {"projects", "feature_views", "entities"} <= tables, f"feast serve never created its SQL registry: {tables}"


def test_cronjob_submits_the_daily_pipeline(rendered):
    _, docs = rendered["gpu"]
    cron = one(docs, "CronJob", "embedding-cron")
    assert cron["spec"]["schedule"] == "30 2 * * *" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["/bin/sh", "-c"]
    script = c["args"][0]
    assert ('exec python -m components.cli pipeline submit "daily" --host "$KFP_HOST" --experiment-name '
            '"homefeed-daily" --param "date=$D" --param "stack=$HOMEFEED_STACK" "$@"') in script
    assert c["args"][1:] == ["submit"]  # $0; the chart's extraArgs follow as "$@"
    token = next(v for v in pod["volumes"] if v["name"] == "kfp-token")
    (src,) = token["projected"]["sources"]
    assert src["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"
    mount = next(m for m in c["volumeMounts"] if m["name"] == "kfp-token")
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["KFP_HOST"] == "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
    assert env["HOMEFEED_DATE_OFFSET_DAYS"] == "1"
    assert env["KF_PIPELINES_SA_TOKEN_PATH"] == mount["mountPath"] + "/" + src["serviceAccountToken"]["path"]
    assert env["KFP_NAMESPACE"] == "kubeflow-user"
    # the pipeline's `stack` parameter is the stack file the CronJob mounts; the submitter holds no store credential
    stack_mount = next(m for m in c["volumeMounts"] if m["name"] == "stack")
    assert env["HOMEFEED_STACK"] == stack_mount["mountPath"] + "/stack.yaml"
    stack_volume = next(v for v in pod["volumes"] if v["name"] == "stack")
    assert env["HOMEFEED_STACK_CONFIGMAP"] == stack_volume["configMap"]["name"] == one(docs, "ConfigMap", "stack")[
        "metadata"]["name"]
    assert not [e for e in c["env"] if "valueFrom" in e], "the CronJob needs no Secret"


def test_cronjob_command_runs_up_to_the_kfp_api(rendered, tmp_path):
    """The CronJob's container command, run as rendered with the real CLI: the shell computes yesterday's date
    (UTC), `pipeline submit daily` accepts the parameters and builds the pipeline, and kfp.Client then calls the
    configured KFP host. No KFP API server can run here: a closed local port refuses that call, and the
    error must name it."""
    import datetime as dt

    cron = one(rendered["defaults"][1], "CronJob", "embedding-cron")
    (c,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    env.update(PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", KFP_HOST="http://127.0.0.1:9",
               KF_PIPELINES_SA_TOKEN_PATH=str(tmp_path / "no-token"), HOME=str(tmp_path), OMP_NUM_THREADS="1")
    def yesterday() -> str:
        return (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).strftime("%Y-%m-%d")

    before = yesterday()
    proc = subprocess.run(c["command"] + c["args"], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    dates = {before, yesterday()}  # a run across midnight UTC may see either
    assert any(f"submitting pipeline daily for date={d} to http://127.0.0.1:9" in proc.stdout for d in dates), \
        proc.stdout
    assert proc.returncode != 0
    # the client reached for the KFP API in the chart's profile namespace (multi-user KFP), nothing earlier failed
    assert "host='127.0.0.1', port=9" in proc.stderr and "/apis/v2beta1/" in proc.stderr, proc.stderr[-2000:]
    assert env.get("KFP_NAMESPACE") and f"namespace={env['KFP_NAMESPACE']}" in proc.stderr, proc.stderr[-2000:]
    assert "unknown parameter" not in proc.stderr


def test_chart_matches_the_serving_and_training_layers(rendered):
    """Names the chart passes to other layers exist there: Triton targets and ensemble, training experiments."""
    from components import config
    from components.serving import model_repository

    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    backends = schema["properties"]["triton"]["properties"]["ranker"]["properties"]["backend"]["enum"]
    assert set(backends) <= set(model_repository.TARGETS)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["triton"]["ranker"]["ensemble"] == model_repository.ENSEMBLE
    for scenario in WITH_TRAINJOB:
        (job,) = by_kind(rendered[scenario][1], "TrainJob")
        module = job["spec"]["trainer"]["command"][-1]
        model = module.rsplit(".", 1)[1]
        args = job["spec"]["trainer"]["args"]
        cfg = config.load(args[args.index("--experiment") + 1], model=model)
        assert type(cfg).__name__.lower().startswith(model)
        assert (REPO / (module.replace(".", "/") + ".py")).exists()


def test_notes_render_offline():
    proc = helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client", *SCENARIOS["gpu"])
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "http://hf-homefeed-triton:8000" in notes and "/v2/health/ready" in notes
    assert "create job --from=cronjob/hf-homefeed-embedding-cron" in notes
    assert "TrainJob: pinsage on 2 node(s) x 4 process(es)" in notes
    assert "http://hf-homefeed-recommend:8080" in notes and "/v1/recommend" in notes
    assert "get secret homefeed-api-token -o jsonpath='{.data.token}'" in notes


# ------------------------------------------------------------------------------------------------
# Policies: restricted Pod Security, secrets, RBAC, network
# ------------------------------------------------------------------------------------------------


def restricted_violations(where: str, spec: dict) -> list[str]:
    """What in one pod spec breaks the restricted Pod Security Standard or this chart's rules (requests, limits,
    read-only root, /tmp on an emptyDir, no API token)."""
    bad = []
    psc = spec.get("securityContext", {})
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(host):
            bad.append(f"{where}: {host}")
    for v in spec.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            bad.append(f"{where}: volume {v['name']} of type {kinds - RESTRICTED_VOLUME_TYPES}")
    if psc.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
        bad.append(f"{where}: pod seccompProfile is not RuntimeDefault")
    if psc.get("runAsUser") == 0 or psc.get("runAsGroup") == 0:
        bad.append(f"{where}: pod runs as root")
    if spec.get("automountServiceAccountToken", False) is not False and "TrainJob" not in where:
        bad.append(f"{where}: mounts a Kubernetes API token")
    tmp_volumes = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
    containers = spec.get("containers", []) + spec.get("initContainers", [])
    if not spec.get("containers"):
        bad.append(f"{where}: no containers")
    for c in containers:
        cw = f"{where} container {c['name']}"
        sc = c.get("securityContext", {})
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True:
            bad.append(f"{cw}: runAsNonRoot is not true")
        if sc.get("runAsUser", psc.get("runAsUser")) in (0, None):
            bad.append(f"{cw}: no non-zero runAsUser")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{cw}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            bad.append(f"{cw}: privileged")
        if sc.get("readOnlyRootFilesystem") is not True:
            bad.append(f"{cw}: root filesystem is writable")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            bad.append(f"{cw}: capabilities not dropped (drop: ALL)")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            bad.append(f"{cw}: adds capabilities {caps['add']}")
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{cw}: seccompProfile {seccomp}")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            bad.append(f"{cw}: hostPort")
        res = c.get("resources", {})
        for part in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in res.get(part, {}):
                    bad.append(f"{cw}: no {part}.{r}")
        tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
        if len(tmp) != 1 or tmp[0]["name"] not in tmp_volumes:
            bad.append(f"{cw}: /tmp is not a writable emptyDir")
    return bad


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_restricted_pod_security_on_every_pod_template(rendered, scenario):
    _, docs = rendered[scenario]
    pods = pod_templates(docs)
    expected = {"defaults": 4, "gpu": 5, "cpu": 4, "cpu-training": 5}[scenario]
    assert len(pods) == expected, [w for w, _, _ in pods]
    violations = [v for where, _, spec in pods for v in restricted_violations(where, spec)]
    assert violations == []


def test_restricted_check_catches_violations(rendered):
    """The policy check above is not vacuous: each kind of violation is reported."""
    _, docs = rendered["gpu"]
    (where, _, spec) = next(p for p in pod_templates(docs) if "triton" in p[0])
    assert restricted_violations(where, spec) == []
    mutations = {
        "runAsNonRoot": lambda s: s["containers"][0]["securityContext"].update(runAsNonRoot=False),
        "allowPrivilegeEscalation": lambda s: s["initContainers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
        "writable": lambda s: s["containers"][0]["securityContext"].update(readOnlyRootFilesystem=False),
        "capabilities": lambda s: s["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
        "seccompProfile": lambda s: (s["securityContext"].pop("seccompProfile"),
                                     s["containers"][0]["securityContext"].pop("seccompProfile")),
        "hostPath": lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "limits.memory": lambda s: s["containers"][0]["resources"]["limits"].pop("memory"),
        "hostNetwork": lambda s: s.update(hostNetwork=True),
        "/tmp": lambda s: s["containers"][0].update(volumeMounts=[]),
    }
    for needle, mutate in mutations.items():
        s = copy.deepcopy(spec)
        mutate(s)
        found = restricted_violations(where, s)
        assert any(needle in v for v in found), (needle, found)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_no_secret_rendered_and_credentials_only_by_reference(rendered, scenario):
    _, docs = rendered[scenario]
    assert by_kind(docs, "Secret") == [], "the chart must not render Secrets (existing-secret references only)"
    sensitive = re.compile(r"PASSWORD|TOKEN|SECRET|ACCESS_KEY|_KEY$|_URL$", re.I)
    for where, _, spec in pod_templates(docs):
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            for e in c.get("env", []):
                if sensitive.search(e["name"]) and e["name"] not in ("KF_PIPELINES_SA_TOKEN_PATH",
                                                                      "AWS_ENDPOINT_URL"):
                    assert "value" not in e and "secretKeyRef" in e.get("valueFrom", {}), (where, e)
    for job in by_kind(docs, "TrainJob"):
        for e in job["spec"]["trainer"].get("env", []):
            if sensitive.search(e["name"]):
                assert "secretKeyRef" in e.get("valueFrom", {}), e


def test_values_hold_no_secret_values():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    forbidden = re.compile(r"password|token|secretkey|accesskey|credential|apikey", re.I)

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if forbidden.search(k) and k not in ("existingSecret", "existingSecretKey", "urlSecretKey"):
                    raise AssertionError(f"values.yaml: {path}{k} looks like a secret value; use existingSecret")
                walk(v, f"{path}{k}.")

    walk(values, "")
    # Every *existingSecret names a Secret (or is empty); it is never a credential itself.
    for section in values["endpoints"].values():
        if "existingSecret" in section:
            assert re.fullmatch(r"|[a-z0-9]([-a-z0-9.]*[a-z0-9])?", section["existingSecret"])


def test_rbac_is_least_privilege(rendered):
    _, docs = rendered["gpu"]
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    (role,) = by_kind(docs, "Role")
    assert role["metadata"]["namespace"] == "kubeflow-user"
    for rule in role["rules"]:
        assert rule["apiGroups"] == ["pipelines.kubeflow.org"]
        assert set(rule["resources"]) <= {"runs", "experiments"}
        assert set(rule["verbs"]) <= {"create", "get", "list"}
        assert "*" not in str(rule)
    (binding,) = by_kind(docs, "RoleBinding")
    cron = one(docs, "CronJob", "embedding-cron")
    sa = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
    for account in by_kind(docs, "ServiceAccount"):
        assert account["automountServiceAccountToken"] is False
    # Each workload has its own ServiceAccount; only the CronJob's is bound to anything.
    names = [p["serviceAccountName"] for _, _, p in pod_templates(docs)]
    assert len(set(names)) == len(names) == 5


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_network_policies_default_deny_and_cover_every_pod(rendered, scenario):
    _, docs = rendered[scenario]
    policies = by_kind(docs, "NetworkPolicy")
    deny = one(docs, "NetworkPolicy", "default-deny")
    assert set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny["spec"] and "egress" not in deny["spec"]

    def selects(policy: dict, labels: dict) -> bool:
        return policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()

    for where, meta, _ in pod_templates(docs):
        assert selects(deny, meta["labels"]), f"{where} escapes the default deny"
        allowing = [p for p in policies if p is not deny and selects(p, meta["labels"])]
        assert len(allowing) == 1, f"{where}: expected one allow policy, found {len(allowing)}"
        egress = allowing[0]["spec"].get("egress", [])
        assert any({"protocol": "UDP", "port": 53} in r.get("ports", []) for r in egress), f"{where}: no DNS"


def test_network_policy_ports(rendered):
    _, docs = rendered["defaults"]
    triton = one(docs, "NetworkPolicy", "triton")
    ports = sorted(p["port"] for r in triton["spec"]["ingress"] for p in r["ports"])
    assert ports == [8000, 8001, 8002]
    _, docs = rendered["gpu"]
    triton = one(docs, "NetworkPolicy", "triton")
    # Cilium mode: client ingress comes only from the CiliumNetworkPolicy (policies are additive allow-lists)
    assert sorted(p["port"] for r in triton["spec"]["ingress"] for p in r["ports"]) == [8002]
    assert [p["port"] for p in triton["spec"]["egress"][1]["ports"]] == [9000], "model pull from object storage"
    cron = one(docs, "NetworkPolicy", "embedding-cron")
    assert "ingress" not in cron["spec"]
    assert cron["spec"]["egress"][1] == {"to": [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "kubeflow"}}, "podSelector": {"matchLabels": {"app": "ml-pipeline"}}}],
        "ports": [{"protocol": "TCP", "port": 8888}]}
    trainer = one(docs, "NetworkPolicy", "trainer")
    peers = trainer["spec"]["ingress"][0]["from"]
    assert peers == [{"podSelector": {"matchLabels": trainer["spec"]["podSelector"]["matchLabels"]}}]
    # Defaults: the PVC model repository needs no egress beyond DNS.
    assert len(one(rendered["defaults"][1], "NetworkPolicy", "triton")["spec"]["egress"]) == 1


# ------------------------------------------------------------------------------------------------
# Values: schema, documentation
# ------------------------------------------------------------------------------------------------

BAD_VALUES = [
    (["--set", "triton.replicaCount=2"], "replicaCount"),
    (["--set", "podSecurity.runAsUser=0"], "runAsUser"),
    (["--set", "gpu.enabled=false"], "backend"),  # the TensorRT plan needs a GPU
    (["--set", "images.tritonGpu.pullPolicy=Sometimes"], "pullPolicy"),
    (["--set", "triton.resources.limits=null"], "limits"),  # null deletes the default
    (["--set", "featureServer.resources.requests.memory=lots"], "memory"),
    (["--set", "triton.modelRepository.source=objectStorage"], "uri"),
    (["--set", "trainJob.model=bert"], "model"),
    (["--set", "embeddingCron.schedule=daily"], "schedule"),
    (["--set", "endpoints.redis.password=hunter2"], "password"),
    (["--set", "endpoints.registry.password=hunter2"], "password"),
    (["--set", "featureServer.registry=s3://homefeed/feast/registry.db"], "registry"),
    # clients are admitted by namespace (and service account), never by a pod label any pod can carry
    (["--set-json", 'networkPolicy.clients=[{"podSelector":{"matchLabels":{"homefeed.io/client":"true"}}}]'],
     "podSelector"),
    (["--set", "networkPolicy.serviceAccountPolicy=calico"], "serviceAccountPolicy"),
    (["--set", "recommend.tls.enabled=true"], "existingSecret"),
    (["--set", "recommend.auth.existingSecret="], "existingSecret"),
    (["--set", "recommend.token=abc"], "token"),
    (["--set-json", 'triton.restrictedApi.apis=["inference"]'], "apis"),
    (["--set", "triton.restrictedApi.existingSecret="], "existingSecret"),
]


@pytest.mark.parametrize("args,field", BAD_VALUES, ids=[f for _, f in BAD_VALUES])
def test_schema_rejects_bad_values(args, field):
    proc = template(*args, check=False)
    assert proc.returncode != 0, f"helm template accepted {args}"
    assert "values don't meet the specifications of the schema" in proc.stderr or "schema" in proc.stderr
    assert field in proc.stderr, proc.stderr


def test_lint_strict_rejects_bad_values():
    proc = helm("lint", "--strict", str(CHART), "--set", "featureServer.workers=0", check=False)
    assert proc.returncode != 0 and "workers" in proc.stdout + proc.stderr


def test_template_guards_fail_with_a_clear_message():
    """Without the schema, the templates still refuse inconsistent values, naming the value to fix."""
    proc = template("--skip-schema-validation", "--set", "gpu.enabled=false", check=False)
    assert proc.returncode != 0 and "triton.ranker.backend=tensorrt_plan needs gpu.enabled=true" in proc.stderr
    proc = template("--skip-schema-validation", "--set", "trainJob.enabled=true", "--set", "data.existingClaim=",
                    "--set", "triton.modelRepository.source=objectStorage", "--set",
                    "triton.modelRepository.uri=s3://b/r", check=False)
    assert proc.returncode != 0 and "trainJob.enabled needs data.existingClaim" in proc.stderr


def _leaves(node: Any, path: str = "") -> list[str]:
    """Paths of the values a user sets: scalars, lists and empty maps (a non-empty map is a section)."""
    if isinstance(node, dict) and node and not path.endswith(("nodeSelector", "requests", "limits")):
        return [p for k, v in node.items() for p in _leaves(v, f"{path}.{k}" if path else k)]
    return [path]


def test_every_value_is_documented_and_in_the_schema():
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    params = re.findall(r"^\s*## @param (\S+) \S", text, re.M)
    assert len(params) == len(set(params)), "a value is documented twice"
    leaves = _leaves(values)
    assert sorted(set(leaves) - set(params)) == [], "values without a `## @param` line"
    assert sorted(set(params) - set(leaves)) == [], "`## @param` lines naming no value"
    readme = (CHART / "README.md").read_text()
    assert [p for p in params if f"`{p}`" not in readme] == [], "README.md parameter table is out of date"
    sys.path.insert(0, str(REPO / "helm"))
    try:
        from readme_params import parameters_section
    finally:
        sys.path.remove(str(REPO / "helm"))
    assert readme.endswith(parameters_section(text)), "README.md is stale: run .venv/bin/python helm/readme_params.py"
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator(schema).validate(values)

    def schema_paths(node: dict, path: str = "") -> set[str]:
        props = node.get("properties")
        if not props or node.get("additionalProperties") is not False:
            return {path}
        return {p for k, v in props.items() for p in schema_paths(v, f"{path}.{k}" if path else k)}

    # The schema is strict (additionalProperties: false) exactly where values.yaml has sections: the same tree.
    assert schema_paths(schema) == set(leaves)


def test_components_have_the_same_values_shape():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    shape = {"enabled", "image", "resources", "nodeSelector", "tolerations", "affinity", "podAnnotations"}
    for name in ("triton", "featureServer", "recommend", "embeddingCron", "trainJob"):
        assert shape <= set(values[name]), f"{name} lacks {shape - set(values[name])}"
        assert set(values[name]["image"]) == {"repository", "tag", "pullPolicy"}
        assert set(values[name]["resources"]) == {"requests", "limits"}


def test_official_chart_values_files():
    """The values files for the official Milvus and Redis charts match homefeed's default endpoints."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    milvus = yaml.safe_load((REPO / "helm" / "milvus-values.yaml").read_text())
    redis = yaml.safe_load((REPO / "helm" / "redis-values.yaml").read_text())
    assert milvus["cluster"]["enabled"] is False
    from components.stack.milvus_server import MILVUS_CONFIG  # the segment size the local stack's server runs with
    user = yaml.safe_load(milvus["extraConfigFiles"]["user.yaml"])
    assert str(user["dataCoord"]["segment"]["maxSize"]) == MILVUS_CONFIG["dataCoord.segment.maxSize"]
    assert values["endpoints"]["milvus"]["uri"] == f"http://milvus:{milvus['service']['port']}"
    assert redis["architecture"] == "standalone" and redis["auth"]["existingSecret"] == \
        values["endpoints"]["redis"]["existingSecret"]
    assert redis["auth"]["existingSecretPasswordKey"] == values["endpoints"]["redis"]["existingSecretKey"]
    assert "password" not in redis["auth"]
    postgresql = yaml.safe_load((REPO / "helm" / "postgresql-values.yaml").read_text())
    registry = values["endpoints"]["registry"]
    assert (postgresql["auth"]["username"], postgresql["auth"]["database"]) == (registry["user"], registry["database"])
    assert postgresql["auth"]["existingSecret"] == registry["existingSecret"]
    assert postgresql["auth"]["secretKeys"]["userPasswordKey"] == registry["existingSecretKey"]
    assert "password" not in postgresql["auth"] and "postgresPassword" not in postgresql["auth"]
    assert registry["host"] == "postgresql" and registry["port"] == 5432  # the Service of release "postgresql"
    assert "homefeed.io/client" not in (REPO / "helm" / "redis-values.yaml").read_text()
    readme = (CHART / "README.md").read_text()
    assert "helm install redis oci://registry-1.docker.io/bitnamicharts/redis" in readme
    assert "helm install postgresql oci://registry-1.docker.io/bitnamicharts/postgresql" in readme
    assert "helm install milvus zilliztech/milvus" in readme and "-f helm/milvus-values.yaml" in readme


# ------------------------------------------------------------------------------------------------
# The stack file: one config for the serving pods and the pipeline runs
# ------------------------------------------------------------------------------------------------


def stack_of(docs: list[dict]) -> tuple[dict, Any]:
    """The stack ConfigMap's stack.yaml: (raw mapping, StackConfig parsed by components.stackconfig)."""
    from components import stackconfig

    raw = yaml.safe_load(one(docs, "ConfigMap", "stack")["data"]["stack.yaml"])
    return raw, stackconfig.parse_stack(raw, "rendered stack.yaml")


def stack_configmap_of(docs: list[dict], spec: dict, container: dict) -> str:
    """Name of the ConfigMap a container reads as $HOMEFEED_STACK (the volume mounted at the file's directory)."""
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    path = env["HOMEFEED_STACK"]
    directory, filename = path.rsplit("/", 1)
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == directory]
    assert mount.get("readOnly") is True
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    name = volume["configMap"]["name"]
    (cm,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == name]
    assert filename in cm["data"], f"{name} has no {filename}"
    return name


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_stack_file_is_a_valid_stack_config(rendered, scenario):
    """components.stackconfig reads the rendered stack file (unknown keys, wrong types and literal secrets are errors
    there); it names the chart's own Services and the stores of the values, credentials only by reference."""
    _, docs = rendered[scenario]
    raw, stack = stack_of(docs)
    assert stack.profile == "cluster"
    f = stack.feast
    assert (f.online_store.type, f.online_store.connection_string) == ("redis", "redis-master:6379")
    assert f.online_store.password.env == "REDIS_PASSWORD"
    assert f.registry.type == "sql" and f.offline_store.type == "file" and f.serve_while_materializing
    if scenario == "gpu":  # the whole URL from a Secret
        assert f.registry.url.env == "FEAST_REGISTRY_URL" and f.registry.password is None
        assert stack.milvus.token.env == "MILVUS_TOKEN"
        assert stack.triton.repository == "/data/triton/tensorrt_plan"
    else:
        assert f.registry.path == "postgresql+psycopg://feast@postgresql:5432/feast"
        assert f.registry.password.env == "FEAST_REGISTRY_PASSWORD"
        assert stack.milvus.token is None
        backend = "onnxruntime" if scenario.startswith("cpu") else "tensorrt_plan"
        assert stack.triton.repository == f"/data/triton/{backend}"
    triton = one(docs, "Service", "triton")
    grpc = next(p["port"] for p in triton["spec"]["ports"] if p["name"] == "grpc")
    assert stack.triton.url == f"{triton['metadata']['name']}.{NAMESPACE}.svc:{grpc}"
    assert (stack.triton.protocol, stack.triton.model) == ("grpc", "ranker_ensemble")
    fs = one(docs, "Service", "feature-server")
    assert f.server_url == f"http://{fs['metadata']['name']}.{NAMESPACE}.svc:{fs['spec']['ports'][0]['port']}"
    assert (stack.milvus.uri, stack.milvus.alias, stack.milvus.keep_collections) == ("http://milvus:19530", "pins", 3)
    assert stack.embeddings.root == "/data/emb"
    assert stack.service.token.file == "/var/run/secrets/homefeed/api-token"
    assert (stack.service.max_k, stack.service.max_candidates) == (200, 2000)


def test_stack_parser_refuses_what_the_chart_must_not_render(rendered):
    """The check above is not vacuous: a literal password or an unknown key in the stack file is an error."""
    from components.stackconfig import StackConfigError, parse_stack

    raw, _ = stack_of(rendered["defaults"][1])
    bad = copy.deepcopy(raw)
    bad["feast"]["online_store"]["password"] = "hunter2"
    with pytest.raises(StackConfigError, match="literal secret"):
        parse_stack(bad)
    bad = copy.deepcopy(raw)
    bad["milvus"]["tokn"] = {"env": "MILVUS_TOKEN"}
    with pytest.raises(StackConfigError, match="tokn"):
        parse_stack(bad)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_serving_pods_and_pipeline_steps_get_the_same_feast_stores(rendered, scenario, tmp_path):
    """The Feast config the serving pods get (the feature server's feature_store.yaml) and the one the pipeline
    steps get (the stack file the CronJob passes as the daily pipeline's `stack` parameter, turned into
    feature_store.yaml by components.stackconfig as register_features does) name the same online store and
    registry: both parsed by Feast with the same secrets in the environment. The recommend service (and the
    TrainJob) mount the same stack file."""
    from feast.repo_config import load_repo_config

    from components import stackconfig

    _, docs = rendered[scenario]
    cron = one(docs, "CronJob", "embedding-cron")
    cron_spec = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (submit,) = cron_spec["containers"]
    assert '--param "stack=$HOMEFEED_STACK"' in submit["args"][0]
    pipeline_cm = stack_configmap_of(docs, cron_spec, submit)

    for component in ("feature-server", "recommend"):
        spec = one(docs, "Deployment", component)["spec"]["template"]["spec"]
        assert stack_configmap_of(docs, spec, spec["containers"][0]) == pipeline_cm, component
    for _, _, spec in [p for p in pod_templates(by_kind(docs, "TrainJob"))]:
        assert stack_configmap_of(docs, spec, {**spec["containers"][0], "env": by_kind(docs, "TrainJob")[0]["spec"][
            "trainer"]["env"]}) == pipeline_cm

    (cm,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == pipeline_cm]
    stack = stackconfig.parse_stack(yaml.safe_load(cm["data"]["stack.yaml"]))
    steps_yaml = stackconfig.feature_store_yaml(stack)
    serving_yaml = yaml.safe_load(one(docs, "ConfigMap", "feature-server")["data"]["feature_store.yaml"])
    assert serving_yaml == steps_yaml

    # The same stores once Feast expands the secrets both pods get from the same Secrets.
    secret_env = {"REDIS_PASSWORD": secrets.token_hex(8), "FEAST_REGISTRY_PASSWORD": secrets.token_hex(8),
                  "FEAST_REGISTRY_URL": f"postgresql+psycopg://feast:{secrets.token_hex(8)}@pg.db.svc:5432/feast"}
    loaded = []
    for name, text in (("serving", yaml.safe_dump(serving_yaml)), ("steps", yaml.safe_dump(steps_yaml))):
        repo = tmp_path / name
        repo.mkdir()
        (repo / "feature_store.yaml").write_text(text)
        old = {k: os.environ.get(k) for k in secret_env}
        os.environ.update(secret_env)
        try:
            loaded.append(load_repo_config(repo, repo / "feature_store.yaml"))
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    serving, steps = loaded
    assert serving.project == steps.project == "homefeed"
    assert serving.online_store.connection_string == steps.online_store.connection_string
    assert serving.online_store.connection_string == f"redis-master:6379,password={secret_env['REDIS_PASSWORD']}"
    assert type(serving.registry).__name__ == type(steps.registry).__name__ == "SqlRegistryConfig"
    assert serving.registry.path == steps.registry.path
    expected = (secret_env["FEAST_REGISTRY_URL"] if scenario == "gpu" else
                f"postgresql+psycopg://feast:{secret_env['FEAST_REGISTRY_PASSWORD']}@postgresql:5432/feast")
    assert serving.registry.path == expected

    # Every {env: NAME} the stack file holds reaches the pods that read that store, from a Secret.
    def refs(node: Any) -> set[str]:
        if isinstance(node, dict):
            if set(node) == {"env"}:
                return {node["env"]}
            return {r for v in node.values() for r in refs(v)}
        return set()

    raw = yaml.safe_load(cm["data"]["stack.yaml"])
    needs = {"feature-server": refs(raw["feast"]), "recommend": refs(raw)}
    for component, names in needs.items():
        (c,) = one(docs, "Deployment", component)["spec"]["template"]["spec"]["containers"]
        from_secrets = {e["name"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})}
        assert names <= from_secrets, (component, names - from_secrets)


# ------------------------------------------------------------------------------------------------
# The recommend service
# ------------------------------------------------------------------------------------------------


def arg_value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_recommend_service_deployment(rendered):
    _, docs = rendered["defaults"]
    dep = one(docs, "Deployment", "recommend")
    assert "replicas" not in dep["spec"], "the HPA owns the replica count"
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["python", "-m", "components.cli"] and c["args"][:2] == ["serve", "recommend"]
    assert arg_value(c["args"], "--stack") == "/etc/homefeed/stack.yaml"
    assert (arg_value(c["args"], "--host"), arg_value(c["args"], "--port")) == ("0.0.0.0", "8080")
    assert arg_value(c["args"], "--token-file") == "/var/run/secrets/homefeed/api-token"
    assert "--tls-cert" not in c["args"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http", "scheme": "HTTP"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http", "scheme": "HTTP"}
    # /readyz asks Feast, Milvus (a 5 s client timeout) and Triton in turn: a shorter probe timeout flaps
    assert c["readinessProbe"]["timeoutSeconds"] >= 5
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    # the bearer token: a file from an existing Secret, never a value
    mount = next(m for m in c["volumeMounts"] if m["name"] == "api-token")
    assert mount == {"name": "api-token", "mountPath": "/var/run/secrets/homefeed", "readOnly": True}
    volume = next(v for v in pod["volumes"] if v["name"] == "api-token")
    assert volume["secret"]["secretName"] == "homefeed-api-token"
    assert volume["secret"]["items"] == [{"key": "token", "path": "api-token"}]
    env = {e["name"]: e for e in c["env"]}
    assert env["HOMEFEED_STACK"]["value"] == "/etc/homefeed/stack.yaml"
    assert {"REDIS_PASSWORD", "FEAST_REGISTRY_PASSWORD"} <= set(env) and "MILVUS_TOKEN" not in env
    svc = one(docs, "Service", "recommend")
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP",
                                     "appProtocol": "http"}]
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    hpa = one(docs, "HorizontalPodAutoscaler", "recommend")
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    assert one(docs, "PodDisruptionBudget", "recommend")["spec"]["maxUnavailable"] == 1
    policy = one(docs, "NetworkPolicy", "recommend")
    clients, metrics = policy["spec"]["ingress"]
    assert clients == {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "homefeed-apps"}}}],
                       "ports": [{"protocol": "TCP", "port": 8080}]}
    assert metrics["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    egress_ports = sorted(p["port"] for r in policy["spec"]["egress"] for p in r["ports"])
    assert egress_ports == sorted([53, 53, 6379, 5432, 19530, 8001, 8000, 6566])
    endpoints = one(docs, "ConfigMap", "endpoints")["data"]
    assert endpoints["HOMEFEED_RECOMMEND_URL"] == f"http://{svc['metadata']['name']}.{NAMESPACE}.svc:8080"


def test_recommend_service_over_tls(rendered):
    _, docs = rendered["cpu"]
    pod = one(docs, "Deployment", "recommend")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    cert, key = arg_value(c["args"], "--tls-cert"), arg_value(c["args"], "--tls-key")
    mount = next(m for m in c["volumeMounts"] if m["name"] == "tls")
    assert (cert, key) == (f"{mount['mountPath']}/tls.crt", f"{mount['mountPath']}/tls.key") and mount["readOnly"]
    volume = next(v for v in pod["volumes"] if v["name"] == "tls")
    assert volume["secret"]["secretName"] == "homefeed-recommend-tls"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["scheme"] == "HTTPS"
    assert one(docs, "Service", "recommend")["spec"]["ports"][0]["appProtocol"] == "https"
    assert one(docs, "ConfigMap", "endpoints")["data"]["HOMEFEED_RECOMMEND_URL"].startswith("https://")


# ------------------------------------------------------------------------------------------------
# Custom resources: ServiceMonitor, CiliumNetworkPolicy
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crd_validators() -> dict[str, jsonschema.Draft7Validator]:
    out = {}
    for (_, kind), path in CRD_SUBSETS.items():
        doc = yaml.safe_load(path.read_text())
        schema = _strict({**doc["openAPIV3Schema"], "definitions": doc["definitions"]})
        jsonschema.Draft7Validator.check_schema(schema)
        out[kind] = jsonschema.Draft7Validator(schema)
    return out


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_custom_resources_against_crd_schemas(rendered, crd_validators, scenario):
    _, docs = rendered[scenario]
    for kind, validator in crd_validators.items():
        for obj in by_kind(docs, kind):
            validator.validate(obj)
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"])
            assert len(obj["metadata"]["name"]) <= 63


def test_service_monitors_scrape_the_metrics_ports(rendered):
    _, docs = rendered["cpu"]
    assert not by_kind(rendered["defaults"][1], "ServiceMonitor"), "off by default (needs the Prometheus Operator)"
    monitors = {m["metadata"]["labels"]["app.kubernetes.io/component"]: m for m in by_kind(docs, "ServiceMonitor")}
    assert set(monitors) == {"recommend", "triton"}
    for component, monitor in monitors.items():
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        svc = one(docs, "Service", component)
        assert monitor["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]} and endpoint["path"] == "/metrics"
    rec = monitors["recommend"]["spec"]["endpoints"][0]
    assert rec["scheme"] == "https" and rec["tlsConfig"] == {
        "ca": {"secret": {"name": "homefeed-recommend-tls", "key": "ca.crt"}},
        "serverName": f"hf-homefeed-recommend.{NAMESPACE}.svc"}
    assert monitors["triton"]["spec"]["endpoints"][0] == {"port": "metrics", "path": "/metrics", "interval": "30s",
                                                          "scheme": "http"}


def test_crd_subsets_reject_bad_objects(rendered, crd_validators):
    (monitor, _) = by_kind(rendered["cpu"][1], "ServiceMonitor")
    cnp = by_kind(rendered["gpu"][1], "CiliumNetworkPolicy")[0]
    bad = []
    m = copy.deepcopy(monitor); m["spec"]["endpoints"][0]["scheme"] = "ftp"; bad.append(("ServiceMonitor", m))  # noqa: E702
    m = copy.deepcopy(monitor); m["spec"]["endpoints"][0]["interval"] = "30 seconds"; bad.append(("ServiceMonitor", m))  # noqa: E702
    m = copy.deepcopy(monitor); m["spec"]["endpoints"][0]["bearerToken"] = "x"; bad.append(("ServiceMonitor", m))  # noqa: E702
    m = copy.deepcopy(monitor); del m["spec"]["selector"]; bad.append(("ServiceMonitor", m))  # noqa: E702
    c = copy.deepcopy(cnp); c["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["port"] = "http_8080"; bad.append(("CiliumNetworkPolicy", c))  # noqa: E702,E501
    c = copy.deepcopy(cnp); c["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["protocol"] = "HTTP"; bad.append(("CiliumNetworkPolicy", c))  # noqa: E702,E501
    c = copy.deepcopy(cnp); del c["spec"]["endpointSelector"]; bad.append(("CiliumNetworkPolicy", c))  # noqa: E702
    c = copy.deepcopy(cnp); c["spec"]["ingress"][0]["fromPods"] = []; bad.append(("CiliumNetworkPolicy", c))  # noqa: E702
    for kind, obj in bad:
        with pytest.raises(jsonschema.ValidationError):
            crd_validators[kind].validate(obj)


# ------------------------------------------------------------------------------------------------
# Who may call what: clients by namespace (and service account), Triton's admin APIs restricted
# ------------------------------------------------------------------------------------------------


def release_selector(labels: dict[str, str]) -> bool:
    """Whether a podSelector's labels select pods of this release only (in the release's own namespace)."""
    return labels.get("app.kubernetes.io/name") == "homefeed" and labels.get("app.kubernetes.io/instance") == RELEASE


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_clients_are_admitted_by_namespace_never_by_a_pod_label(rendered, scenario):
    """Every ingress peer is either a namespace, matched only on the immutable kubernetes.io/metadata.name label,
    or this release's own pods in its namespace; never a pod label a pod elsewhere could carry."""
    _, docs = rendered[scenario]
    for policy in by_kind(docs, "NetworkPolicy"):
        for rule in policy["spec"].get("ingress", []):
            for peer in rule["from"]:
                assert "ipBlock" not in peer, policy["metadata"]["name"]
                if "namespaceSelector" in peer:
                    assert set(peer["namespaceSelector"]) == {"matchLabels"}
                    assert set(peer["namespaceSelector"]["matchLabels"]) == {"kubernetes.io/metadata.name"}
                    assert "podSelector" not in peer, "a pod label inside a client namespace is not an identity"
                else:
                    assert release_selector(peer["podSelector"]["matchLabels"]), (policy["metadata"]["name"], peer)
    triton = one(docs, "NetworkPolicy", "triton")
    recommend = one(docs, "Deployment", "recommend")["spec"]["template"]["metadata"]["labels"]
    if scenario != "gpu":
        (clients, _) = triton["spec"]["ingress"]
        (peer,) = clients["from"]
        assert peer["podSelector"]["matchLabels"].items() <= recommend.items(), "Triton admits the recommend service"


def test_cilium_policies_admit_clients_by_namespace_and_service_account(rendered):
    _, docs = rendered["gpu"]
    policies = {p["metadata"]["labels"]["app.kubernetes.io/component"]: p
                for p in by_kind(docs, "CiliumNetworkPolicy")}
    assert set(policies) == {"recommend", "triton", "feature-server"}
    assert not by_kind(rendered["defaults"][1], "CiliumNetworkPolicy")
    ns, sa = "k8s:io.kubernetes.pod.namespace", "k8s:io.cilium.k8s.policy.serviceaccount"
    recommend_sa = one(docs, "Deployment", "recommend")["spec"]["template"]["spec"]["serviceAccountName"]
    assert any(a["metadata"]["name"] == recommend_sa for a in by_kind(docs, "ServiceAccount"))
    expected = {
        "recommend": ([{ns: "shop", sa: "shop-frontend"}], ["8080"]),
        "triton": ([{ns: NAMESPACE, sa: recommend_sa}, {ns: "batch-scoring", sa: "scorer"}], ["8000", "8001"]),
        "feature-server": ([{ns: NAMESPACE, sa: recommend_sa}, {ns: "batch-scoring", sa: "scorer"}], ["6566"]),
    }
    for component, (peers, ports) in expected.items():
        spec = policies[component]["spec"]
        pod_labels = one(docs, "Deployment", component)["spec"]["template"]["metadata"]["labels"]
        assert spec["endpointSelector"]["matchLabels"].items() <= pod_labels.items()
        (rule,) = spec["ingress"]
        assert [p["matchLabels"] for p in rule["fromEndpoints"]] == peers
        assert [p["port"] for p in rule["toPorts"][0]["ports"]] == ports
        # the core policy carries no client ingress in this mode (policies are additive): only the scrapes
        core = one(docs, "NetworkPolicy", component).get("spec", {}).get("ingress", [])
        assert all(p.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name") ==
                   "monitoring" for r in core for p in r["from"]), (component, core)


def restricted_args(container: dict) -> list[str]:
    return [a for a in container["args"] if a.startswith(("--http-restricted-api=", "--grpc-restricted-protocol="))]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_triton_restricts_every_api_but_health_and_inference(rendered, scenario):
    _, docs = rendered[scenario]
    (c,) = one(docs, "Deployment", "triton")["spec"]["template"]["spec"]["containers"]
    http_arg, grpc_arg = restricted_args(c)
    for arg in (http_arg, grpc_arg):
        apis, header = arg.split("=", 1)[1].split(":", 1)
        assert set(apis.split(",")) == {"metadata", "model-config", "model-repository", "shared-memory",
                                        "statistics", "trace", "logging"}
        assert header == "triton-admin-key=$(TRITON_ADMIN_KEY)"
    env = {e["name"]: e for e in c["env"]}
    # Kubernetes substitutes $(VAR) in args only from variables defined in the container's env: here a Secret.
    assert env["TRITON_ADMIN_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "triton-admin", "key": "key"}
    proc = template("--set", "triton.restrictedApi.enabled=false", "--show-only", "templates/triton.yaml")
    (dep,) = [d for d in yaml.safe_load_all(proc.stdout) if d and d["kind"] == "Deployment"]
    assert restricted_args(dep["spec"]["template"]["spec"]["containers"][0]) == []


TRITON_ECHO_CONFIG = """name: "echo"
backend: "python"
max_batch_size: 8
input [ { name: "x", data_type: TYPE_FP32, dims: [ 2 ] } ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ 2 ] } ]
"""
TRITON_ECHO_MODEL = """import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())])
                for r in requests]
"""


@pytest.fixture(scope="module")
def restricted_triton(rendered, tmp_path_factory):
    """A real tritonserver (the nvidia-pytriton build, python backend) with the chart's restricted-API arguments as
    rendered, $(TRITON_ADMIN_KEY) substituted the way Kubernetes does from the Secret-backed variable, metrics on,
    serving a one-line python model. Yields (server, admin key, metrics URL)."""
    from components.serving.triton import TritonServer

    (c,) = one(rendered["defaults"][1], "Deployment", "triton")["spec"]["template"]["spec"]["containers"]
    key = secrets.token_hex(16)
    extra = [a.replace("$(TRITON_ADMIN_KEY)", key) for a in restricted_args(c)]
    metrics_port = free_port()
    repo = tmp_path_factory.mktemp("triton-repo")
    (repo / "echo" / "1").mkdir(parents=True)
    (repo / "echo" / "config.pbtxt").write_text(TRITON_ECHO_CONFIG)
    (repo / "echo" / "1" / "model.py").write_text(TRITON_ECHO_MODEL)

    class ChartTriton(TritonServer):
        def command(self, backends: Path) -> list[str]:
            metric_flags = ("--allow-metrics", "--allow-gpu-metrics", "--allow-cpu-metrics", "--metrics-address",
                            "--metrics-port")
            cmd = [a for a in super().command(backends) if not a.startswith(metric_flags)]
            return cmd + ["--allow-metrics=true", "--allow-cpu-metrics=false", "--allow-gpu-metrics=false",
                          "--metrics-address=127.0.0.1", f"--metrics-port={metrics_port}", *extra]

    server = ChartTriton(repo, log_path=tmp_path_factory.mktemp("triton-log") / "tritonserver.log")
    server.start()
    try:
        yield server, key, f"http://127.0.0.1:{metrics_port}/metrics"
    finally:
        server.stop()


def test_triton_restricted_apis_for_real(restricted_triton):
    """With the chart's arguments, health and inference answer anyone; the model repository index, model config,
    logging, trace, statistics and shared-memory APIs refuse a request without the admin header (HTTP and gRPC) and
    answer one with it."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    server, key, _ = restricted_triton
    base = f"http://{server.url}"
    admin = {"triton-admin-key": key}
    assert http(f"{base}/v2/health/ready")[0] == 200
    assert http(f"{base}/v2/models/echo/ready")[0] == 200
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.5, -2.0]}]}).encode()
    status, out = http(f"{base}/v2/models/echo/infer", "POST", body, {"Content-Type": "application/json"})
    assert status == 200 and json.loads(out)["outputs"][0]["data"] == [1.5, -2.0]
    admin_calls = [("POST", "/v2/repository/index", b"{}"), ("GET", "/v2/models/echo/config", None),
                   ("POST", "/v2/logging", b"{}"), ("GET", "/v2/trace/setting", None),
                   ("GET", "/v2/models/stats", None), ("GET", "/v2/systemsharedmemory/status", None),
                   ("GET", "/v2/models/echo", None)]
    for method, path, payload in admin_calls:
        status, text = http(f"{base}{path}", method, payload)
        assert status == 403 and b"triton-admin-key" in text, (path, status, text[:300])
        status, text = http(f"{base}{path}", method, payload, admin)
        assert status == 200, (path, status, text[:300])
        status, _ = http(f"{base}{path}", method, payload, {"triton-admin-key": "wrong"})
        assert status == 403, path

    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        assert client.is_server_ready() and client.is_model_ready("echo")
        x = grpcclient.InferInput("x", [1, 2], "FP32")
        x.set_data_from_numpy(np.array([[3.0, 4.0]], dtype=np.float32))
        assert client.infer("echo", [x]).as_numpy("y").tolist() == [[3.0, 4.0]]
        for call in (client.get_model_repository_index, lambda **kw: client.get_model_config("echo", **kw),
                     lambda **kw: client.update_log_settings({"log_verbose_level": 0}, **kw),
                     lambda **kw: client.get_inference_statistics("echo", **kw)):
            with pytest.raises(InferenceServerException, match="(?i)restricted|unavailable|permission"):
                call()
            # gRPC metadata keys of a restricted protocol carry Triton's prefix
            call(headers={f"triton-grpc-protocol-{k}": v for k, v in admin.items()})
    finally:
        client.close()


# ------------------------------------------------------------------------------------------------
# The operator's dashboard
# ------------------------------------------------------------------------------------------------

# kube-state-metrics' CronJob and Job metrics (docs/metrics/workload/cronjob-metrics.md and job-metrics.md of
# github.com/kubernetes/kube-state-metrics): no cluster here to scrape them from, so the documented names.
KUBE_STATE_METRICS = {"kube_cronjob_status_last_successful_time", "kube_cronjob_status_last_schedule_time",
                      "kube_cronjob_status_active", "kube_cronjob_next_schedule_time", "kube_cronjob_spec_suspend",
                      "kube_job_status_failed", "kube_job_status_succeeded", "kube_job_status_active"}


def prometheus_names(families) -> set[str]:
    """The sample names a scrape shows for each family (counter: _total; histogram: _bucket, _sum, _count)."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "summary": ["_sum", "_count", ""],
                "gauge": [""], "untyped": [""], "info": ["_info"]}
    return {f.name + s for f in families for s in suffixes[f.type]}


def dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    out = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        out += [(panel["title"], t["expr"]) for t in panel["targets"]]
    return out


def test_dashboard_configmap_for_the_grafana_sidecar(rendered):
    _, docs = rendered["defaults"]
    cm = one(docs, "ConfigMap", "dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == NAMESPACE
    board = json.loads(cm["data"]["homefeed.json"])
    assert board == json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["schemaVersion"] >= 36
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "namespace"}
    proc = template("--set", "dashboard.enabled=false")
    assert "grafana_dashboard" not in proc.stdout
    sys.path.insert(0, str(REPO / "helm"))
    try:
        import dashboard
    finally:
        sys.path.remove(str(REPO / "helm"))
    assert DASHBOARD.read_text() == dashboard.render(), "dashboards/homefeed.json is stale: run helm/dashboard.py"


def test_dashboard_queries_name_metrics_that_are_exported(restricted_triton):
    """Every panel's query names metrics that exist: the recommend service's (from its own Prometheus registry),
    Triton's (scraped from the real tritonserver above after an inference) and kube-state-metrics' (documented).
    The dashboard covers requests/s, error rate by class, p50/p99 per stage, Triton's batch sizes and the daily
    run's last success."""
    import numpy as np
    import tritonclient.http as httpclient

    from components.serving.service import Metrics

    server, _, metrics_url = restricted_triton
    client = httpclient.InferenceServerClient(server.url)
    try:
        x = httpclient.InferInput("x", [2, 2], "FP32")
        x.set_data_from_numpy(np.ones((2, 2), dtype=np.float32))
        client.infer("echo", [x])
    finally:
        client.close()
    status, text = http(metrics_url)
    assert status == 200
    # the sample names exactly as Prometheus stores them (the first token of each sample line)
    triton = {re.split(r"[{ ]", line, maxsplit=1)[0] for line in text.decode().splitlines()
              if line and not line.startswith("#")}
    service = prometheus_names(Metrics().registry.collect())
    exported = {"service": service, "triton": triton, "kube-state-metrics": KUBE_STATE_METRICS}
    used: dict[str, set[str]] = {k: set() for k in exported}
    for title, expr in dashboard_queries():
        names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{", expr))
        assert names, (title, expr)
        for name in names:
            sources = [k for k, v in exported.items() if name in v]
            assert sources, f"panel {title!r}: {name} is exported by none of {sorted(exported)}"
            used[sources[0]].add(name)
    assert {"homefeed_requests_total", "homefeed_request_errors_total",
            "homefeed_stage_latency_seconds_bucket", "homefeed_serving_version_info"} <= used["service"]
    assert {"nv_inference_request_success", "nv_inference_count", "nv_inference_exec_count",
            "nv_inference_queue_duration_us"} <= used["triton"]
    assert "kube_cronjob_status_last_successful_time" in used["kube-state-metrics"]


def test_recommend_command_starts_the_service_over_tls(tmp_path):
    """The recommend container as rendered with TLS on (ci/cpu-values.yaml): its command, the stack file from the
    ConfigMap and the token and certificate from their Secret volumes (random token, a fresh self-signed
    certificate) start a real `homefeed serve recommend`. Only the mount points and the port are moved to this
    machine. The liveness probe path answers 200 over HTTPS; no store is reachable here (the stack names cluster
    Services), so the readiness probe path answers 503 naming them; a request without or with a wrong bearer token
    gets 401, and /metrics serves the families the dashboard queries."""
    port = free_port()
    text = template("-f", str(CHART / "ci" / "cpu-values.yaml"), "--set", f"recommend.service.port={port}",
                    "--show-only", "templates/recommend.yaml", "--show-only", "templates/stack-configmap.yaml").stdout
    docs = [d for d in yaml.safe_load_all(text) if d]
    pod = one(docs, "Deployment", "recommend")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    local = {name: tmp_path / name for name in ("stack", "api-token", "tls")}
    for d in local.values():
        d.mkdir()
    for key, content in one(docs, "ConfigMap", "stack")["data"].items():
        (local["stack"] / key).write_text(content)
    token = secrets.token_hex(16)
    (item,) = volumes["api-token"]["secret"]["items"]
    (local["api-token"] / item["path"]).write_text(token + "\n")
    cert, key = local["tls"] / "tls.crt", local["tls"] / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    for d in local.values():
        for f in d.iterdir():
            f.chmod(0o444)
        d.chmod(0o555)  # ConfigMap and Secret volumes are read-only

    def relocate(arg: str) -> str:
        for name, path in mounts.items():
            if name in local and arg.startswith(path + "/"):
                return str(local[name]) + arg[len(path):]
        return "127.0.0.1" if arg == "0.0.0.0" else arg

    args = [relocate(a) for a in c["args"]]
    assert args[args.index("--tls-cert") + 1] == str(cert) and args[args.index("--token-file") + 1] != \
        c["args"][c["args"].index("--token-file") + 1], "the rendered args no longer read the mounted Secrets"
    env = dict(os.environ)
    env.update({e["name"]: e["value"] for e in c["env"] if "value" in e})
    env.update(HOME=str(tmp_path), OMP_NUM_THREADS="1", HOMEFEED_QUIET="1",
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env["HOMEFEED_STACK"] = relocate(env["HOMEFEED_STACK"])
    for e in c["env"]:  # the Secret-backed variables: random values (no literal credential anywhere)
        if "valueFrom" in e:
            env[e["name"]] = secrets.token_hex(8)
    context = ssl.create_default_context(cafile=str(cert))
    probe = c["livenessProbe"]["httpGet"]
    base = f"https://localhost:{port}"
    log_path = tmp_path / "recommend.log"
    try:
        with running(c["command"] + args, env, REPO, log_path) as proc:
            status, _ = wait_for(f"{base}{probe['path']}", proc, log_path, context=context)
            assert status == 200, log_path.read_text()[-3000:]
            # each unreachable store costs its connect timeout (the probe's timeoutSeconds covers a healthy answer)
            status, body = http(f"{base}{c['readinessProbe']['httpGet']['path']}", context=context, timeout_s=120)
            assert status == 503 and b"milvus" in body.lower(), body[:500]
            request = json.dumps({"user_id": 1, "k": 5}).encode()
            headers = {"Content-Type": "application/json"}
            assert http(f"{base}/v1/recommend", "POST", request, headers, context)[0] == 401
            wrong = {**headers, "Authorization": f"Bearer {secrets.token_hex(16)}"}
            assert http(f"{base}/v1/recommend", "POST", request, wrong, context)[0] == 401
            status, metrics = http(f"{base}/metrics", context=context)
            assert status == 200
            for family in ("homefeed_requests_total", "homefeed_stage_latency_seconds", "homefeed_dependency_up"):
                assert family in metrics.decode(), family
            with pytest.raises(OSError):  # plain HTTP is not served
                http(f"http://127.0.0.1:{port}/healthz")
    finally:
        for d in local.values():
            d.chmod(0o755)


TOGGLES = ["recommend.enabled=false", "triton.enabled=false", "featureServer.enabled=false",
           "embeddingCron.enabled=false", "networkPolicy.enabled=false", "dashboard.enabled=false",
           "recommend.enabled=false,networkPolicy.serviceAccountPolicy=cilium",
           "recommend.serviceMonitor.enabled=true,triton.enabled=false"]


@pytest.mark.parametrize("toggle", TOGGLES)
def test_components_can_be_switched_off(toggle, crd_validators):
    """Each component can be left out: the rest still lints, validates, and its stack file still parses."""
    proc = helm("lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART), "--set", toggle)
    assert "0 chart(s) failed" in proc.stdout and "[WARNING]" not in proc.stdout, proc.stdout
    docs = [d for d in yaml.safe_load_all(template("--set", toggle).stdout) if d]
    for d in docs:
        if d["kind"] in crd_validators:
            crd_validators[d["kind"]].validate(d)
        else:
            kubernetes_validate.validate(d, KUBE_VERSION, strict=True)
    _, stack = stack_of(docs)
    assert (stack.feast.server_url == "") == ("featureServer.enabled=false" in toggle)
    selected = {c for d in docs for c in [d["metadata"]["labels"].get("app.kubernetes.io/component")] if c}
    off = {"recommend.enabled": "recommend", "triton.enabled": "triton", "featureServer.enabled": "feature-server",
           "embeddingCron.enabled": "embedding-cron", "dashboard.enabled": "dashboard"}
    for setting in toggle.split(","):
        key, value = setting.split("=")
        if key in off and value == "false":
            assert off[key] not in selected, f"{off[key]} still rendered with {setting}"
