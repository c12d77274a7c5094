"""Step: PinnerFormer's daily incremental user embeddings (users active on the date, merged with the
previous table, published atomically)."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.steps.images import step


@step
def embed_users(data: Input[Dataset], model: Input[Model], pin_embeddings: Input[Dataset], users: Output[Dataset],
                stats: Output[Metrics], date: str = "", store_root: str = "", backfill_days: int = 0,
                stack: str = "", shard: int = 0, shards: int = 0):
    """``components.inference.users.embed_users(model, data, pin_embeddings, store_root, date)``.

    ``store_root``: the persistent embeddings root (on a cluster: a path on the data PVC) whose ``users``
    store the daily runs merge into; "" = this run's artifact only. ``date`` "" = the last training day
    (the day before ``meta.json``'s split). ``backfill_days`` > 0 also embeds, in the same pass, every user
    active on the event days before ``date`` that the store has not seen (at most that many), so a new
    store holds every user active in that window, each from their latest actions up to ``date``.
    ``stack``: a stack file whose ``embeddings.root`` is the store root (wins over ``store_root``).
    ``shards`` > 0: only shard ``shard``'s active users, written unmerged to this artifact (the daily pipeline's
    ParallelFor); ``merge_users`` merges the shards into the store and publishes.
    """
    # the local (lightweight) component runs this function's source alone, so its imports live inside it
    import os

    from components.data.io import partitions
    from components.data.tables import VersionedStore, read_table
    from components.inference.users import USERS_STORE, embed_active_users, retrained_users
    from components.inference.users import embed_users as run
    from components.stackconfig import load_stack
    from components.steps.common import default_date, describe_users, table_path

    date = date or default_date(data.path)
    root = (load_stack(stack).embeddings.root if stack else store_root) or users.path
    store = VersionedStore(os.path.join(root, USERS_STORE))
    previous = store.current()
    pins = str(table_path(pin_embeddings.path))
    replay = [d for d in partitions(data.path, "events") if d < date and (previous is None or d > previous)]
    replay = replay[-backfill_days:] if backfill_days > 0 else []
    since = replay[0] if replay else None
    if shards > 0:
        also = retrained_users(root, date, model.path)  # a retrain: the old model's users are re-embedded
        rows = embed_active_users(model.path, data.path, pins, date, since=since, shard=(shard, shards), also=also)
        path = VersionedStore(os.path.join(users.path, USERS_STORE)).publish(rows, date)
    else:
        path = run(model.path, data.path, pins, root, date, since=since)
    table = read_table(path)
    if root != users.path and shards == 0:  # this run's artifact holds the published table too
        VersionedStore(os.path.join(users.path, USERS_STORE)).publish(table, date)
    describe_users(users, stats, table, date, root, previous, replay, model.metadata.get("config", {}),
                   shard=shard, shards=shards)
