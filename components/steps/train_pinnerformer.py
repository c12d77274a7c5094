"""Step: train PinnerFormer on action sequences over PinSage pin embeddings."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.steps.images import step


@step
def train_pinnerformer(experiment: str, data: Input[Dataset], pin_embeddings: Input[Dataset], model: Output[Model],
                       metrics: Output[Metrics], overrides: list = None, num_nodes: int = 1, nproc_per_node: int = 1):
    """``components.training.pinnerformer.train(cfg, data, pin_embeddings, model)`` through the launcher."""
    from components.steps.common import load_config, log_metrics, table_path
    from components.training.launch import TrainCall, launch

    _, resolved = load_config(experiment, overrides, model="pinnerformer")
    call = TrainCall("components.training.pinnerformer:train", experiment, list(overrides or []),
                     {"data_dir": data.path, "pin_embeddings": str(table_path(pin_embeddings.path)), "out_dir": model.path},
                     path_kwargs=["data_dir", "pin_embeddings"])
    result = launch(call, num_nodes=num_nodes, nproc_per_node=nproc_per_node)
    model.metadata["config"] = resolved
    model.metadata["num_nodes"] = num_nodes
    model.metadata["nproc_per_node"] = nproc_per_node
    log_metrics(metrics, result)
