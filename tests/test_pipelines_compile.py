"""Every pipeline compiles; the compiled IR carries the steps, display names, typed parameters and the
kfp-kubernetes cluster settings; the image build files are what `kfp component build` produces."""

from __future__ import annotations

import configparser
import importlib
import shutil
from pathlib import Path

import pytest
import yaml

from components.cli import main as cli_main
from components.steps.images import CPU_BASE_IMAGE, CPU_IMAGE, GPU_BASE_IMAGE, GPU_IMAGE, generate_build_files
from pipelines.cluster import GPU_STEPS, STEP_NAMES
from pipelines.runner import compile_pipelines, parse_params

REPO = Path(__file__).resolve().parents[1]
DATA_BRANCHES = "condition-branches-1"  # prepare_data or import_data (dsl.If/dsl.Else), read through dsl.OneOf
TRAINING_ORDER = [DATA_BRANCHES, "sample-graph", "train-pinsage", "embed-pins", "train-pinnerformer", "train-ranker",
                  "evaluate-ranker", "export-ranker", "register-features", "build-index"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, tuple[dict, dict]]:
    out = tmp_path_factory.mktemp("pipelines")
    paths = compile_pipelines(out)
    result = {}
    for p in paths:
        docs = list(yaml.safe_load_all(p.read_text()))
        assert len(docs) == 2, f"{p}: expected the pipeline spec and the platform spec"
        result[p.stem] = (docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"])
    return result


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def _upstream(spec: dict, task: str) -> set[str]:
    t = spec["root"]["dag"]["tasks"][task]
    deps = set(t.get("dependentTasks", []))
    for inp in t.get("inputs", {}).get("artifacts", {}).values():
        if "taskOutputArtifact" in inp:
            deps.add(inp["taskOutputArtifact"]["producerTask"])
    return deps


def _ancestors(spec: dict, task: str) -> set[str]:
    seen, todo = set(), [task]
    while todo:
        for d in _upstream(spec, todo.pop()):
            if d not in seen:
                seen.add(d)
                todo.append(d)
    return seen


def test_training_dag_order_and_display_names(compiled):
    spec, _ = compiled["training"]
    tasks = spec["root"]["dag"]["tasks"]
    assert set(TRAINING_ORDER) <= set(tasks)
    for before, after in zip(TRAINING_ORDER, TRAINING_ORDER[1:]):
        if (before, after) in {("export-ranker", "register-features"), ("register-features", "build-index")}:
            continue  # the three publishing steps run side by side once the ranker is evaluated/embeddings exist
        assert before in _ancestors(spec, after), f"{before} must run before {after}"
    assert "evaluate-ranker" in _ancestors(spec, "export-ranker")  # the evaluation gates the export
    for name, t in tasks.items():  # kfp names the If/Else group itself; its two branches carry names
        assert t["taskInfo"]["name"] != name or name == DATA_BRANCHES, f"task {name} has no display name"


def test_daily_dag(compiled):
    spec, _ = compiled["daily"]
    tasks = spec["root"]["dag"]["tasks"]
    loops = {n: list(spec["components"][t["componentRef"]["name"]]["dag"]["tasks"]) for n, t in tasks.items()
             if n.startswith("for-loop")}  # the shard fan-outs (dsl.ParallelFor over shard-ids)
    assert sorted(loops.values()) == [["embed-pin-tower", "embed-users"], ["embed-pins"]]
    assert all("shard-ids" in _upstream(spec, n) for n in loops)
    assert "merge-pins" in _ancestors(spec, "merge-users") and "merge-pins" in _ancestors(spec, "merge-pin-tower")
    assert "merge-users" in _ancestors(spec, "register-features")
    assert "merge-pin-tower" in _ancestors(spec, "build-index")
    assert sum(1 for t in tasks if t.startswith("importer")) == 3
    assert all(t["taskInfo"]["name"] != n for n, t in tasks.items())
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["date"]["parameterType"] == "STRING" and not params["date"].get("isOptional")
    assert params["shards"] == {"defaultValue": 1, "isOptional": True, "parameterType": "NUMBER_INTEGER"}


def _wiring_of(task: dict) -> dict[str, str]:
    """A task's parameter inputs -> the pipeline parameter each comes from ("=value" for a compiled constant)."""
    out = {}
    for name, src in task["inputs"].get("parameters", {}).items():
        out[name] = src["componentInputParameter"] if "componentInputParameter" in src else \
            f"={src.get('runtimeValue', {}).get('constant')}"
    return out


def _wiring(spec: dict, task: str) -> dict[str, str]:
    return _wiring_of(spec["root"]["dag"]["tasks"][task])


def test_daily_store_steps_get_both_stack_and_their_own_parameters(compiled):
    """Regression: ``repo_dir="" if stack else feature_repo`` tested the pipeline PARAMETER at compile time
    (always truthy), so register_features got the constant ""; both parameters are wired through and the
    step decides at run time (the stack wins when non-empty)."""
    spec, _ = compiled["daily"]
    assert _wiring(spec, "register-features") == {"date": "date", "repo_dir": "feature_repo", "stack": "stack"}
    assert _wiring(spec, "build-index") == {"milvus_uri": "milvus_uri", "stack": "stack"}
    assert _wiring(spec, "merge-users") == {"date": "date", "store_root": "embeddings_root", "stack": "stack"}


def test_training_data_from_prepare_data_or_import_data(compiled):
    """Both branches compile: a non-empty ``import_config`` runs import_data, else prepare_data; every
    step that reads the data directory reads the one artifact of whichever branch ran (dsl.OneOf)."""
    spec, _ = compiled["training"]
    branches = spec["components"][spec["root"]["dag"]["tasks"][DATA_BRANCHES]["componentRef"]["name"]]["dag"]
    inner = {}
    for t in branches["tasks"].values():
        tasks = spec["components"][t["componentRef"]["name"]]["dag"]["tasks"]
        (step,) = tasks
        inner[step] = (t["triggerPolicy"]["condition"], _wiring_of(tasks[step]))
    assert inner["import-data"] == ("inputs.parameter_values['pipelinechannel--import_config'] != ''",
                                    {"config": "pipelinechannel--import_config"})
    assert "!(" in inner["prepare-data"][0] and "import_config" in inner["prepare-data"][0]  # the Else branch
    assert inner["prepare-data"][1] == {"experiment": "pipelinechannel--data_experiment",
                                        "overrides": "pipelinechannel--data_overrides"}
    (oneof,) = branches["outputs"]["artifacts"].values()
    assert sorted(s["producerSubtask"] for s in oneof["artifactSelectors"]) == sorted(branches["tasks"])
    readers = [n for n, t in spec["root"]["dag"]["tasks"].items() if "data" in t["inputs"].get("artifacts", {})]
    assert len(readers) == 9
    for n in readers:
        assert spec["root"]["dag"]["tasks"][n]["inputs"]["artifacts"]["data"]["taskOutputArtifact"][
            "producerTask"] == DATA_BRANCHES, n
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["import_config"] == params["stack"] == {"defaultValue": "", "isOptional": True,
                                                           "parameterType": "STRING"}


def test_training_store_steps_take_the_stack(compiled):
    spec, _ = compiled["training"]
    assert _wiring(spec, "register-features") == {"date": "date", "repo_dir": "feature_repo", "stack": "stack"}
    assert _wiring(spec, "build-index") == {"milvus_uri": "milvus_uri", "stack": "stack"}
    assert _wiring(spec, "embed-users") == {"date": "date", "store_root": "embeddings_root",
                                            "backfill_days": "user_backfill_days", "stack": "stack"}


def test_typed_parameters_with_defaults(compiled):
    params = compiled["training"][0]["root"]["inputDefinitions"]["parameters"]
    assert params["ranker_experiment"] == {"defaultValue": "ranker", "isOptional": True, "parameterType": "STRING"}
    assert params["num_nodes"]["parameterType"] == "NUMBER_INTEGER" and params["num_nodes"]["defaultValue"] == 1
    assert params["min_auc"]["parameterType"] == "NUMBER_DOUBLE"
    assert params["ranker_overrides"]["parameterType"] == "LIST"
    assert all("defaultValue" in p for p in params.values())


def test_docstrings_list_every_step():
    for module in ("pipelines.training", "pipelines.daily_embedding"):
        doc = importlib.import_module(module).__doc__
        assert "Steps" in doc
    training_doc = importlib.import_module("pipelines.training").__doc__
    for name in STEP_NAMES:
        assert name in training_doc, f"pipelines/training.py docstring does not list {name}"


def test_cluster_settings_in_ir(compiled):
    for name, (spec, executors) in compiled.items():
        containers = spec["deploymentSpec"]["executors"]
        for exec_name, platform in executors.items():
            assert platform["pvcMount"][0]["constant"] == "homefeed-data", (name, exec_name)
            assert platform["pvcMount"][0]["mountPath"] == "/data"
            step = exec_name.removeprefix("exec-").replace("-", "_")
            container = containers[exec_name]["container"]
            if step in GPU_STEPS:
                assert platform["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
                assert platform["tolerations"][0] == {"key": "nvidia.com/gpu", "operator": "Exists",
                                                      "effect": "NoSchedule"}
                assert container["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
                assert container["resources"]["accelerator"]["resourceCount"] == "1"
                assert container["image"] == GPU_IMAGE
                assert {"name": "HOMEFEED_JOB_API", "value": "trainjob"} in container["env"]
            else:
                assert "nodeSelector" not in platform and "tolerations" not in platform
                assert container["image"] == CPU_IMAGE
            assert container["command"][:3] == ["python3", "-m", "kfp.dsl.executor_main"]  # containerized
            assert "resourceCpuLimit" in container["resources"]
        gpu_execs = {e for e in executors if e.removeprefix("exec-").replace("-", "_") in GPU_STEPS}
        if name == "training":
            assert gpu_execs == {f"exec-{_kebab(s)}" for s in GPU_STEPS}
    for name in ("training", "daily"):
        secrets = {e: [s["secretName"] for s in p.get("secretAsEnv", [])] for e, p in compiled[name][1].items()}
        assert secrets["exec-build-index"] == ["milvus-auth"]
        assert {"redis-auth", "feast-registry"} <= set(secrets["exec-register-features"])
        env = compiled[name][1]["exec-build-index"]["secretAsEnv"][0]
        assert env["keyToEnv"] == [{"secretKey": "token", "envVar": "MILVUS_TOKEN"}] and env["optional"]
        if name == "training":
            # optional, as the chart's endpoints.objectStorage.existingSecret defaults to workload identity
            store = [s for s in compiled[name][1]["exec-export-ranker"]["secretAsEnv"]
                     if s["secretName"] == "homefeed-object-store"]
            assert len(store) == 1 and store[0]["optional"]


def _chart_secrets() -> dict[str, tuple[str, str]]:
    """Environment variable -> (Secret, key) as helm/homefeed/values.yaml names them (endpoints.*)."""
    e = yaml.safe_load((REPO / "helm" / "homefeed" / "values.yaml").read_text())["endpoints"]
    return {"REDIS_PASSWORD": (e["redis"]["existingSecret"], e["redis"]["existingSecretKey"]),
            "FEAST_REGISTRY_PASSWORD": (e["registry"]["existingSecret"], e["registry"]["existingSecretKey"]),
            "MILVUS_TOKEN": (e["milvus"]["existingSecret"], e["milvus"]["existingSecretKey"])}


def test_daily_pods_use_the_charts_stack_configmap_and_secrets(compiled):
    """The daily pipeline's store steps mount the chart's stack ConfigMap at the chart's stack directory with
    HOMEFEED_STACK set, and read the credentials from the Secrets/keys the chart's values name (Milvus: the
    chart's default is no authentication, existingSecret "", so the pipeline's milvus-auth is optional and
    only its key must agree)."""
    chart = _chart_secrets()
    helpers = (REPO / "helm" / "homefeed" / "templates" / "_helpers.tpl").read_text()
    assert '{{- define "homefeed.stackDir" -}}/etc/homefeed{{- end -}}' in helpers  # the chart's mount path
    for env in chart:  # the chart's stack file reads each credential from that environment variable
        assert f"{{env: {env}}}" in helpers, env
    spec, executors = compiled["daily"]
    containers = spec["deploymentSpec"]["executors"]
    seen = {}
    for step in ("embed_users", "merge_users", "register_features", "build_index"):
        ex = f"exec-{_kebab(step)}"
        (cm,) = executors[ex]["configMapAsVolume"]
        assert (cm["configMapName"], cm["mountPath"]) == ("homefeed-stack", "/etc/homefeed")
        assert {"name": "HOMEFEED_STACK", "value": "/etc/homefeed/stack.yaml"} in containers[ex]["container"]["env"]
        for s in executors[ex].get("secretAsEnv", []):
            for k in s["keyToEnv"]:
                seen[k["envVar"]] = (s["secretName"], k["secretKey"], s["optional"])
    assert "configMapAsVolume" not in executors["exec-embed-pins"]
    for env, (secret, key) in chart.items():
        got_secret, got_key, optional = seen[env]
        assert got_key == key, (env, got_key, key)
        assert got_secret == secret if secret else optional, (env, got_secret, secret)
    assert seen["MILVUS_TOKEN"][0] == "milvus-auth"


def test_stack_configmap_name_from_the_environment(monkeypatch):
    """The chart's CronJob compiles the pipeline with HOMEFEED_STACK_CONFIGMAP=<release>-homefeed-stack."""
    from pipelines.cluster import ClusterConfig

    monkeypatch.setenv("HOMEFEED_STACK_CONFIGMAP", "rel-homefeed-stack")
    assert ClusterConfig().stack_config_map == "rel-homefeed-stack"
    monkeypatch.delenv("HOMEFEED_STACK_CONFIGMAP")
    assert ClusterConfig().stack_config_map == "homefeed-stack"


def test_local_variant_has_no_cluster_settings(tmp_path):
    from kfp import compiler

    from pipelines.training import build

    path = tmp_path / "local.yaml"
    compiler.Compiler().compile(build(local=True), str(path))
    docs = list(yaml.safe_load_all(path.read_text()))
    assert len(docs) == 1  # no platform spec
    for ex in docs[0]["deploymentSpec"]["executors"].values():
        assert "ephemeral_component.py" in " ".join(ex["container"]["command"])  # lightweight
        assert "pip install" not in " ".join(ex["container"]["command"])  # nothing downloaded locally


def test_local_variant_starts_from_the_chosen_data_step(tmp_path):
    """kfp.local cannot resolve a dsl.OneOf of artifacts: run_local builds the local training DAG with
    import_data when it is given an import_config, else with prepare_data."""
    from kfp import compiler

    from pipelines.training import build

    for local_import, step, other in ((True, "import-data", "prepare-data"), (False, "prepare-data", "import-data")):
        path = tmp_path / f"local-{step}.yaml"
        compiler.Compiler().compile(build(local=True, local_import=local_import), str(path))
        tasks = yaml.safe_load(path.read_text())["root"]["dag"]["tasks"]
        assert step in tasks and other not in tasks and not any(t.startswith("condition") for t in tasks)
        assert tasks["sample-graph"]["inputs"]["artifacts"]["data"]["taskOutputArtifact"]["producerTask"] == step


def test_cli_compile_writes_yaml(tmp_path):
    assert cli_main(["pipeline", "compile", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["daily.yaml", "training.yaml"]
    assert cli_main(["pipeline", "compile", "daily", "--out", str(tmp_path / "d")]) == 0
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["daily.yaml"]


def test_parse_params():
    assert parse_params(["min_auc=0.6", "ranker_overrides=[epochs=2, lr=0.01]", "date=2024-01-27"]) == {
        "min_auc": 0.6, "ranker_overrides": ["epochs=2", "lr=0.01"], "date": "2024-01-27"}
    with pytest.raises(ValueError, match="name=value"):
        parse_params(["oops"])


def test_unknown_parameter_is_named():
    from pipelines.runner import _check_params, pipeline_func

    with pytest.raises(ValueError, match="unknown parameter.*bogus"):
        _check_params(pipeline_func("training"), {"bogus": 1}, "training")


def test_kfp_component_build_files(tmp_path):
    """`kfp component build components/ --no-build-image` on a copy: one CPU and one GPU Dockerfile, the
    component specs and kfp_config.ini for all steps; the committed files are up to date."""
    comp = tmp_path / "components"
    shutil.copytree(REPO / "components" / "steps", comp / "steps", ignore=shutil.ignore_patterns("__pycache__"))
    generate_build_files(comp)
    assert (comp / "Dockerfile").read_text().count(f"FROM {CPU_BASE_IMAGE}") == 1
    assert (comp / "Dockerfile.gpu").read_text().count(f"FROM {GPU_BASE_IMAGE}") == 1
    ini = configparser.ConfigParser()
    ini.read(comp / "kfp_config.ini")
    assert dict(ini["Components"]) == {s: f"steps/{s}.py" for s in STEP_NAMES}
    for s in STEP_NAMES:
        generated = (comp / "component_metadata" / f"{s}.yaml").read_text()
        assert CPU_IMAGE in generated
        committed = REPO / "components" / "component_metadata" / f"{s}.yaml"
        assert committed.read_text() == generated, f"{committed} is stale: run python -m components.steps.images"
    for name in ("Dockerfile", "Dockerfile.gpu", "kfp_config.ini", ".dockerignore"):
        assert (REPO / "components" / name).read_text() == (comp / name).read_text(), f"components/{name} is stale"


def test_submit_validates_parameters_before_connecting():
    from pipelines.runner import submit

    with pytest.raises(ValueError, match="unknown parameter.*dat"):
        submit("daily", "http://127.0.0.1:9", {"dat": "2024-01-01"})


def test_submit_without_a_kfp_server_fails_with_a_connection_error():
    """No KFP API server can run here: the real kfp.Client must fail to connect (port 9 on loopback)."""
    from pipelines.runner import submit

    with pytest.raises(Exception, match="(?i)connect|refused|Max retries"):
        submit("daily", "http://127.0.0.1:9", {"date": "2024-01-01"})
