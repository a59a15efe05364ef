"""A simulated phone that speaks the device protocol over a real websocket.

It does what the app does: makes an Ed25519 key pair, enrolls with the code
from the QR code, authenticates with a signed `hello`, receives challenges,
acknowledges them, and answers with a signed `respond`. Tests and the demo
drive it step by step; `connect_with_backoff` reconnects the way a phone on a
flaky network should (exponential backoff with full jitter).

It uses only the public wire protocol (engine.protocol), never node internals.
"""

from __future__ import annotations

import random
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlparse

import jwt
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, wrap_client_stream

from engine.protocol.context_hash import context_hash
from engine.protocol.device import (
    SUBPROTOCOL_JSON,
    SUBPROTOCOL_MSGPACK,
    Ack,
    ChallengeFrame,
    ClientMessage,
    DeviceCodec,
    Enroll,
    Enrolled,
    Error,
    Hello,
    Respond,
    Result,
    Revoked,
    ServerMessage,
    Unenroll,
    Update,
    Welcome,
    encode_public_key,
)

ENCODINGS = {"msgpack": SUBPROTOCOL_MSGPACK, "json": SUBPROTOCOL_JSON}


class PhoneClosed(Exception):
    """The node closed the phone's socket."""

    def __init__(self, code: int | None, reason: str | None):
        self.code = code
        self.reason = reason
        super().__init__(f"closed by the node: {code} {reason or ''}".strip())


class PhoneRejected(Exception):
    """The node answered with an `error` frame where the phone expected success."""

    def __init__(self, error: Error):
        self.error = error
        super().__init__(f"{error.code}: {error.message}")


