"""One evaluation harness for the three models: variants x seeds on a fixed split, one result type
(:mod:`components.evaluation.result`), ranking metrics in one module (:mod:`components.evaluation.metrics`),
the papers' reference numbers in one place (:mod:`components.evaluation.papers`) and baselines."""
