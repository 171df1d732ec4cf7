"""The gateway's request body reader: a malformed Content-Length is the client's error."""

from __future__ import annotations

from typing import Any

import pytest

from producers.gateway.http import HttpError, Request


def _request(content_length: str, body: bytes = b"{}") -> Request:
    scope: dict[str, Any] = {
        "method": "POST",
        "path": "/events",
        "headers": [(b"content-length", content_length.encode("latin-1"))],
    }
    sent = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return sent.pop(0)

    return Request(scope, receive)


@pytest.mark.parametrize("declared", ["\xb2", "-1", "1.0", "", " 2", "0x10"])
async def test_a_content_length_that_is_not_ascii_digits_is_a_400(declared: str) -> None:
    with pytest.raises(HttpError) as caught:
        await _request(declared).body(limit=1024)
    assert caught.value.status == 400
    assert caught.value.errors[0]["field"] == "Content-Length"


async def test_a_plain_content_length_reads_the_body() -> None:
    assert await _request("2").body(limit=1024) == b"{}"
