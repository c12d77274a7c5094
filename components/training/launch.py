"""Launch a training entry point on one machine (``torchrun``, gloo) or on a cluster (Kubeflow Trainer).

A :class:`TrainCall` names a library function ``module:function`` with the signature
``fn(cfg, **kwargs) -> dict`` (e.g. ``components.training.pinsage:train``), the experiment and overrides
that :func:`components.config.load` resolves into ``cfg``, and the keyword arguments (paths).

- :func:`run_local` starts ``torchrun`` as a subprocess (``--nproc_per_node``; ``num_nodes > 1`` starts
  that many torchrun agents on this machine, rendezvous on 127.0.0.1). Every rank runs
  ``python -m components.training.launch --call JSON``, which calls the function; rank 0's result is
  written to a JSON file and returned.
- :func:`run_cluster` builds a ``TrainJob`` (``trainer.kubeflow.org/v1alpha1``, the current Kubeflow
  Trainer API) or a ``PyTorchJob`` (``kubeflow.org/v1``, Training Operator v1, for older installs),
  selected by :attr:`ClusterSettings.job_api`; creates it through the ``kubernetes`` client, and polls it
  to completion, printing each status change. Paths are staged on the shared data PVC first.
- :func:`launch` picks one: the cluster only when ``num_nodes > 1`` and the process runs inside
  Kubernetes (or ``HOMEFEED_JOB_API`` says so), otherwise local torchrun.

The job objects are built from the Kubeflow SDK models (``kubeflow_trainer_api`` and
``kubeflow.training``) and checked offline by :func:`validate_trainjob` / :func:`validate_pytorchjob`:
a round trip through the SDK models (unknown or mistyped fields fail) and, for PyTorchJob pod templates,
the Kubernetes OpenAPI schema via ``kubernetes-validate``. No API server runs here; creating and waiting
for a job needs a cluster.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRAINJOB_GROUP, TRAINJOB_VERSION, TRAINJOB_PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
PYTORCHJOB_GROUP, PYTORCHJOB_VERSION, PYTORCHJOB_PLURAL = "kubeflow.org", "v1", "pytorchjobs"
JOB_APIS = ("trainjob", "pytorchjob")
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class LaunchError(RuntimeError):
    """A training launch failed; the message names the command or job and its last output/status."""


@dataclass
class TrainCall:
    """What every rank runs: ``entry(config.load(experiment, overrides), **kwargs)``.

    ``path_kwargs`` names the kwargs that are input paths (staged to shared storage on a cluster);
    ``out_kwarg`` the one that is the output directory.
    """

    entry: str  # "package.module:function"
    experiment: str
    overrides: list[str] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    path_kwargs: list[str] = field(default_factory=list)
    out_kwarg: str = "out_dir"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainCall:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise LaunchError(f"--call: not valid JSON: {e}") from e
        unknown = set(raw) - {f.name for f in dataclasses.fields(cls)}
        if unknown or "entry" not in raw or "experiment" not in raw:
            raise LaunchError(f"--call: expected keys entry, experiment[, overrides, kwargs, ...]; got {sorted(raw)}")
        return cls(**raw)


@dataclass
class ClusterSettings:
    """How a multi-node training job runs on Kubernetes; every field has a ``HOMEFEED_*`` env override."""

    job_api: str = "trainjob"  # trainjob | pytorchjob
    namespace: str = ""  # "" = the pod's own namespace (service account file), else "default"
    image: str = ""  # "" = components.steps.images.GPU_IMAGE
    runtime_ref: str = "torch-distributed"  # TrainJob: ClusterTrainingRuntime name
    gpus_per_node: int = 1
    gpu_resource: str = "nvidia.com/gpu"
    cpu_per_node: str = "4"
    memory_per_node: str = "16Gi"
    pvc_name: str = "homefeed-data"
    pvc_mount: str = "/data"
    node_selector: dict[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    tolerations: list[dict[str, str]] = field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    secret_env: dict[str, str] = field(default_factory=dict)  # ENV_NAME -> "secret/key"
    service_account: str = ""
    timeout_s: float = 24 * 3600.0
    poll_s: float = 10.0

    ENV = {"job_api": "HOMEFEED_JOB_API", "namespace": "HOMEFEED_NAMESPACE", "image": "HOMEFEED_TRAIN_IMAGE",
           "runtime_ref": "HOMEFEED_TRAIN_RUNTIME", "gpus_per_node": "HOMEFEED_GPUS_PER_NODE",
           "pvc_name": "HOMEFEED_DATA_PVC", "pvc_mount": "HOMEFEED_DATA_MOUNT",
           "service_account": "HOMEFEED_TRAIN_SERVICE_ACCOUNT", "timeout_s": "HOMEFEED_TRAIN_TIMEOUT_S"}

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ClusterSettings:
        env = os.environ if env is None else env
        s = cls()
        for name, var in cls.ENV.items():
            if var in env and env[var] != "":
                cur = getattr(s, name)
                try:
                    setattr(s, name, type(cur)(env[var]))
                except ValueError as e:
                    raise LaunchError(f"environment variable {var}: expected {type(cur).__name__}, got {env[var]!r}") from e
        s.check()
        return s

    def check(self) -> None:
        if self.job_api not in JOB_APIS:
            raise LaunchError(f"job_api: expected one of {', '.join(JOB_APIS)}, got {self.job_api!r}")
        if self.gpus_per_node < 0:
            raise LaunchError(f"gpus_per_node: expected >= 0, got {self.gpus_per_node}")

    def resolved_namespace(self) -> str:
        if self.namespace:
            return self.namespace
        return SA_NAMESPACE_FILE.read_text().strip() if SA_NAMESPACE_FILE.exists() else "default"

    def resolved_image(self) -> str:
        if self.image:
            return self.image
        from components.steps.images import GPU_IMAGE
        return GPU_IMAGE


# ----------------------------------------------------------------------------------------------
# The rank entry point: python -m components.training.launch --call JSON [--result PATH]
# ----------------------------------------------------------------------------------------------


def resolve_entry(entry: str) -> Callable[..., Any]:
    module, _, name = entry.partition(":")
    if not module or not name:
        raise LaunchError(f"entry {entry!r}: expected 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise LaunchError(f"entry {entry!r}: cannot import: {e}") from e
    if not callable(fn):
        raise LaunchError(f"entry {entry!r} is not callable")
    return fn


def run_call(call: TrainCall) -> Any:
    """Run ``call`` in this process (one rank)."""
    from components import config

    fn = resolve_entry(call.entry)
    cfg = config.load(call.experiment, call.overrides)
    return fn(cfg, **call.kwargs)


def _worker_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m components.training.launch",
                                description="run one rank of a training call (started by torchrun)")
    p.add_argument("--call", required=True, help="TrainCall as JSON")
    p.add_argument("--result", default="", help="rank 0 writes the returned dict here as JSON")
    args = p.parse_args(argv)
    call = TrainCall.from_json(args.call)
    result = run_call(call)
    if args.result and int(os.environ.get("RANK", "0")) == 0:
        from components.data.io import atomic_write_bytes
        atomic_write_bytes(args.result, json.dumps(result, default=_json_default, indent=2).encode())
    return 0


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return str(o)


# ----------------------------------------------------------------------------------------------
# Local: torchrun subprocesses (gloo)
# ----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(call: TrainCall, nproc_per_node: int, num_nodes: int = 1, node_rank: int = 0,
                     master_port: int = 29500, result_path: str | Path = "",
                     python: str = sys.executable) -> list[str]:
    """The ``torchrun`` command line of one node (agent)."""
    if nproc_per_node < 1 or num_nodes < 1:
        raise LaunchError(f"nproc_per_node and num_nodes must be >= 1, got {nproc_per_node}, {num_nodes}")
    cmd = [python, "-m", "torch.distributed.run", f"--nproc_per_node={nproc_per_node}", f"--nnodes={num_nodes}"]
    if num_nodes == 1:
        cmd += ["--standalone"]
    else:
        cmd += [f"--node_rank={node_rank}", "--master_addr=127.0.0.1", f"--master_port={master_port}"]
    cmd += ["-m", "components.training.launch", "--call", call.to_json()]
    if result_path:
        cmd += ["--result", str(result_path)]
    return cmd


def _pump(stream, prefix: str, tail: list[str]) -> None:
    for line in iter(stream.readline, ""):
        tail.append(line)
        del tail[:-300]
        print(f"{prefix}{line}", end="", flush=True)


def _first_exception(lines: list[str]) -> str:
    """The first ``SomethingError: message`` line of a rank's traceback (torchrun's own summary follows it)."""
    for line in lines:
        m = re.match(r"\s*(?:\[[^\]]*\]:?\s*)?([A-Za-z_.]*(?:Error|Exception|Interrupt)\b.*)", line)
        if m and "ChildFailedError" not in m.group(1):
            return m.group(1).strip()
    return "no exception line in the output"


def run_local(call: TrainCall, nproc_per_node: int = 1, num_nodes: int = 1, timeout_s: float | None = None,
              env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``call`` under ``torchrun`` (gloo) on this machine; return rank 0's result.

    ``num_nodes > 1`` starts that many torchrun agents here (a multi-node rendezvous on 127.0.0.1).
    Output is streamed with a ``[node i]`` prefix; a non-zero exit raises :class:`LaunchError`.
    """
    out_dir = call.kwargs.get(call.out_kwarg)
    result_dir = Path(out_dir) if out_dir else Path.cwd()
    result_dir.mkdir(parents=True, exist_ok=True)
    result_path = result_dir / f".launch-result-{uuid.uuid4().hex[:8]}.json"
    port = free_port()
    penv = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **(env or {})}
    procs, threads, tails = [], [], []
    try:
        for node in range(num_nodes):
            cmd = torchrun_command(call, nproc_per_node, num_nodes, node, port, result_path if node == 0 else "")
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                    env=penv)
            tail: list[str] = []
            t = threading.Thread(target=_pump, args=(proc.stdout, f"[node {node}] " if num_nodes > 1 else "", tail),
                                 daemon=True)
            t.start()
            procs.append(proc)
            threads.append(t)
            tails.append(tail)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for proc in procs:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.1)
            try:
                proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired as e:
                raise LaunchError(f"{call.entry}: torchrun did not finish within {timeout_s} s") from e
        for t in threads:
            t.join(timeout=5)
        failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
        if failed:
            node, rc = failed[0]
            raise LaunchError(f"{call.entry} ({call.experiment}): torchrun node {node} exited with code {rc}: "
                              f"{_first_exception(tails[node])}; last output:\n{''.join(tails[node][-15:])}")
        if not result_path.exists():
            raise LaunchError(f"{call.entry}: rank 0 finished but wrote no result ({result_path})")
        return json.loads(result_path.read_text())
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        result_path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# Cluster: TrainJob (trainer.kubeflow.org/v1alpha1) or PyTorchJob (kubeflow.org/v1)
# ----------------------------------------------------------------------------------------------


