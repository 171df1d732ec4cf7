"""Plain-text tables for the CLI (demo, bench, status)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_table"]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]], indent: str = "") -> str:
    """Columns padded to their widest cell; numbers-first columns are right-aligned."""
    cells = [list(headers), *[[str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    right = [
        all(_numeric(row[i]) for row in cells[1:]) and len(cells) > 1 for i in range(len(widths))
    ]
    lines = []
    for n, row in enumerate(cells):
        padded = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)
        ]
        lines.append(indent + "  ".join(padded).rstrip())
        if n == 0:
            lines.append(indent + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _numeric(text: str) -> bool:
    return text.replace(",", "").replace(".", "", 1).lstrip("-").isdigit() or text == "-"
