"""A QR code as text, for a terminal or the console: two modules per character."""

from __future__ import annotations

import io

import segno


def terminal_qr(data: str) -> str:
    """The QR code of `data` in Unicode half blocks, with the standard quiet zone.

    Dark modules are spaces on a light background (what phone cameras read on
    a dark terminal); each line holds two rows of modules.
    """
    out = io.StringIO()
    segno.make(data, error="m").terminal(out=out, compact=True)
    return out.getvalue()
