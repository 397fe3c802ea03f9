"""Prometheus metrics of the evaluation service, on their own registry.

Each server instance owns one ``ServiceMetrics`` (so several servers in one process, as
in the tests, never share counters) and may expose it over HTTP (default port 9101).
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ServiceMetrics:
    """Counters, histograms and gauges of one evaluation server."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "align_requests_total",
            "RPCs by method and final status code",
            ["method", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "align_request_latency_seconds",
            "RPC wall time by method",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cache_hits = Counter(
            "align_cache_hits_total",
            "cache hits by kind (report|embedding) and tier",
            ["kind", "tier"],
            registry=r,
        )
        self.cache_misses = Counter(
            "align_cache_misses_total", "cache misses by kind", ["kind"], registry=r
        )
        self.cache_errors = Counter(
            "align_cache_errors_total",
            "Redis operations that failed (results stay correct)",
            ["op"],
            registry=r,
        )
        self.embeddings_computed = Counter(
            "align_embeddings_computed_total",
            "stimuli embedded (cache misses)",
            ["model"],
            registry=r,
        )
        self.computations = Counter(
            "align_report_computations_total",
            "reports computed (not served from a cache)",
            registry=r,
        )
        self.coalesced = Counter(
            "align_singleflight_coalesced_total",
            "requests that joined an identical computation already running",
            registry=r,
        )
        self.inflight = Gauge(
            "align_inflight_work", "heavy computations running in the worker pool", registry=r
        )
        self.queued = Gauge(
            "align_queued_work", "heavy computations waiting for a worker", registry=r
        )
        self.cache_corrupt = Counter(
            "align_cache_corrupt_total",
            "cached values that did not decode or verify (deleted, then recomputed)",
            ["kind"],
            registry=r,
        )
        self.stale_locks = Counter(
            "align_stale_locks_total",
            "single-flight locks removed because they outlived any live holder",
            registry=r,
        )
        self.cancelled = Counter(
            "align_work_cancelled_total",
            "computations stopped because their last waiter went away",
            registry=r,
        )
        self.auth_failures = Counter(
            "align_auth_failures_total", "calls refused for a missing or wrong token", registry=r
        )
        self._http: Any = None
        self._lock = threading.Lock()

    def serve_http(self, port: int, addr: str = "127.0.0.1") -> int:
        """Expose ``/metrics`` on ``addr:port`` (0 picks a free port); returns the port."""
        with self._lock:
            if self._http is None:
                server, thread = start_http_server(port, addr=addr, registry=self.registry)
                self._http = (server, thread)
            return int(self._http[0].server_address[1])

    def stop_http(self) -> None:
        with self._lock:
            if self._http is not None:
                server, thread = self._http
                server.shutdown()
                server.server_close()
                thread.join(timeout=5)
                self._http = None

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Current value of a sample (0.0 when it was never touched); for tests and bench."""
        v = self.registry.get_sample_value(name, labels or {})
        return 0.0 if v is None else float(v)

    def total(self, name: str) -> float:
        """Sum of a counter's samples over all label values."""
        total = 0.0
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == name:
                    total += float(sample.value)
        return total
