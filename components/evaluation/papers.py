"""The papers' reference numbers, in one place, each with the protocol it was measured under.

A number is shown beside ours (``PaperNumber.protocol_matches``) only when our protocol matches the
paper's on what changes the number's scale: for Recall@10 the candidate-pool size and the 14-day window,
for hit-rate the pool and K. Our pools (1,000-5,000 pins) are far smaller than the papers' (millions), so
on the shipped datasets these numbers are listed under the table as context, not as a comparison.
"""

from __future__ import annotations

from typing import Any

from components.evaluation.result import PaperNumber

PINSAGE = "PinSage, arXiv 1806.01973, Table 1"
PINNERFORMER = "PinnerFormer, arXiv 2205.04507"
PINSAGE_PROTOCOL = {"candidate pool": 5_000_000, "k": 500, "mrr": "scaled: 1 / (rank / 100)"}
PINNERFORMER_PROTOCOL = {"candidate pool": 1_000_000, "future window days": 14}

# (paper, variant name in our tables, metric, value, protocol key)
REFERENCE: dict[str, list[tuple[str, str, str, float, dict[str, Any]]]] = {
    "pinsage": [
        (PINSAGE, "PinSage, mean pooling", "hit@500", 0.41, PINSAGE_PROTOCOL),
        (PINSAGE, "PinSage, mean pooling", "mrr_scaled", 0.51, PINSAGE_PROTOCOL),
        (PINSAGE, "PinSage (full)", "hit@500", 0.67, PINSAGE_PROTOCOL),
        (PINSAGE, "PinSage (full)", "mrr_scaled", 0.59, PINSAGE_PROTOCOL),
    ],
    "pinnerformer": [
        (PINNERFORMER, "dense_all_action/mixed/logQ", "recall@10", 0.229, PINNERFORMER_PROTOCOL),
        (PINNERFORMER, "dense_all_action/mixed/no logQ", "recall@10", 0.138, PINNERFORMER_PROTOCOL),
        (PINNERFORMER, "next_action/mixed/logQ", "recall@10_daily", 0.216, PINNERFORMER_PROTOCOL),  # SASRec row
        (PINNERFORMER, "next_action/mixed/logQ", "recall@10_realtime", 0.251, PINNERFORMER_PROTOCOL),
        (PINNERFORMER, "dense_all_action/mixed/logQ", "recall@10_daily", 0.243, PINNERFORMER_PROTOCOL),
        (PINNERFORMER, "dense_all_action/mixed/logQ", "recall@10_realtime", 0.264, PINNERFORMER_PROTOCOL),
    ],
    # arXiv 2412.01985 reports the ranker's HIT@3/save gains relative to Pinterest's production model only
    # (no absolute values), so there is no number to place beside ours.
    "ranker": [],
}


def protocol_matches(paper: dict[str, Any], ours: dict[str, Any]) -> bool:
    """True when every key of the paper's protocol is in ours with the same value."""
    return all(ours.get(k) == v for k, v in paper.items())


def _describe(p: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in p.items())


def for_result(model: str, ours: dict[str, Any]) -> list[PaperNumber]:
    """The reference numbers of ``model``, each flagged with whether ``ours`` (a result's protocol, with
    ``candidate pool`` as an int when it is a pool size) matches the paper's."""
    return [PaperNumber(paper, variant, metric, value, _describe(proto), protocol_matches(proto, ours))
            for paper, variant, metric, value, proto in REFERENCE.get(model, [])]
