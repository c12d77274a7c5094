"""Step: PinSage's pin-board graph and importance-based neighbourhoods (random walks, top-T visits)."""

from kfp.dsl import Dataset, Input, Metrics, Output

from components.steps.images import step


@step
def sample_graph(experiment: str, data: Input[Dataset], graph: Output[Dataset], stats: Output[Metrics],
                 overrides: list = None):
    """``components.graph.sampling.build_neighbourhoods(build_graph(data), cfg)`` -> ``neighbourhoods.npz``
    (pin_ids (N,), nbr_ids (N, T) pin indices, nbr_weights (N, T) L1-normalised visit counts)."""
    # the local (lightweight) component runs this function's source alone, so its imports live inside it
    import io
    import os

    import numpy as np

    from components.data.durable import atomic_write_bytes
    from components.graph.graph import build_graph
    from components.graph.sampling import build_neighbourhoods
    from components.steps.common import load_config, log_metrics

    cfg, resolved = load_config(experiment, overrides, model="pinsage")
    g = build_graph(data.path, cfg.use_engagement_edges)
    nbr_ids, nbr_weights = build_neighbourhoods(g, cfg)
    buf = io.BytesIO()
    np.savez_compressed(buf, pin_ids=g.pin_ids, nbr_ids=nbr_ids, nbr_weights=nbr_weights)
    os.makedirs(graph.path, exist_ok=True)
    atomic_write_bytes(os.path.join(graph.path, "neighbourhoods.npz"), buf.getvalue())
    graph.metadata["config"] = resolved
    graph.metadata["file"] = "neighbourhoods.npz"
    log_metrics(stats, {"pins": g.num_pins, "collections": g.num_collections, "edges": g.num_edges,
                        "neighbours_per_pin": float((nbr_weights > 0).sum(axis=1).mean()) if len(nbr_weights) else 0.0})
