"""Step: train PinnerFormer on action sequences over PinSage pin embeddings."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.steps.images import step


@step
def train_pinnerformer(experiment: str, data: Input[Dataset], pin_embeddings: Input[Dataset], model: Output[Model],
                       metrics: Output[Metrics], overrides: list = None, num_nodes: int = 1, nproc_per_node: int = 1):
    """``components.training.pinnerformer.train(cfg, data, pin_embeddings, model)`` through ``components.launch``."""
    # the local (lightweight) component runs this function's source alone, so its imports live inside it
    from components.launch import launch, train_call
    from components.steps.common import load_config, log_metrics, table_path

    _, resolved = load_config(experiment, overrides, model="pinnerformer")
    call = train_call("pinnerformer", experiment, overrides, model.path, data_dir=data.path,
                      pin_embeddings=str(table_path(pin_embeddings.path)))
    result = launch(call, num_nodes=num_nodes, nproc_per_node=nproc_per_node)
    model.metadata["config"] = resolved
    model.metadata["num_nodes"] = num_nodes
    model.metadata["nproc_per_node"] = nproc_per_node
    log_metrics(metrics, result)
