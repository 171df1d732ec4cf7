"""The gateway's Prometheus metrics (``prometheus_client``), served on ``GET /prometheus``.

Not on ``/metrics``: that path is the analysts' JSON read API. One registry per
:class:`GatewayMetrics` (tests run several gateways in one process), with the
process, GC and Python-platform collectors on it.

Labels are bounded whatever a client sends: requests are counted by **route
template** (``/v1/ingestions/{jobId}``, never the job id; ``unmatched`` for a
path the gateway does not serve), method (the usual seven, else ``other``) and
status code. Per request the hot path does one counter increment and one
histogram observation, on children looked up in a plain dict.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

__all__ = ["PATH", "UNMATCHED", "GatewayMetrics", "exposition"]

PATH = "/prometheus"
UNMATCHED = "unmatched"  # the route label of a request for a path the gateway does not serve
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
# Seconds; single posts take ~8 ms at 8k req/s, bulk posts of 1,000 events ~45 ms.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def exposition(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """``(body, content type)`` for a scrape: OpenMetrics if ``accept`` asks for it."""
    encode, content_type = choose_encoder(accept)
    return encode(registry), content_type


class GatewayMetrics:
    """Everything one gateway process reports on ``/prometheus``."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        GCCollector(registry=r)
        PlatformCollector(registry=r)
        self.requests = Counter(
            "gateway_requests_total",
            "HTTP requests answered, by route template, method and status code",
            ("route", "method", "status"),
            registry=r,
        )
        self.latency = Histogram(
            "gateway_request_duration_seconds",
            "time from the request's arrival to its answer sent, by route template",
            ("route",),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.publishes = Counter(
            "gateway_publishes_total",
            "publishes to Kafka (one per accepted request): acknowledged by the broker, failed"
            " (not acknowledged in time, or not connected: a 503), or refused because the"
            " publish queue was full (GATEWAY_MAX_PENDING_BYTES: a 503)",
            ("outcome",),
            registry=r,
        )
        self.acknowledged = self.publishes.labels(outcome="acknowledged")
        self.failed = self.publishes.labels(outcome="failed")
        self.queue_full = self.publishes.labels(outcome="queue_full")
        self.events_acknowledged = Counter(
            "gateway_events_acknowledged_total",
            "events the broker acknowledged (a bulk post counts each of its events)",
            registry=r,
        )
        self.rate_limited = Counter(
            "gateway_rate_limited_total",
            "requests answered 429, by limit: ingest, read (the metrics endpoints), auth"
            " (an address over GATEWAY_AUTH_FAILURES_PER_MINUTE)",
            ("limit",),
            registry=r,
        )
        for limit in ("ingest", "read", "auth"):
            self.rate_limited.labels(limit=limit)
        self.auth_refused = Counter(
            "gateway_auth_refused_total",
            "requests answered 401: no API key, or one that is not valid",
            registry=r,
        )
        self.http_refused = Counter(
            "gateway_http_refused_total",
            "connections the HTTP server answered itself and closed: 408 (request head too"
            " slow), 431 (head too large), 503 (over GATEWAY_MAX_CONNECTIONS)",
            ("status",),
            registry=r,
        )
        for status in ("408", "431", "503"):
            self.http_refused.labels(status=status)
        self.pending_bytes = Gauge(
            "gateway_publish_pending_bytes",
            "bytes of events handed to the producer and not yet acknowledged or failed",
            registry=r,
        )
        self.max_pending_bytes = Gauge(
            "gateway_publish_max_pending_bytes",
            "GATEWAY_MAX_PENDING_BYTES: beyond it a publish is refused with a 503",
            registry=r,
        )
        self.broker_connected = Gauge(
            "gateway_broker_connected",
            "1 while the gateway's producer is connected to Kafka",
            registry=r,
        )
        self._requests: dict[tuple[str, str, int], Counter] = {}
        self._latency: dict[str, Histogram] = {}

    def watch_broker(self, pending: Callable[[], float], connected: Callable[[], bool]) -> None:
        """Read the publish queue and the connection at scrape time."""
        self.pending_bytes.set_function(pending)
        self.broker_connected.set_function(lambda: 1.0 if connected() else 0.0)

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One answered request: the hot path, two dict lookups and two updates."""
        key = (route, method, status)
        counter = self._requests.get(key)
        if counter is None:
            label = method if method in _METHODS else "other"
            counter = self._requests[key] = self.requests.labels(route, label, str(status))
        counter.inc()
        histogram = self._latency.get(route)
        if histogram is None:
            histogram = self._latency[route] = self.latency.labels(route)
        histogram.observe(seconds)

    def refused(self, status: int) -> None:
        """A connection the HTTP server refused on its own (server.py)."""
        self.http_refused.labels(status=str(status)).inc()
