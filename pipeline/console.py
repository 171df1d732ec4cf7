"""Progress lines for long commands: shown on a terminal only.

A progress line rewrites itself with ``\\r``; in a pipe, a file or a log
collector that is noise (and a control character), so where stderr is not a
terminal nothing is written and the command's summary says it all.
"""

from __future__ import annotations

import sys
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """``update(text)`` rewrites one status line on ``stream``; ``close()`` ends it."""

    def __init__(self, stream: TextIO | None = None, enabled: bool = True) -> None:
        self._stream = sys.stderr if stream is None else stream
        self.enabled = enabled and _is_terminal(self._stream)
        self._shown = False

    def update(self, text: str) -> None:
        if self.enabled:
            self._stream.write("\r" + text)
            self._stream.flush()
            self._shown = True

    def close(self) -> None:
        if self._shown:
            self._stream.write("\n")
            self._stream.flush()
            self._shown = False


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
