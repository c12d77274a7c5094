"""Step: train PinSage (in the step's process, torchrun for several processes, a Kubeflow Trainer job when
num_nodes > 1 on a cluster) on the sample_graph step's neighbourhoods."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.steps.images import step


@step
def train_pinsage(experiment: str, data: Input[Dataset], graph: Input[Dataset], model: Output[Model],
                  metrics: Output[Metrics], overrides: list = None, num_nodes: int = 1, nproc_per_node: int = 1):
    """``components.training.pinsage.train(cfg, data, model, neighbourhoods=graph)`` through
    ``components.launch``: the neighbourhoods sample_graph wrote are used, not sampled again."""
    # the local (lightweight) component runs this function's source alone, so its imports live inside it
    from components.launch import launch, train_call
    from components.steps.common import load_config, log_metrics

    _, resolved = load_config(experiment, overrides, model="pinsage")
    call = train_call("pinsage", experiment, overrides, model.path, data_dir=data.path, neighbourhoods=graph.path)
    result = launch(call, num_nodes=num_nodes, nproc_per_node=nproc_per_node)
    model.metadata["config"] = resolved
    model.metadata["num_nodes"] = num_nodes
    model.metadata["nproc_per_node"] = nproc_per_node
    log_metrics(metrics, result)
