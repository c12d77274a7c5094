"""Step: the daily run's user shard tables merged into the user store and published (as ``embed_users`` does
unsharded: the previous table's other users carry over, version ``date``, CURRENT switched atomically)."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.steps.images import step


@step
def merge_users(parts: Input[list[Dataset]], model: Input[Model], users: Output[Dataset],
                stats: Output[Metrics], date: str, store_root: str = "", stack: str = ""):
    """``components.inference.users.publish_users(merge_files(parts), root, date)``; ``root`` as in
    ``embed_users``: the stack file's ``embeddings.root``, else ``store_root``, else this artifact."""
    # the local (lightweight) component runs this function's source alone, so its imports live inside it
    import os

    from components.data.tables import VersionedStore, read_table
    from components.inference.shards import merge_files
    from components.inference.users import USERS_STORE, publish_users
    from components.stackconfig import load_stack
    from components.steps.common import describe_users, table_path

    root = (load_stack(stack).embeddings.root if stack else store_root) or users.path
    previous = VersionedStore(os.path.join(root, USERS_STORE)).current()
    rows = merge_files([table_path(p.path) for p in parts])
    table = read_table(publish_users(rows, root, date))
    if root != users.path:  # this run's artifact holds the published table too
        VersionedStore(os.path.join(users.path, USERS_STORE)).publish(table, date)
    describe_users(users, stats, table, date, root, previous, list(parts[0].metadata.get("replayed_days", [])),
                   model.metadata.get("config", {}), shards=len(parts), embedded=len(rows))