def job_name(call: TrainCall, suffix: str | None = None) -> str:
    """A DNS-1035 name: ``hf-<experiment>-<suffix>`` (at most 40 characters, lowercase)."""
    base = re.sub(r"[^a-z0-9-]+", "-", call.experiment.lower()).strip("-")[:24] or "train"
    suffix = suffix or uuid.uuid4().hex[:8]
    return f"hf-{base}-{suffix}"


def worker_command(call: TrainCall, result_path: str) -> list[str]:
    """What each training node runs: torchrun reads nodes/rank/master from the PET_* variables that
    the Trainer torch runtime and the Training Operator set."""
    return ["torchrun", "-m", "components.training.launch", "--call", call.to_json(), "--result", result_path]


def _env_vars(settings: ClusterSettings, extra: dict[str, str] | None = None) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted((extra or {}).items())]
    env.append({"name": "OMP_NUM_THREADS", "value": "1"})
    for name, ref in sorted(settings.secret_env.items()):
        secret, _, key = ref.partition("/")
        if not secret or not key:
            raise LaunchError(f"secret_env[{name}]: expected 'secret-name/key', got {ref!r}")
        env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    return env


def _resources(settings: ClusterSettings) -> dict[str, Any]:
    req = {"cpu": settings.cpu_per_node, "memory": settings.memory_per_node}
    lim = dict(req)
    if settings.gpus_per_node > 0:
        lim[settings.gpu_resource] = str(settings.gpus_per_node)
        req[settings.gpu_resource] = str(settings.gpus_per_node)
    return {"requests": req, "limits": lim}


