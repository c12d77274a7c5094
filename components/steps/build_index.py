"""Step: index pin embeddings in Milvus (new collection per version, HNSW cosine) and switch the alias."""

from kfp.dsl import Dataset, Input, Metrics, Output

from components.steps.images import step


@step
def build_index(pin_embeddings: Input[Dataset], index: Output[Dataset], stats: Output[Metrics],
                milvus_uri: str = "", alias: str = "pins"):
    """``components.serving.milvus_index.build_index(milvus_uri, table, alias)`` -> the collection name.

    ``milvus_uri``: ``http://milvus:19530`` on a cluster, a file path for Milvus Lite; "" = a Milvus Lite
    file inside this run's ``index`` artifact. The previous collection serves until the alias switch.
    """
    import os
    import time

    from components.serving.milvus_index import build_index as run
    from components.steps.common import log_metrics, table_path

    uri = milvus_uri or os.path.join(index.path, "milvus.db")
    t0 = time.perf_counter()
    collection = run(uri, table_path(pin_embeddings.path), alias=alias)
    index.metadata["milvus_uri"] = uri
    index.metadata["collection"] = collection
    index.metadata["alias"] = alias
    index.metadata["embeddings_version"] = pin_embeddings.metadata.get("model_version", "")
    log_metrics(stats, {"build_s": time.perf_counter() - t0})
