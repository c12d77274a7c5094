"""The training pipeline: data -> PinSage -> PinnerFormer -> ranker -> serving artifacts.

Steps (each a task with a display name):
 1. prepare_data        build and validate the data directory (ML-100k or synthetic), or, when the
    | import_data       ``import_config`` parameter is non-empty, import_data builds the same directory from
                        your own tables (``homefeed data import``; ``dsl.If``/``dsl.Else`` at run time, the
                        later steps read whichever ran through ``dsl.OneOf``; see ``build``)
 2. sample_graph        pin-board graph, importance neighbourhoods (random walks)
 3. train_pinsage       PinSage (torchrun; a TrainJob/PyTorchJob when num_nodes > 1 on a cluster)
 4. embed_pins          layer-wise PinSage inference -> pin embedding table
 5. train_pinnerformer  PinnerFormer over the pin embeddings
 6. embed_users         user embeddings as of ``date`` (merged into ``embeddings_root``; a new store is
                        first backfilled over the last ``user_backfill_days`` event days)
 7. embed_pin_tower     PinnerFormer's pin tower (the retrieval space)
 8. train_ranker        the multi-task ranker with the user and pin embeddings
 9. evaluate_ranker     held-out AUC per task and HIT@3/save; stops the run below ``min_auc``
10. export_ranker       ONNX + preprocess.json for Triton
11. register_features   Feast: user/pin embeddings and ranker features, apply + materialize
12. build_index         Milvus: pin-tower embeddings, new collection, alias switch
(The daily pipeline runs embed_pins/embed_users/embed_pin_tower in shards: shard_ids, then merge_pins,
merge_users and merge_pin_tower publish the union; see pipelines/daily_embedding.py.)

``stack`` (a stack file path, e.g. the chart's /etc/homefeed/stack.yaml): when set, embed_users,
register_features and build_index take their stores from it and ``embeddings_root``/``feature_repo``/
``milvus_uri`` are ignored (each step decides at run time, as in the daily pipeline).

``build(local=True)`` gives the same DAG over lightweight components for ``kfp.local``; the module-level
``training_pipeline`` is the cluster version (kfp-kubernetes settings, see pipelines/cluster.py).
"""

from kfp import dsl

from pipelines.cluster import ClusterConfig, apply, steps


