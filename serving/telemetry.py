"""Prometheus metrics of the server, and the `GET /metrics` answer (text format 0.0.4).

- `meta_embed_requests_total{route,method,status}` and `meta_embed_request_duration_seconds
  {route,status}`: every request the app answers, by route template (`/v1/users/{user_id}
  /embedding`, never the raw path). Requests uvicorn refuses before the app (431, the 503 of
  `--max-connections`) are not counted.
- `meta_embed_answers_total{embedding_status}`: user answers by where the embedding came
  from (fresh, stale, cold, default).
- `meta_embed_reloads_total{result}`: snapshot loads that swapped in (success) or failed and
  kept the old state (failure).
- `meta_embed_snapshot_age_seconds`, `meta_embed_snapshot_users` and `meta_embed_snapshot_info
  {snapshot,model_version,as_of}`: the state of the process that answers the scrape.

Multiprocess-safe: `serve --workers N` points PROMETHEUS_MULTIPROC_DIR at a fresh folder
before starting the workers, prometheus-client then keeps each worker's values in files
there, and a scrape answered by any worker sums every worker's counters and histograms.
The snapshot gauges are the answering worker's (all workers follow one ROOT/CURRENT).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily

from serving.store import Status

disable_created_metrics()  # no *_created series: a scrape holds the counts, not their creation times
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter("meta_embed_requests", "HTTP requests answered by the app", ["route", "method", "status"])
LATENCY = Histogram(
    "meta_embed_request_duration_seconds",
    "time from a request's first byte to its answer, in the app",
    ["route", "status"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
_ANSWERS = Counter("meta_embed_answers", "user answers by embedding status", ["embedding_status"])
ANSWERS = {status: _ANSWERS.labels(status.value) for status in Status}
_RELOADS = Counter("meta_embed_reloads", "snapshot loads after ROOT/CURRENT changed", ["result"])
RELOAD_OK, RELOAD_FAILED = _RELOADS.labels("success"), _RELOADS.labels("failure")


def observe(route: str, method: str, status: int, seconds: float) -> None:
    code = str(status)
    REQUESTS.labels(route, method, code).inc()
    LATENCY.labels(route, code).observe(seconds)


class SnapshotCollector:
    """The gauges of one process's served state, read at scrape time."""

    def __init__(self, holder: Any):
        self.holder = holder

    def collect(self) -> Iterator[Any]:
        state = self.holder.state
        meta = state.store.meta
        age = GaugeMetricFamily("meta_embed_snapshot_age_seconds", "seconds since the snapshot's as_of")
        age.add_metric([], state.store.age_s(dt.datetime.now(dt.UTC)))
        users = GaugeMetricFamily("meta_embed_snapshot_users", "users in the served snapshot")
        users.add_metric([], len(state.store))
        info = InfoMetricFamily("meta_embed_snapshot", "the served snapshot")
        info.add_metric(
            [],
            {
                "snapshot": state.snapshot,
                "model_version": state.model_version,
                "as_of": meta.as_of.isoformat(),
            },
        )
        yield from (age, users, info)


def exposition(holder: Any) -> bytes:
    """The /metrics body: the counters and histograms (every worker's, summed, under
    PROMETHEUS_MULTIPROC_DIR; this process's and its runtime's otherwise), then the snapshot."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    snapshot = CollectorRegistry()
    snapshot.register(SnapshotCollector(holder))
    return generate_latest(registry) + generate_latest(snapshot)
