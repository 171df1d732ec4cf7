"""python -m pipeline query: its options, each bad one named (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.errors import ConfigError
from pipeline.ops.query import parse_query

NOW_US = 1_700_000_000 * 1_000_000  # 2023-11-14T22:13:20Z
HOUR_US = 3600 * 10**6
END_OF_HOUR = (1_700_000_000 - 1_700_000_000 % 3600 + 3600) * 10**6  # 23:00Z


def test_defaults_are_the_last_24_hours_with_the_current_one() -> None:
    q = parse_query(NOW_US)
    assert (q.to_us, q.from_us) == (END_OF_HOUR, END_OF_HOUR - 24 * HOUR_US)
    assert q.group_by == "hour" and not q.agents


def test_one_end_given() -> None:
    q = parse_query(NOW_US, start="2023-11-14T00:00:00Z")
    assert q.from_us == 1_699_920_000 * 10**6 and q.to_us == END_OF_HOUR
    q = parse_query(NOW_US, end="1699920000")
    assert q.to_us == 1_699_920_000 * 10**6 and q.from_us == q.to_us - 24 * HOUR_US


def test_filters_and_groups() -> None:
    q = parse_query(NOW_US, group_by="channel", channel="web", event_name="purchase")
    assert (q.group_by, q.channel, q.event_name) == ("channel", "web", "purchase")
    a = parse_query(NOW_US, agents=True, group_by="tenant", tenant="t0", agent="a", workflow="w")
    assert (a.agents, a.group_by, a.tenant, a.agent, a.workflow) == (
        True,
        "tenant",
        "t0",
        "a",
        "w",
    )


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"start": "yesterday"}, "--from 'yesterday': give unix seconds"),
        ({"end": "2023-11-14 10:00"}, "--to '2023-11-14 10:00'"),
        ({"start": "1700000000", "end": "1700000000"}, r"--to \(2023-11-14T22:13:20Z\) must be"),
        ({"group_by": "week"}, "--group-by 'week': one of hour, day, channel"),
        ({"group_by": "channel", "agents": True}, "--group-by 'channel': one of hour, day, tenant"),
        ({"agents": True, "channel": "web"}, "--channel filters product events"),
        ({"agents": True, "event_name": "x"}, "--event-name filters product events"),
        ({"tenant": "t0"}, "--tenant filters agent runs: add --agents"),
        ({"workflow": "w"}, "--workflow filters agent runs"),
        ({"channel": ""}, "--channel: give a name"),
    ],
)
def test_bad_input_names_the_option(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=f"^{words}"):
        parse_query(NOW_US, **kwargs)
