"""The daily embedding pipeline for a date D: fresh user and pin embeddings, published to serving.

Steps (each a task with a display name):
1. import data, PinSage model, PinnerFormer model   (dsl.importer: URIs of the training run's artifacts)
2. embed_pins         PinSage layer-wise inference over every pin, version D
3. embed_users        users active on D only, merged with the previous table in ``embeddings_root``
4. register_features  materialise the merged user table and today's pin table to Feast as of D
5. embed_pin_tower    PinnerFormer's pin tower over today's PinSage embeddings, version D
6. build_index        a new Milvus collection for version D, then the alias switch (the last N kept)

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
    ):
        data = dsl.importer(artifact_uri=data_uri, artifact_class=Dataset, reimport=False).set_display_name(
            "Import data")
        pinsage = dsl.importer(artifact_uri=pinsage_model_uri, artifact_class=Model, reimport=False).set_display_name(
            "Import PinSage model")
        pinnerformer = dsl.importer(artifact_uri=pinnerformer_model_uri, artifact_class=Model,
                                    reimport=False).set_display_name("Import PinnerFormer model")
        pins = apply(s.embed_pins(data=data.output, model=pinsage.output, version=date)
                     .set_display_name("Embed pins (PinSage)"), "embed_pins", cluster)
        users = apply(s.embed_users(data=data.output, model=pinnerformer.output, pin_embeddings=pins.outputs["embeddings"],
                                    date=date, store_root=embeddings_root, stack=stack)
                      .set_display_name("Embed users active on D (incremental, merged)"), "embed_users", cluster)
        apply(s.register_features(data=data.output, user_embeddings=users.outputs["users"],
                                  pin_embeddings=pins.outputs["embeddings"], date=date,
                                  repo_dir="" if stack else feature_repo, stack=stack)
              .set_display_name("Materialise to Feast"), "register_features", cluster)
        tower = apply(s.embed_pin_tower(model=pinnerformer.output, pin_embeddings=pins.outputs["embeddings"],
                                        version=date)
                      .set_display_name("Embed pins (PinnerFormer pin tower)"), "embed_pin_tower", cluster)
        apply(s.build_index(pin_embeddings=tower.outputs["embeddings"], milvus_uri=milvus_uri, stack=stack)
              .set_display_name("New Milvus collection + alias switch"), "build_index", cluster)

    return daily_embedding_pipeline


daily_embedding_pipeline = build()
