"""Step: evaluate the trained ranker on the held-out days (per-task AUC, HIT@3/save) and gate the export."""

from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from components.steps.images import step


@step
def evaluate_ranker(data: Input[Dataset], model: Input[Model], metrics: Output[Metrics], report: Output[Markdown],
                    user_embeddings: Input[Dataset] = None, pin_embeddings: Input[Dataset] = None,
                    min_auc: float = 0.0):
    """``components.training.ranker.evaluate(load_model(model), eval split of data)``.

    The evaluation rows are rebuilt with the same embedding tables as training. Fails (so the pipeline
    stops before export) when the mean task AUC is below ``min_auc``.
    """
    # the local (lightweight) component runs this function's source alone, so its imports live inside it
    from components.models.ranker import load_model
    from components.steps.common import log_metrics, table_path
    from components.training.ranker import evaluate, prepare_data

    net, cfg, extra = load_model(model.path)
    _, eval_data, _ = prepare_data(cfg, data.path, table_path(user_embeddings.path) if user_embeddings is not None else None,
                                   table_path(pin_embeddings.path) if pin_embeddings is not None else None)
    result = evaluate(net, eval_data, cfg.tasks, cfg.task_weights)
    aucs = [v for k, v in result.items() if k.startswith("auc_") and v is not None]  # None: one class
    result["auc_mean"] = sum(aucs) / len(aucs) if aucs else float("nan")
    result["rows_eval"] = len(eval_data)
    log_metrics(metrics, result)
    lines = [f"# Ranker evaluation ({cfg.arch}, pepnet={cfg.pepnet})", "", "| metric | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in sorted(result.items()) if isinstance(v, int | float)]
    with open(report.path, "w") as f:
        f.write("\n".join(lines) + "\n")
    if not result["auc_mean"] >= min_auc:
        raise ValueError(f"evaluate_ranker: mean task AUC {result['auc_mean']:.4f} is below min_auc {min_auc}; "
                         "not exporting this model")
