"""pipeline.core.planner.plan_batch: decode -> validate -> time limits -> dedup -> write plan."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.events import AgentEvent, ProductEvent, Source
from pipeline.core.limits import EventLimits
from pipeline.core.planner import (
    PAUSE_EVERY,
    BatchPlan,
    PartitionProgress,
    RawMessage,
    plan_batch,
    split_by_bytes,
    split_into_lanes,
    state_key,
)
from pipeline.core.window import HOUR_US

SECOND = 1_000_000
NOW = 1_700_000_000 * SECOND  # 2023-11-14T22:13:20Z
H21 = 1_699_999_200 * SECOND - HOUR_US  # 21:00Z
GRACE = 300
UUID1 = "6f9619ff-8b86-d011-b42d-00cf4fc964ff"
UUID2 = "0b9f3c3e-8d0c-4f5e-9a7e-2f1d1c0b9a8e"


def product(**changes: Any) -> dict[str, Any]:
    return {
        "event_name": "page_view",
        "channel": "web",
        "user_id": "u1",
        "timestamp": 1_699_999_000,
        **changes,
    }


def agent(event_id: str = UUID1, occurred_at: str = "2023-11-14T21:00:00Z") -> dict[str, Any]:
    return {
        "event_version": "v0",
        "event_id": event_id,
        "event_type": "run.started",
        "occurred_at": occurred_at,
        "tenant": {"tenant_id": "t", "workspace_id": "w", "project_id": "p"},
        "run": {"run_id": "r", "agent_id": "a", "workflow_id": "wf", "status": "started"},
        "trace": {"trace_id": "x", "span_id": "y"},
    }


def msg(offset: int, value: Any, partition: int = 0, topic: str = "events") -> RawMessage:
    raw = value if isinstance(value, bytes) or value is None else orjson.dumps(value)
    return RawMessage(topic, partition, offset, raw)


def plan(
    messages: list[RawMessage],
    limits: EventLimits | None = None,
    watermarks: dict[int, int | None] | None = None,
    seen: Any = None,
) -> BatchPlan:
    kwargs = {} if seen is None else {"seen": seen}
    return plan_batch(messages, limits or EventLimits(), NOW, watermarks or {}, **kwargs)


class TestHappyPath:
    def test_products_and_agents_are_split(self) -> None:
        p = plan([msg(0, product()), msg(1, agent())])
        assert [type(e) for e in p.products] == [ProductEvent]
        assert [type(e) for e in p.agents] == [AgentEvent]
        assert p.events == [*p.products, *p.agents]
        assert p.dead == []
        assert p.duplicates == 0
        assert p.topic == "events"

    def test_sources_name_topic_partition_offset_and_index(self) -> None:
        p = plan([msg(7, product(), partition=2, topic="t1")])
        assert p.products[0].source == Source("t1", 2, 7, -1)
        assert p.topic == "t1"

    def test_empty_batch(self) -> None:
        p = plan([])
        assert (p.topic, p.events, p.dead, p.duplicates, p.progress) == ("", [], [], 0, {})

    def test_payload_is_the_message_bytes(self) -> None:
        value = b'{"event_name":"a", "channel":"web","user_id":"u","timestamp":1699999000}'
        p = plan([msg(0, value)])
        assert p.products[0].payload == value


class TestProgress:
    def test_next_offset_watermark_and_message_count_per_partition(self) -> None:
        p = plan(
            [
                msg(10, product(user_id="a", timestamp=1_699_990_000), partition=0),
                msg(11, product(user_id="b", timestamp=1_699_999_000), partition=0),
                msg(12, product(user_id="c", timestamp=1_699_995_000), partition=0),
                msg(5, product(user_id="d", timestamp=1_699_980_000), partition=3),
            ]
        )
        assert p.progress == {
            0: PartitionProgress(13, 1_699_999_000 * SECOND, 3),
            3: PartitionProgress(6, 1_699_980_000 * SECOND, 1),
        }

    def test_watermark_starts_from_the_durable_one_and_only_moves_forward(self) -> None:
        durable = 1_699_999_500 * SECOND
        p = plan([msg(0, product(timestamp=1_699_999_000))], watermarks={0: durable})
        assert p.progress[0].watermark_us == durable

    def test_dead_letters_still_advance_the_offset_but_not_the_watermark(self) -> None:
        p = plan(
            [msg(4, b"not json"), msg(5, product(timestamp=1_800_000_000))],
            watermarks={0: 123},
        )
        assert p.events == []
        assert p.progress[0] == PartitionProgress(6, 123, 2)

    def test_partition_without_any_valid_event_keeps_no_watermark(self) -> None:
        p = plan([msg(0, None, partition=1)])
        assert p.progress[1] == PartitionProgress(1, None, 1)

    def test_offsets_out_of_order_give_the_highest_next_offset(self) -> None:
        p = plan([msg(9, b"x"), msg(3, b"y"), msg(5, b"z")])
        assert p.progress[0].next_offset == 10
        assert p.progress[0].messages == 3

    @pytest.mark.parametrize(
        "offsets",
        [[10], [10, 11, 12], [10, 10, 11], [10, 11, 11, 12], [12, 10, 11], [11, 10]],
    )
    def test_offsets_without_a_hole_are_contiguous(self, offsets: list[int]) -> None:
        p = plan([msg(o, b"null") for o in offsets])
        assert p.progress[0].contiguous is True
        assert p.progress[0].next_offset == max(offsets) + 1

    @pytest.mark.parametrize("offsets", [[10, 12], [10, 11, 13, 14], [10, 11, 11, 13], [0, 9]])
    def test_a_skipped_offset_clears_contiguous(self, offsets: list[int]) -> None:
        p = plan([msg(o, b"null") for o in offsets])
        assert p.progress[0].contiguous is False
        assert p.progress[0].next_offset == max(offsets) + 1

    @pytest.mark.parametrize("offsets", [[12, 10, 13], [9, 3, 5], [17, 18, 10, 12]])
    def test_a_skipped_offset_clears_contiguous_whatever_the_order(
        self, offsets: list[int]
    ) -> None:
        p = plan([msg(o, b"null") for o in offsets])
        assert p.progress[0].contiguous is False

    def test_contiguous_is_per_partition(self) -> None:
        p = plan([msg(1, b"null", 0), msg(5, b"null", 1), msg(3, b"null", 0), msg(6, b"null", 1)])
        assert p.progress[0] == PartitionProgress(4, None, 2, contiguous=False)
        assert p.progress[1] == PartitionProgress(7, None, 2, contiguous=True)

    def test_an_envelope_is_one_message(self) -> None:
        p = plan([msg(0, [product(user_id="a"), product(user_id="b"), product(user_id="c")])])
        assert len(p.products) == 3
        assert p.progress[0] == PartitionProgress(1, 1_699_999_000 * SECOND, 1)

    def test_duplicates_also_move_the_watermark(self) -> None:
        # The watermark is the max event time of the partition's valid events, copies included.
        later = product(event_id="e1", timestamp=1_699_999_900)
        p = plan([msg(0, later)], seen={"p:e1"}.__contains__)
        assert p.events == []
        assert p.duplicates == 1
        assert p.progress[0].watermark_us == 1_699_999_900 * SECOND


class TestDedup:
    def test_in_batch_copies_are_dropped_and_counted(self) -> None:
        p = plan([msg(0, product(event_id="e1")), msg(1, product(event_id="e1", user_id="x"))])
        assert [e.source.offset for e in p.products] == [0]
        assert p.products[0].user_id == "u1"  # the first copy wins
        assert p.duplicates == 1

    def test_same_instant_spelled_differently_is_one_event(self) -> None:
        p = plan(
            [
                msg(0, product(timestamp=1700000000)),
                msg(1, product(timestamp=1700000000.0)),
                msg(2, product(timestamp="2023-11-14T22:13:20Z")),
                msg(3, [product(timestamp="2023-11-15T03:43:20+05:30")]),
            ]
        )
        assert len(p.products) == 1
        assert p.duplicates == 3

    def test_copies_across_partitions_and_envelopes(self) -> None:
        p = plan(
            [
                msg(0, [agent(), agent(UUID2)], partition=0),
                msg(0, agent(UUID1.upper()), partition=1),
            ]
        )
        assert [e.dedup_key for e in p.agents] == [UUID1, UUID2]
        assert p.duplicates == 1

    def test_seen_keys_are_dropped_and_counted(self) -> None:
        asked: list[str] = []

        def seen(key: str) -> bool:
            asked.append(key)
            return key == f"a:{UUID1}"

        p = plan([msg(0, agent()), msg(1, agent(UUID2)), msg(2, product(event_id="e1"))], seen=seen)
        assert sorted(e.dedup_key for e in p.events) == sorted([UUID2, "e1"])
        assert p.duplicates == 1
        assert set(asked) == {f"a:{UUID1}", f"a:{UUID2}", "p:e1"}

    def test_product_and_agent_keys_are_kept_apart(self) -> None:
        p = plan([msg(0, product(event_id=UUID1)), msg(1, agent(UUID1))])
        assert len(p.products) == len(p.agents) == 1
        assert p.duplicates == 0
        assert state_key(p.products[0]) == f"p:{UUID1}"
        assert state_key(p.agents[0]) == f"a:{UUID1}"

    def test_dead_letters_are_not_duplicates(self) -> None:
        bad = product(channel=None)
        p = plan([msg(0, bad), msg(1, bad)])
        assert len(p.dead) == 2
        assert p.duplicates == 0


class TestDeadLetters:
    def test_envelope_with_mixed_elements(self) -> None:
        elements = [product(user_id="a"), product(channel=""), 42, product(user_id="b")]
        value = orjson.dumps(elements)
        p = plan([msg(8, value)])
        assert [(e.user_id, e.source.index) for e in p.products] == [("a", 0), ("b", 3)]
        assert [(d.reason, d.field, d.source.index) for d in p.dead] == [
            ("schema_invalid", "channel", 1),
            ("not_an_object", None, 2),
        ]
        assert p.dead[0].raw == orjson.dumps(elements[1])
        assert p.dead[1].raw == b"42"
        assert p.dead[0].source == Source("events", 0, 8, 1)
        assert p.products[0].payload == orjson.dumps(elements[0])

    @pytest.mark.parametrize(
        ("value", "reason"),
        [
            (b"\xff\xfe", "not_json"),
            (b'{"event_name": "x"', "not_json"),
            (None, "not_json"),
            (b"", "not_json"),
            (b'"a string"', "not_an_object"),
            (b"[]", "empty_envelope"),
        ],
    )
    def test_whole_message_refused(self, value: bytes | None, reason: str) -> None:
        p = plan([msg(3, value)])
        [dead] = p.dead
        assert dead.reason == reason
        assert dead.source == Source("events", 0, 3, -1)
        assert dead.raw == (value or b"")
        assert p.progress[0].next_offset == 4

    def test_oversized(self) -> None:
        value = orjson.dumps(product(padding="x" * 2000))
        p = plan([msg(0, value)], limits=EventLimits(max_message_bytes=1024))
        [dead] = p.dead
        assert dead.reason == "oversized"
        assert dead.raw == value

    def test_schema_invalid_names_the_field(self) -> None:
        p = plan([msg(0, product(tags=["ok", 5]))])
        [dead] = p.dead
        assert (dead.reason, dead.field) == ("schema_invalid", "tags[1]")
        assert dead.detail.startswith("tags[1] ")

    @pytest.mark.parametrize(
        "obj",
        [
            product(user_id="a\x00b"),
            product(metadata={"k": "\x00"}),
            agent() | {"event_type": "run.\x00"},
        ],
    )
    def test_nul_is_refused_as_schema_invalid(self, obj: dict[str, Any]) -> None:
        for value in (orjson.dumps(obj), orjson.dumps([obj])):
            p = plan([msg(0, value)])
            assert p.events == []
            [dead] = p.dead
            assert dead.reason == "schema_invalid"
            assert "NUL" in dead.detail

    def test_too_far_in_future(self) -> None:
        limits = EventLimits(max_future_s=3600)
        ok = product(user_id="ok", timestamp=1_700_003_600)  # exactly now + 1 h
        future = product(user_id="f", timestamp=1_700_003_601)
        future_agent = agent(occurred_at="2023-11-15T00:00:00Z")
        p = plan([msg(0, ok), msg(1, future), msg(2, future_agent)], limits=limits)
        assert [e.user_id for e in p.products] == ["ok"]
        assert [(d.reason, d.field) for d in p.dead] == [
            ("too_far_in_future", "timestamp"),
            ("too_far_in_future", "occurred_at"),
        ]
        assert all("MAX_FUTURE_SECONDS=3600" in d.detail for d in p.dead)
        assert p.dead[0].raw == orjson.dumps(future)
        assert p.dead[1].source == Source("events", 0, 2, -1)
        # Refused events do not move the watermark.
        assert p.progress[0].watermark_us == 1_700_003_600 * SECOND

    def test_too_late_only_with_an_age_limit(self) -> None:
        old = product(timestamp=1_600_000_000)
        old_agent = agent(occurred_at="2020-01-01T00:00:00Z")
        assert plan([msg(0, old), msg(1, old_agent)]).dead == []
        p = plan([msg(0, old), msg(1, old_agent)], limits=EventLimits(max_event_age_s=86_400))
        assert p.events == []
        assert [(d.reason, d.field) for d in p.dead] == [
            ("too_late", "timestamp"),
            ("too_late", "occurred_at"),
        ]
        assert all("MAX_EVENT_AGE_SECONDS=86400" in d.detail for d in p.dead)

    def test_age_limit_boundary(self) -> None:
        limits = EventLimits(max_event_age_s=60)
        p = plan(
            [
                msg(0, product(user_id="edge", timestamp=1_699_999_940)),
                msg(1, product(user_id="old", timestamp=1_699_999_939.999999)),
            ],
            limits=limits,
        )
        assert [e.user_id for e in p.products] == ["edge"]
        assert [d.reason for d in p.dead] == ["too_late"]


class TestLate:
    END_H21 = H21 + HOUR_US  # 22:00Z

    def _one(self, watermark: int | None, partition: int = 0) -> bool:
        event = product(timestamp=1_699_997_000)  # 21:23:20Z
        p = plan([msg(0, event, partition=partition)], watermarks={0: watermark})
        return p.products[0].late

    def test_durable_watermark_past_hour_end_plus_grace(self) -> None:
        assert self._one(self.END_H21 + GRACE * SECOND) is True
        assert self._one(self.END_H21 + GRACE * SECOND + 1) is True

    def test_durable_watermark_not_yet_past(self) -> None:
        assert self._one(self.END_H21 + GRACE * SECOND - 1) is False
        assert self._one(self.END_H21) is False
        assert self._one(None) is False

    def test_watermark_of_another_partition_does_not_count(self) -> None:
        assert self._one(self.END_H21 + 10 * HOUR_US, partition=1) is False

    def test_grace_comes_from_the_limits(self) -> None:
        event = product(timestamp=1_699_997_000)
        p = plan([msg(0, event)], limits=EventLimits(grace_s=0), watermarks={0: self.END_H21})
        assert p.products[0].late is True

    def test_late_agent_event(self) -> None:
        p = plan([msg(0, agent())], watermarks={0: self.END_H21 + HOUR_US})
        assert p.agents[0].late is True

    def test_earlier_events_of_the_batch_count(self) -> None:
        # Partition order decides, not batch boundaries: 22:10Z passes 21:00 + 1 h + 5 min.
        p = plan(
            [
                msg(0, product(user_id="old1", timestamp=1_699_997_000)),  # 21:23:20
                msg(1, product(user_id="new", timestamp=1_699_999_800)),  # 22:10:00
                msg(2, product(user_id="old2", timestamp=1_699_997_000)),
            ]
        )
        assert [(e.user_id, e.late) for e in p.products] == [
            ("old1", False),
            ("new", False),
            ("old2", True),
        ]


# One partition's stream: (key, seconds into the run) -> messages in partition order.
_stream = st.lists(
    st.tuples(st.sampled_from("abcdefghij"), st.integers(0, 4 * 3600)), min_size=1, max_size=25
)


@settings(max_examples=50, deadline=None, database=None)
@given(_stream, st.sets(st.integers(1, 24)), st.none() | st.integers(0, 4 * 3600))
def test_late_flags_and_kept_events_do_not_depend_on_batching(
    stream: list[tuple[str, int]], cuts: set[int], durable_s: int | None
) -> None:
    base = 1_699_980_000
    messages = [
        msg(i, product(event_id=key, timestamp=base + s)) for i, (key, s) in enumerate(stream)
    ]
    start_wm = None if durable_s is None else (base + durable_s) * SECOND

    def run(batches: list[list[RawMessage]]) -> tuple[list[tuple[int, bool]], int]:
        watermark, stored, out, dups = start_wm, set(), [], 0
        for batch in batches:
            p = plan_batch(batch, EventLimits(), NOW, {0: watermark}, stored.__contains__)
            out += [(e.source.offset, e.late) for e in p.events]
            stored |= {state_key(e) for e in p.events}
            dups += p.duplicates
            wm = p.progress[0].watermark_us
            if wm is not None and (watermark is None or wm > watermark):
                watermark = wm
        return out, dups

    bounds = [0, *sorted(c for c in cuts if c < len(messages)), len(messages)]
    split = [messages[a:b] for a, b in pairwise(bounds) if b > a]
    whole = run([messages])
    assert run(split) == whole
    assert len(whole[0]) + whole[1] == len(messages)
    assert len(whole[0]) == len({k for k, _ in stream})


class TestJobOutcomes:
    JOB = "0b9f3c3e-8d0c-4f5e-9a7e-2f1d1c0b9a8e"

    def _ref(self, seq: int) -> dict[str, Any]:
        return {"job_id": self.JOB, "seq": seq}

    def test_stored_candidates_carry_their_job_and_have_no_outcome_yet(self) -> None:
        p = plan([msg(0, product(_ingestion=self._ref(1)))])
        assert p.products[0].job == (self.JOB, 1)
        assert p.job_outcomes == []  # decided by the sink: stored or duplicate

    def test_dropped_copies_are_duplicates(self) -> None:
        p = plan(
            [
                msg(0, product(event_id="e1", _ingestion=self._ref(1))),
                msg(1, product(event_id="e1", _ingestion=self._ref(2))),
                msg(2, product(event_id="e2", _ingestion=self._ref(3))),
            ],
            seen={"p:e2"}.__contains__,
        )
        assert [e.job for e in p.products] == [(self.JOB, 1)]
        assert p.job_outcomes == [(self.JOB, 2, "duplicate"), (self.JOB, 3, "duplicate")]
        assert p.duplicates == 2

    def test_time_refusals_are_dead_lettered(self) -> None:
        p = plan([msg(0, product(timestamp=1_800_000_000, _ingestion=self._ref(4)))])
        assert [d.reason for d in p.dead] == ["too_far_in_future"]
        assert p.job_outcomes == [(self.JOB, 4, "dead_lettered")]

    def test_schema_invalid_events_of_a_job_are_dead_lettered(self) -> None:
        ref = {"job_id": self.JOB.upper(), "seq": 5}
        p = plan(
            [
                msg(0, product(channel=None, _ingestion=ref)),
                msg(1, product(tags="x", _ingestion=self._ref(6))),
                msg(2, product(metadata={"s": "\x00"}, _ingestion=self._ref(7))),  # NUL
            ]
        )
        assert [d.reason for d in p.dead] == ["schema_invalid"] * 3
        assert p.job_outcomes == [
            (self.JOB, 5, "dead_lettered"),  # the job id lower-cased, as for stored ones
            (self.JOB, 6, "dead_lettered"),
            (self.JOB, 7, "dead_lettered"),
        ]
        assert p.events == []

    def test_invalid_elements_of_an_envelope_count_for_their_job(self) -> None:
        p = plan(
            [
                msg(
                    0,
                    [
                        product(event_id="e1", _ingestion=self._ref(0)),
                        product(event_name="", _ingestion=self._ref(1)),
                        "not an object",
                    ],
                )
            ]
        )
        assert [e.job for e in p.products] == [(self.JOB, 0)]
        assert p.job_outcomes == [(self.JOB, 1, "dead_lettered")]
        assert len(p.dead) == 2

    @pytest.mark.parametrize(
        "ref",
        [
            "job-1",
            {"job_id": "not-a-uuid", "seq": 1},
            {"job_id": JOB, "seq": -1},
            {"job_id": JOB, "seq": True},
            {"job_id": JOB},
        ],
    )
    def test_a_malformed_job_ref_gives_no_outcome(self, ref: object) -> None:
        p = plan([msg(0, product(_ingestion=ref)), msg(1, product(channel=None, _ingestion=ref))])
        assert [d.reason for d in p.dead] == ["schema_invalid"] * 2
        assert p.dead[0].field is not None and p.dead[0].field.startswith("_ingestion")
        assert p.job_outcomes == []

    def test_undecodable_messages_have_no_job(self) -> None:
        p = plan([msg(0, b"{not json"), msg(1, b'"just a string"'), msg(2, None)])
        assert len(p.dead) == 3
        assert p.job_outcomes == []

    def test_events_without_a_job_have_no_outcome(self) -> None:
        p = plan([msg(0, product(event_id="e1")), msg(1, product(event_id="e1"))])
        assert p.duplicates == 1
        assert p.job_outcomes == []


def test_plan_does_not_mutate_its_inputs() -> None:
    watermarks = {0: 5}
    messages = [msg(0, product())]
    plan_batch(messages, EventLimits(), NOW, watermarks)
    assert watermarks == {0: 5}
    assert messages == [msg(0, product())]


def test_pause_is_called_every_pause_every_events_and_changes_nothing() -> None:
    # Envelopes count by event, not by message: 3 envelopes of 100 = 300 events.
    envelopes = [
        msg(i, [product(user_id=f"u{i}-{j}", event_id=f"e{i}-{j}") for j in range(100)])
        for i in range(3)
    ]
    calls: list[int] = []
    paused = plan_batch(envelopes, EventLimits(), NOW, {}, pause=lambda: calls.append(1))
    assert len(calls) == 300 // PAUSE_EVERY
    assert paused == plan_batch(envelopes, EventLimits(), NOW, {})


class TestSplitByBytes:
    def test_chunks_keep_order_and_stay_under_the_limit(self) -> None:
        messages = [RawMessage("events", 0, i, b"x" * 10) for i in range(10)]
        chunks = split_by_bytes(messages, 35)
        assert [len(c) for c in chunks] == [3, 3, 3, 1]
        assert [m for c in chunks for m in c] == messages

    def test_a_message_over_the_limit_is_a_chunk_of_its_own(self) -> None:
        big = RawMessage("events", 0, 1, b"x" * 100)
        small = [RawMessage("events", 0, i, b"y") for i in (0, 2)]
        assert split_by_bytes([small[0], big, small[1]], 10) == [[small[0]], [big], [small[1]]]

    def test_empty_values_count_as_nothing(self) -> None:
        messages = [RawMessage("events", 0, i, None) for i in range(3)]
        assert split_by_bytes(messages, 1) == [messages]
        assert split_by_bytes([], 1) == []


class TestSplitIntoLanes:
    def test_consecutive_chunks_share_no_partition_and_keep_each_partition_in_order(self) -> None:
        messages = [RawMessage("events", i % 4, i, b"x" * 10) for i in range(40)]
        chunks = split_into_lanes(messages, 2, 45)
        assert sorted((m.partition, m.offset) for c in chunks for m in c) == sorted(
            (m.partition, m.offset) for m in messages
        )
        for a, b in pairwise(chunks):
            assert not {m.partition for m in a} & {m.partition for m in b}
        for chunk in chunks:
            assert sum(len(m.value or b"") for m in chunk) <= 45
        for p in range(4):
            offsets = [m.offset for c in chunks for m in c if m.partition == p]
            assert offsets == sorted(offsets)

    def test_a_take_that_fits_one_transaction_stays_one(self) -> None:
        messages = [RawMessage("events", i % 4, i, b"x" * 10) for i in range(8)]
        assert split_into_lanes(messages, 2, 80) == [messages]
        assert len(split_into_lanes(messages, 2, 79)) > 1

    def test_one_lane_or_one_partition_is_split_by_bytes(self) -> None:
        messages = [RawMessage("events", 3, i, b"x" * 10) for i in range(10)]
        assert split_into_lanes(messages, 1, 35) == split_by_bytes(messages, 35)
        assert split_into_lanes(messages, 2, 35) == split_by_bytes(messages, 35)
        assert split_into_lanes([], 2, 35) == []


def test_a_timestamp_past_the_float_range_is_a_dead_letter_not_a_crash() -> None:
    # Found by the OpenAPI fuzzer: one such message raised OverflowError out of
    # planning, so the worker stopped on it and read it again after each restart.
    bad = b'{"event_name":"a","channel":"web","user_id":"u","timestamp":1e308}'
    p = plan([msg(0, bad)])
    assert [(d.reason, d.field) for d in p.dead] == [("schema_invalid", "timestamp")]
    assert p.progress[0].next_offset == 1


def test_an_exception_in_the_validator_is_kept_to_its_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pipeline.core.planner as planner

    real = planner.validate_event

    def explode(item: Any, raw: bytes, source: Source) -> Any:
        if item.get("user_id") == "boom":
            raise ArithmeticError("a validator bug")
        return real(item, raw, source)

    monkeypatch.setattr(planner, "validate_event", explode)
    p = plan([msg(0, product(user_id="boom")), msg(1, product())])
    assert [d.reason for d in p.dead] == [planner.UNPROCESSABLE]
    assert len(p.products) == 1 and p.progress[0].next_offset == 2
