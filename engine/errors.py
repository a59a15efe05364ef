"""The fixed error-code tables of both wire contracts.

Every error a peer can see is a value from one of the two enums below; call
sites never invent strings. docs/protocol.md and docs/rpc.md reproduce these
tables, and tests check that they stay in step.
"""

from __future__ import annotations

import enum


class DeviceErrorCode(enum.StrEnum):
    """Codes of the device channel's `error` frame."""

    BAD_FRAME = "bad_frame"  # not decodable in the negotiated encoding, or not a map
    UNKNOWN_TYPE = "unknown_type"  # `type` names no message of the protocol
    INVALID_FIELD = "invalid_field"  # a field is missing, mistyped or out of range
    TOO_LARGE = "too_large"  # frame over 64 KiB
    NOT_AUTHENTICATED = "not_authenticated"  # anything but enroll/hello before hello succeeded
    AUTH_FAILED = "auth_failed"  # hello token rejected (close 4401 follows)
    ENROLLMENT_FAILED = "enrollment_failed"  # code unknown, used or expired
    ALREADY_AUTHENTICATED = "already_authenticated"  # enroll/hello on an authenticated socket
    # answers to `respond`
    EXPIRED = "expired"
    ALREADY_DECIDED = "already_decided"
    UNKNOWN_CHALLENGE = "unknown_challenge"
    BAD_SIGNATURE = "bad_signature"
    CONTEXT_MISMATCH = "context_mismatch"
    MATCH_FAILED = "match_failed"
    BIOMETRIC_REQUIRED = "biometric_required"
    INTERNAL = "internal"  # the node failed; the phone may retry


DESCRIPTIONS_DEVICE: dict[DeviceErrorCode, str] = {
    DeviceErrorCode.BAD_FRAME: "frame is not one map in the negotiated encoding",
    DeviceErrorCode.UNKNOWN_TYPE: "the type field names no message",
    DeviceErrorCode.INVALID_FIELD: "a field is missing, mistyped or out of range",
    DeviceErrorCode.TOO_LARGE: "frame larger than 64 KiB",
    DeviceErrorCode.NOT_AUTHENTICATED: "only enroll and hello are allowed before authentication",
    DeviceErrorCode.AUTH_FAILED: "hello token rejected; the socket closes with 4401",
    DeviceErrorCode.ENROLLMENT_FAILED: "enrollment code unknown, already used or expired",
    DeviceErrorCode.ALREADY_AUTHENTICATED: "the socket is already authenticated",
    DeviceErrorCode.EXPIRED: "the challenge expired before this answer",
    DeviceErrorCode.ALREADY_DECIDED: "the challenge already has a decision",
    DeviceErrorCode.UNKNOWN_CHALLENGE: "no challenge with that id for this device",
    DeviceErrorCode.BAD_SIGNATURE: "respond token invalid, replayed or not from this device",
    DeviceErrorCode.CONTEXT_MISMATCH: "the signed ctx differs from the challenge's context_hash",
    DeviceErrorCode.MATCH_FAILED: "wrong number; the challenge is denied",
    DeviceErrorCode.BIOMETRIC_REQUIRED: "approval without biometric; the challenge stays open",
    DeviceErrorCode.INTERNAL: "the node failed to handle the frame",
}


class RpcErrorCode(enum.StrEnum):
    """Codes in element 0 of a msgpack-RPC error array."""

    INVALID_REQUEST = "invalid_request"  # not a msgpack-RPC message of the right shape
    TOO_LARGE = "too_large"  # message over 1 MiB; the connection closes
    UNAUTHENTICATED = "unauthenticated"  # auth() has not succeeded on this connection
    FORBIDDEN = "forbidden"  # the key's role may not call this method
    UNKNOWN_METHOD = "unknown_method"
    INVALID_PARAMS = "invalid_params"  # wrong arity or types
    NOT_FOUND = "not_found"  # no such enrollment, challenge, device
    NOT_ENROLLED = "not_enrolled"  # the user has no push device
    PUSH_LIMITED = "push_limited"  # push-bombing guard: details has retry_after_s
    PUSH_SUSPENDED = "push_suspended"  # push suspended for this user: details has until
    ALREADY_ENROLLED = "already_enrolled"  # the user has a confirmed TOTP secret
    TOTP_REJECTED = "totp_rejected"  # totp.confirm / totp.reset: the code was not accepted
    INTERNAL = "internal"


DESCRIPTIONS_RPC: dict[RpcErrorCode, str] = {
    RpcErrorCode.INVALID_REQUEST: "not a msgpack-RPC message of the right shape",
    RpcErrorCode.TOO_LARGE: "message over 1 MiB; the connection is closed",
    RpcErrorCode.UNAUTHENTICATED: "call auth(api_key) first",
    RpcErrorCode.FORBIDDEN: "this key's role may not call the method",
    RpcErrorCode.UNKNOWN_METHOD: "no such method",
    RpcErrorCode.INVALID_PARAMS: "wrong number or types of parameters",
    RpcErrorCode.NOT_FOUND: "no such object",
    RpcErrorCode.NOT_ENROLLED: "the user has no push device",
    RpcErrorCode.PUSH_LIMITED: "too many open challenges; details: retry_after_s, open_challenge_id",
    RpcErrorCode.PUSH_SUSPENDED: "push is suspended for this user; details: until, reason",
    RpcErrorCode.ALREADY_ENROLLED: "the user already has a confirmed TOTP secret; use totp.reset or totp.remove",
    RpcErrorCode.TOTP_REJECTED: "the code was not accepted",
    RpcErrorCode.INTERNAL: "the node failed to handle the request",
}


class RpcError(Exception):
    """An error the backend sees as `[code, message]` or `[code, message, details]`."""

    def __init__(self, code: RpcErrorCode, message: str | None = None, details: dict | None = None):
        self.code = RpcErrorCode(code)
        self.message = message or DESCRIPTIONS_RPC[self.code]
        self.details = details
        super().__init__(f"{self.code}: {self.message}")

    def to_wire(self) -> list:
        if self.details is None:
            return [str(self.code), self.message]
        return [str(self.code), self.message, self.details]


class DeviceError(Exception):
    """An error the phone sees as an `error` frame."""

    def __init__(self, code: DeviceErrorCode, message: str | None = None, id: str | None = None):
        self.code = DeviceErrorCode(code)
        self.message = message or DESCRIPTIONS_DEVICE[self.code]
        self.id = id
        super().__init__(f"{self.code}: {self.message}")


# Close codes of the device websocket.
CLOSE_GOING_AWAY = 1001  # node shutting down
CLOSE_POLICY = 1008  # repeated abuse
CLOSE_INTERNAL = 1011  # the device's actor failed
CLOSE_TRY_AGAIN = 1013  # node at its connection budget
CLOSE_AUTH_FAILED = 4401
CLOSE_REVOKED = 4403
CLOSE_HELLO_TIMEOUT = 4408
CLOSE_REPLACED = 4409  # the same device connected again elsewhere
CLOSE_SLOW = 4429  # outbound queue full: the phone reads too slowly
