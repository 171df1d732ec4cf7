"""producers.gateway.telemetry through the real app (ASGI, no server, no broker): requests by
route template, bounded labels, 401/429 and failed publishes counted, OpenMetrics on request."""

from __future__ import annotations

import time

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families as parse_text

from producers.gateway.app import ROUTE_TEMPLATES, Gateway
from producers.gateway.auth import parse_api_keys
from producers.gateway.settings import GatewaySettings
from producers.gateway.telemetry import PATH, UNMATCHED, GatewayMetrics

KEY = "k" * 32
JSON = {"Content-Type": "application/json"}


def client(app: Gateway) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")


def value(app: Gateway, name: str, **labels: str) -> float:
    return app.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_requests_are_counted_by_route_template_never_by_raw_path() -> None:
    app = Gateway(GatewaySettings(access_log=False))
    job = "0b0e7c5e-5a38-4d5f-9b8e-1f5c2d3e4f50"
    async with client(app) as c:
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/healthz")).status_code == 200
        await c.get(f"/v1/ingestions/{job}")  # 503: no database in this test
        await c.get("/no/such/path/" + "x" * 50)
        await c.delete("/metrics")
        scrape = await c.get(PATH)
    assert scrape.status_code == 200
    text = scrape.text
    assert job not in text and "no/such" not in text
    requests = "gateway_requests_total"
    assert value(app, requests, route="/healthz", method="GET", status="200") == 2
    assert value(app, requests, route="/v1/ingestions/{jobId}", method="GET", status="503") == 1
    assert value(app, requests, route=UNMATCHED, method="GET", status="404") == 1
    assert value(app, requests, route="/metrics", method="DELETE", status="405") == 1
    assert value(app, "gateway_request_duration_seconds_count", route="/healthz") == 2
    assert "process_resident_memory_bytes" in text and "python_gc_objects_collected_total" in text
    assert "/v1/ingestions/{jobId}" in ROUTE_TEMPLATES and PATH in ROUTE_TEMPLATES


async def test_refused_keys_rate_limits_and_failed_publishes_are_counted() -> None:
    settings = GatewaySettings(
        access_log=False, api_keys=parse_api_keys(KEY), ingest_rate_limit_per_minute=1
    )
    app = Gateway(settings)
    event = {"event_name": "v", "channel": "web", "user_id": "u", "timestamp": int(time.time())}
    body = orjson.dumps(event)
    auth = JSON | {"Authorization": f"Bearer {KEY}"}
    async with client(app) as c:
        assert (await c.post("/events", content=body, headers=JSON)).status_code == 401
        # Open like health, even with API_KEYS set: counts and timings only.
        assert (await c.get(PATH)).status_code == 200
        # Not connected to a broker: a 503, counted as a failed publish.
        assert (await c.post("/events", content=body, headers=auth)).status_code == 503
        assert (await c.post("/events", content=body, headers=auth)).status_code == 429
    assert value(app, "gateway_auth_refused_total") == 1
    assert value(app, "gateway_rate_limited_total", limit="ingest") == 1
    assert value(app, "gateway_rate_limited_total", limit="read") == 0
    assert value(app, "gateway_publishes_total", outcome="failed") == 1
    assert value(app, "gateway_publishes_total", outcome="acknowledged") == 0
    assert value(app, "gateway_broker_connected") == 0
    assert value(app, "gateway_publish_pending_bytes") == 0
    assert value(app, "gateway_publish_max_pending_bytes") == settings.max_pending_bytes


async def test_openmetrics_when_asked_for() -> None:
    app = Gateway(GatewaySettings(access_log=False))
    async with client(app) as c:
        om = await c.get(PATH, headers={"Accept": "application/openmetrics-text;version=1.0.0"})
        plain = await c.get(PATH)
    assert om.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert om.text.endswith("# EOF\n")
    assert plain.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert {f.name for f in parse_text(plain.text)} >= {"gateway_requests", "gateway_publishes"}


def test_labels_stay_bounded_whatever_the_method() -> None:
    m = GatewayMetrics()
    for method in ("GET", "BREW", "PROPFIND"):
        m.request(UNMATCHED, method, 405, 0.001)
    get = m.registry.get_sample_value
    labels = {"route": UNMATCHED, "status": "405"}
    assert get("gateway_requests_total", labels | {"method": "other"}) == 2
    assert get("gateway_requests_total", labels | {"method": "GET"}) == 1
