"""Verification of the Ed25519-signed JWTs a phone sends (hello, respond, unenroll).

Tokens are signed here the way a phone signs them (PyJWT, EdDSA) and checked
against the node's clock, which each test sets, and a memory replay cache.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from engine.clock import Clock
from engine.state.memory import MemoryReplayCache
from engine.tokens import DeviceTokenVerifier, TokenRejected, unverified_subject

pytestmark = pytest.mark.trio

NOW_MS = 1_700_000_000_000
NOW_S = NOW_MS // 1000
AUDIENCE = "pushguard"
_jti = itertools.count()


class SettableClock(Clock):
    """The node's wall clock, at whatever time the test sets."""

    def __init__(self, at_ms: int) -> None:
        self.at_ms = at_ms

    def now_ms(self) -> int:
        return self.at_ms


@dataclasses.dataclass
class Phone:
    device_id: str
    key: Ed25519PrivateKey

    @property
    def public_key(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self.key, algorithm="EdDSA")

    def hello(self, **changes: Any) -> str:
        """A hello token issued now; a claim given as `...` is left out."""
        return self.sign(_claims({"sub": self.device_id, "aud": AUDIENCE, "iat": NOW_S,
                                  "exp": NOW_S + 60, "jti": f"hello-{next(_jti)}"}, changes))

    def respond(self, **changes: Any) -> str:
        """A respond token issued now, without aud as phones usually send it."""
        return self.sign(_claims({"sub": self.device_id, "iat": NOW_S, "jti": f"resp-{next(_jti)}",
                                  "challenge_id": "ch-1", "decision": "approve"}, changes))


