"""Step: train PinSage (torchrun locally; a Kubeflow Trainer job when num_nodes > 1 on a cluster)."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.steps.images import step


@step
def train_pinsage(experiment: str, data: Input[Dataset], graph: Input[Dataset], model: Output[Model],
                  metrics: Output[Metrics], overrides: list = None, num_nodes: int = 1, nproc_per_node: int = 1):
    """``components.training.pinsage.train(cfg, data, model)`` through ``components.training.launch``.

    ``graph`` orders this step after sample_graph; training re-samples the same seeded neighbourhoods.
    """
    from components.steps.common import load_config, log_metrics
    from components.training.launch import TrainCall, launch

    _, resolved = load_config(experiment, overrides, model="pinsage")
    call = TrainCall("components.training.pinsage:train", experiment, list(overrides or []),
                     {"data_dir": data.path, "out_dir": model.path}, path_kwargs=["data_dir"])
    result = launch(call, num_nodes=num_nodes, nproc_per_node=nproc_per_node)
    model.metadata["config"] = resolved
    model.metadata["num_nodes"] = num_nodes
    model.metadata["nproc_per_node"] = nproc_per_node
    log_metrics(metrics, result)
