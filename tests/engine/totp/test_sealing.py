"""Sealed TOTP secrets: bound to key and user; the key file is private."""

from __future__ import annotations

import base64
import stat

import pytest

from engine.totp.sealing import KEY_FILE, SealingError, SecretSealer, decode_key, load_or_create_key


def test_round_trip_and_fresh_nonces():
    sealer = SecretSealer(b"k" * 32)
    one, two = sealer.seal(b"secret", "alice"), sealer.seal(b"secret", "alice")
    assert one != two and b"secret" not in one
    assert sealer.open(one, "alice") == sealer.open(two, "alice") == b"secret"


def test_another_user_another_key_or_a_flipped_bit_does_not_open():
    sealer = SecretSealer(b"k" * 32)
    sealed = sealer.seal(b"secret", "alice")
    with pytest.raises(SealingError):
        sealer.open(sealed, "bob")
    with pytest.raises(SealingError):
        SecretSealer(b"j" * 32).open(sealed, "alice")
    tampered = bytearray(sealed)
    tampered[-1] ^= 1
    with pytest.raises(SealingError):
        sealer.open(bytes(tampered), "alice")
    with pytest.raises(SealingError):
        sealer.open(b"\x01short", "alice")


def test_key_file_is_created_once_and_readable_by_its_owner_only(tmp_path):
    key = load_or_create_key(None, tmp_path / "data")
    path = tmp_path / "data" / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(None, tmp_path / "data") == key and len(key) == 32


def test_configured_key_wins_and_bad_keys_are_refused(tmp_path):
    configured = base64.urlsafe_b64encode(b"c" * 32).decode().rstrip("=")
    assert load_or_create_key(configured, tmp_path) == b"c" * 32
    assert not (tmp_path / KEY_FILE).exists()
    for bad in ("not base64!", base64.b64encode(b"short").decode()):
        with pytest.raises(ValueError):
            decode_key(bad)
