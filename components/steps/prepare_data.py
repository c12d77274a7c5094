"""Step: build the data directory (ML-100k mapping or the synthetic generator) and validate it."""

from kfp.dsl import Dataset, Metrics, Output

from components.steps.images import step


@step
def prepare_data(experiment: str, data: Output[Dataset], stats: Output[Metrics], overrides: list = None):
    """``components.data.prepare.prepare(config.load(experiment, overrides), data.path)``."""
    # the local (lightweight) component runs this function's source alone, so its imports live inside it
    from components.data.prepare import prepare
    from components.steps.common import load_config, log_metrics

    cfg, resolved = load_config(experiment, overrides, model="data")
    report = prepare(cfg, data.path)
    data.metadata["config"] = resolved
    data.metadata["rows"] = dict(report.rows)
    log_metrics(stats, {"rows": report.rows, "dropped": report.dropped})
