"""TOTP codes (RFC 6238): secrets, otpauth URIs, and matching a code to a time step.

Pure functions over pyotp's HOTP core; no I/O, no clock of their own (the
caller passes the time), so the same code serves the node, the simulated
phone's authenticator and the tests' RFC vectors.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import secrets
from dataclasses import dataclass

import pyotp

MAX_CODE_LENGTH = 64  # longer input is compared as a fixed wrong value: same work, no crash


class TotpAlgorithm(enum.StrEnum):
    SHA1 = "SHA1"
    SHA256 = "SHA256"
    SHA512 = "SHA512"

    @property
    def digest(self):  # noqa: ANN201 - a hashlib constructor
        return {"SHA1": hashlib.sha1, "SHA256": hashlib.sha256, "SHA512": hashlib.sha512}[self.value]

    @property
    def secret_bytes(self) -> int:
        """RFC 4226 section 4 asks for at least 128 bits and recommends 160; the
        key as long as the hash's output is what RFC 6238's vectors use."""
        return self.digest().digest_size


@dataclass(frozen=True, slots=True)
class TotpParams:
    """How an authenticator turns the secret into codes."""

    digits: int = 6
    period: int = 30
    algorithm: TotpAlgorithm = TotpAlgorithm.SHA1

    def __post_init__(self) -> None:
        if isinstance(self.digits, bool) or not isinstance(self.digits, int) or self.digits not in (6, 8):
            raise ValueError("digits must be 6 or 8")
        if isinstance(self.period, bool) or not isinstance(self.period, int) or not 15 <= self.period <= 300:
            raise ValueError("period must be an integer from 15 to 300 seconds")
        object.__setattr__(self, "algorithm", TotpAlgorithm(self.algorithm))


def new_secret(algorithm: TotpAlgorithm) -> bytes:
    return secrets.token_bytes(TotpAlgorithm(algorithm).secret_bytes)


def base32_secret(secret: bytes) -> str:
    """The secret as authenticator apps take it: base32 without padding."""
    return base64.b32encode(secret).decode("ascii").rstrip("=")


def time_step(unix_s: float, period: int) -> int:
    """RFC 6238 section 4.2: T = floor((unix time - T0) / X), with T0 = 0."""
    return int(unix_s // period)


def code_at_step(secret: bytes, params: TotpParams, step: int) -> str:
    otp = pyotp.HOTP(base32_secret(secret), digits=params.digits, digest=params.algorithm.digest)
    return otp.generate_otp(step)


def otpauth_uri(secret: bytes, params: TotpParams, *, issuer: str, label: str) -> str:
    """The Key URI Format that authenticator apps scan (issuer in the label and
    as a parameter, as Google's format asks)."""
    return pyotp.TOTP(base32_secret(secret), digits=params.digits, digest=params.algorithm.digest,
                      interval=params.period).provisioning_uri(name=label, issuer_name=issuer)


def matching_step(secret: bytes, params: TotpParams, code: str, unix_s: float, drift_steps: int) -> int | None:
    """The time step within `drift_steps` of now whose code equals `code`, or None.

    Every candidate step is computed and compared in constant time, whether or
    not an earlier one matched, so the time taken says nothing about which
    step (if any) matched or how much of the code was right.
    """
    now = time_step(unix_s, params.period)
    given = _comparable(code)
    found: int | None = None
    for step in range(now - drift_steps, now + drift_steps + 1):
        if step < 0:
            continue
        if hmac.compare_digest(given, code_at_step(secret, params, step).encode("ascii")) and found is None:
            found = step
    return found


def _comparable(code: object) -> bytes:
    """Any input as bytes to compare; what cannot be a code compares as a value no code equals."""
    if not isinstance(code, str) or len(code) > MAX_CODE_LENGTH:
        return b"\x00"
    # People type what the app shows, "123 456": whitespace is not part of a code.
    return "".join(code.split()).encode("utf-8", "surrogatepass")
