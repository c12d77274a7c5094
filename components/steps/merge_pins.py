"""Step: the PinSage shard tables of the daily run merged (disjoint, sorted by pin id) and published."""

from kfp.dsl import Dataset, Input, Metrics, Output

from components.steps.images import step


@step
def merge_pins(parts: Input[list[Dataset]], embeddings: Output[Dataset], stats: Output[Metrics],
               version: str = ""):
    """``components.inference.shards.merge_files(parts)`` published as ``version`` of the VersionedStore
    ``embeddings`` (the layout of the unsharded ``embed_pins`` step's output)."""
    # the local (lightweight) component runs this function's source alone, so its imports live inside it
    from components.data.tables import VersionedStore
    from components.inference.shards import merge_files
    from components.steps.common import log_metrics, table_path

    table = merge_files([table_path(p.path) for p in parts])
    path = VersionedStore(embeddings.path).publish(table, version or "merged")
    embeddings.metadata["table"] = str(path)
    embeddings.metadata["model_version"] = table.model_version
    embeddings.metadata["config"] = parts[0].metadata.get("config", {})
    log_metrics(stats, {"pins": len(table), "dim": table.dim, "shards": len(parts)})
