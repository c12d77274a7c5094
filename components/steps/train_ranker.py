"""Step: train the multi-task homefeed ranker on impressions, with PinnerFormer/PinSage embeddings."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.steps.images import step


@step
def train_ranker(experiment: str, data: Input[Dataset], model: Output[Model], metrics: Output[Metrics],
                 user_embeddings: Input[Dataset] = None, pin_embeddings: Input[Dataset] = None,
                 overrides: list = None, num_nodes: int = 1, nproc_per_node: int = 1):
    """``components.training.ranker.train(cfg, data, model, user_embeddings, pin_embeddings)`` through
    ``components.launch``; a missing embedding table falls back to the content baseline."""
    # the local (lightweight) component runs this function's source alone, so its imports live inside it
    from components.launch import launch, train_call
    from components.steps.common import load_config, log_metrics, table_path

    _, resolved = load_config(experiment, overrides, model="ranker")
    call = train_call("ranker", experiment, overrides, model.path, data_dir=data.path,
                      user_embeddings=str(table_path(user_embeddings.path)) if user_embeddings is not None else None,
                      pin_embeddings=str(table_path(pin_embeddings.path)) if pin_embeddings is not None else None)
    result = launch(call, num_nodes=num_nodes, nproc_per_node=nproc_per_node)
    model.metadata["config"] = resolved
    model.metadata["embeddings"] = "trained" if user_embeddings is not None else "content baseline"
    log_metrics(metrics, result)