def _volume(settings: ClusterSettings) -> tuple[dict[str, Any], dict[str, Any]]:
    return ({"name": "data", "persistentVolumeClaim": {"claimName": settings.pvc_name}},
            {"name": "data", "mountPath": settings.pvc_mount})


def build_trainjob(call: TrainCall, num_nodes: int, nproc_per_node: int, settings: ClusterSettings,
                   name: str | None = None, result_path: str = "", env: dict[str, str] | None = None) -> dict[str, Any]:
    """A ``TrainJob`` for the Trainer's torch runtime, built from ``kubeflow_trainer_api`` models.

    ``spec.trainer`` carries image, command, numNodes, numProcPerNode, resourcesPerNode and env; the data
    PVC, node selector and tolerations go through ``runtimePatches`` on the runtime's ``node`` job.
    """
    from kubeflow_trainer_api import models as m

    name = name or job_name(call)
    volume, mount = _volume(settings)
    pod_spec = m.TrainerV1alpha1PodSpecPatch(
        volumes=[m.IoK8sApiCoreV1Volume.from_dict(volume)],
        containers=[m.TrainerV1alpha1ContainerPatch(name="node", volumeMounts=[m.IoK8sApiCoreV1VolumeMount.from_dict(mount)])],
        nodeSelector=dict(settings.node_selector) or None,
        tolerations=[m.IoK8sApiCoreV1Toleration.from_dict(t) for t in settings.tolerations] or None,
        serviceAccountName=settings.service_account or None,
    )
    patch = m.TrainerV1alpha1RuntimePatch(
        manager="homefeed.io/launcher",
        trainingRuntimeSpec=m.TrainerV1alpha1TrainingRuntimeSpecPatch(
            template=m.TrainerV1alpha1JobSetTemplatePatch(spec=m.TrainerV1alpha1JobSetSpecPatch(replicatedJobs=[
                m.TrainerV1alpha1ReplicatedJobPatch(name="node", template=m.TrainerV1alpha1JobTemplatePatch(
                    spec=m.TrainerV1alpha1JobSpecPatch(template=m.TrainerV1alpha1PodTemplatePatch(spec=pod_spec))))]))),
    )
    job = m.TrainerV1alpha1TrainJob(
        apiVersion=f"{TRAINJOB_GROUP}/{TRAINJOB_VERSION}",
        kind="TrainJob",
        metadata=m.IoK8sApimachineryPkgApisMetaV1ObjectMeta(
            name=name, namespace=settings.resolved_namespace(),
            labels={"app.kubernetes.io/part-of": "homefeed", "homefeed.io/experiment": call.experiment[:63]}),
        spec=m.TrainerV1alpha1TrainJobSpec(
            runtimeRef=m.TrainerV1alpha1RuntimeRef(name=settings.runtime_ref, kind="ClusterTrainingRuntime",
                                                   apiGroup=TRAINJOB_GROUP),
            trainer=m.TrainerV1alpha1Trainer(
                image=settings.resolved_image(),
                command=worker_command(call, result_path or f"{call.kwargs.get(call.out_kwarg, '.')}/.launch-result.json"),
                numNodes=num_nodes,
                numProcPerNode=nproc_per_node,
                resourcesPerNode=m.IoK8sApiCoreV1ResourceRequirements.from_dict(_resources(settings)),
                env=[m.IoK8sApiCoreV1EnvVar.from_dict(e) for e in _env_vars(settings, env)],
            ),
            runtimePatches=[patch],
        ),
    )
    return validate_trainjob(job.to_dict())