class PhoneRevoked(Exception):
    """The node said this phone's enrollment is revoked (`revoked`, then 4403)."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(f"revoked: {reason}")


@dataclass(frozen=True, slots=True)
class EnrollmentUri:
    """The parts of a `pushguard://enroll?...` URI (the QR code)."""

    code: str
    url: str
    account: str
    audience: str

    @classmethod
    def parse(cls, uri: str) -> EnrollmentUri:
        parsed = urlparse(uri)
        if parsed.scheme != "pushguard" or parsed.netloc != "enroll":
            raise ValueError(f"not an enrollment URI: {uri!r}")
        query = {key: values[0] for key, values in parse_qs(parsed.query).items()}
        return cls(query["code"], query["url"], query["account"], query["audience"])


@dataclass
class SimPhone:
    """One simulated phone. Its websocket's background task runs in `nursery`."""

    url: str
    nursery: trio.Nursery
    encoding: str = "msgpack"
    ssl_context: ssl.SSLContext | None = None
    now_ms: Callable[[], int] = field(default=lambda: time.time_ns() // 1_000_000)
    platform: str = "sim"
    device_name: str | None = "simulated phone"
    push_token: str | None = None
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    device_id: str | None = None
    account: str | None = None
    audience: str | None = None
    local_address: str | None = None  # a source address in 127.0.0.0/8, for large fleets
    ws: WebSocketConnection | None = None
    authenticated: bool = False  # hello succeeded on the current connection
    _stream: trio.abc.Stream | None = None
    received: list[ServerMessage] = field(default_factory=list)  # frames skipped by `expect`

    def __post_init__(self) -> None:
        self.codec = DeviceCodec(ENCODINGS[self.encoding])

    @property
    def public_key(self) -> str:
        raw = self.key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return encode_public_key(raw)

    # -- connection ------------------------------------------------------------
    async def connect(self) -> None:
        """Open the websocket (no hello yet).

        The phone owns its TCP stream (rather than letting trio-websocket open
        it) so that it can pick a source address and close the socket itself:
        trio-websocket 0.12 leaves a client's socket open when the server ends
        the connection.
        """
        await self._close_stream()
        self.authenticated = False
        target = urlparse(self.url)
        secure = target.scheme == "wss"
        port = target.port or (443 if secure else 80)
        stream: trio.abc.Stream = await trio.open_tcp_stream(
            target.hostname, port, local_address=self.local_address)
        if secure:
            stream = trio.SSLStream(stream, self.ssl_context or ssl.create_default_context(),
                                    server_hostname=target.hostname)
        self._stream = stream
        try:
            self.ws = await wrap_client_stream(
                self.nursery, stream, target.hostname, target.path or "/",
                subprotocols=[self.codec.subprotocol], message_queue_size=256)
        except BaseException:
            await self._close_stream()
            raise

    async def connect_with_backoff(self, *, attempts: int = 10, base_s: float = 0.05,
                                   cap_s: float = 2.0) -> Welcome:
        """Connect and authenticate, retrying with exponential backoff and full jitter.

        Raises:
            OSError, HandshakeError, PhoneClosed: the last failure, after `attempts` tries.
        """
        for attempt in range(attempts):
            try:
                await self.connect()
                return await self.hello()
            except (OSError, HandshakeError, PhoneClosed):
                if attempt == attempts - 1:
                    raise
                await trio.sleep(random.uniform(0, min(cap_s, base_s * 2 ** attempt)))
        raise AssertionError("unreachable")

    async def close(self, code: int = 1000) -> None:
        if self.ws is not None:
            with trio.move_on_after(2):
                await self.ws.aclose(code)
        await self._close_stream()

    async def _close_stream(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            with trio.move_on_after(1):
                await stream.aclose()

    @property
    def close_code(self) -> int | None:
        if self.ws is None or self.ws.closed is None:
            return None
        return self.ws.closed.code

    # -- frames ----------------------------------------------------------------
    async def send(self, message: ClientMessage) -> None:
        await self.send_raw(self.codec.encode(message))

    async def send_raw(self, data: bytes | str) -> None:
        assert self.ws is not None, "connect first"
        await self.ws.send_message(data)

    async def receive(self, timeout: float = 5.0) -> ServerMessage:
        """The next frame from the node.

        Raises:
            PhoneClosed: the node closed the socket.
            trio.TooSlowError: nothing arrived in time.
        """
        assert self.ws is not None, "connect first"
        with trio.fail_after(timeout):
            try:
                data = await self.ws.get_message()
            except ConnectionClosed as exc:
                reason = exc.reason
                self.authenticated = False
                await self._close_stream()
                raise PhoneClosed(reason.code if reason else None, reason.reason if reason else None) from None
        return self.codec.decode_server(data)

    async def expect(self, kind: type, timeout: float = 5.0, **match: Any) -> Any:
        """The next frame of type `kind` (whose fields equal `match`); frames of
        other kinds are kept in `received`."""
        with trio.fail_after(timeout):
            while True:
                message = await self.receive(timeout=timeout)
                if isinstance(message, kind) and all(getattr(message, k) == v for k, v in match.items()):
                    return message
                self.received.append(message)

    async def wait_closed(self, timeout: float = 5.0) -> int | None:
        """Read until the node closes the socket; returns the close code."""
        with trio.fail_after(timeout):
            while True:
                try:
                    self.received.append(await self.receive(timeout=timeout))
                except PhoneClosed as exc:
                    return exc.code

    # -- the protocol ------------------------------------------------------------
    async def enroll(self, code_or_uri: str) -> Enrolled:
        """Enroll with the code (or the whole enrollment URI) on a fresh connection.

        Raises:
            PhoneRejected: the node refused the code.
        """
        code = EnrollmentUri.parse(code_or_uri).code if code_or_uri.startswith("pushguard:") else code_or_uri
        if self.ws is None or self.ws.closed is not None:
            await self.connect()
        await self.send(Enroll(code=code, public_key=self.public_key, platform=self.platform,
                               push_token=self.push_token, device_name=self.device_name,
                               app_version="pushguard-sim/1"))
        reply = await self.receive()
        if isinstance(reply, Error):
            raise PhoneRejected(reply)
        assert isinstance(reply, Enrolled), reply
        self.device_id, self.account, self.audience = reply.device_id, reply.account, reply.audience
        return reply

    def hello_token(self, *, skew_s: float = 0, lifetime_s: int = 60, jti: str | None = None,
                    audience: str | None = None) -> str:
        iat = int(self.now_ms() / 1000 + skew_s)
        return self._sign({"sub": self.device_id, "aud": audience or self.audience, "iat": iat,
                           "exp": iat + lifetime_s, "jti": jti or secrets.token_urlsafe(12)})

    async def hello(self, token: str | None = None) -> Welcome:
        """Authenticate the open connection.

        Raises:
            PhoneRejected: auth_failed (the node then closes with 4401).
            PhoneRevoked: the enrollment was revoked (the node closes with 4403).
        """
        if self.ws is None or self.ws.closed is not None:
            await self.connect()
        await self.send(Hello(token=token or self.hello_token()))
        reply = await self.receive()
        if isinstance(reply, Error):
            raise PhoneRejected(reply)
        if isinstance(reply, Revoked):
            raise PhoneRevoked(reply.reason)
        assert isinstance(reply, Welcome), reply
        self.authenticated = True
        return reply

    def respond_token(self, challenge: ChallengeFrame, decision: str, *, biometric: bool = True,
                      code: str | None = None, fraud: bool = False, ctx: str | None = None,
                      jti: str | None = None, skew_s: float = 0, key: Ed25519PrivateKey | None = None) -> str:
        """A signed answer. `ctx` defaults to the hash of what the phone displays,
        recomputed from the frame's fields as a real app would."""
        if ctx is None:
            ctx = context_hash(challenge.id, challenge.account, challenge.resource.kind,
                               challenge.resource.name, _context_dict(challenge), challenge.expires_at)
        claims: dict[str, Any] = {"sub": self.device_id, "cid": challenge.id, "decision": decision,
                                  "biometric": biometric, "fraud": fraud, "ctx": ctx,
                                  "iat": int(self.now_ms() / 1000 + skew_s),
                                  "jti": jti or secrets.token_urlsafe(12)}
        if code is not None:
            claims["code"] = code
        return self._sign(claims, key)

    async def respond(self, challenge: ChallengeFrame, decision: str, **token_args: Any) -> Result | Error:
        """Send a signed answer and return the node's `result` or `error` for it."""
        await self.send(Respond(token=self.respond_token(challenge, decision, **token_args)))
        return await self.answer_for(challenge.id)

    async def send_token(self, token: str) -> None:
        await self.send(Respond(token=token))

    async def answer_for(self, challenge_id: str, timeout: float = 5.0) -> Result | Error:
        with trio.fail_after(timeout):
            while True:
                message = await self.receive(timeout=timeout)
                if isinstance(message, (Result, Error)) and message.id == challenge_id:
                    return message
                self.received.append(message)

    async def ack(self, challenge_id: str, shown: bool = True) -> None:
        await self.send(Ack(id=challenge_id, shown=shown))

    async def update_push_token(self, push_token: str | None) -> None:
        self.push_token = push_token
        await self.send(Update(push_token=push_token))

    async def unenroll(self) -> None:
        """The app's Delete Account."""
        iat = int(self.now_ms() / 1000)
        await self.send(Unenroll(token=self._sign({"sub": self.device_id, "iat": iat, "act": "unenroll",
                                                   "jti": secrets.token_urlsafe(12)})))

    def _sign(self, claims: dict[str, Any], key: Ed25519PrivateKey | None = None) -> str:
        return jwt.encode(claims, key or self.key, algorithm="EdDSA")


def _context_dict(challenge: ChallengeFrame) -> dict[str, Any]:
    ctx = challenge.context
    return {"app": ctx.app, "ip": ctx.ip, "location": ctx.location, "user_agent": ctx.user_agent}
