"""The daily embedding pipeline for a date D: fresh user and pin embeddings, published to serving.

Steps (each a task with a display name):
1. import data, PinSage model, PinnerFormer model   (dsl.importer: URIs of the training run's artifacts)
2. shard_ids          0..shards-1: the three embedding jobs fan out over them (``dsl.ParallelFor``; on a
                      cluster Argo runs each shard in its own pod)
3. embed_pins         per shard: PinSage layer-wise inference of the shard's pins -> merge_pins, version D
4. embed_users        per shard: the shard's users active on D -> merge_users merges them with the previous
                      table in ``embeddings_root`` and publishes version D
5. register_features  materialise the merged user table and today's pin table to Feast as of D
6. embed_pin_tower    per shard: PinnerFormer's pin tower over the shard's pins -> merge_pin_tower, version D
7. build_index        a new Milvus collection for version D, then the alias switch (the last N kept)

Shard k of n holds the ids whose hash is k modulo n (components/inference/shards.py); the merged tables equal
the unsharded run's (tests/test_sharding.py), so ``shards`` changes where the work runs, not what is published.

``stack`` (a stack file path, e.g. the chart's /etc/homefeed/stack.yaml): when set, every store comes from
it (embedding root, Feast repo and stores with credentials, Milvus URI/token/alias) and
``embeddings_root``/``feature_repo``/``milvus_uri`` are ignored.

``build(local=True)`` gives the same DAG over lightweight components for ``kfp.local``; the module-level
``daily_embedding_pipeline`` is the cluster version (kfp-kubernetes settings, see pipelines/cluster.py).
"""

from kfp import dsl
from kfp.dsl import Dataset, Model

from pipelines.cluster import ClusterConfig, apply, steps


def build(local: bool = False, cluster: ClusterConfig | None = None):
    """The daily embedding pipeline function; ``cluster`` settings are applied unless ``local``."""
    s = steps(local)
    cluster = None if local else (cluster or ClusterConfig())

    @dsl.pipeline(name="homefeed-daily-embedding", description=__doc__.splitlines()[0])
    def daily_embedding_pipeline(
        date: str,
        data_uri: str = "minio://mlpipeline/homefeed/data",
        pinsage_model_uri: str = "minio://mlpipeline/homefeed/models/pinsage",
        pinnerformer_model_uri: str = "minio://mlpipeline/homefeed/models/pinnerformer",
        embeddings_root: str = "/data/homefeed/embeddings",
        feature_repo: str = "/data/homefeed/feature_repo",
        milvus_uri: str = "http://milvus:19530",
        stack: str = "",
        shards: int = 1,
    ):
        data = dsl.importer(artifact_uri=data_uri, artifact_class=Dataset, reimport=False).set_display_name(
            "Import data")
        pinsage = dsl.importer(artifact_uri=pinsage_model_uri, artifact_class=Model, reimport=False).set_display_name(
            "Import PinSage model")
        pinnerformer = dsl.importer(artifact_uri=pinnerformer_model_uri, artifact_class=Model,
                                    reimport=False).set_display_name("Import PinnerFormer model")
        ids = apply(s.shard_ids(shards=shards).set_display_name("Shards"), "shard_ids", cluster)
        with dsl.ParallelFor(ids.output, name="PinSage shards") as shard:
            pin_shard = apply(s.embed_pins(data=data.output, model=pinsage.output, version=date, shard=shard,
                                           shards=shards).set_display_name("Embed pins (PinSage), one shard"),
                              "embed_pins", cluster)
        pins = apply(s.merge_pins(parts=dsl.Collected(pin_shard.outputs["embeddings"]), version=date)
                     .set_display_name("Merge pin shards"), "merge_pins", cluster)
        with dsl.ParallelFor(ids.output, name="User and pin-tower shards") as shard:
            user_shard = apply(s.embed_users(data=data.output, model=pinnerformer.output,
                                             pin_embeddings=pins.outputs["embeddings"], date=date,
                                             store_root=embeddings_root, stack=stack, shard=shard, shards=shards)
                               .set_display_name("Embed users active on D, one shard"), "embed_users", cluster)
            tower_shard = apply(s.embed_pin_tower(model=pinnerformer.output, pin_embeddings=pins.outputs["embeddings"],
                                                  version=date, shard=shard, shards=shards)
                                .set_display_name("Embed pins (PinnerFormer pin tower), one shard"),
                                "embed_pin_tower", cluster)
        users = apply(s.merge_users(parts=dsl.Collected(user_shard.outputs["users"]), model=pinnerformer.output,
                                    date=date, store_root=embeddings_root, stack=stack)
                      .set_display_name("Merge user shards into the store (incremental)"), "merge_users", cluster)
        apply(s.register_features(data=data.output, user_embeddings=users.outputs["users"],
                                  pin_embeddings=pins.outputs["embeddings"], date=date,
                                  repo_dir=feature_repo, stack=stack)
              .set_display_name("Materialise to Feast"), "register_features", cluster)
        tower = apply(s.merge_pin_tower(parts=dsl.Collected(tower_shard.outputs["embeddings"]), version=date)
                      .set_display_name("Merge pin-tower shards"), "merge_pin_tower", cluster)
        apply(s.build_index(pin_embeddings=tower.outputs["embeddings"], milvus_uri=milvus_uri, stack=stack)
              .set_display_name("New Milvus collection + alias switch"), "build_index", cluster)

    return daily_embedding_pipeline


daily_embedding_pipeline = build()
