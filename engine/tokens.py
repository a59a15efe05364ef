"""Verification of the JWTs a phone signs with its Ed25519 device key.

`hello` tokens authenticate a connection; `respond` and `unenroll` tokens
carry a decision. Every token is EdDSA-signed, fresh (`iat` within the
allowed skew of the node's clock) and used once (`jti` claimed in the shared
replay cache for as long as the token could be accepted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from engine.clock import Clock
from engine.state.base import ReplayCache


class TokenRejected(Exception):
    """The token is malformed, badly signed, stale, replayed or for someone else.

    The message is for the node's debug log only; the phone sees a fixed code.
    """


def unverified_subject(token: str) -> str:
    """The `sub` claim, read without verification, to find whose key to verify with."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise TokenRejected(f"undecodable token: {exc}") from None
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise TokenRejected("token has no sub")
    return sub


@dataclass(frozen=True, slots=True)
class DeviceTokenVerifier:
    audience: str
    replay: ReplayCache
    clock: Clock
    max_skew_s: int = 60
    max_lifetime_s: int = 120

    async def verify_hello(self, token: str, device_id: str, public_key: bytes) -> dict[str, Any]:
        """Claims of a valid hello token for `device_id`.

        Raises:
            TokenRejected: with the reason.
        """
        claims = self._decode(token, public_key, audience=self.audience)
        self._check_subject(claims, device_id)
        now_s = self.clock.now_ms() / 1000
        iat = self._check_iat(claims, now_s)
        exp = claims.get("exp")
        if not _is_number(exp):
            raise TokenRejected("hello token has no exp")
        if exp > iat + self.max_lifetime_s:
            raise TokenRejected("hello token lives too long")
        if exp <= now_s:
            raise TokenRejected("hello token expired")
        await self._claim_jti(claims, device_id)
        return claims

    async def verify_signed_action(self, token: str, device_id: str, public_key: bytes) -> dict[str, Any]:
        """Claims of a valid respond/unenroll token from `device_id`.

        `aud` is optional in these tokens, but checked when present.

        Raises:
            TokenRejected: with the reason.
        """
        claims = self._decode(token, public_key, audience=None)
        if "aud" in claims and claims["aud"] != self.audience:
            raise TokenRejected("wrong audience")
        self._check_subject(claims, device_id)
        self._check_iat(claims, self.clock.now_ms() / 1000)
        await self._claim_jti(claims, device_id)
        return claims

    def _decode(self, token: str, public_key: bytes, audience: str | None) -> dict[str, Any]:
        try:
            key = Ed25519PublicKey.from_public_bytes(public_key)
            return jwt.decode(
                token,
                key,
                algorithms=["EdDSA"],
                audience=audience,
                # Time claims are checked against the node's own clock below.
                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False,
                         "verify_aud": audience is not None},
            )
        except (jwt.PyJWTError, ValueError) as exc:
            raise TokenRejected(f"invalid token: {exc}") from None

    @staticmethod
    def _check_subject(claims: dict[str, Any], device_id: str) -> None:
        if claims.get("sub") != device_id:
            raise TokenRejected("token is for another device")

    def _check_iat(self, claims: dict[str, Any], now_s: float) -> float:
        iat = claims.get("iat")
        if not _is_number(iat):
            raise TokenRejected("token has no iat")
        if abs(now_s - iat) > self.max_skew_s:
            raise TokenRejected("token iat outside the allowed clock skew")
        return float(iat)

    async def _claim_jti(self, claims: dict[str, Any], device_id: str) -> None:
        jti = claims.get("jti")
        if not isinstance(jti, str) or not 1 <= len(jti) <= 128:
            raise TokenRejected("token has no jti")
        # A token is acceptable while iat is within the skew either side, so
        # remembering the jti for twice the skew plus its lifetime covers it.
        ttl_ms = (2 * self.max_skew_s + self.max_lifetime_s) * 1000
        if not await self.replay.claim(f"jti:{device_id}:{jti}", ttl_ms, self.clock.now_ms()):
            raise TokenRejected("token jti already used")


def _is_number(value: Any) -> bool:
    # NaN compares false with everything, so it would pass every freshness check.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
