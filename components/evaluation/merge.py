"""Merging evaluation results of the same model, dataset and protocol run as separate commands.

A long evaluation is often run one seed per command (``homefeed eval pinsage ... --seeds 2``): each seed is
independent (same split, same candidates, its own training), so the union of the runs of several results is
the result one ``--seeds 0,1,2`` command would have written. :func:`merge_results` builds that union and
recomputes everything derived from the runs (mean, std and 95% interval per variant come from the runs on
every read; the paired orderings are recomputed over the union of seeds). It refuses to merge results that do
not measure the same thing: another model or dataset, other metrics, or a protocol that differs in anything
but its seed list (period, queries, candidate pool, experiment, overrides, early stopping), and a (variant,
seed) measured twice with different values. ``homefeed eval merge A.json B.json --out DIR`` is the command.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from components.config import ConfigError
from components.evaluation.result import EvalResult, Run

MERGE_DETAILS = ("partial", "merged_from")  # details that describe one input, not the measurement


def _merge_protocol(protocols: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The shared protocol: every key but ``seeds`` must be equal; a dict value (e.g. the ranker's early
    stopping per experiment) may gain keys but never change one."""
    first_name, merged = protocols[0][0], {k: v for k, v in protocols[0][1].items() if k != "seeds"}
    for name, proto in protocols[1:]:
        proto = {k: v for k, v in proto.items() if k != "seeds"}
        missing = sorted(set(merged) ^ set(proto))
        if missing:
            raise ConfigError(f"eval merge: {name} and {first_name} have different protocol fields {missing}: "
                              "not the same evaluation")
        for key, value in proto.items():
            if isinstance(value, dict) and isinstance(merged[key], dict):
                clash = [k for k in value if k in merged[key] and merged[key][k] != value[k]]
                if clash:
                    raise ConfigError(f"eval merge: protocol '{key}' differs for {clash} between {name} "
                                      f"({[value[k] for k in clash]}) and {first_name} ({[merged[key][k] for k in clash]})")
                merged[key] = {**merged[key], **value}
            elif value != merged[key]:
                raise ConfigError(f"eval merge: protocol '{key}' differs: {name} has {json.dumps(value, default=str)}, "
                                  f"{first_name} has {json.dumps(merged[key], default=str)}")
    return merged


def _merge_order(orders: list[list[str]]) -> list[str]:
    """Variant table order: the first input's, each new variant placed after the variant it follows in its
    own input (or first when it leads that input)."""
    out: list[str] = []
    for order in orders:
        for i, v in enumerate(order):
            if v in out:
                continue
            prev = next((order[j] for j in range(i - 1, -1, -1) if order[j] in out), None)
            out.insert(out.index(prev) + 1 if prev is not None else 0, v)
    return out


def merge_results(results: Sequence[EvalResult], names: Sequence[str] | None = None, command: str = "",
                  orderings: Sequence[tuple[str, str, str]] = (), drop_notes: Sequence[str] = ()) -> EvalResult:
    """The union of ``results`` (one model, dataset, metric set and protocol) as one :class:`EvalResult`.

    ``names`` label the inputs in errors and in ``details["merged_from"]`` (file paths); ``command`` is the
    merge command itself, appended to the inputs' commands so the result says how to reproduce it.
    Orderings: every ordering any input recorded, plus ``orderings`` (the model's standard ones, as
    (better, worse, metric)), recomputed over the union of seeds where both variants exist. A (variant, seed)
    in several inputs must have identical metric values (kept once; merging a file into itself changes
    nothing); otherwise a ConfigError names both inputs. Notes are the union of the inputs' notes, less those
    containing any of ``drop_notes`` (a note a merge makes stale, e.g. "seed 0 only")."""
    if not results:
        raise ConfigError("eval merge: no results given")
    names = list(names) if names is not None else [f"input {i + 1}" for i in range(len(results))]
    first = results[0]
    for name, r in zip(names[1:], results[1:], strict=True):
        for what in ("model", "dataset"):
            if getattr(r, what) != getattr(first, what):
                raise ConfigError(f"eval merge: {name} is {what} '{getattr(r, what)}', {names[0]} is "
                                  f"'{getattr(first, what)}': only results of one {what} merge")
        if r.metrics != first.metrics:
            raise ConfigError(f"eval merge: {name} declares metrics {r.metrics}, {names[0]} {first.metrics}")
    protocol = _merge_protocol(list(zip(names, [r.protocol for r in results], strict=True)))
    runs: dict[tuple[str, int], tuple[str, Run]] = {}
    for name, r in zip(names, results, strict=True):
        for run in r.runs:
            key = (run.variant, run.seed)
            if key in runs and runs[key][1].metrics != run.metrics:
                raise ConfigError(f"eval merge: '{run.variant}' seed {run.seed} is in {runs[key][0]} and {name} "
                                  "with different values: pass only one of them")
            runs.setdefault(key, (name, run))
    details: dict[str, Any] = {}
    for name, r in zip(names, results, strict=True):
        for k, v in r.details.items():
            if k in MERGE_DETAILS:
                continue
            if k in details and details[k] != v:
                raise ConfigError(f"eval merge: details '{k}' differ ({name}: {v}, another input: {details[k]})")
            details[k] = v
    merged = EvalResult(model=first.model, dataset=first.dataset,
                        command=" ; ".join(dict.fromkeys(part.strip() for c in [r.command for r in results] + [command]
                                                         for part in c.split(" ; ") if part.strip())),
                        protocol=protocol, metrics=dict(first.metrics), papers=list(first.papers), details=details)
    order = _merge_order([r.variants for r in results])
    merged.runs = sorted((run for _, run in runs.values()), key=lambda x: (x.seed, order.index(x.variant)))
    merged.variants = order
    merged.protocol["seeds"] = merged.seeds()
    merged.details["merged_from"] = [
        {"file": name, "seeds": r.seeds(), "variants": r.variants, "created_at": r.created_at,
         **({"partial": r.details["partial"]} if "partial" in r.details else {})}
        for name, r in zip(names, results, strict=True)]
    merged.notes = [n for n in dict.fromkeys(n for r in results for n in r.notes)
                    if not any(text in n for text in drop_notes)]
    merged.notes.append(f"merged from {len(results)} results by `homefeed eval merge`: "
                        + "; ".join(f"{name} (seeds {r.seeds()})" for name, r in zip(names, results, strict=True)))
    merged.notes = list(dict.fromkeys(merged.notes))
    wanted = [(c.better, c.worse, c.metric) for r in results for c in r.comparisons] + list(orderings)
    for better, worse, metric in dict.fromkeys(wanted):
        if better in merged.variants and worse in merged.variants and metric in merged.metrics:
            merged.compare(better, worse, metric)
    return merged
