"""Step: the pin-tower shard tables of the daily run merged (disjoint, sorted by pin id) and published."""

from kfp.dsl import Dataset, Input, Metrics, Output

from components.steps.images import step


@step
def merge_pin_tower(parts: Input[list[Dataset]], embeddings: Output[Dataset], stats: Output[Metrics],
                    version: str = ""):
    """``components.inference.shards.merge_files(parts)`` published as ``version`` of
    ``embeddings/pins`` (the layout of the unsharded ``embed_pin_tower`` step's output)."""
    # the local (lightweight) component runs this function's source alone, so its imports live inside it
    import os

    from components.data.tables import VersionedStore
    from components.inference.shards import merge_files
    from components.inference.users import PINS_STORE
    from components.steps.common import log_metrics, table_path

    table = merge_files([table_path(p.path) for p in parts])
    path = VersionedStore(os.path.join(embeddings.path, PINS_STORE)).publish(table, version or "merged")
    embeddings.metadata["table"] = str(path)
    embeddings.metadata["model_version"] = table.model_version
    embeddings.metadata["config"] = parts[0].metadata.get("config", {})
    log_metrics(stats, {"pins": len(table), "dim": table.dim, "shards": len(parts)})
