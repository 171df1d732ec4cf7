"""Coverage-guided fuzzing (atheris) of decode -> validate -> plan over arbitrary bytes.

    python tests/fuzz/fuzz_events.py -runs=200000 [corpus_dir]

Any exception escapes and stops the fuzzer with the input that caused it: the
only acceptable outcome for any bytes is an event or an ``Invalid`` verdict.
``tests/unit/core/test_fuzz.py`` runs a short, seeded session in the suite.
"""

from __future__ import annotations

import pathlib
import sys

import atheris

with atheris.instrument_imports():
    from pipeline.core import codec, validate
    from pipeline.core.events import AgentEvent, Invalid, ProductEvent, Source
    from pipeline.core.limits import EventLimits
    from pipeline.core.planner import RawMessage, plan_batch

NOW_US = 1_700_000_000_000_000
LIMITS = EventLimits(max_message_bytes=1 << 20)
SEEDS = [
    b'{"event_name":"e","channel":"web","user_id":"u","timestamp":1700000000,"metadata":{"a":[1]}}',
    b'[{"event_name":"e","channel":"web","user_id":"u","timestamp":"2023-11-14T22:13:20Z"}]',
    b'{"event_version":"v0","event_id":"0b9f3c3e-8d0c-4f5e-9a7e-2f1d1c0b9a8e",'
    b'"event_type":"run.completed","occurred_at":"2023-11-14T22:13:20Z",'
    b'"tenant":{"tenant_id":"t","workspace_id":"w","project_id":"p"},'
    b'"run":{"agent_id":"a","workflow_id":"f","run_id":"r","status":"ok","cost_usd":1e300},'
    b'"trace":{"trace_id":"x","span_id":"y"}}',
    b'[{"event_name":"e","channel":"c","user_id":"u","timestamp":0,"tags":'
    + b"[" * 260
    + b"]" * 260
    + b"}]",
    b'{"event_name":"e","channel":"c","user_id":"u","timestamp":1e29,"x":{"a":"\\ud800"}}',
]


def one_input(data: bytes) -> None:
    for index, item, raw in codec.decode_message(data, LIMITS.max_message_bytes):
        if isinstance(item, Invalid):
            continue
        verdict = validate.validate_event(item, raw, Source("t", 0, 0, index))
        assert isinstance(verdict, ProductEvent | AgentEvent | Invalid), verdict
    plan = plan_batch([RawMessage("t", 0, 0, data)], LIMITS, NOW_US, {})
    assert plan.progress[0].next_offset == 1


def main() -> None:
    if len(sys.argv) > 1 and not sys.argv[-1].startswith("-"):
        path = pathlib.Path(sys.argv[-1])  # the corpus folder: seeded with valid events
        path.mkdir(parents=True, exist_ok=True)
        for i, seed in enumerate(SEEDS):
            (path / f"seed-{i}.json").write_bytes(seed)
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
