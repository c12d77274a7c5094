"""components/launch: one entry point (in-process, local torchrun (gloo) for real), the TrainJob / PyTorchJob
objects validated offline against the Kubeflow SDK models and the Kubernetes schema (no API server here), and
one table of node sizes shared with the pipelines."""

from __future__ import annotations

import copy
import json
import textwrap

import pytest

from components.launch import ClusterSettings, LaunchError, TrainCall, launch, train_call
from components.launch.cluster import submit_and_wait
from components.launch.jobs import build_pytorchjob, build_trainjob, job_state, validate_pytorchjob, validate_trainjob
from components.launch.local import run_local, torchrun_command
from components.launch.resources import CPU_NODE, GPU_NODE

ENTRY_SOURCE = textwrap.dedent('''
    import os
    import torch
    import torch.distributed as dist
    from components.training.common import init_distributed

    def train(cfg, out_dir, fail_rank=-1):
        info = init_distributed("gloo")
        if info.rank == fail_rank:
            raise ValueError(f"boom on rank {info.rank}")
        t = torch.tensor([float(info.rank + 1)])
        if info.enabled:
            dist.all_reduce(t)
            dist.destroy_process_group()
        return {"world_size": info.world_size, "rank_sum": float(t.item()), "epochs": cfg.epochs,
                "node_rank": int(os.environ.get("GROUP_RANK", "0"))}
''')


@pytest.fixture
def entry_module(tmp_path):
    (tmp_path / "hf_launch_entry.py").write_text(ENTRY_SOURCE)
    return {"PYTHONPATH": str(tmp_path)}


def _call(out_dir, **kw) -> TrainCall:
    return TrainCall("hf_launch_entry:train", "pinsage_tiny", ["epochs=7"], {"out_dir": str(out_dir), **kw})


@pytest.mark.slow
def test_run_local_two_ranks_gloo(tmp_path, entry_module):
    res = run_local(_call(tmp_path / "out"), nproc_per_node=2, env=entry_module, timeout_s=240)
    assert res["world_size"] == 2
    assert res["rank_sum"] == 3.0  # 1 + 2 summed by a real gloo all_reduce
    assert res["epochs"] == 7  # the override reached config.load in every rank
    assert not list((tmp_path / "out").glob(".launch-result-*"))  # the result file is cleaned up


@pytest.mark.slow
def test_run_local_two_nodes_rendezvous(tmp_path, entry_module):
    res = run_local(_call(tmp_path / "out"), nproc_per_node=1, num_nodes=2, env=entry_module, timeout_s=240)
    assert res["world_size"] == 2 and res["rank_sum"] == 3.0


@pytest.mark.slow
def test_run_local_failure_names_the_entry(tmp_path, entry_module):
    with pytest.raises(LaunchError, match=r"hf_launch_entry:train.*exited with code 1: ValueError: boom on rank 0"):
        run_local(_call(tmp_path / "out", fail_rank=0), nproc_per_node=1, env=entry_module, timeout_s=240)


def test_torchrun_command_shapes():
    call = _call("/o")
    single = torchrun_command(call, 2)
    assert "--standalone" in single and "--nproc_per_node=2" in single
    multi = torchrun_command(call, 1, num_nodes=3, node_rank=2, master_port=1234)
    assert "--nnodes=3" in multi and "--node_rank=2" in multi and "--master_port=1234" in multi
    assert json.loads(multi[multi.index("--call") + 1])["entry"] == "hf_launch_entry:train"
    with pytest.raises(LaunchError, match="nproc_per_node"):
        torchrun_command(call, 0)


def test_call_json_round_trip_and_errors():
    call = _call("/o")
    assert TrainCall.from_json(call.to_json()) == call
    with pytest.raises(LaunchError, match="not valid JSON"):
        TrainCall.from_json("{nope")
    with pytest.raises(LaunchError, match="expected keys"):
        TrainCall.from_json(json.dumps({"entry": "a:b", "experiment": "x", "bogus": 1}))


SETTINGS = ClusterSettings(namespace="ml", secret_env={"AWS_SECRET_ACCESS_KEY": "s3-creds/secret-key"})
CALL = TrainCall("components.training.pinsage:train", "pinsage", [], {"data_dir": "/data/d", "out_dir": "/data/o"},
                 ["data_dir"])


