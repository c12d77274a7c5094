"""Step: PinnerFormer's pin tower over the PinSage embeddings: the retrieval space indexed in Milvus."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.steps.images import step


@step
def embed_pin_tower(model: Input[Model], pin_embeddings: Input[Dataset], embeddings: Output[Dataset],
                    stats: Output[Metrics], version: str = "", shard: int = 0, shards: int = 0):
    """``components.inference.users.embed_pin_tower(model, pin_embeddings, embeddings, version)``; ``shards`` > 0:
    only shard ``shard``'s pins (the daily pipeline's ParallelFor; ``merge_pin_tower`` publishes the union)."""
    # the local (lightweight) component runs this function's source alone, so its imports live inside it
    from components.inference.users import embed_pin_tower as run
    from components.steps.common import describe_pins, table_path

    path = run(model.path, str(table_path(pin_embeddings.path)), embeddings.path, version=version or None,
               shard=(shard, shards) if shards > 0 else None)
    describe_pins(embeddings, stats, model, path, shard, shards)