def _claims(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def new_phone(device_id: str) -> Phone:
    return Phone(device_id, Ed25519PrivateKey.generate())


@pytest.fixture
def phone() -> Phone:
    return new_phone("phone-1")


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock(NOW_MS)


@pytest.fixture
def verifier(clock: SettableClock) -> DeviceTokenVerifier:
    return DeviceTokenVerifier(audience=AUDIENCE, replay=MemoryReplayCache(), clock=clock)


async def rejected(verify: Any, token: str, phone: Phone, device_id: str | None = None) -> str:
    """Assert that `verify` rejects the token; returns the (log-only) reason."""
    with pytest.raises(TokenRejected) as caught:
        await verify(token, device_id or phone.device_id, phone.public_key)
    return str(caught.value)


# --- hello ------------------------------------------------------------------


async def test_a_good_hello_is_accepted(verifier: DeviceTokenVerifier, phone: Phone) -> None:
    token = phone.hello(jti="abc")

    claims = await verifier.verify_hello(token, "phone-1", phone.public_key)

    assert claims["sub"] == "phone-1"
    assert claims["jti"] == "abc"
    assert claims["aud"] == AUDIENCE


async def test_a_hello_signed_with_another_key_is_rejected(
    verifier: DeviceTokenVerifier, phone: Phone
) -> None:
    impostor = new_phone("phone-1")

    await rejected(verifier.verify_hello, impostor.hello(), phone)


async def test_a_tampered_hello_is_rejected(verifier: DeviceTokenVerifier, phone: Phone) -> None:
    header, payload, signature = phone.hello().split(".")
    other_payload = new_phone("phone-1").hello().split(".")[1]

    await rejected(verifier.verify_hello, f"{header}.{other_payload}.{signature}", phone)
    await rejected(verifier.verify_hello, f"{header}.{payload}.", phone)


async def test_a_hello_for_another_device_is_rejected(
    verifier: DeviceTokenVerifier, phone: Phone
) -> None:
    # Signed by this phone's key, but naming another device.
    await rejected(verifier.verify_hello, phone.hello(sub="phone-2"), phone)
    await rejected(verifier.verify_hello, phone.hello(sub=...), phone)


@pytest.mark.parametrize("aud", ["another-node", "", ["another-node"], ...])
async def test_a_hello_for_another_audience_is_rejected(
    verifier: DeviceTokenVerifier, phone: Phone, aud: Any
) -> None:
    await rejected(verifier.verify_hello, phone.hello(aud=aud), phone)


@pytest.mark.parametrize("offset_s", [-61, 61, -3_600, 3_600])
async def test_a_hello_issued_outside_the_allowed_skew_is_rejected(
    verifier: DeviceTokenVerifier, phone: Phone, offset_s: int
) -> None:
    iat = NOW_S + offset_s

    await rejected(verifier.verify_hello, phone.hello(iat=iat, exp=iat + 60), phone)


@pytest.mark.parametrize("offset_s", [-59, 59, -60, 60])
async def test_a_hello_issued_within_the_allowed_skew_is_accepted(
    verifier: DeviceTokenVerifier, phone: Phone, offset_s: int
) -> None:
    iat = NOW_S + offset_s

    claims = await verifier.verify_hello(phone.hello(iat=iat, exp=iat + 120), "phone-1",
                                         phone.public_key)

    assert claims["iat"] == iat


@pytest.mark.parametrize("iat", [..., "1700000000", None, True, float("nan")])
async def test_a_hello_without_a_usable_iat_is_rejected(
    verifier: DeviceTokenVerifier, phone: Phone, iat: Any
) -> None:
    await rejected(verifier.verify_hello, phone.hello(iat=iat), phone)


async def test_a_hello_that_lives_too_long_is_rejected(
    verifier: DeviceTokenVerifier, phone: Phone
) -> None:
    await rejected(verifier.verify_hello, phone.hello(exp=NOW_S + 121), phone)
    await rejected(verifier.verify_hello, phone.hello(exp=NOW_S + 86_400), phone)

    claims = await verifier.verify_hello(phone.hello(exp=NOW_S + 120), "phone-1", phone.public_key)
    assert claims["exp"] == NOW_S + 120


async def test_an_expired_hello_is_rejected(verifier: DeviceTokenVerifier, phone: Phone) -> None:
    await rejected(verifier.verify_hello, phone.hello(iat=NOW_S - 50, exp=NOW_S - 20), phone)
    await rejected(verifier.verify_hello, phone.hello(iat=NOW_S - 50, exp=NOW_S), phone)


@pytest.mark.parametrize("exp", [..., "soon", None, True, float("nan")])
async def test_a_hello_without_a_usable_exp_is_rejected(
    verifier: DeviceTokenVerifier, phone: Phone, exp: Any
) -> None:
    await rejected(verifier.verify_hello, phone.hello(exp=exp), phone)


@pytest.mark.parametrize("jti", [..., "", None, 42, "x" * 129])
async def test_a_hello_without_a_usable_jti_is_rejected(
    verifier: DeviceTokenVerifier, phone: Phone, jti: Any
) -> None:
    await rejected(verifier.verify_hello, phone.hello(jti=jti), phone)


async def test_a_replayed_hello_is_rejected(verifier: DeviceTokenVerifier, phone: Phone) -> None:
    token = phone.hello(jti="once")
    await verifier.verify_hello(token, "phone-1", phone.public_key)

    await rejected(verifier.verify_hello, token, phone)
    await rejected(verifier.verify_hello, phone.hello(jti="once", exp=NOW_S + 90), phone)


async def test_a_hello_stays_replay_proof_for_as_long_as_it_could_be_accepted(
    verifier: DeviceTokenVerifier, clock: SettableClock, phone: Phone
) -> None:
    # Issued by a phone whose clock runs 60 s ahead: first accepted at the
    # earliest moment, then replayed at the last moment its iat is still fresh.
    token = phone.hello(iat=NOW_S + 60, exp=NOW_S + 180)
    await verifier.verify_hello(token, "phone-1", phone.public_key)

    clock.at_ms = NOW_MS + 120_000
    await rejected(verifier.verify_hello, token, phone)


async def test_the_same_jti_from_another_device_is_accepted(
    verifier: DeviceTokenVerifier, phone: Phone
) -> None:
    other = new_phone("phone-2")
    await verifier.verify_hello(phone.hello(jti="shared"), "phone-1", phone.public_key)

    claims = await verifier.verify_hello(other.hello(jti="shared"), "phone-2", other.public_key)

    assert claims["sub"] == "phone-2"


async def test_unsigned_and_hmac_tokens_are_rejected(
    verifier: DeviceTokenVerifier, phone: Phone
) -> None:
    claims = {"sub": "phone-1", "aud": AUDIENCE, "iat": NOW_S, "exp": NOW_S + 60, "jti": "alg"}
    unsigned = jwt.encode(claims, None, algorithm="none")
    # The classic confusion: HMAC keyed with the (public) device key.
    hmac_with_public_key = jwt.encode(claims, phone.public_key, algorithm="HS256")

    await rejected(verifier.verify_hello, unsigned, phone)
    await rejected(verifier.verify_hello, hmac_with_public_key, phone)
    await rejected(verifier.verify_signed_action, unsigned, phone)
    await rejected(verifier.verify_signed_action, hmac_with_public_key, phone)

    # Neither attempt used up the jti: the genuine token is still accepted.
    await verifier.verify_hello(phone.sign(claims), "phone-1", phone.public_key)


@pytest.mark.parametrize("token", ["", "not-a-jwt", "a.b.c", "e30.e30.e30"])
async def test_garbage_is_rejected(verifier: DeviceTokenVerifier, phone: Phone, token: str) -> None:
    await rejected(verifier.verify_hello, token, phone)
    await rejected(verifier.verify_signed_action, token, phone)


async def test_a_malformed_device_key_rejects_the_token(
    verifier: DeviceTokenVerifier, phone: Phone
) -> None:
    with pytest.raises(TokenRejected):
        await verifier.verify_hello(phone.hello(), "phone-1", phone.public_key[:31])


# --- signed actions (respond, unenroll) -------------------------------------


async def test_a_signed_action_without_aud_is_accepted(
    verifier: DeviceTokenVerifier, phone: Phone
) -> None:
    claims = await verifier.verify_signed_action(phone.respond(decision="deny"), "phone-1",
                                                 phone.public_key)

    assert claims["decision"] == "deny"
    assert claims["challenge_id"] == "ch-1"


async def test_a_signed_action_with_the_right_aud_is_accepted(
    verifier: DeviceTokenVerifier, phone: Phone
) -> None:
    claims = await verifier.verify_signed_action(phone.respond(aud=AUDIENCE), "phone-1",
                                                 phone.public_key)

    assert claims["aud"] == AUDIENCE


@pytest.mark.parametrize("aud", ["another-node", "", ["another-node"]])
async def test_a_signed_action_for_another_audience_is_rejected(
    verifier: DeviceTokenVerifier, phone: Phone, aud: Any
) -> None:
    await rejected(verifier.verify_signed_action, phone.respond(aud=aud), phone)


async def test_a_signed_action_from_another_key_or_device_is_rejected(
    verifier: DeviceTokenVerifier, phone: Phone
) -> None:
    await rejected(verifier.verify_signed_action, new_phone("phone-1").respond(), phone)
    await rejected(verifier.verify_signed_action, phone.respond(sub="phone-2"), phone)
    # The right token, checked for another device (another user's phone).
    await rejected(verifier.verify_signed_action, phone.respond(), phone, device_id="phone-2")


@pytest.mark.parametrize("iat", [NOW_S - 61, NOW_S + 61, ..., "now", True, float("nan")])
async def test_a_stale_or_undated_signed_action_is_rejected(
    verifier: DeviceTokenVerifier, phone: Phone, iat: Any
) -> None:
    await rejected(verifier.verify_signed_action, phone.respond(iat=iat), phone)


@pytest.mark.parametrize("offset_s", [-59, 59])
async def test_a_signed_action_within_the_skew_is_accepted(
    verifier: DeviceTokenVerifier, phone: Phone, offset_s: int
) -> None:
    claims = await verifier.verify_signed_action(phone.respond(iat=NOW_S + offset_s), "phone-1",
                                                 phone.public_key)

    assert claims["iat"] == NOW_S + offset_s


async def test_a_replayed_signed_action_is_rejected(
    verifier: DeviceTokenVerifier, clock: SettableClock, phone: Phone
) -> None:
    token = phone.respond(jti="approve-once")
    await verifier.verify_signed_action(token, "phone-1", phone.public_key)

    await rejected(verifier.verify_signed_action, token, phone)
    clock.at_ms = NOW_MS + 60_000  # iat still just fresh enough
    await rejected(verifier.verify_signed_action, token, phone)


async def test_a_signed_action_without_a_jti_is_rejected(
    verifier: DeviceTokenVerifier, phone: Phone
) -> None:
    await rejected(verifier.verify_signed_action, phone.respond(jti=...), phone)


async def test_a_jti_used_by_a_hello_cannot_be_reused_by_an_action(
    verifier: DeviceTokenVerifier, phone: Phone
) -> None:
    await verifier.verify_hello(phone.hello(jti="j-1"), "phone-1", phone.public_key)

    await rejected(verifier.verify_signed_action, phone.respond(jti="j-1"), phone)


# --- reading the subject before verifying -----------------------------------


async def test_unverified_subject_names_the_device(phone: Phone) -> None:
    assert unverified_subject(phone.hello()) == "phone-1"


@pytest.mark.parametrize("token", ["", "not-a-jwt", jwt.encode({"sub": ""}, None, algorithm="none"),
                                   jwt.encode({"sub": 7}, None, algorithm="none"),
                                   jwt.encode({"iat": 1}, None, algorithm="none")])
async def test_unverified_subject_rejects_tokens_without_one(token: str) -> None:
    with pytest.raises(TokenRejected):
        unverified_subject(token)
