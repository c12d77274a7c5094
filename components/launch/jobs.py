"""Cluster training jobs, built and validated offline: a ``TrainJob`` (``trainer.kubeflow.org/v1alpha1``,
Kubeflow Trainer) or a ``PyTorchJob`` (``kubeflow.org/v1``, Training Operator v1), selected by
:attr:`ClusterSettings.job_api`.

The objects are built from the Kubeflow SDK models (``kubeflow_trainer_api``, ``kubeflow.training``) and
checked by :func:`validate_trainjob` / :func:`validate_pytorchjob`: a round trip through the SDK models
(unknown or mistyped fields fail) and, for PyTorchJob pod templates, the Kubernetes OpenAPI schema via
``kubernetes-validate``. Node sizes come from :mod:`components.launch.resources`, the table the pipelines
read too. Creating a job needs a cluster (components.launch.cluster).
"""

from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kubernetes_validate
from kubeflow.training import ApiClient
from kubeflow.training import models as training_models
from kubeflow_trainer_api import models as m
from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob
from kubernetes import client as k8s
from pydantic import ValidationError

from components.launch.call import LaunchError, TrainCall
from components.launch.resources import GPU_NODE, NODE_IMAGE

TRAINJOB_GROUP, TRAINJOB_VERSION, TRAINJOB_PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
PYTORCHJOB_GROUP, PYTORCHJOB_VERSION, PYTORCHJOB_PLURAL = "kubeflow.org", "v1", "pytorchjobs"
JOB_APIS = ("trainjob", "pytorchjob")
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass
class ClusterSettings:
    """How a multi-node training job runs on Kubernetes; every field has a ``HOMEFEED_*`` env override."""

    job_api: str = "trainjob"  # trainjob | pytorchjob
    namespace: str = ""  # "" = the pod's own namespace (service account file), else "default"
    image: str = ""  # "" = components.steps.images.GPU_IMAGE
    runtime_ref: str = "torch-distributed"  # TrainJob: ClusterTrainingRuntime name
    gpus_per_node: int = GPU_NODE.gpus
    gpu_resource: str = "nvidia.com/gpu"
    cpu_per_node: str = GPU_NODE.cpu  # one table with the pipelines' GPU steps (components.launch.resources)
    memory_per_node: str = GPU_NODE.memory
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
        return self.image or NODE_IMAGE


def job_name(call: TrainCall, suffix: str | None = None) -> str:
    """A DNS-1035 name: ``hf-<experiment>-<suffix>`` (at most 40 characters, lowercase)."""
    base = re.sub(r"[^a-z0-9-]+", "-", call.experiment.lower()).strip("-")[:24] or "train"
    suffix = suffix or uuid.uuid4().hex[:8]
    return f"hf-{base}-{suffix}"


def worker_command(call: TrainCall, result_path: str) -> list[str]:
    """What each training node runs: torchrun reads nodes/rank/master from the PET_* variables that
    the Trainer torch runtime and the Training Operator set."""
    return ["torchrun", "-m", "components.launch.worker", "--call", call.to_json(), "--result", result_path]


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

    replicas = {"Master": training_models.KubeflowOrgV1ReplicaSpec(replicas=1, restart_policy="OnFailure", template=template())}
    if num_nodes > 1:
        replicas["Worker"] = training_models.KubeflowOrgV1ReplicaSpec(replicas=num_nodes - 1, restart_policy="OnFailure",
                                                        template=template())
    job = training_models.KubeflowOrgV1PyTorchJob(
        api_version=f"{PYTORCHJOB_GROUP}/{PYTORCHJOB_VERSION}", kind="PyTorchJob",
        metadata=k8s.V1ObjectMeta(name=name, namespace=settings.resolved_namespace(),
                                  labels={"app.kubernetes.io/part-of": "homefeed",
                                          "homefeed.io/experiment": call.experiment[:63]}),
        spec=training_models.KubeflowOrgV1PyTorchJobSpec(
            nproc_per_node=str(nproc_per_node),
            pytorch_replica_specs=replicas,
            run_policy=training_models.KubeflowOrgV1RunPolicy(clean_pod_policy="None", backoff_limit=2),
        ),
    )
    return validate_pytorchjob(k8s.ApiClient().sanitize_for_serialization(job))


def validate_pytorchjob(obj: dict[str, Any], k8s_version: str = "1.30.0") -> dict[str, Any]:
    """Check a PyTorchJob dict: a round trip through the ``kubeflow.training`` models, the replica rules of
    the operator (exactly one Master) and every pod template against the Kubernetes schema (strict)."""
    if obj.get("apiVersion") != f"{PYTORCHJOB_GROUP}/{PYTORCHJOB_VERSION}" or obj.get("kind") != "PyTorchJob":
        raise LaunchError(f"PyTorchJob: expected apiVersion {PYTORCHJOB_GROUP}/{PYTORCHJOB_VERSION} and kind "
                          f"PyTorchJob, got {obj.get('apiVersion')!r} {obj.get('kind')!r}")
    api = ApiClient()
    try:  # the client's public deserialize() reads a response body: hand it the object as one
        model = api.deserialize(SimpleNamespace(data=json.dumps(obj)), "KubeflowOrgV1PyTorchJob")
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


def conditions(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return list((obj.get("status") or {}).get("conditions") or [])


def job_state(obj: dict[str, Any], job_api: str) -> str:
    """``succeeded`` / ``failed`` / ``running`` from a TrainJob's or PyTorchJob's status conditions."""
    done = "Complete" if job_api == "trainjob" else "Succeeded"
    for c in conditions(obj):
        if c.get("status") == "True" and c.get("type") == "Failed":
            return "failed"
        if c.get("status") == "True" and c.get("type") == done:
            return "succeeded"
    return "running"
