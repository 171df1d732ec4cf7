"""The default log stays readable (QuietFilter), and progress lines appear on a terminal only."""

from __future__ import annotations

import io
import logging

import orjson

from pipeline.console import Progress
from pipeline.logs import JsonFormatter, QuietFilter


def _record(name: str, msg: str, level: int = logging.ERROR, at: float = 0.0) -> logging.LogRecord:
    record = logging.LogRecord(name, level, __file__, 1, msg, ("node-1",), None)
    record.created = at
    return record


def test_a_library_repeating_itself_is_said_once_per_window_with_the_count_left_out() -> None:
    quiet = QuietFilter(window=10.0)
    template = "Unable connect to node with id %s"
    passed = [quiet.filter(_record("aiokafka", template, at=t * 0.01)) for t in range(500)]
    assert passed.count(True) == 1  # 500 attempts in 5 s: one line
    later = _record("aiokafka", template, at=10.5)
    assert quiet.filter(later)
    assert later.repeated == 499
    again = _record("aiokafka", template, at=21.0)
    assert quiet.filter(again) and not hasattr(again, "repeated")


def test_different_messages_and_our_own_logs_are_never_held_back() -> None:
    quiet = QuietFilter()
    assert quiet.filter(_record("aiokafka", "a"))
    assert quiet.filter(_record("aiokafka", "b"))
    assert quiet.filter(_record("aiokafka.consumer", "a"))
    for _ in range(3):  # our own warnings repeat as often as they happen
        assert quiet.filter(_record("pipeline.worker.processor", "offset gap", logging.WARNING))


def test_faust_service_lifecycle_lines_are_debug_material() -> None:
    assert not QuietFilter().filter(_record("pipeline.worker.app", "[^-App]: Starting...", 20))
    assert QuietFilter().filter(_record("pipeline.worker.app", "[^-App]: Crashed", 40))
    assert QuietFilter(debug=True).filter(_record("pipeline.worker.app", "[^-App]: Starting", 20))
    many = QuietFilter(debug=True)
    assert all(many.filter(_record("aiokafka", "x")) for _ in range(5))


def test_the_left_out_count_reaches_the_json_line() -> None:
    quiet = QuietFilter(window=1.0)
    quiet.filter(_record("aiokafka", "x %s", at=0.0))
    quiet.filter(_record("aiokafka", "x %s", at=0.5))
    record = _record("aiokafka", "x %s", at=2.0)
    assert quiet.filter(record)
    assert orjson.loads(JsonFormatter().format(record))["repeated"] == 1


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_rewrites_one_line_on_a_terminal() -> None:
    out = _Tty()
    bar = Progress(out)
    bar.update("1/2")
    bar.update("2/2")
    bar.close()
    assert out.getvalue() == "\r1/2\r2/2\n"


def test_progress_writes_nothing_to_a_pipe_or_file_or_when_turned_off() -> None:
    for stream, enabled in ((io.StringIO(), True), (_Tty(), False)):
        bar = Progress(stream, enabled=enabled)
        bar.update("1/2")
        bar.close()
        assert stream.getvalue() == ""
