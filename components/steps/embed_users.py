"""Step: PinnerFormer's daily incremental user embeddings (users active on the date, merged with the
previous table, published atomically)."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.steps.images import step


@step
def embed_users(data: Input[Dataset], model: Input[Model], pin_embeddings: Input[Dataset], users: Output[Dataset],
                stats: Output[Metrics], date: str = "", store_root: str = ""):
    """``components.inference.users.embed_users(model, data, pin_embeddings, store, date)``.

    ``store_root``: the persistent VersionedStore of user embeddings (on a cluster: a path on the data
    PVC) that the daily runs merge into; "" = this run's artifact only. ``date`` "" = the last training
    day (the day before ``meta.json``'s split). The published table is also placed in ``users``.
    """
    from components.inference.tables import VersionedStore, read_table
    from components.inference.users import embed_users as run
    from components.steps.common import default_date, log_metrics

    date = date or default_date(data.path)
    root = store_root or users.path
    previous = VersionedStore(root).current()
    path = run(model.path, data.path, pin_embeddings.path, root, date)
    table = read_table(path)
    if root != users.path:
        VersionedStore(users.path).publish(table, date)
    users.metadata["date"] = date
    users.metadata["store_root"] = root
    users.metadata["previous_version"] = previous or ""
    users.metadata["model_version"] = table.model_version
    log_metrics(stats, {"users": len(table), "dim": table.dim, "merged": previous is not None})
