"""Step: build the data directory from the user's own tables with an import config (``homefeed data import``)."""

from kfp.dsl import Dataset, Metrics, Output

from components.steps.images import step


@step
def import_data(config: str, data: Output[Dataset], stats: Output[Metrics]):
    """``components.data.importer.import_data(load_import_config(config), data.path)``; ``config`` is the path
    of the import config (on a cluster: on the pipeline volume, next to the tables it names)."""
    # the local (lightweight) component runs this function's source alone, so its imports live inside it
    from components.data.import_config import load_import_config, to_dict
    from components.data.importer import import_data as run_import
    from components.steps.common import log_metrics

    cfg = load_import_config(config)
    report = run_import(cfg, data.path)
    data.metadata["import_config"] = to_dict(cfg)
    data.metadata["rows"] = dict(report.rows)
    data.metadata["notes"] = list(report.notes)
    log_metrics(stats, {"rows": report.rows, "dropped": report.dropped})
