"""tests.rollup_model: per-batch partial hourly rollups, sorted by key."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core import latency
from pipeline.core.events import AgentEvent, ProductEvent, Source
from pipeline.core.window import HOUR_US, hour_start_us
from tests.rollup_model import (
    AgentAgg,
    ChannelAgg,
    aggregate_agents,
    aggregate_channels,
    user_rows,
)

H0 = 1_699_999_200_000_000  # 2023-11-14T22:00Z
H1 = H0 + HOUR_US
SRC = Source("events", 0, 0)


def pe(
    ts: int, channel: str = "web", name: str = "page_view", user: str = "u1", late: bool = False
) -> ProductEvent:
    return ProductEvent(
        dedup_key=f"k{ts}{channel}{name}{user}",
        event_name=name,
        channel=channel,
        user_id=user,
        ts_us=ts,
        hour_us=hour_start_us(ts),
        payload=b"{}",
        source=SRC,
        late=late,
    )


def ae(
    ts: int,
    event_type: str = "run.started",
    cost: float | None = None,
    latency: float | None = None,
    agent_id: str = "a1",
    tenant: str = "t1",
    late: bool = False,
) -> AgentEvent:
    return AgentEvent(
        dedup_key=f"k{ts}{event_type}",
        event_type=event_type,
        ts_us=ts,
        hour_us=hour_start_us(ts),
        tenant_id=tenant,
        workspace_id="ws",
        project_id="p",
        agent_id=agent_id,
        workflow_id="wf",
        run_id="r",
        status=event_type.split(".")[-1],
        cost_usd=cost,
        latency_ms=latency,
        payload=b"{}",
        source=SRC,
        late=late,
    )


class TestAggregateChannels:
    def test_counts_late_first_last_per_key(self) -> None:
        events = [
            pe(H0 + 500, "web", "page_view"),
            pe(H0 + 100, "web", "page_view", late=True),
            pe(H0 + 900, "web", "page_view", user="u2", late=True),
            pe(H0 + 50, "ios", "page_view"),
            pe(H0 + 70, "web", "search"),
            pe(H1 + 1, "web", "page_view"),
        ]
        out = aggregate_channels(events)
        assert out == {
            (H0, "ios", "page_view"): ChannelAgg(
                events=1, late=0, first_us=H0 + 50, last_us=H0 + 50
            ),
            (H0, "web", "page_view"): ChannelAgg(
                events=3, late=2, first_us=H0 + 100, last_us=H0 + 900
            ),
            (H0, "web", "search"): ChannelAgg(events=1, late=0, first_us=H0 + 70, last_us=H0 + 70),
            (H1, "web", "page_view"): ChannelAgg(events=1, late=0, first_us=H1 + 1, last_us=H1 + 1),
        }

    def test_output_is_sorted_by_key(self) -> None:
        events = [pe(H1, "web"), pe(H0, "web", "search"), pe(H0, "android"), pe(H0, "web")]
        keys = list(aggregate_channels(events))
        assert keys == sorted(keys)
        assert keys[0] == (H0, "android", "page_view")

    def test_new_users_is_left_to_the_sink(self) -> None:
        [agg] = aggregate_channels([pe(H0), pe(H0 + 1, user="u2")]).values()
        assert agg.new_users == 0

    def test_empty(self) -> None:
        assert aggregate_channels([]) == {}

    def test_hour_boundary(self) -> None:
        out = aggregate_channels([pe(H1 - 1), pe(H1)])
        assert list(out) == [(H0, "web", "page_view"), (H1, "web", "page_view")]

    def test_accepts_a_generator(self) -> None:
        out = aggregate_channels(pe(H0 + i) for i in range(3))
        assert out[(H0, "web", "page_view")].events == 3


class TestAggregateAgents:
    KEY = (H0, "t1", "ws", "p", "a1", "wf")

    def test_run_counters_cost_and_latency(self) -> None:
        events = [
            ae(H0 + 1, "run.started"),
            ae(H0 + 2, "run.started"),
            ae(H0 + 3, "run.completed", cost=0.5, latency=100),
            ae(H0 + 4, "run.failed", cost=0.25, latency=None, late=True),
            ae(H0 + 5, "run.step", cost=None, latency=50.5),
            ae(H0 + 6, "run.completed", cost=0.0, latency=0.0),
        ]
        assert aggregate_agents(events) == {
            self.KEY: AgentAgg(
                runs=2,
                succeeded=2,
                failed=1,
                events=6,
                late=1,
                cost_usd=0.75,
                latency_ms_sum=150.5,
                latency_ms_count=3,
                latency_hist=latency.histogram([100, 50.5, 0.0]),
            )
        }

    def test_unknown_event_types_count_only_as_events(self) -> None:
        out = aggregate_agents([ae(H0, "run.step"), ae(H0, "tool.called"), ae(H0, "run.Started")])
        assert out[self.KEY] == AgentAgg(events=3)

    def test_no_cost_or_latency_anywhere(self) -> None:
        [agg] = aggregate_agents([ae(H0), ae(H0 + 1, "run.completed")]).values()
        assert (agg.cost_usd, agg.latency_ms_sum, agg.latency_ms_count) == (0.0, 0.0, 0)

    def test_keys_split_by_hour_and_dimensions_and_are_sorted(self) -> None:
        events = [
            ae(H1, agent_id="a1"),
            ae(H0, agent_id="a2"),
            ae(H0, agent_id="a1", tenant="t2"),
            ae(H0, agent_id="a1"),
        ]
        keys = list(aggregate_agents(events))
        assert keys == [
            (H0, "t1", "ws", "p", "a1", "wf"),
            (H0, "t1", "ws", "p", "a2", "wf"),
            (H0, "t2", "ws", "p", "a1", "wf"),
            (H1, "t1", "ws", "p", "a1", "wf"),
        ]

    def test_empty(self) -> None:
        assert aggregate_agents([]) == {}


class TestUserRows:
    def test_distinct_and_sorted(self) -> None:
        events = [
            pe(H0 + 5, user="u2"),
            pe(H0 + 1, user="u1"),
            pe(H0 + 9, user="u2"),
            pe(H0 + 3, user="u1", channel="ios"),
            pe(H1, user="u1"),
            pe(H0, user="u1", name="search"),
        ]
        assert user_rows(events) == [
            (H0, "ios", "page_view", "u1"),
            (H0, "web", "page_view", "u1"),
            (H0, "web", "page_view", "u2"),
            (H0, "web", "search", "u1"),
            (H1, "web", "page_view", "u1"),
        ]

    def test_empty(self) -> None:
        assert user_rows([]) == []


_products = st.lists(
    st.builds(
        pe,
        ts=st.integers(H0 - HOUR_US, H1 + HOUR_US),
        channel=st.sampled_from(["web", "ios"]),
        name=st.sampled_from(["a", "b"]),
        user=st.sampled_from(["u1", "u2", "u3"]),
        late=st.booleans(),
    ),
    max_size=30,
)


@settings(max_examples=50, deadline=None, database=None)
@given(_products, st.randoms(use_true_random=False))
def test_channel_rollup_invariants(events: list[ProductEvent], rnd: random.Random) -> None:
    out = aggregate_channels(events)
    assert sum(a.events for a in out.values()) == len(events)
    assert sum(a.late for a in out.values()) == sum(e.late for e in events)
    assert list(out) == sorted(out)
    for (hour, channel, name), agg in out.items():
        members = [
            e for e in events if (e.hour_us, e.channel, e.event_name) == (hour, channel, name)
        ]
        assert agg.events == len(members)
        assert agg.first_us == min(e.ts_us for e in members)
        assert agg.last_us == max(e.ts_us for e in members)
        assert hour <= agg.first_us <= agg.last_us < hour + HOUR_US
    shuffled = events[:]
    rnd.shuffle(shuffled)
    assert aggregate_channels(shuffled) == out
    assert user_rows(shuffled) == user_rows(events)
    assert len(user_rows(events)) == len(
        {(e.hour_us, e.channel, e.event_name, e.user_id) for e in events}
    )


_agents = st.lists(
    st.builds(
        ae,
        ts=st.integers(H0, H1 + HOUR_US),
        event_type=st.sampled_from(["run.started", "run.completed", "run.failed", "run.step"]),
        cost=st.none() | st.integers(0, 1000).map(lambda c: c / 4),
        latency=st.none() | st.integers(0, 10_000).map(float),
        agent_id=st.sampled_from(["a1", "a2"]),
        late=st.booleans(),
    ),
    max_size=30,
)


@settings(max_examples=50, deadline=None, database=None)
@given(_agents)
def test_agent_rollup_invariants(events: list[AgentEvent]) -> None:
    out = aggregate_agents(events)
    assert list(out) == sorted(out)
    total = AgentAgg()
    for agg in out.values():
        for name in AgentAgg.__slots__:
            if name == "latency_hist":
                total.latency_hist = latency.merge(total.latency_hist, agg.latency_hist)
            else:
                setattr(total, name, getattr(total, name) + getattr(agg, name))
    assert total.events == len(events)
    assert total.late == sum(e.late for e in events)
    assert total.runs == sum(e.event_type == "run.started" for e in events)
    assert total.succeeded == sum(e.event_type == "run.completed" for e in events)
    assert total.failed == sum(e.event_type == "run.failed" for e in events)
    # Quarters and whole numbers add up exactly in floating point.
    assert total.cost_usd == sum(e.cost_usd for e in events if e.cost_usd is not None)
    assert total.latency_ms_sum == sum(e.latency_ms for e in events if e.latency_ms is not None)
    assert total.latency_ms_count == sum(e.latency_ms is not None for e in events)
    assert total.latency_hist == latency.histogram(
        e.latency_ms for e in events if e.latency_ms is not None
    )
    for agg in out.values():  # each row's histogram counts exactly its samples
        assert latency.total(agg.latency_hist) == agg.latency_ms_count


@pytest.mark.parametrize("factory", [aggregate_channels, aggregate_agents])
def test_result_is_a_plain_dict(factory: object) -> None:
    assert type(factory([])) is dict  # type: ignore[operator]
