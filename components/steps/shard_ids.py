"""Step: the shard numbers 0..shards-1 that the daily pipeline's ParallelFor fans the embedding jobs out over."""

from components.steps.images import step


@step
def shard_ids(shards: int = 1) -> list[int]:
    """``components.inference.shards.check_shard`` then ``[0, .., shards - 1]``."""
    # the local (lightweight) component runs this function's source alone, so its imports live inside it
    from components.inference.shards import check_shard

    check_shard(0, shards)
    return list(range(shards))