def validate_trainjob(obj: dict[str, Any]) -> dict[str, Any]:
    """Check a TrainJob dict against the Trainer API models; return it unchanged or raise LaunchError.

    A round trip through ``TrainerV1alpha1TrainJob`` must reproduce the dict: a mistyped value fails
    validation and an unknown field is dropped by the models, so both are reported.
    """
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob
    from pydantic import ValidationError

    if obj.get("apiVersion") != f"{TRAINJOB_GROUP}/{TRAINJOB_VERSION}" or obj.get("kind") != "TrainJob":
        raise LaunchError(f"TrainJob: expected apiVersion {TRAINJOB_GROUP}/{TRAINJOB_VERSION} and kind TrainJob, "
                          f"got {obj.get('apiVersion')!r} {obj.get('kind')!r}")
    try:
        back = TrainerV1alpha1TrainJob.from_dict(obj).to_dict()
    except ValidationError as e:
        raise LaunchError(f"TrainJob {obj.get('metadata', {}).get('name')!r} is invalid: {e}") from e
    _same_or_raise("TrainJob", obj, back)
    if not obj["metadata"].get("name"):
        raise LaunchError("TrainJob: metadata.name is required")
    return obj


def _same_or_raise(kind: str, obj: Any, back: Any, path: str = "") -> None:
    """Report the first field where ``obj`` differs from its round trip ``back``."""
    if isinstance(obj, dict) and isinstance(back, dict):
        for k in obj:
            if k not in back:
                raise LaunchError(f"{kind}: unknown field '{path}{k}'")
            _same_or_raise(kind, obj[k], back[k], f"{path}{k}.")
        for k in back:
            if k not in obj:
                raise LaunchError(f"{kind}: field '{path}{k}' appeared in the round trip (defaulted?)")
    elif isinstance(obj, list) and isinstance(back, list) and len(obj) == len(back):
        for i, (a, b) in enumerate(zip(obj, back)):
            _same_or_raise(kind, a, b, f"{path[:-1]}[{i}].")
    elif obj != back:
        raise LaunchError(f"{kind}: field '{path[:-1]}' has an invalid value {obj!r}")


