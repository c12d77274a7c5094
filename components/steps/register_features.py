"""Step: publish user (PinnerFormer) and pin (PinSage) embeddings and ranker features to Feast."""

from kfp.dsl import Dataset, Input, Metrics, Output

from components.steps.images import step


@step
def register_features(data: Input[Dataset], repo: Output[Dataset], stats: Output[Metrics],
                      user_embeddings: Input[Dataset] = None, pin_embeddings: Input[Dataset] = None,
                      date: str = "", repo_dir: str = "", stack: str = "", batch_rows: int = 10000):
    """``feast_store``: init the repo, write its sources as of ``date``, ``apply``, ``materialize``.

    ``stack``: a stack file (components/stackconfig.py): the Feast stores (online store, registry,
    credentials) and the repo instance; when set it wins over ``repo_dir`` (decided here, at run time: a
    pipeline passes both parameters through); "" = the local profile's stores.
    ``repo_dir``: the persistent Feast repo (a PVC path on a cluster) used without a stack; "" = this run's
    artifact. ``date`` "" = the date of the user embeddings (or the last training day).
    ``batch_rows``: rows read, written and sent to the online store at a time (the step's memory bound).
    """
    # the local (lightweight) component runs this function's source alone, so its imports live inside it
    from components.serving import feast_store
    from components.stackconfig import load_stack
    from components.steps.common import default_date, log_metrics, table_path

    cfg = load_stack(stack) if stack else None
    if cfg is not None:
        repo_dir = cfg.feast.repo

    if not date and user_embeddings is not None:
        date = user_embeddings.metadata.get("date", "")
    date = date or default_date(data.path)
    root = repo_dir or repo.path
    feast_store.init_repo(root, stack=cfg)
    rows = feast_store.write_sources(root, data.path, date,
                                     user_embeddings=table_path(user_embeddings.path) if user_embeddings is not None else None,
                                     pin_embeddings=table_path(pin_embeddings.path) if pin_embeddings is not None else None,
                                     batch_rows=batch_rows)
    names = feast_store.apply(root, cfg)
    loaded = feast_store.materialize(root, date, cfg, batch_rows=batch_rows)
    repo.metadata["repo_dir"] = str(root)
    repo.metadata["date"] = date
    repo.metadata["stack"] = stack
    repo.metadata["objects"] = names
    repo.metadata["materialized"] = loaded
    log_metrics(stats, {"rows": rows})
