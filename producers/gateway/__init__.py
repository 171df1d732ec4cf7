"""The HTTP gateway: ingestion endpoints that publish to Kafka, and the metrics API.

``pipeline-gateway`` (or ``producers gateway``, ``python -m producers gateway``) serves
:class:`producers.gateway.app.Gateway` with uvicorn. Read docs/gateway.md.
"""
