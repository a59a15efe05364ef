"""TOTP secrets sealed at rest with AES-256-GCM.

The key never enters the database: it comes from the configuration
(`totp_key`, which every node of a cluster must share) or, on one machine,
from `<data-dir>/totp-key`, created on first start and readable by its owner
only. Each sealed secret is bound to its user as associated data, so a sealed
value copied to another user's row does not open.

Format: version byte 1, a 12-byte random nonce, the ciphertext with its tag.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_FILE = "totp-key"
_VERSION = b"\x01"
_NONCE_BYTES = 12


class SealingError(Exception):
    """A sealed secret does not open with this key (wrong key, or tampered with)."""


class SecretSealer:
    def __init__(self, key: bytes):
        if len(key) != 32:
            raise ValueError("the TOTP key must be 32 bytes (AES-256)")
        self._aead = AESGCM(key)

    def seal(self, secret: bytes, user_id: str) -> bytes:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, secret, _aad(user_id))

    def open(self, sealed: bytes, user_id: str) -> bytes:
        """Raises:
            SealingError: the value was not sealed for this user with this key.
        """
        if len(sealed) < 1 + _NONCE_BYTES + 16 or sealed[:1] != _VERSION:
            raise SealingError("not a sealed TOTP secret")
        nonce = sealed[1:1 + _NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, sealed[1 + _NONCE_BYTES:], _aad(user_id))
        except InvalidTag:
            raise SealingError("the TOTP secret does not open with this key") from None


def _aad(user_id: str) -> bytes:
    return b"pushguard-totp-v1\x00" + user_id.encode("utf-8", "surrogatepass")


def decode_key(text: str) -> bytes:
    """A key as written in the config or the key file: 32 bytes in base64url or base64.

    Raises:
        ValueError: not 32 bytes of base64.
    """
    try:
        key = base64.urlsafe_b64decode(text.strip() + "=" * (-len(text.strip()) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("the TOTP key is not base64") from None
    if len(key) != 32:
        raise ValueError("the TOTP key must decode to 32 bytes")
    return key


def load_or_create_key(configured: str | None, data_dir: Path) -> bytes:
    """The configured key, else the data directory's key file (created once, mode 0600)."""
    if configured is not None:
        return decode_key(configured)
    path = data_dir / KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first; read theirs
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode() + "\n")
    return decode_key(path.read_text())
