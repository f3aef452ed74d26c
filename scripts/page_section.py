"""Replace the generated part of a results page, between two HTML-comment markers.

Used by the scripts that build results tables from the runs' JSON: with ``check`` the
page is left as it is and the script fails if it is out of date.
"""

from __future__ import annotations

import sys
from pathlib import Path


def write_section(page: Path, start: str, end: str, text: str, *, check: bool, script: str) -> None:
    """Put ``text`` between the markers ``start`` and ``end`` of ``page`` (or check it is)."""
    old = page.read_text()
    if start not in old or end not in old:
        sys.exit(f"{page} has no {start} ... {end} markers")
    head, rest = old.split(start, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{start}\n\n{text}\n{end}{tail}"
    if check:
        if new != old:
            sys.exit(f"{page} is out of date: run python {script}")
        return
    page.write_text(new)
