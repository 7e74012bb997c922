"""Plain-text and markdown tables for terminal output and reports."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def format_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], markdown: bool = False
) -> str:
    """Align `rows` under `header`; with `markdown`, emit a GitHub-flavoured table."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    if markdown:
        lines = [
            "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
            for r in cells
        ]
        lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
        return "\n".join(lines)
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
