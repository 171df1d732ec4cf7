"""The demo's reconciliation is verify's comparison (pipeline.ops.verify), not a copy of it."""

from __future__ import annotations

import pytest

from pipeline.ops.verify import Observed, parse_expected
from producers.generate import LoadOptions, build_workload
from producers.publisher import Receipt
from tools.demo import _print_reconciliation, expect_document


def _state(doc: dict[str, object]) -> Observed:
    """The tables after a correct run of the load ``doc`` describes."""
    exp = parse_expected(doc, "test")
    return Observed(
        product_events=exp.product_events,
        agent_events=exp.agent_events,
        late_events=exp.late_events,
        dead_letters=dict(exp.dead_letters),
        channel_rows=dict(exp.channel_rows),
        agent_rows=dict(exp.agent_rows),
        durable=dict(exp.end_offsets or {}),
        latency_rows=dict(exp.latency_rows or {}),
    )


def test_the_demo_checks_a_load_with_verifys_checks(capsys: pytest.CaptureFixture[str]) -> None:
    workload = build_workload(LoadOptions(count=400, now=1_700_000_000.0), partitions=3)
    receipt = Receipt(messages=workload.messages, events=400, end_offsets={0: 150, 1: 140, 2: 110})
    doc = expect_document(workload, receipt, "events")
    assert doc["sent_events"] == 400 and doc["end_offsets"] == {"0": 150, "1": 140, "2": 110}
    state = _state(doc)
    assert _print_reconciliation(workload, receipt, "events", state) == 0
    out = capsys.readouterr().out
    assert "all 10 checks passed" in out and "MISMATCH" not in out

    rows = dict(state.channel_rows)
    key = sorted(rows)[0]
    rows[key] = (rows[key][0] + 1, rows[key][1])
    tampered = Observed(**{**state.__dict__, "channel_rows": rows})
    assert _print_reconciliation(workload, receipt, "events", tampered) == 1
    out = capsys.readouterr().out
    assert "MISMATCH  channel rollups: 1 row(s) differ" in out
    assert "1 of 10 checks failed" in out
