"""The methods of the backend API (msgpack-RPC), with their roles.

Each method is a coroutine taking the caller's session and the request's
positional params. Arity is checked from the signature (wrong arity is
invalid_params); types are checked by the method. Roles: `backend` may run
challenges and enrollments; `operator` may do everything, including policy
changes, clearing suspensions and reading the audit log.
"""

from __future__ import annotations

import hmac
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.config import ConfigError
from engine.enrollment import check_user_id
from engine.errors import RpcError, RpcErrorCode

if TYPE_CHECKING:
    from engine.node import Node

BACKEND = "backend"
OPERATOR = "operator"
AUDIT_FILTERS = {"user_id", "device_id", "challenge_id", "kind", "since_ms", "after_seq", "limit"}


@dataclass
class RpcSession:
    """What the server knows about one RPC connection."""

    role: str | None = None
    subscribe: Callable[[list[str]], Awaitable[None]] | None = None
    peer: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


Method = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class MethodSpec:
    function: Method
    roles: frozenset[str]
    min_params: int
    max_params: int


class BackendApi:
    def __init__(self, node: Node):
        self._node = node
        self._methods: dict[str, MethodSpec] = {}
        both = frozenset({BACKEND, OPERATOR})
        operator = frozenset({OPERATOR})
        for name, function, roles in [
            ("push.begin_enrollment", self.push_begin_enrollment, both),
            ("push.enrollment", self.push_enrollment, both),
            ("push.device", self.push_device, both),
            ("push.revoke", self.push_revoke, both),
            ("challenge.create", self.challenge_create, both),
            ("challenge.wait", self.challenge_wait, both),
            ("challenge.get", self.challenge_get, both),
            ("challenge.cancel", self.challenge_cancel, both),
            ("totp.begin_enrollment", self.totp_begin_enrollment, both),
            ("totp.confirm", self.totp_confirm, both),
            ("totp.verify", self.totp_verify, both),
            ("totp.reset", self.totp_reset, both),
            ("totp.remove", self.totp_remove, operator),
            ("totp.status", self.totp_status, both),
            ("guard.status", self.guard_status, both),
            ("guard.clear", self.guard_clear, operator),
            ("policy.get", self.policy_get, both),
            ("policy.set", self.policy_set, operator),
            ("stats.get", self.stats_get, both),
            ("audit.query", self.audit_query, operator),
            ("events.subscribe", self.events_subscribe, both),
        ]:
            parameters = list(inspect.signature(function).parameters.values())[1:]  # after session
            required = sum(1 for p in parameters if p.default is inspect.Parameter.empty)
            self._methods[name] = MethodSpec(function, roles, required, len(parameters))

    @property
    def method_names(self) -> list[str]:
        return sorted(["auth", *self._methods])

    def authenticate(self, session: RpcSession, params: list[Any]) -> dict[str, str]:
        """`auth(api_key)`: synchronous, so requests pipelined after it see its result."""
        if len(params) != 1 or not isinstance(params[0], str):
            raise RpcError(RpcErrorCode.INVALID_PARAMS, "auth takes one parameter: api_key")
        role = None
        for key, key_role in self._node.api_keys.items():
            if hmac.compare_digest(key.encode(), params[0].encode()):
                role = key_role
        if role is None:
            raise RpcError(RpcErrorCode.UNAUTHENTICATED, "unknown api key")
        session.role = role
        return {"role": role}

    async def call(self, session: RpcSession, method: str, params: list[Any]) -> Any:
        """Run one request.

        Raises:
            RpcError: for everything the caller did wrong.
        """
        if method == "auth":
            return self.authenticate(session, params)
        spec = self._methods.get(method)
        if session.role is None:
            raise RpcError(RpcErrorCode.UNAUTHENTICATED)
        if spec is None:
            raise RpcError(RpcErrorCode.UNKNOWN_METHOD, f"no method {method!r}")
        if session.role not in spec.roles:
            raise RpcError(RpcErrorCode.FORBIDDEN, f"{method} needs the {' or '.join(sorted(spec.roles))} role")
        if not spec.min_params <= len(params) <= spec.max_params:
            raise RpcError(RpcErrorCode.INVALID_PARAMS,
                           f"{method} takes {spec.min_params} to {spec.max_params} parameters, got {len(params)}")
        return await spec.function(session, *params)

    # -- push enrollment -----------------------------------------------------
    async def push_begin_enrollment(self, session: RpcSession, user_id: Any, opts: Any = None) -> dict:
        return await self._node.enrollment.begin(user_id, opts)

    async def push_enrollment(self, session: RpcSession, enrollment_id: Any) -> dict:
        return await self._node.enrollment.status(enrollment_id)

    async def push_device(self, session: RpcSession, user_id: Any) -> dict | None:
        device = await self._node.store.active_device_for_user(check_user_id(user_id))
        if device is None:
            return None
        presence = await self._node.state.presence.lookup(device.device_id)
        return {
            "device_id": device.device_id,
            "user_id": device.user_id,
            "platform": str(device.platform),
            "device_name": device.device_name,
            "app_version": device.app_version,
            "enrolled_at": device.enrolled_at,
            "has_push_token": device.push_token is not None,
            "connected": presence is not None,
            "last_seen": self._node.clock.now_ms() if presence is not None else device.last_seen,
        }

    async def push_revoke(self, session: RpcSession, user_id: Any) -> dict:
        revoked = await self._node.enrollment.revoke_user(check_user_id(user_id), by=session.role or "")
        return {"revoked": revoked}

    # -- challenges ----------------------------------------------------------
    async def challenge_create(self, session: RpcSession, user_id: Any, resource: Any,
                               context: Any = None, opts: Any = None) -> dict:
        return await self._node.supervisor.create(check_user_id(user_id), resource, context, opts)

    async def challenge_wait(self, session: RpcSession, challenge_id: Any, timeout_s: Any = 30) -> dict:
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)):
            raise RpcError(RpcErrorCode.INVALID_PARAMS, "timeout_s must be a number")
        return await self._node.supervisor.wait(_challenge_id(challenge_id), timeout_s)

    async def challenge_get(self, session: RpcSession, challenge_id: Any) -> dict:
        return await self._node.supervisor.get(_challenge_id(challenge_id))

    async def challenge_cancel(self, session: RpcSession, challenge_id: Any) -> dict:
        return await self._node.supervisor.cancel(_challenge_id(challenge_id))

    # -- TOTP ----------------------------------------------------------------
    async def totp_begin_enrollment(self, session: RpcSession, user_id: Any, opts: Any = None) -> dict:
        return await self._node.totp.begin_enrollment(user_id, opts)

    async def totp_confirm(self, session: RpcSession, user_id: Any, code: Any) -> dict:
        return await self._node.totp.confirm(user_id, code)

    async def totp_verify(self, session: RpcSession, user_id: Any, code: Any) -> dict:
        return await self._node.totp.verify(user_id, code)

    async def totp_reset(self, session: RpcSession, user_id: Any, current_code: Any, opts: Any = None) -> dict:
        return await self._node.totp.reset(user_id, current_code, opts)

    async def totp_remove(self, session: RpcSession, user_id: Any) -> dict:
        return await self._node.totp.remove(user_id, by=session.role or "")

    async def totp_status(self, session: RpcSession, user_id: Any) -> dict:
        return await self._node.totp.status(user_id)

    # -- guard ---------------------------------------------------------------
    async def guard_status(self, session: RpcSession, user_id: Any) -> dict:
        suspension = await self._node.guard.status(check_user_id(user_id))
        return {"suspended": suspension is not None, **(suspension or {})}

    async def guard_clear(self, session: RpcSession, user_id: Any) -> dict:
        return {"cleared": await self._node.guard.clear(check_user_id(user_id), by=session.role or "")}

    # -- policy, stats, audit, events ------------------------------------------
    async def policy_get(self, session: RpcSession) -> dict:
        return self._node.policy.current.to_dict()

    async def policy_set(self, session: RpcSession, changes: Any) -> dict:
        try:
            policy = await self._node.policy.set(changes, by=session.role or "")
        except ConfigError as exc:
            raise RpcError(RpcErrorCode.INVALID_PARAMS, str(exc)) from None
        return policy.to_dict()

    async def stats_get(self, session: RpcSession) -> dict:
        return await self._node.stats_snapshot()

    async def audit_query(self, session: RpcSession, filters: Any = None) -> list[dict]:
        filters = filters or {}
        if not isinstance(filters, dict) or not set(filters) <= AUDIT_FILTERS:
            raise RpcError(RpcErrorCode.INVALID_PARAMS, f"filters is a map of {sorted(AUDIT_FILTERS)}")
        for key, value in filters.items():
            wants_int = key in ("since_ms", "after_seq", "limit")
            valid = (isinstance(value, int) and not isinstance(value, bool)) if wants_int else isinstance(value, str)
            if not valid:
                raise RpcError(RpcErrorCode.INVALID_PARAMS, f"filter {key} has the wrong type")
        records = await self._node.store.query_audit(**filters)
        return [{"seq": r.seq, "at": r.at, "kind": r.kind, "user_id": r.user_id, "device_id": r.device_id,
                 "challenge_id": r.challenge_id, "detail": r.detail} for r in records]

    async def events_subscribe(self, session: RpcSession, kinds: Any = None) -> dict:
        kinds = kinds or []
        if not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds):
            raise RpcError(RpcErrorCode.INVALID_PARAMS, "kinds is a list of event kinds or prefixes")
        assert session.subscribe is not None
        await session.subscribe(kinds)
        return {"subscribed": kinds}


def _challenge_id(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 64:
        raise RpcError(RpcErrorCode.INVALID_PARAMS, "challenge_id must be a string")
    return value
