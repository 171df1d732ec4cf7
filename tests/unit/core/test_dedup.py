"""pipeline.core.dedup: the dedup key (event_id wins, else a stable hash) and in-batch dedup."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from hashlib import blake2b
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.dedup import first_of_each_key, product_dedup_key
from pipeline.core.events import ProductEvent, Source
from pipeline.core.timeparse import parse_timestamp
from pipeline.core.validate import validate_event
from producers.keys import event_key

US = 1_700_000_000_000_000
SPELLINGS = (
    1700000000,
    1700000000.0,
    "2023-11-14T22:13:20Z",
    "2023-11-15T03:43:20+05:30",
)


class TestProductDedupKey:
    def test_event_id_wins(self) -> None:
        assert product_dedup_key("page_view", "u1", US, "evt-1") == "evt-1"
        assert product_dedup_key("search", "u2", 0, "evt-1") == "evt-1"

    def test_event_id_is_kept_verbatim(self) -> None:
        # Product event ids are opaque strings: no case folding.
        assert product_dedup_key("a", "u", US, "EVT-1") == "EVT-1"
        assert product_dedup_key("a", "u", US, "EVT-1") != product_dedup_key("a", "u", US, "evt-1")

    def test_hash_is_stable_across_releases(self) -> None:
        # The key is stored in PostgreSQL and used as the Kafka key: it must never change.
        assert product_dedup_key("page_view", "u1", US, None) == (
            "h:92d656bde78eb1220282dc8a972c5a67"
        )

    def test_hash_material_is_the_json_array_of_the_fields(self) -> None:
        # blake2b-128 of orjson.dumps([event_name, user_id, ts_us]): no separator to collide.
        material = b'["page_view","u1",1700000000000000]'
        assert orjson.dumps(["page_view", "u1", US]) == material
        expected = "h:" + blake2b(material, digest_size=16).hexdigest()
        assert product_dedup_key("page_view", "u1", US, None) == expected

    def test_hash_shape(self) -> None:
        key = product_dedup_key("page_view", "u1", US, None)
        assert re.fullmatch(r"h:[0-9a-f]{32}", key)
        assert key == product_dedup_key("page_view", "u1", US, None)

    @pytest.mark.parametrize(
        "other",
        [
            ("search", "u1", US),
            ("page_view", "u2", US),
            ("page_view", "u1", US + 1),
            ("page_view", "u1", US * 10),
            ("page_view ", "u1", US),
            ("page_viewu1", "", US),
        ],
    )
    def test_hash_depends_on_every_part(self, other: tuple[str, str, int]) -> None:
        assert product_dedup_key(*other, None) != product_dedup_key("page_view", "u1", US, None)

    def test_hash_of_an_empty_event_id_is_not_used(self) -> None:
        # Only None means "no event_id"; validation refuses "".
        assert product_dedup_key("a", "u", US, "") == ""

    @pytest.mark.parametrize("spelling", SPELLINGS)
    def test_same_instant_spelled_differently_gives_the_same_key(self, spelling: object) -> None:
        expected = product_dedup_key("page_view", "u1", US, None)
        assert product_dedup_key("page_view", "u1", parse_timestamp(spelling), None) == expected

    @pytest.mark.parametrize("spelling", SPELLINGS)
    def test_validated_events_share_the_key_and_the_producer_agrees(self, spelling: object) -> None:
        obj = {"event_name": "page_view", "channel": "web", "user_id": "u1", "timestamp": spelling}
        event = validate_event(obj, orjson.dumps(obj), Source("events", 0, 0))
        assert isinstance(event, ProductEvent)
        assert event.dedup_key == product_dedup_key("page_view", "u1", US, None)
        assert event_key(obj) == event.dedup_key

    @pytest.mark.parametrize(
        ("left", "right"),
        [
            (("a\x1fb", "c"), ("a", "b\x1fc")),  # the old \x1f separator
            (("a|b", "c"), ("a", "b|c")),
            (('a","b', "c"), ("a", 'b","c')),  # JSON quoting is escaped, not joined
            (("a", "b"), ("ab", "")),
        ],
    )
    def test_field_separator_inside_a_field_cannot_collide(
        self, left: tuple[str, str], right: tuple[str, str]
    ) -> None:
        assert product_dedup_key(*left, US, None) != product_dedup_key(*right, US, None)

    @settings(max_examples=100, deadline=None, database=None)
    @given(st.text(max_size=8), st.text(max_size=8), st.text(max_size=8), st.text(max_size=8))
    def test_different_fields_give_different_keys(self, a: str, b: str, c: str, d: str) -> None:
        if (a, b) != (c, d):
            assert product_dedup_key(a, b, US, None) != product_dedup_key(c, d, US, None)

    @settings(max_examples=50, deadline=None, database=None)
    @given(
        st.text(min_size=1, max_size=20),
        st.text(min_size=1, max_size=20),
        st.integers(0, 253_402_300_799 - 6 * 3600),  # local spellings stay < year 10000
    )
    def test_all_spellings_agree(self, name: str, user: str, seconds: int) -> None:
        dt = datetime.fromtimestamp(seconds, UTC)
        keys = {
            product_dedup_key(name, user, parse_timestamp(s), None)
            for s in (
                seconds,
                float(seconds),
                dt.isoformat().replace("+00:00", "Z"),
                dt.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat(),
                dt.astimezone(timezone(timedelta(hours=-9, minutes=-30))).isoformat(),
            )
        }
        assert len(keys) == 1


class TestFirstOfEachKey:
    """Returns (kept, dropped): the first copy of each unseen key, and every other event."""

    @staticmethod
    def _key(item: tuple[str, int]) -> str:
        return item[0]

    def test_keeps_the_first_copy_in_order(self) -> None:
        events = [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("b", 5), ("a", 6)]
        kept, dropped = first_of_each_key(events, self._key, lambda _k: False)
        assert kept == [("a", 1), ("b", 2), ("c", 4)]
        assert dropped == [("a", 3), ("b", 5), ("a", 6)]

    def test_seen_keys_are_dropped(self) -> None:
        events = [("a", 1), ("b", 2), ("c", 3), ("b", 4)]
        kept, dropped = first_of_each_key(events, self._key, {"b"}.__contains__)
        assert kept == [("a", 1), ("c", 3)]
        assert dropped == [("b", 2), ("b", 4)]

    def test_nothing_to_drop(self) -> None:
        events = [("a", 1), ("b", 2)]
        assert first_of_each_key(events, self._key, lambda _k: False) == (events, [])

    def test_empty(self) -> None:
        assert first_of_each_key([], self._key, lambda _k: True) == ([], [])

    def test_everything_seen(self) -> None:
        events = [("a", 1), ("a", 2), ("b", 3)]
        assert first_of_each_key(events, self._key, lambda _k: True) == ([], events)

    def test_accepts_any_iterable(self) -> None:
        kept, dropped = first_of_each_key(iter("abca"), str, lambda _k: False)
        assert (kept, dropped) == (["a", "b", "c"], ["a"])

    @settings(max_examples=50, deadline=None, database=None)
    @given(
        st.lists(st.tuples(st.sampled_from("abcdefg"), st.integers())),
        st.sets(st.sampled_from("abcdefg")),
    )
    def test_model(self, events: list[tuple[str, Any]], seen: set[str]) -> None:
        kept, dropped = first_of_each_key(events, self._key, seen.__contains__)
        expected_kept: list[tuple[str, Any]] = []
        expected_dropped: list[tuple[str, Any]] = []
        for e in events:
            if e[0] not in seen and all(k[0] != e[0] for k in expected_kept):
                expected_kept.append(e)
            else:
                expected_dropped.append(e)
        assert kept == expected_kept
        assert dropped == expected_dropped
        assert len({k for k, _ in kept}) == len(kept)
