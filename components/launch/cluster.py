"""Training on a cluster: stage inputs on the shared data PVC, create the TrainJob/PyTorchJob through the
Kubernetes API, poll it to the end (printing each status change), copy the output back.

Needs a Kubernetes API server; the job objects themselves are built and validated offline
(components.launch.jobs).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes import config as kconfig

from components.launch.call import LaunchError, TrainCall
from components.launch.jobs import (
    PYTORCHJOB_GROUP,
    PYTORCHJOB_PLURAL,
    PYTORCHJOB_VERSION,
    TRAINJOB_GROUP,
    TRAINJOB_PLURAL,
    TRAINJOB_VERSION,
    ClusterSettings,
    build_pytorchjob,
    build_trainjob,
    conditions,
    job_name,
    job_state,
)


def submit_and_wait(job: dict[str, Any], settings: ClusterSettings, api: Any = None,
                    printer: Callable[[str], None] = print) -> dict[str, Any]:
    """Create ``job`` through ``CustomObjectsApi`` and poll it to the end, printing each status change."""
    if api is None:
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
        for c in conditions(obj):
            key = (c.get("type", ""), c.get("status", ""), c.get("reason", ""))
            if key not in seen:
                seen.add(key)
                printer(f"{job['kind']} {name}: {key[0]}={key[1]} {key[2]} {c.get('message', '')}".rstrip())
        state = job_state(obj, "trainjob" if trainjob else "pytorchjob")
        if state == "succeeded":
            return obj
        if state == "failed":
            msg = next((c.get("message", "") for c in conditions(obj) if c.get("type") == "Failed"), "")
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


