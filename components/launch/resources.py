"""Node sizes of cluster work: the one table both the compiled pipelines (``pipelines/cluster.py``, task
limits) and the training launcher (TrainJob/PyTorchJob ``resourcesPerNode``) read, so a training step and
the job it starts ask for the same machine."""

from __future__ import annotations

from dataclasses import dataclass

from components.steps.images import GPU_IMAGE


@dataclass(frozen=True)
class NodeSize:
    """CPU and memory as Kubernetes quantities, and GPUs per node."""

    cpu: str
    memory: str
    gpus: int = 0


GPU_NODE = NodeSize(cpu="8", memory="32Gi", gpus=1)  # training and export: pipeline tasks and each training node
CPU_NODE = NodeSize(cpu="4", memory="16Gi")  # every other pipeline task
NODE_IMAGE = GPU_IMAGE  # what training nodes run
