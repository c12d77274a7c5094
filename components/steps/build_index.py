"""Step: index pin embeddings in Milvus (new collection per version, HNSW cosine) and switch the alias."""

from kfp.dsl import Dataset, Input, Metrics, Output

from components.steps.images import step


@step
def build_index(pin_embeddings: Input[Dataset], index: Output[Dataset], stats: Output[Metrics],
                milvus_uri: str = "", alias: str = "pins", stack: str = ""):
    """``components.serving.milvus_index.build_index(milvus_uri, table, alias)`` -> the collection name.

    ``stack``: a stack file: Milvus URI, token, alias and collections kept (these win over ``milvus_uri``
    and ``alias``). ``milvus_uri``: ``http://milvus:19530`` on a cluster, a file path for Milvus Lite;
    "" = a Milvus Lite file inside this run's ``index`` artifact. The previous collection serves until the
    alias switch and is kept for rollback.
    """
    # the local (lightweight) component runs this function's source alone, so its imports live inside it
    import os
    import time

    from components.serving.milvus_index import build_index as run
    from components.stackconfig import load_stack
    from components.steps.common import log_metrics, table_path

    uri, token, keep = milvus_uri or os.path.join(index.path, "milvus.db"), None, 3
    if stack:
        m = load_stack(stack).milvus
        uri, alias, keep, token = m.uri, m.alias, m.keep_collections, m.token.resolve("milvus.token") if m.token else None
    t0 = time.perf_counter()
    collection = run(uri, table_path(pin_embeddings.path), alias=alias, keep=keep, token=token)
    index.metadata["milvus_uri"] = uri
    index.metadata["collection"] = collection
    index.metadata["alias"] = alias
    index.metadata["embeddings_version"] = pin_embeddings.metadata.get("model_version", "")
    log_metrics(stats, {"build_s": time.perf_counter() - t0})
