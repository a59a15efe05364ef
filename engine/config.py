"""The one typed home of configuration, with defaults that serve one machine.

A node reads an optional TOML file (`pushguard serve --config FILE`) whose
tables mirror the dataclasses below; command-line flags override it. The
operator-tunable part, `Policy`, is also changed at run time through
`policy.set`, and those changes are kept in the durable store.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from engine.models import MatchMode

ROLES = ("backend", "operator")


class ConfigError(ValueError):
    """The configuration file or a flag has a bad value."""


@dataclass(frozen=True, slots=True)
class Listener:
    """A listening socket; TLS when both certfile and keyfile are given."""

    host: str = "127.0.0.1"
    port: int = 0
    certfile: str | None = None
    keyfile: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError("a listener's host must be a non-empty string")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"a listener's port must be an integer from 0 to 65535, not {self.port!r}")
        for name in ("certfile", "keyfile"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ConfigError(f"a listener's {name} must be a path string")

    @property
    def tls(self) -> bool:
        return self.certfile is not None

    @classmethod
    def parse(cls, text: str, base: Listener) -> Listener:
        """Parse HOST:PORT (or [V6]:PORT, or :PORT) over `base`."""
        host, sep, port = text.rpartition(":")
        if not sep or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 <= int(port) <= 65535:
            raise ConfigError(f"expected HOST:PORT, got {text!r}")
        host = host.strip("[]") or base.host
        return dataclasses.replace(base, host=host, port=int(port))


@dataclass(frozen=True, slots=True)
class Policy:
    """What operators tune at run time (`policy.get` / `policy.set`)."""

    challenge_ttl_s: int = 60  # the seed: a push is valid for 60 s
    max_open_per_resource: int = 1  # the seed: one open push per resource
    max_per_user_per_hour: int = 10
    deny_streak_suspend: int = 3
    suspend_minutes: int = 20
    match: MatchMode = MatchMode.NONE
    match_digits: int = 2
    require_biometric: bool = False
    ack_timeout_s: float = 5.0  # then fall back to APNs/FCM
    # TOTP (RFC 6238 section 5.2, RFC 4226 section 7.3, NIST SP 800-63B-4 section 3.2.2)
    totp_drift_steps: int = 1  # time steps accepted either side of now
    totp_max_failures: int = 5  # consecutive wrong codes before a lockout
    totp_lockout_s: int = 30  # the first lockout; each further failure doubles it ...
    totp_lockout_max_s: int = 3600  # ... up to this

    _LIMITS = {
        "challenge_ttl_s": (5, 600),
        "max_open_per_resource": (1, 100),
        "max_per_user_per_hour": (1, 100_000),
        "deny_streak_suspend": (1, 1000),
        "suspend_minutes": (1, 7 * 24 * 60),
        "match_digits": (2, 6),
        "ack_timeout_s": (0.1, 600),
        "totp_drift_steps": (0, 10),
        "totp_max_failures": (1, 100),
        "totp_lockout_s": (1, 86_400),
        "totp_lockout_max_s": (1, 7 * 86_400),
    }

    def with_changes(self, changes: dict[str, Any]) -> Policy:
        """A new policy with `changes` applied, each validated.

        Raises:
            ConfigError: unknown key, wrong type or out-of-range value.
        """
        if not isinstance(changes, dict):
            raise ConfigError("policy changes must be a map")
        values: dict[str, Any] = {}
        for key, value in changes.items():
            if key not in self.field_names():
                raise ConfigError(f"unknown policy key {key!r}")
            values[key] = _check_policy_value(key, value, self._LIMITS.get(key))
        changed = dataclasses.replace(self, **values)
        if changed.totp_lockout_max_s < changed.totp_lockout_s:
            raise ConfigError("totp_lockout_max_s must be at least totp_lockout_s")
        return changed

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_dict(self) -> dict[str, Any]:
        return {name: (str(v) if isinstance(v, MatchMode) else v) for name, v in
                ((n, getattr(self, n)) for n in self.field_names())}


def _check_policy_value(key: str, value: Any, limits: tuple[float, float] | None) -> Any:
    if key == "match":
        try:
            return MatchMode(value)
        except ValueError:
            raise ConfigError(f"match must be one of {[m.value for m in MatchMode]}") from None
    if key == "require_biometric":
        if not isinstance(value, bool):
            raise ConfigError("require_biometric must be a boolean")
        return value
    wants_float = key == "ack_timeout_s"
    if isinstance(value, bool) or not isinstance(value, (int, float) if wants_float else int):
        raise ConfigError(f"{key} must be {'a number' if wants_float else 'an integer'}")
    assert limits is not None
    low, high = limits
    if not low <= value <= high:
        raise ConfigError(f"{key} must be between {low} and {high}")
    return float(value) if wants_float else value


@dataclass(frozen=True, slots=True)
class Config:
    """Everything a node needs to start."""

    data_dir: Path = field(default_factory=lambda: Path(platformdirs.user_data_dir("pushguard")))
    ws: Listener = Listener(port=8765)
    rpc: Listener = Listener(port=7464)
    node_id: str = "node-1"
    audience: str = "pushguard"  # the `aud` claim devices put in their tokens
    public_ws_url: str | None = None  # what phones dial; derived from `ws` when unset
    api_keys: dict[str, str] = field(default_factory=dict)  # key -> role
    policy: Policy = Policy()
    heartbeat_s: float = 25.0
    heartbeat_timeout_s: float = 10.0
    hello_timeout_s: float = 10.0
    enrollment_ttl_s: int = 600
    token_max_skew_s: int = 60
    token_max_lifetime_s: int = 120
    max_connections: int | None = None  # None: what the descriptor limit allows
    send_timeout_s: float = 10.0  # a phone that takes no frame for this long is cut off as slow (4429)
    actor_mailbox: int = 256
    actor_idle_s: float = 30.0  # a disconnected actor with nothing open passivates after this
    actor_restarts: int = 5  # restart budget: this many crashes ...
    actor_restart_period_s: float = 60.0  # ... within this period
    rpc_max_inflight: int = 256  # concurrent requests on one RPC connection
    event_buffer: int = 1000  # events queued to one subscriber before it is cut off
    store_synchronous: str = "FULL"
    gc_freeze_s: float = 10.0  # the garbage collector steward's round (engine/collector.py); 0 turns it off
    gc_full_s: float = 3600.0  # and its full collection
    totp_issuer: str = "pushguard"  # the issuer authenticator apps show beside the code
    totp_key: str | None = None  # base64 of 32 bytes; unset: <data-dir>/totp-key

    @property
    def db_path(self) -> Path:
        return self.data_dir / "pushguard.sqlite3"

    def enroll_base_url(self, ws_port: int) -> str:
        if self.public_ws_url:
            return self.public_ws_url
        scheme = "wss" if self.ws.tls else "ws"
        return f"{scheme}://{self.ws.host}:{ws_port}/v1/device"


_ZERO_TURNS_OFF = frozenset({"gc_freeze_s"})


def _check_scalar_types(config: Config) -> None:
    """Numbers and strings of the top level have the annotated type (a bool is no number)."""
    for item in dataclasses.fields(Config):
        value = getattr(config, item.name)
        annotation = str(item.type)
        if annotation == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
                value > 0 or (value == 0 and item.name in _ZERO_TURNS_OFF))
        elif annotation == "int":
            ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        elif annotation == "int | None":
            ok = value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0)
        elif annotation in ("str", "str | None"):
            ok = isinstance(value, str) or (value is None and annotation == "str | None")
        else:
            continue
        if not ok:
            raise ConfigError(f"{item.name} has a bad value {value!r}")


def load_config(path: str | Path | None = None, **overrides: Any) -> Config:
    """Build a Config from an optional TOML file and keyword overrides.

    Raises:
        ConfigError: the file has unknown keys or bad values.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
    values: dict[str, Any] = {}
    known = {f.name for f in dataclasses.fields(Config)}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"unknown configuration key {key!r}")
        if key in ("ws", "rpc"):
            if not isinstance(value, dict):
                raise ConfigError(f"[{key}] must be a table")
            base = Listener(port=8765) if key == "ws" else Listener(port=7464)
            try:
                value = dataclasses.replace(base, **value)
            except TypeError as exc:
                raise ConfigError(f"[{key}]: {exc}") from None
        elif key == "policy":
            value = Policy().with_changes(value)
        elif key == "data_dir":
            value = Path(value).expanduser()
        elif key == "api_keys":
            if not isinstance(value, dict) or any(r not in ROLES for r in value.values()):
                raise ConfigError(f"api_keys maps each key to one of {ROLES}")
        values[key] = value
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        config = Config(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
    _check_scalar_types(config)
    for listener in (config.ws, config.rpc):
        if (listener.certfile is None) != (listener.keyfile is None):
            raise ConfigError("a TLS listener needs both certfile and keyfile")
    _check_totp(config)
    return config


def _check_totp(config: Config) -> None:
    if ":" in config.totp_issuer or not 1 <= len(config.totp_issuer) <= 128:
        raise ConfigError("totp_issuer must be 1 to 128 characters without ':'")
    if config.totp_key is not None:
        from engine.totp.sealing import decode_key

        try:
            decode_key(config.totp_key)
        except ValueError as exc:
            raise ConfigError(f"totp_key: {exc}") from None