def build_pytorchjob(call: TrainCall, num_nodes: int, nproc_per_node: int, settings: ClusterSettings,
                     name: str | None = None, result_path: str = "",
                     env: dict[str, str] | None = None) -> dict[str, Any]:
    """A ``PyTorchJob`` (Training Operator v1): one Master and ``num_nodes - 1`` Workers, ``nprocPerNode``."""
    from kubeflow.training import models as m
    from kubernetes import client as k8s

    name = name or job_name(call)
    volume, mount = _volume(settings)
    resources = _resources(settings)

    def template() -> k8s.V1PodTemplateSpec:
        container = k8s.V1Container(
            name="pytorch", image=settings.resolved_image(),
            command=worker_command(call, result_path or f"{call.kwargs.get(call.out_kwarg, '.')}/.launch-result.json"),
            env=[k8s.V1EnvVar(name=e["name"], value=e.get("value"),
                              value_from=k8s.V1EnvVarSource(secret_key_ref=k8s.V1SecretKeySelector(
                                  **e["valueFrom"]["secretKeyRef"])) if "valueFrom" in e else None)
                 for e in _env_vars(settings, env)],
            resources=k8s.V1ResourceRequirements(requests=resources["requests"], limits=resources["limits"]),
            volume_mounts=[k8s.V1VolumeMount(name=mount["name"], mount_path=mount["mountPath"])],
        )
        return k8s.V1PodTemplateSpec(
            metadata=k8s.V1ObjectMeta(labels={"app.kubernetes.io/part-of": "homefeed"}),
            spec=k8s.V1PodSpec(
                containers=[container],
                volumes=[k8s.V1Volume(name="data", persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                    claim_name=settings.pvc_name))],
                node_selector=dict(settings.node_selector) or None,
                tolerations=[k8s.V1Toleration(**t) for t in settings.tolerations] or None,
                service_account_name=settings.service_account or None,
            ))

    replicas = {"Master": m.KubeflowOrgV1ReplicaSpec(replicas=1, restart_policy="OnFailure", template=template())}
    if num_nodes > 1:
        replicas["Worker"] = m.KubeflowOrgV1ReplicaSpec(replicas=num_nodes - 1, restart_policy="OnFailure",
                                                        template=template())
    job = m.KubeflowOrgV1PyTorchJob(
        api_version=f"{PYTORCHJOB_GROUP}/{PYTORCHJOB_VERSION}", kind="PyTorchJob",
        metadata=k8s.V1ObjectMeta(name=name, namespace=settings.resolved_namespace(),
                                  labels={"app.kubernetes.io/part-of": "homefeed",
                                          "homefeed.io/experiment": call.experiment[:63]}),
        spec=m.KubeflowOrgV1PyTorchJobSpec(
            nproc_per_node=str(nproc_per_node),
            pytorch_replica_specs=replicas,
            run_policy=m.KubeflowOrgV1RunPolicy(clean_pod_policy="None", backoff_limit=2),
        ),
    )
    return validate_pytorchjob(k8s.ApiClient().sanitize_for_serialization(job))


