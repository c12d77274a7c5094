"""The one way a training run starts, for the CLI (``homefeed train <model>``) and the Kubeflow steps alike.

    result = launch(train_call("ranker", "ranker_tiny", overrides, out_dir, data_dir=D), nproc_per_node=2)

- one process (``num_nodes == 1 and nproc_per_node == 1``): the call runs in this process;
- several processes on this machine: ``torchrun`` (gloo), :mod:`components.launch.local`;
- ``num_nodes > 1`` inside Kubernetes (and ``HOMEFEED_JOB_API`` not ``local``): a Kubeflow Trainer
  ``TrainJob`` or Training Operator ``PyTorchJob``, :mod:`components.launch.cluster` /
  :mod:`components.launch.jobs`, sized by :mod:`components.launch.resources`.

Every path runs the same :class:`TrainCall` (``fn(config.load(experiment, overrides), **kwargs)``) and
returns rank 0's metrics dict.
"""

from __future__ import annotations

import os
from typing import Any

from components.launch.call import LaunchError, TrainCall, run_call, train_call
from components.launch.cluster import in_cluster, run_cluster
from components.launch.jobs import ClusterSettings
from components.launch.local import run_local

__all__ = ["ClusterSettings", "LaunchError", "TrainCall", "launch", "train_call"]


def launch(call: TrainCall, num_nodes: int = 1, nproc_per_node: int = 1, settings: ClusterSettings | None = None,
           timeout_s: float | None = None) -> dict[str, Any]:
    """Run a training call and return rank 0's result: in this process, under local torchrun, or as a
    cluster job (``num_nodes > 1`` inside Kubernetes unless ``HOMEFEED_JOB_API=local``)."""
    if num_nodes < 1 or nproc_per_node < 1:
        raise LaunchError(f"num_nodes and nproc_per_node must be >= 1, got {num_nodes}, {nproc_per_node}")
    if num_nodes > 1 and in_cluster() and os.environ.get("HOMEFEED_JOB_API") != "local":
        return run_cluster(call, num_nodes, nproc_per_node, settings or ClusterSettings.from_env())
    if num_nodes == 1 and nproc_per_node == 1:
        return run_call(call)
    return run_local(call, nproc_per_node=nproc_per_node, num_nodes=num_nodes, timeout_s=timeout_s)
