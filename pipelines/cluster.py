"""What the pipelines share: the step components (containerized, or lightweight for ``kfp.local``) and
the Kubernetes settings applied to tasks when compiling for a cluster (kfp-kubernetes).

On a cluster every task mounts the data PVC; training and export tasks run on the GPU image with a GPU
node selector, a toleration for the GPU taint, an accelerator type and limit and CPU/memory limits;
tasks that talk to object storage, Feast's online store or Milvus get their credentials from existing
Secrets as environment variables, under the Helm chart's Secret names and keys (helm/homefeed/values.yaml
``endpoints.*.existingSecret``; tests/test_pipelines_compile.py checks both agree). The tasks that take a
``stack`` parameter mount the chart's stack ConfigMap (``$HOMEFEED_STACK_CONFIGMAP`` when the pipeline is
compiled, as in the chart's CronJob; else ``homefeed-stack``) at /etc/homefeed with ``HOMEFEED_STACK`` set,
so the CronJob's ``stack=/etc/homefeed/stack.yaml`` resolves inside the step pods. Local runs
(``kfp.local``) get none of this.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from types import SimpleNamespace

from kfp import kubernetes
from kfp.dsl import PipelineTask

from components.launch.resources import CPU_NODE, GPU_NODE, NODE_IMAGE
from components.steps.images import lightweight

STEP_NAMES = ("prepare_data", "import_data", "sample_graph", "train_pinsage", "embed_pins", "train_pinnerformer",
              "embed_users", "embed_pin_tower", "train_ranker", "evaluate_ranker", "export_ranker", "register_features",
              "build_index", "shard_ids", "merge_pins", "merge_users", "merge_pin_tower")
GPU_STEPS = ("train_pinsage", "train_pinnerformer", "train_ranker", "export_ranker")
STACK_STEPS = ("embed_users", "merge_users", "register_features", "build_index")  # the steps with a ``stack`` input
STACK_DIR = "/etc/homefeed"  # the chart's mount path of the stack ConfigMap (templates/_helpers.tpl stackDir)


@dataclass
class ClusterConfig:
    """Kubernetes settings of a compiled pipeline (secrets are referenced by name, never inlined)."""

    data_pvc: str = "homefeed-data"
    data_mount: str = "/data"
    gpu_node_label: tuple[str, str] = ("nvidia.com/gpu.present", "true")
    gpu_taint_key: str = "nvidia.com/gpu"
    accelerator_type: str = "nvidia.com/gpu"
    # node sizes: one table with the training launcher's TrainJob/PyTorchJob nodes (components.launch.resources)
    accelerator_limit: int = GPU_NODE.gpus
    gpu_cpu_limit: str = GPU_NODE.cpu
    gpu_memory_limit: str = GPU_NODE.memory
    cpu_limit: str = CPU_NODE.cpu
    memory_limit: str = CPU_NODE.memory
    job_api: str = "trainjob"  # multi-node training: trainjob (Kubeflow Trainer) | pytorchjob (Training Operator)
    # secret name -> {secret key: environment variable}, per kind of task
    storage_secret: dict[str, dict[str, str]] = field(default_factory=lambda: {
        "homefeed-object-store": {"access-key": "AWS_ACCESS_KEY_ID", "secret-key": "AWS_SECRET_ACCESS_KEY"}})
    # the chart's defaults: endpoints.redis / endpoints.registry / endpoints.milvus existingSecret(Key)
    feast_secret: dict[str, dict[str, str]] = field(default_factory=lambda: {
        "redis-auth": {"redis-password": "REDIS_PASSWORD"}, "feast-registry": {"password": "FEAST_REGISTRY_PASSWORD"}})
    milvus_secret: dict[str, dict[str, str]] = field(default_factory=lambda: {"milvus-auth": {"token": "MILVUS_TOKEN"}})
    # Secrets a pod starts without: Milvus without authentication and object storage through workload identity
    # (IRSA / GKE / Azure; boto3 then finds its credentials itself) are the chart's defaults
    optional_secrets: tuple[str, ...] = ("milvus-auth", "homefeed-object-store")
    stack_config_map: str = field(default_factory=lambda: os.environ.get("HOMEFEED_STACK_CONFIGMAP") or "homefeed-stack")
    stack_dir: str = STACK_DIR


def steps(local: bool) -> SimpleNamespace:
    """The step components by name; ``local`` -> lightweight versions for ``kfp.local.SubprocessRunner``."""
    comps = {}
    for name in STEP_NAMES:
        comp = getattr(importlib.import_module(f"components.steps.{name}"), name)
        comps[name] = lightweight(comp) if local else comp
    return SimpleNamespace(**comps)


def _secrets(task: PipelineTask, secrets: dict[str, dict[str, str]], optional: tuple[str, ...] = ()) -> None:
    for name, key_to_env in secrets.items():
        kubernetes.use_secret_as_env(task, secret_name=name, secret_key_to_env=key_to_env, optional=name in optional)


def apply(task: PipelineTask, step_name: str, cluster: ClusterConfig | None) -> PipelineTask:
    """Apply ``cluster``'s settings to ``task`` (a no-op for local runs: ``cluster`` None)."""
    if cluster is None:
        return task
    kubernetes.mount_pvc(task, pvc_name=cluster.data_pvc, mount_path=cluster.data_mount)
    task.set_env_variable("HOMEFEED_DATA_PVC", cluster.data_pvc)
    task.set_env_variable("HOMEFEED_DATA_MOUNT", cluster.data_mount)
    if step_name in GPU_STEPS:
        task.set_container_image(NODE_IMAGE)
        kubernetes.add_node_selector(task, label_key=cluster.gpu_node_label[0], label_value=cluster.gpu_node_label[1])
        kubernetes.add_toleration(task, key=cluster.gpu_taint_key, operator="Exists", effect="NoSchedule")
        task.set_accelerator_type(cluster.accelerator_type)
        task.set_accelerator_limit(cluster.accelerator_limit)
        task.set_cpu_limit(cluster.gpu_cpu_limit)
        task.set_memory_limit(cluster.gpu_memory_limit)
        task.set_env_variable("HOMEFEED_JOB_API", cluster.job_api)
    else:
        task.set_cpu_limit(cluster.cpu_limit)
        task.set_memory_limit(cluster.memory_limit)
    if step_name in ("export_ranker", "register_features", "prepare_data", "import_data"):
        _secrets(task, cluster.storage_secret, cluster.optional_secrets)
    if step_name == "register_features":
        _secrets(task, cluster.feast_secret, cluster.optional_secrets)
    if step_name == "build_index":
        _secrets(task, cluster.milvus_secret, cluster.optional_secrets)
    if step_name in STACK_STEPS:
        # optional: a run with stack="" needs no ConfigMap; with a stack path, load_stack names the missing file
        kubernetes.use_config_map_as_volume(task, config_map_name=cluster.stack_config_map, mount_path=cluster.stack_dir,
                                            optional=True)
        task.set_env_variable("HOMEFEED_STACK", f"{cluster.stack_dir}/stack.yaml")
    return task
