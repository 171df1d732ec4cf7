"""choose_web_port: a taken default port gives way to a free one; a named one is refused."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from pipeline.errors import ConfigError
from pipeline.worker.main import choose_web_port


@pytest.fixture
def taken() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_free_port_is_kept(taken: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    assert choose_web_port("127.0.0.1", free, fixed=False) == (free, None)
    assert choose_web_port("127.0.0.1", free, fixed=True) == (free, None)


def test_a_taken_default_port_gives_way_to_a_free_one(taken: int) -> None:
    assert choose_web_port("127.0.0.1", taken, fixed=False) == (0, taken)


def test_a_taken_port_that_the_operator_named_is_refused_naming_the_setting(taken: int) -> None:
    with pytest.raises(ConfigError, match=rf"^WORKER_WEB_PORT={taken}: .* already in use"):
        choose_web_port("127.0.0.1", taken, fixed=True)