def test_trainjob_fields():
    job = build_trainjob(CALL, num_nodes=4, nproc_per_node=8, settings=SETTINGS, name="hf-pinsage-1")
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    spec = job["spec"]
    assert spec["runtimeRef"]["name"] == "torch-distributed"
    tr = spec["trainer"]
    assert tr["numNodes"] == 4 and tr["numProcPerNode"] == 8
    assert tr["command"][:3] == ["torchrun", "-m", "components.launch.worker"]
    assert tr["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"name": "AWS_SECRET_ACCESS_KEY",
            "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "secret-key"}}} in tr["env"]
    pod = spec["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    assert pod["name"] == "node"
    pod_spec = pod["template"]["spec"]["template"]["spec"]
    assert pod_spec["volumes"][0]["persistentVolumeClaim"]["claimName"] == "homefeed-data"
    assert pod_spec["containers"][0]["volumeMounts"][0]["mountPath"] == "/data"
    assert pod_spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod_spec["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_trainjob_validation_rejects_unknown_and_mistyped_fields():
    job = build_trainjob(CALL, 2, 1, SETTINGS, name="hf-pinsage-2")
    bad = copy.deepcopy(job)
    bad["spec"]["trainer"]["numNodes"] = "two"
    with pytest.raises(LaunchError, match="invalid"):
        validate_trainjob(bad)
    bad = copy.deepcopy(job)
    bad["spec"]["trainer"]["numNodez"] = 2
    with pytest.raises(LaunchError, match=r"unknown field 'spec\.trainer\.numNodez'"):
        validate_trainjob(bad)
    bad = copy.deepcopy(job)
    del bad["spec"]["runtimeRef"]
    with pytest.raises(LaunchError, match="invalid"):
        validate_trainjob(bad)
    bad = copy.deepcopy(job)
    bad["apiVersion"] = "kubeflow.org/v1"
    with pytest.raises(LaunchError, match="apiVersion"):
        validate_trainjob(bad)


def test_pytorchjob_fields_and_validation():
    job = build_pytorchjob(CALL, num_nodes=3, nproc_per_node=2, settings=SETTINGS, name="hf-pinsage-3")
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] == 2
    assert job["spec"]["nprocPerNode"] == "2"
    c = specs["Worker"]["template"]["spec"]["containers"][0]
    assert c["name"] == "pytorch" and c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    single = build_pytorchjob(CALL, 1, 1, SETTINGS, name="hf-pinsage-4")
    assert set(single["spec"]["pytorchReplicaSpecs"]) == {"Master"}

    bad = copy.deepcopy(job)
    bad["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    with pytest.raises(LaunchError):
        validate_pytorchjob(bad)
    bad = copy.deepcopy(job)
    bad["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = 2
    with pytest.raises(LaunchError, match="Master"):
        validate_pytorchjob(bad)
    bad = copy.deepcopy(job)
    bad["spec"]["elasticPolicyy"] = {}
    with pytest.raises(LaunchError, match="unknown field 'spec.elasticPolicyy'"):
        validate_pytorchjob(bad)


def test_settings_from_env():
    s = ClusterSettings.from_env({"HOMEFEED_JOB_API": "pytorchjob", "HOMEFEED_GPUS_PER_NODE": "0",
                                  "HOMEFEED_NAMESPACE": "team"})
    assert (s.job_api, s.gpus_per_node, s.namespace) == ("pytorchjob", 0, "team")
    job = build_pytorchjob(CALL, 2, 1, s, name="hf-cpu")
    assert "nvidia.com/gpu" not in job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0][
        "resources"]["limits"]
    with pytest.raises(LaunchError, match="HOMEFEED_JOB_API|job_api"):
        ClusterSettings.from_env({"HOMEFEED_JOB_API": "mpijob"})
    with pytest.raises(LaunchError, match="HOMEFEED_GPUS_PER_NODE"):
        ClusterSettings.from_env({"HOMEFEED_GPUS_PER_NODE": "many"})


def test_job_state_from_conditions():
    assert job_state({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}, "trainjob") == "succeeded"
    assert job_state({"status": {"conditions": [{"type": "Succeeded", "status": "True"}]}}, "pytorchjob") == "succeeded"
    assert job_state({"status": {"conditions": [{"type": "Failed", "status": "True"}]}}, "trainjob") == "failed"
    assert job_state({"status": {}}, "trainjob") == "running"


def test_submit_and_wait_without_a_cluster_fails_clearly(tmp_path, monkeypatch):
    """No API server can run here: the real kubernetes client must fail to connect, not hang or pass."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(textwrap.dedent("""
        apiVersion: v1
        kind: Config
        clusters: [{name: none, cluster: {server: "https://127.0.0.1:1"}}]
        contexts: [{name: none, context: {cluster: none, user: none}}]
        current-context: none
        users: [{name: none, user: {token: x}}]
    """))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    job = build_trainjob(CALL, 2, 1, SETTINGS, name="hf-nowhere")
    with pytest.raises(Exception, match="(?i)connect|refused|Max retries"):
        submit_and_wait(job, ClusterSettings(timeout_s=5, poll_s=0.1))


@pytest.mark.slow
def test_launch_real_ranker_training_two_ranks(tmp_path, tiny_data):
    """The launcher runs a real library entry point (the ranker's DDP loop) under torchrun with 2 ranks."""
    out = tmp_path / "ranker"
    call = TrainCall("components.training.ranker:train", "ranker_tiny", ["max_steps=4"],
                     {"data_dir": str(tiny_data), "out_dir": str(out)}, path_kwargs=["data_dir"])
    res = launch(call, num_nodes=1, nproc_per_node=2, timeout_s=300)
    assert res["world_size"] == 2 and res["steps"] == 4
    assert (out / "model.pt").exists() and (out / "metrics.json").exists()


def test_one_process_runs_in_this_process_and_train_call_checks_the_config(tmp_path, entry_module, monkeypatch):
    monkeypatch.syspath_prepend(entry_module["PYTHONPATH"])
    res = launch(_call(tmp_path / "out"))  # nproc 1, one node: no torchrun, the same TrainCall
    assert res == {"world_size": 1, "rank_sum": 1.0, "epochs": 7, "node_rank": 0}
    call = train_call("ranker", "ranker_tiny", ["lr=0.5"], str(tmp_path / "m"), resume=True, data_dir="/d",
                      user_embeddings=None, pin_embeddings="/p")
    assert call.entry == "components.training.ranker:train" and call.path_kwargs == ["data_dir", "pin_embeddings"]
    assert call.kwargs == {"data_dir": "/d", "pin_embeddings": "/p", "out_dir": str(tmp_path / "m"), "resume": True}
    from components.config import ConfigError

    with pytest.raises(ConfigError, match="key 'lr' expects float > 0"):
        train_call("ranker", "ranker_tiny", ["lr=-1"], str(tmp_path / "m"), data_dir="/d")
    with pytest.raises(LaunchError, match="model 'gbdt': expected one of pinsage, pinnerformer, ranker"):
        train_call("gbdt", "ranker_tiny", [], str(tmp_path / "m"))
    with pytest.raises(LaunchError, match="must be >= 1"):
        launch(_call(tmp_path / "out"), nproc_per_node=0)


def test_pipelines_and_launcher_read_one_table_of_node_sizes():
    from pipelines.cluster import ClusterConfig

    cc, settings = ClusterConfig(), ClusterSettings()
    assert (cc.gpu_cpu_limit, cc.gpu_memory_limit, cc.accelerator_limit) == (GPU_NODE.cpu, GPU_NODE.memory, GPU_NODE.gpus)
    assert (settings.cpu_per_node, settings.memory_per_node, settings.gpus_per_node) == \
        (GPU_NODE.cpu, GPU_NODE.memory, GPU_NODE.gpus)
    assert (cc.cpu_limit, cc.memory_limit) == (CPU_NODE.cpu, CPU_NODE.memory)
    res = build_trainjob(CALL, 2, 1, settings, name="hf-size")["spec"]["trainer"]["resourcesPerNode"]
    assert res["limits"]["cpu"] == GPU_NODE.cpu and res["limits"]["memory"] == GPU_NODE.memory