def build(local: bool = False, cluster: ClusterConfig | None = None, local_import: bool = False):
    """The training pipeline function; ``cluster`` settings are applied unless ``local``.

    The cluster version chooses prepare_data or import_data at run time from ``import_config``
    (``dsl.If``/``dsl.Else`` + ``dsl.OneOf``). kfp.local cannot resolve a ``dsl.OneOf`` of artifacts, so the
    local version holds one of the two: import_data when ``local_import`` (``run_local`` sets it when it
    is given an ``import_config``), else prepare_data."""
    s = steps(local)
    cluster = None if local else (cluster or ClusterConfig())

    @dsl.pipeline(name="homefeed-training", description=__doc__.splitlines()[0])
    def training_pipeline(
        data_experiment: str = "ml100k",
        pinsage_experiment: str = "pinsage",
        pinnerformer_experiment: str = "pinnerformer",
        ranker_experiment: str = "ranker",
        data_overrides: list = [],  # noqa: B006 (a KFP parameter default, never mutated)
        pinsage_overrides: list = [],  # noqa: B006 (a KFP parameter default, never mutated)
        pinnerformer_overrides: list = [],  # noqa: B006 (a KFP parameter default, never mutated)
        ranker_overrides: list = [],  # noqa: B006 (a KFP parameter default, never mutated)
        date: str = "",
        num_nodes: int = 1,
        nproc_per_node: int = 1,
        user_backfill_days: int = 28,
        embeddings_root: str = "/data/homefeed/embeddings",
        feature_repo: str = "/data/homefeed/feature_repo",
        milvus_uri: str = "http://milvus:19530",
        min_auc: float = 0.5,
        import_config: str = "",
        stack: str = "",
    ):
        if local:  # kfp.local (2.17) cannot resolve dsl.OneOf over artifacts: the branch is chosen when building
            data = (s.import_data(config=import_config).set_display_name("Import data (import config)")
                    if local_import else s.prepare_data(experiment=data_experiment, overrides=data_overrides)
                    .set_display_name("Prepare data")).outputs["data"]
        else:
            with dsl.If(import_config != "", name="Import config given"):
                imported = apply(s.import_data(config=import_config)
                                 .set_display_name("Import data (import config)"), "import_data", cluster)
            with dsl.Else(name="No import config"):
                prepared = apply(s.prepare_data(experiment=data_experiment, overrides=data_overrides)
                                 .set_display_name("Prepare data"), "prepare_data", cluster)
            data = dsl.OneOf(imported.outputs["data"], prepared.outputs["data"])  # the branch that ran
        graph = apply(s.sample_graph(experiment=pinsage_experiment, overrides=pinsage_overrides,
                                     data=data)
                      .set_display_name("Sample graph neighbourhoods"), "sample_graph", cluster)
        pinsage = apply(s.train_pinsage(experiment=pinsage_experiment, overrides=pinsage_overrides,
                                        data=data, graph=graph.outputs["graph"],
                                        num_nodes=num_nodes, nproc_per_node=nproc_per_node)
                        .set_display_name("Train PinSage"), "train_pinsage", cluster)
        pins = apply(s.embed_pins(data=data, model=pinsage.outputs["model"])
                     .set_display_name("Embed pins (PinSage)"), "embed_pins", cluster)
        pinnerformer = apply(s.train_pinnerformer(experiment=pinnerformer_experiment, overrides=pinnerformer_overrides,
                                                  data=data, pin_embeddings=pins.outputs["embeddings"],
                                                  num_nodes=num_nodes, nproc_per_node=nproc_per_node)
                             .set_display_name("Train PinnerFormer"), "train_pinnerformer", cluster)
        users = apply(s.embed_users(data=data, model=pinnerformer.outputs["model"],
                                    pin_embeddings=pins.outputs["embeddings"], date=date, store_root=embeddings_root,
                                    backfill_days=user_backfill_days, stack=stack)
                      .set_display_name("Embed users (PinnerFormer)"), "embed_users", cluster)
        tower = apply(s.embed_pin_tower(model=pinnerformer.outputs["model"], pin_embeddings=pins.outputs["embeddings"])
                      .set_display_name("Embed pins (PinnerFormer pin tower)"), "embed_pin_tower", cluster)
        ranker = apply(s.train_ranker(experiment=ranker_experiment, overrides=ranker_overrides,
                                      data=data, user_embeddings=users.outputs["users"],
                                      pin_embeddings=pins.outputs["embeddings"],
                                      num_nodes=num_nodes, nproc_per_node=nproc_per_node)
                       .set_display_name("Train ranker"), "train_ranker", cluster)
        evaluation = apply(s.evaluate_ranker(data=data, model=ranker.outputs["model"],
                                             user_embeddings=users.outputs["users"],
                                             pin_embeddings=pins.outputs["embeddings"], min_auc=min_auc)
                           .set_display_name("Evaluate ranker"), "evaluate_ranker", cluster)
        export = apply(s.export_ranker(model=ranker.outputs["model"], data=data)
                       .set_display_name("Export ranker (ONNX)"), "export_ranker", cluster)
        export.after(evaluation)
        apply(s.register_features(data=data, user_embeddings=users.outputs["users"],
                                  pin_embeddings=pins.outputs["embeddings"], date=date, repo_dir=feature_repo,
                                  stack=stack)
              .set_display_name("Register features (Feast)"), "register_features", cluster)
        apply(s.build_index(pin_embeddings=tower.outputs["embeddings"], milvus_uri=milvus_uri, stack=stack)
              .set_display_name("Build pin index (Milvus)"), "build_index", cluster)

    return training_pipeline


training_pipeline = build()
