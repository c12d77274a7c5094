"""Step: layer-wise PinSage inference over every pin, published as a versioned embedding table."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.steps.images import step


@step
def embed_pins(data: Input[Dataset], model: Input[Model], embeddings: Output[Dataset], stats: Output[Metrics],
               version: str = "", shard: int = 0, shards: int = 0):
    """``components.inference.pinsage.embed_pins(model, data, embeddings, version)``; ``embeddings`` is a
    VersionedStore root (``CURRENT`` names the table). ``shards`` > 0: only shard ``shard``'s pins (the
    daily pipeline's ParallelFor; ``merge_pins`` publishes the union)."""
    # the local (lightweight) component runs this function's source alone, so its imports live inside it
    from components.inference.pinsage import embed_pins as run
    from components.steps.common import describe_pins

    path = run(model.path, data.path, embeddings.path, version=version or None,
               shard=(shard, shards) if shards > 0 else None)
    describe_pins(embeddings, stats, model, path, shard, shards)
