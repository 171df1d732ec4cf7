"""pipeline.core.codec: message bytes to event objects, one object or an envelope of them."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.codec import EMPTY_ENVELOPE, NOT_AN_OBJECT, NOT_JSON, OVERSIZED, decode_message
from pipeline.core.events import Invalid

LIMIT = 1_048_576
EVENT = {"event_name": "page_view", "channel": "web", "user_id": "u1", "timestamp": 1700000000}


def decode(value: bytes | None, max_bytes: int = LIMIT) -> list[tuple[int, Any, bytes]]:
    return list(decode_message(value, max_bytes))


def test_reason_codes_are_stable() -> None:
    assert (NOT_JSON, NOT_AN_OBJECT, EMPTY_ENVELOPE, OVERSIZED) == (
        "not_json",
        "not_an_object",
        "empty_envelope",
        "oversized",
    )


def test_single_object_keeps_its_exact_bytes() -> None:
    value = b'{ "event_name" : "page_view", "channel":"web", "user_id":"u1", "timestamp":1 }'
    [(index, item, raw)] = decode(value)
    assert index == -1
    assert item == orjson.loads(value)
    assert raw is value


def test_empty_object_is_still_an_object() -> None:
    # Whether it is a valid event is validation's business.
    assert decode(b"{}") == [(-1, {}, b"{}")]


def test_envelope_with_mixed_elements_judges_each_on_its_own() -> None:
    other = dict(EVENT, user_id="u2")
    doc: list[Any] = [EVENT, 42, "text", None, other, [EVENT], True, 1.5, {}]
    out = decode(orjson.dumps(doc))
    assert [i for i, _, _ in out] == list(range(len(doc)))
    for (_, item, raw), element in zip(out, doc, strict=True):
        assert orjson.loads(raw) == element  # each element's own JSON
        if isinstance(element, dict):
            assert item == element
        else:
            assert isinstance(item, Invalid)
            assert item.reason == NOT_AN_OBJECT
            assert item.field is None
    details = [item.detail for _, item, _ in out if isinstance(item, Invalid)]
    assert details == [
        "envelope element is a number, not an object",
        "envelope element is a string, not an object",
        "envelope element is null, not an object",
        "envelope element is list, not an object",
        "envelope element is a boolean, not an object",
        "envelope element is a number, not an object",
    ]


def test_envelope_element_bytes_are_that_element_only() -> None:
    out = decode(orjson.dumps([EVENT, dict(EVENT, user_id="u2")]))
    assert [raw for _, _, raw in out] == [
        orjson.dumps(EVENT),
        orjson.dumps(dict(EVENT, user_id="u2")),
    ]


def test_envelope_of_one() -> None:
    assert decode(orjson.dumps([EVENT])) == [(0, EVENT, orjson.dumps(EVENT))]


def test_empty_envelope() -> None:
    [(index, item, raw)] = decode(b"[]")
    assert index == -1
    assert item == Invalid(EMPTY_ENVELOPE, "the envelope holds no events")
    assert raw == b"[]"
    assert decode(b" [ ] ")[0][1].reason == EMPTY_ENVELOPE


@pytest.mark.parametrize(
    "value",
    [
        b"hello",
        b"{not json}",
        b"{'single': 'quotes'}",
        b'{"event_name": "x"',  # truncated
        b'[{"event_name": "x"}, {"event_',  # truncated envelope
        b'{"a": 1}{"b": 2}',  # trailing content
        b'{"a": NaN}',
        b"\xef\xbb\xbf{}",  # UTF-8 byte order mark
        b'{"a": "\xff"}',  # invalid UTF-8
        b"\xff\xfe\x00{",
        b'{"a": "\xed\xa0\x80"}',  # an encoded surrogate
        b'{"a": "\xc3"}',  # a cut multi-byte character
        b"1e400",  # a number that is infinite as a double
        b"   ",
    ],
)
def test_not_json(value: bytes) -> None:
    [(index, item, raw)] = decode(value)
    assert index == -1
    assert isinstance(item, Invalid)
    assert item.reason == NOT_JSON
    assert item.detail.startswith("not valid JSON (UTF-8): ")
    assert item.field is None
    assert raw == value


@pytest.mark.parametrize("value", [None, b""])
def test_missing_value(value: bytes | None) -> None:
    [(index, item, raw)] = decode(value)
    assert (index, raw) == (-1, b"")
    assert item == Invalid(NOT_JSON, "message value is empty")


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (b'"just a string"', "a string"),
        (b"42", "a number"),
        (b"-1.5e3", "a number"),
        (b"true", "a boolean"),
        (b"false", "a boolean"),
        (b"null", "null"),
    ],
)
def test_json_that_is_neither_object_nor_array(value: bytes, kind: str) -> None:
    [(index, item, raw)] = decode(value)
    assert index == -1
    assert item == Invalid(NOT_AN_OBJECT, f"expected an event object or an array, got {kind}")
    assert raw == value


class TestOversized:
    def test_one_byte_over_the_limit(self) -> None:
        value = orjson.dumps(EVENT)
        [(index, item, raw)] = decode(value, max_bytes=len(value) - 1)
        assert index == -1
        assert item.reason == OVERSIZED
        assert item.detail == f"message is {len(value)} bytes, the limit is {len(value) - 1}"
        assert raw == value

    def test_exactly_the_limit_is_decoded(self) -> None:
        value = orjson.dumps(EVENT)
        assert decode(value, max_bytes=len(value)) == [(-1, EVENT, value)]

    def test_size_is_checked_before_parsing(self) -> None:
        [(_, item, _)] = decode(b"x" * 2000, max_bytes=1024)
        assert item.reason == OVERSIZED

    def test_an_oversized_envelope_is_one_dead_letter(self) -> None:
        value = orjson.dumps([EVENT] * 100)
        out = decode(value, max_bytes=len(value) - 1)
        assert len(out) == 1
        assert out[0][1].reason == OVERSIZED

    def test_the_limit_counts_bytes_not_characters(self) -> None:
        value = orjson.dumps({"event_name": "é" * 10})  # 20 bytes of "é"
        assert len(value.decode()) < len(value)
        [(_, item, _)] = decode(value, max_bytes=len(value.decode()))
        assert item.reason == OVERSIZED


def test_non_ascii_text_round_trips() -> None:
    event = dict(EVENT, user_id="ユーザー", channel="wéb")
    assert decode(orjson.dumps(event)) == [(-1, event, orjson.dumps(event))]
    [(_, item, raw)] = decode(orjson.dumps([event]))
    assert item == event
    assert orjson.loads(raw) == event


def test_nul_escape_survives_re_encoding_of_an_envelope_element() -> None:
    # validate_event refuses NUL by looking for the escape in the element's bytes.
    [(_, item, raw)] = decode(b'[{"user_id": "a\\u0000b"}]')
    assert item == {"user_id": "a\x00b"}
    assert b"\\u0000" in raw


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=50, deadline=None, database=None)
@given(st.lists(_json, min_size=1, max_size=8))
def test_any_envelope_yields_one_result_per_element(doc: list[Any]) -> None:
    out = decode(orjson.dumps(doc))
    assert [i for i, _, _ in out] == list(range(len(doc)))
    for (_, item, raw), element in zip(out, doc, strict=True):
        assert orjson.loads(raw) == element
        if isinstance(element, dict):
            assert item == element
        else:
            assert isinstance(item, Invalid)
            assert item.reason == NOT_AN_OBJECT


@settings(max_examples=50, deadline=None, database=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_raise(value: bytes) -> None:
    out = decode(value)
    assert out
    for index, item, raw in out:
        assert isinstance(item, dict | Invalid)
        assert isinstance(raw, bytes)
        assert index >= -1
