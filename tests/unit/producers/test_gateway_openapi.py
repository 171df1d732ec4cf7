"""producers.gateway.openapi: the contracts embedded, every $ref resolvable, YAML == JSON."""

from __future__ import annotations

from typing import Any

import orjson
import yaml

from pipeline.resources import schemas_folder
from pipeline.settings import Settings
from producers.gateway.openapi import as_json, as_yaml, document
from producers.gateway.settings import GatewaySettings

DOC = document(GatewaySettings())


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_ref_resolves_inside_the_document() -> None:
    refs = _refs(DOC)
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/")
        node: Any = DOC
        for part in ref[2:].split("/"):
            node = node[part]


def test_the_contracts_are_embedded_unchanged_but_for_their_defs() -> None:
    for name, file in (("ProductEvent", "product-event.v1"), ("AgentEvent", "agent-event.v0")):
        original = orjson.loads((schemas_folder() / f"{file}.schema.json").read_bytes())
        embedded = DOC["components"]["schemas"][name]
        assert embedded["required"] == original["required"]
        assert set(embedded["properties"]) == set(original["properties"])
        for key in original["$defs"]:
            assert key in DOC["components"]["schemas"]


def test_yaml_parses_back_to_the_json_document() -> None:
    assert yaml.safe_load(as_yaml(DOC)) == orjson.loads(as_json(DOC))


def test_the_document_follows_the_settings() -> None:
    gs = GatewaySettings(pipeline=Settings(), api_keys=("k",), max_bulk_events=50)
    doc = document(gs)
    assert doc["security"] == [{"bearer": []}, {"apiKey": []}]
    assert doc["components"]["schemas"]["BulkEvents"]["maxItems"] == 50
    assert "security" not in DOC


def test_the_overview_and_the_failed_runs_are_documented() -> None:
    schemas = DOC["components"]["schemas"]
    overview = schemas["Overview"]["properties"]
    for p in (50, 95, 99):
        assert overview[f"p{p}_latency_ms"]["type"] == "number"
        assert "4.43%" in overview[f"p{p}_latency_ms"]["description"]
    assert "latency_percentile_samples" in overview
    op = DOC["paths"]["/v1/runs/failures"]["get"]
    params = {p["name"]: p for p in op["parameters"]}
    assert list(params) == [
        "window_hours",
        "tenant_id",
        "workspace_id",
        "project_id",
        "agent_id",
        "workflow_id",
        "limit",
    ]
    assert params["limit"]["schema"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 500,
        "default": 50,
    }
    assert op["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Failures"
    }
    failure = schemas["Failure"]
    assert set(failure["required"]) == set(failure["properties"])