def validate_pytorchjob(obj: dict[str, Any], k8s_version: str = "1.30.0") -> dict[str, Any]:
    """Check a PyTorchJob dict: a round trip through the ``kubeflow.training`` models, the replica rules of
    the operator (exactly one Master) and every pod template against the Kubernetes schema (strict)."""
    import kubernetes_validate
    from kubeflow.training import ApiClient

    if obj.get("apiVersion") != f"{PYTORCHJOB_GROUP}/{PYTORCHJOB_VERSION}" or obj.get("kind") != "PyTorchJob":
        raise LaunchError(f"PyTorchJob: expected apiVersion {PYTORCHJOB_GROUP}/{PYTORCHJOB_VERSION} and kind "
                          f"PyTorchJob, got {obj.get('apiVersion')!r} {obj.get('kind')!r}")
    api = ApiClient()
    try:
        model = api._ApiClient__deserialize(obj, "KubeflowOrgV1PyTorchJob")
    except (ValueError, TypeError) as e:
        raise LaunchError(f"PyTorchJob {obj.get('metadata', {}).get('name')!r} is invalid: {e}") from e
    _same_or_raise("PyTorchJob", obj, api.sanitize_for_serialization(model))
    specs = obj["spec"].get("pytorchReplicaSpecs") or {}
    if set(specs) - {"Master", "Worker"} or specs.get("Master", {}).get("replicas") != 1:
        raise LaunchError(f"PyTorchJob: expected replica types Master (replicas 1) and optional Worker, got "
                          f"{ {k: v.get('replicas') for k, v in specs.items()} }")
    for rtype, spec in specs.items():
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{obj['metadata']['name']}-{rtype.lower()}"},
               "spec": spec["template"]["spec"]}
        try:
            kubernetes_validate.validate(pod, k8s_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise LaunchError(f"PyTorchJob {rtype} pod template: {e.message} at {list(e.path)}") from e
    return obj


def _conditions(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return list((obj.get("status") or {}).get("conditions") or [])


def job_state(obj: dict[str, Any], job_api: str) -> str:
    """``succeeded`` / ``failed`` / ``running`` from a TrainJob's or PyTorchJob's status conditions."""
    done = "Complete" if job_api == "trainjob" else "Succeeded"
    for c in _conditions(obj):
        if c.get("status") == "True" and c.get("type") == "Failed":
            return "failed"
        if c.get("status") == "True" and c.get("type") == done:
            return "succeeded"
    return "running"


def submit_and_wait(job: dict[str, Any], settings: ClusterSettings, api: Any = None,
                    printer: Callable[[str], None] = print) -> dict[str, Any]:
    """Create ``job`` through ``CustomObjectsApi`` and poll it to the end, printing each status change."""
    if api is None:
        from kubernetes import client
        from kubernetes import config as kconfig
        try:
            kconfig.load_incluster_config()
        except kconfig.ConfigException:
            kconfig.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
        api = client.CustomObjectsApi()
    trainjob = job["kind"] == "TrainJob"
    group, version, plural = ((TRAINJOB_GROUP, TRAINJOB_VERSION, TRAINJOB_PLURAL) if trainjob
                              else (PYTORCHJOB_GROUP, PYTORCHJOB_VERSION, PYTORCHJOB_PLURAL))
    ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
    api.create_namespaced_custom_object(group, version, ns, plural, job)
    printer(f"created {job['kind']} {ns}/{name}")
    seen: set[tuple[str, str, str]] = set()
    deadline = time.monotonic() + settings.timeout_s
    while True:
        obj = api.get_namespaced_custom_object(group, version, ns, plural, name)
        for c in _conditions(obj):
            key = (c.get("type", ""), c.get("status", ""), c.get("reason", ""))
            if key not in seen:
                seen.add(key)
                printer(f"{job['kind']} {name}: {key[0]}={key[1]} {key[2]} {c.get('message', '')}".rstrip())
        state = job_state(obj, "trainjob" if trainjob else "pytorchjob")
        if state == "succeeded":
            return obj
        if state == "failed":
            msg = next((c.get("message", "") for c in _conditions(obj) if c.get("type") == "Failed"), "")
            raise LaunchError(f"{job['kind']} {ns}/{name} failed: {msg}")
        if time.monotonic() > deadline:
            raise LaunchError(f"{job['kind']} {ns}/{name} did not finish within {settings.timeout_s} s")
        time.sleep(settings.poll_s)


def run_cluster(call: TrainCall, num_nodes: int, nproc_per_node: int, settings: ClusterSettings,
                api: Any = None) -> dict[str, Any]:
    """Stage inputs on the data PVC, run the job, copy the output directory back; return rank 0's result."""
    name = job_name(call)
    work = Path(settings.pvc_mount) / "runs" / name
    staged = TrainCall(**{**dataclasses.asdict(call), "kwargs": dict(call.kwargs)})
    for key in call.path_kwargs:
        src = call.kwargs.get(key)
        if src:
            dst = work / "in" / key
            (shutil.copytree if Path(src).is_dir() else shutil.copy2)(src, dst)
            staged.kwargs[key] = str(dst)
    final_out = Path(call.kwargs[call.out_kwarg])
    staged.kwargs[call.out_kwarg] = str(work / "out")
    result_path = str(work / "result.json")
    build = build_trainjob if settings.job_api == "trainjob" else build_pytorchjob
    job = build(staged, num_nodes, nproc_per_node, settings, name=name, result_path=result_path)
    submit_and_wait(job, settings, api)
    shutil.copytree(work / "out", final_out, dirs_exist_ok=True)
    return json.loads(Path(result_path).read_text())


def in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def launch(call: TrainCall, num_nodes: int = 1, nproc_per_node: int = 1, settings: ClusterSettings | None = None,
           timeout_s: float | None = None) -> dict[str, Any]:
    """Run a training call: a Kubeflow Trainer/Training Operator job when ``num_nodes > 1`` inside a
    cluster (``HOMEFEED_JOB_API=local`` forces local), else local torchrun."""
    if num_nodes > 1 and in_cluster() and os.environ.get("HOMEFEED_JOB_API") != "local":
        settings = settings or ClusterSettings.from_env()
        return run_cluster(call, num_nodes, nproc_per_node, settings)
    return run_local(call, nproc_per_node=nproc_per_node, num_nodes=num_nodes, timeout_s=timeout_s)


if __name__ == "__main__":
    sys.exit(_worker_main())
