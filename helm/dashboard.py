"""Generate helm/homefeed/dashboards/homefeed.json, the operator's Grafana dashboard the chart ships.

Usage: .venv/bin/python helm/dashboard.py   (tests/test_helm.py fails when the JSON is out of date)

Panels: the recommend service (requests/s, error rate by class, fallbacks, p50/p99 per stage, dependencies,
the model versions served),
Triton (inferences/s, batch size, queue and compute time, model versions) and the daily CronJob
(kube-state-metrics: time since the last successful run, active runs, failures). Every query is filtered by the
dashboard's `namespace` variable.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "homefeed" / "dashboards" / "homefeed.json"

DS = {"type": "prometheus", "uid": "${datasource}"}
NS = 'namespace="$namespace"'
panels = []
y = 0


def row(title):
    global y
    panels.append({"type": "row", "title": title, "collapsed": False, "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                   "id": len(panels) + 1, "panels": []})
    y += 1


def panel(title, exprs, unit, x, w=8, h=8, kind="timeseries", description=""):
    targets = [{"datasource": DS, "expr": e, "legendFormat": legend, "refId": chr(65 + i)}
               for i, (e, legend) in enumerate(exprs)]
    p = {"type": kind, "title": title, "description": description, "datasource": DS, "id": len(panels) + 1,
         "gridPos": {"h": h, "w": w, "x": x, "y": y}, "targets": targets,
         "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}, "options": {}}
    if kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "none", "textMode": "auto"}
    if kind == "table":
        p["options"] = {"showHeader": True}
        for t in targets:
            t["format"] = "table"
            t["instant"] = True
    panels.append(p)


row("Recommend service")
panel("Requests / s by status", [(f'sum by (status) (rate(homefeed_requests_total{{{NS}, endpoint="/v1/recommend"}}[5m]))',
                                  "{{status}}")], "reqps", 0,
      description="POST /v1/recommend requests per second, by HTTP status code.")
panel("Error rate by class", [(f'sum by (error_class) (rate(homefeed_request_errors_total{{{NS}}}[5m])) / ignoring (error_class) '
                               f'group_left sum(rate(homefeed_requests_total{{{NS}, endpoint="/v1/recommend"}}[5m]))',
                               "{{error_class}}")], "percentunit", 8,
      description="Failed recommend requests per request, by error class (401, 4xx validation, 503 dependency, 500).")
panel("Fallback responses / s by reason", [(f'sum by (reason) (rate(homefeed_fallbacks_total{{{NS}}}[5m]))',
                                            "{{reason}}")], "reqps", 16,
      description="Responses served by a fallback (unknown user -> popular pins, last good features) instead of "
                  "the full ranked path.")
y += 8
panel("Latency p50 per stage", [(f'histogram_quantile(0.5, sum by (le, stage) '
                                 f'(rate(homefeed_stage_latency_seconds_bucket{{{NS}}}[5m])))', "{{stage}}")], "s", 0,
      w=12, description="Median latency of each recommend stage: Feast user embedding, Milvus search, Feast ranker "
                        "features, Triton, total.")
panel("Latency p99 per stage", [(f'histogram_quantile(0.99, sum by (le, stage) '
                                 f'(rate(homefeed_stage_latency_seconds_bucket{{{NS}}}[5m])))', "{{stage}}")], "s", 12,
      w=12, description="99th percentile latency of each recommend stage.")
y += 8
panel("Request latency p50 / p99", [
    (f'histogram_quantile(0.5, sum by (le) (rate(homefeed_request_latency_seconds_bucket{{{NS}}}[5m])))', "p50"),
    (f'histogram_quantile(0.99, sum by (le) (rate(homefeed_request_latency_seconds_bucket{{{NS}}}[5m])))', "p99")],
    "s", 0, description="Whole-request latency of POST /v1/recommend.")
panel("Dependencies up", [(f'min by (dependency) (homefeed_dependency_up{{{NS}}})', "{{dependency}}")], "none", 8,
      description="1 when Feast, Milvus and Triton answered the last readiness probe of every replica.")
panel("Recommend connections open", [(f'sum(homefeed_recommenders_open{{{NS}}})', "open")], "none", 16,
      description="Recommend-path connection sets held open across requests (all replicas).")
y += 8
panel("Serving versions (recommend service)", [
    (f'max by (ranker_version, user_embedding_version, pin_index_collection) '
     f'(homefeed_serving_version_info{{{NS}}})', "{{ranker_version}} {{user_embedding_version}} "
                                                "{{pin_index_collection}}")],
    "none", 0, w=24, h=6, kind="table",
    description="The ranker export, the user-embedding model and the Milvus collection behind the alias that the "
                "replicas' last ranked responses came from. More than one row for long: replicas disagree (a "
                "rollout or a daily run in progress).")
y += 6

row("Triton (ranker)")
panel("Inferences / s", [
    (f'sum by (model) (rate(nv_inference_request_success{{{NS}}}[5m]))', "{{model}} ok"),
    (f'sum by (model) (rate(nv_inference_request_failure{{{NS}}}[5m]))', "{{model}} failed")], "reqps", 0,
    description="Triton inference requests per second by model (ensemble, preprocess, ranker), successes and "
                "failures.")
panel("Average batch size", [(f'sum by (model) (rate(nv_inference_count{{{NS}}}[5m])) / sum by (model) '
                              f'(rate(nv_inference_exec_count{{{NS}}}[5m]))', "{{model}}")], "none", 8,
      description="Inferences per model execution: how well dynamic batching fills batches.")
panel("Queue and compute time per request", [
    (f'sum by (model) (rate(nv_inference_queue_duration_us{{{NS}}}[5m])) / sum by (model) '
     f'(rate(nv_inference_request_success{{{NS}}}[5m])) / 1000', "{{model}} queue"),
    (f'sum by (model) (rate(nv_inference_compute_infer_duration_us{{{NS}}}[5m])) / sum by (model) '
     f'(rate(nv_inference_request_success{{{NS}}}[5m])) / 1000', "{{model}} compute")], "ms", 16,
    description="Average time a request waits in the scheduler queue and spends in the model, per model.")
y += 8
panel("Model versions served (Triton)", [(f'sum by (model, version) (rate(nv_inference_count{{{NS}}}[15m])) > 0',
                                          "{{model}} v{{version}}")], "none", 0, w=24, h=6, kind="table",
      description="Triton models and versions that served inferences in the last 15 minutes (labels of Triton's "
                  "metrics). Embedding versions are in each /v1/recommend response.")
y += 6

row("Daily embedding run")
panel("Since the last successful daily run", [
    (f'time() - max(kube_cronjob_status_last_successful_time{{{NS}, cronjob=~".*embedding-cron"}})', "age")],
    "s", 0, kind="stat", description="From kube-state-metrics: seconds since the CronJob last submitted a run "
                                     "successfully. Above ~26 h the daily embeddings are stale.")
panel("Daily run: active / next schedule", [
    (f'sum(kube_cronjob_status_active{{{NS}, cronjob=~".*embedding-cron"}})', "active"),
    (f'max(kube_cronjob_next_schedule_time{{{NS}, cronjob=~".*embedding-cron"}}) - time()', "next run in (s)")],
    "none", 8, kind="stat", description="Submissions running now, and seconds until the next scheduled one.")
panel("Failed submissions", [(f'sum(kube_job_status_failed{{{NS}, job_name=~".*embedding-cron.*"}})', "failed")],
      "none", 16, kind="stat", description="Failed Jobs of the daily CronJob still kept in history.")
y += 8

DASHBOARD = {
    "uid": "homefeed-operations",
    "title": "homefeed: recommend service, Triton, daily run",
    "description": "Operator's view of a homefeed release (helm/homefeed). Metrics: the recommend service's "
                   "/metrics, Triton's metrics port, kube-state-metrics.",
    "tags": ["homefeed"],
    "timezone": "utc",
    "editable": True,
    "schemaVersion": 39,
    "version": 1,
    "refresh": "30s",
    "time": {"from": "now-6h", "to": "now"},
    "templating": {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0},
        {"name": "namespace", "label": "Namespace", "type": "query", "datasource": DS,
         "query": {"query": "label_values(homefeed_requests_total, namespace)", "refId": "namespace"},
         "definition": "label_values(homefeed_requests_total, namespace)", "refresh": 2, "current": {}, "hide": 0},
    ]},
    "annotations": {"list": []},
    "panels": panels,
}


def render() -> str:
    return json.dumps(DASHBOARD, indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"{OUT}: {len(panels)} panels")
    sys.exit(0)
