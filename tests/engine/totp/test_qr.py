"""The text QR code is the QR code of the URI, module for module."""

from __future__ import annotations

import segno

from engine.totp.qr import terminal_qr

# Each character holds two rows of modules: (top dark, bottom dark). Dark
# modules print as spaces on a light background.
_CELLS = {"█": (False, False), "▀": (False, True), "▄": (True, False), " ": (True, True)}


def test_rendered_modules_are_the_uri_s_qr_code():
    uri = "otpauth://totp/pushguard:alice?secret=JBSWY3DPEHPK3PXP&issuer=pushguard"
    lines = terminal_qr(uri).rstrip("\n").split("\n")
    rows: list[list[bool]] = []
    for line in lines:
        top, bottom = zip(*(_CELLS[ch] for ch in line), strict=True)
        rows.extend([list(top), list(bottom)])
    expected = [[bool(m) for m in row] for row in segno.make(uri, error="m").matrix_iter(border=4)]
    assert rows[:len(expected)] == expected
    # An odd number of module rows leaves the last line half empty.
    assert len(rows) - len(expected) in (0, 1)
