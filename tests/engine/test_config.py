"""Configuration: defaults for one machine, the TOML file, listeners and the policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.config import Config, ConfigError, Listener, Policy, load_config
from engine.models import MatchMode


def toml_id(text: str) -> str:
    """A readable test id for a TOML snippet."""
    return text.strip().replace("\n", " ")


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pushguard.toml"
    path.write_text(text)
    return path


# --- defaults ---------------------------------------------------------------


def test_defaults_serve_one_machine() -> None:
    config = Config()

    assert (config.ws.host, config.ws.port, config.ws.tls) == ("127.0.0.1", 8765, False)
    assert (config.rpc.host, config.rpc.port, config.rpc.tls) == ("127.0.0.1", 7464, False)
    assert config.api_keys == {}
    assert config.enroll_base_url(8765) == "ws://127.0.0.1:8765/v1/device"


def test_policy_defaults() -> None:
    policy = Policy()

    assert policy.challenge_ttl_s == 60
    assert policy.max_open_per_resource == 1
    assert policy.max_per_user_per_hour == 10
    assert policy.deny_streak_suspend == 3
    assert policy.suspend_minutes == 20
    assert policy.match is MatchMode.NONE
    assert policy.require_biometric is False


def test_load_config_without_a_file_gives_the_defaults() -> None:
    config = load_config()

    assert config.ws == Listener(port=8765)
    assert config.rpc == Listener(port=7464)
    assert config.policy == Policy()


# --- the TOML file ----------------------------------------------------------


def test_load_config_reads_every_table(tmp_path: Path) -> None:
    path = write_toml(tmp_path, f"""
node_id = "node-7"
data_dir = "{tmp_path / 'data'}"

[ws]
host = "0.0.0.0"
port = 9443
certfile = "/etc/pushguard/cert.pem"
keyfile = "/etc/pushguard/key.pem"

[rpc]
port = 7000

[policy]
challenge_ttl_s = 90
max_open_per_resource = 2
match = "type"
require_biometric = true
ack_timeout_s = 2

[api_keys]
"k-backend" = "backend"
"k-operator" = "operator"
""")

    config = load_config(path)

    assert config.node_id == "node-7"
    assert config.data_dir == tmp_path / "data"
    assert config.db_path == tmp_path / "data" / "pushguard.sqlite3"
    assert config.ws == Listener("0.0.0.0", 9443,
                                 "/etc/pushguard/cert.pem", "/etc/pushguard/key.pem")
    assert config.ws.tls
    assert config.enroll_base_url(9443) == "wss://0.0.0.0:9443/v1/device"
    # A table only overrides what it names.
    assert config.rpc == Listener("127.0.0.1", 7000)
    assert config.policy == Policy(challenge_ttl_s=90, max_open_per_resource=2,
                                   match=MatchMode.TYPE, require_biometric=True,
                                   ack_timeout_s=2.0)
    assert config.api_keys == {"k-backend": "backend", "k-operator": "operator"}


def test_keyword_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'node_id = "from-file"\naudience = "from-file"\n')

    config = load_config(path, node_id="from-flag", audience=None)

    assert config.node_id == "from-flag"
    assert config.audience == "from-file"  # a flag left unset does not override


@pytest.mark.parametrize("text", [
    'nodeid = "typo"\n',
    '[ws]\nhots = "0.0.0.0"\n',
    '[rpc]\nport = 7000\nbacklog = 5\n',
    '[policy]\nchallenge_ttl = 60\n',
    '[database]\npath = "x"\n',
], ids=toml_id)
def test_an_unknown_key_is_a_config_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        load_config(write_toml(tmp_path, text))


@pytest.mark.parametrize("text", [
    '[policy]\nchallenge_ttl_s = 4\n',
    '[policy]\nchallenge_ttl_s = 601\n',
    '[policy]\nmax_open_per_resource = 0\n',
    '[policy]\nmax_per_user_per_hour = 0\n',
    '[policy]\ndeny_streak_suspend = 0\n',
    '[policy]\nsuspend_minutes = 0\n',
    '[policy]\nmatch_digits = 7\n',
    '[policy]\nack_timeout_s = 0.0\n',
    '[policy]\nchallenge_ttl_s = "60"\n',
    '[policy]\nmatch = "emoji"\n',
    '[policy]\nrequire_biometric = "yes"\n',
    'policy = 3\n',
], ids=toml_id)
def test_a_bad_policy_value_is_a_config_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        load_config(write_toml(tmp_path, text))


@pytest.mark.parametrize("table", ["ws", "rpc"])
@pytest.mark.parametrize("half", ['certfile = "cert.pem"', 'keyfile = "key.pem"'])
def test_a_tls_listener_needs_both_certfile_and_keyfile(tmp_path: Path, table: str,
                                                        half: str) -> None:
    with pytest.raises(ConfigError, match="certfile and keyfile"):
        load_config(write_toml(tmp_path, f"[{table}]\n{half}\n"))


@pytest.mark.parametrize("text", [
    'ws = "0.0.0.0:9000"\n',
    '[api_keys]\n"k" = "admin"\n',
    'api_keys = ["k"]\n',
], ids=toml_id)
def test_malformed_tables_are_config_errors(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        load_config(write_toml(tmp_path, text))


@pytest.mark.parametrize("text", [
    '[ws]\nport = 70000\n',
    '[ws]\nport = -1\n',
    '[rpc]\nport = "7464"\n',
    '[rpc]\nhost = 127\n',
    'heartbeat_s = "fast"\n',
], ids=toml_id)
def test_badly_typed_or_out_of_range_values_are_config_errors(tmp_path: Path, text: str) -> None:
    # load_config promises ConfigError for "bad values"; otherwise the node
    # starts and fails later, far from the line that caused it.
    with pytest.raises(ConfigError):
        load_config(write_toml(tmp_path, text))


def test_an_unreadable_or_invalid_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError):
        load_config(write_toml(tmp_path, "[ws\nport = 1\n"))


# --- listeners --------------------------------------------------------------


def test_listener_parse_host_and_port() -> None:
    base = Listener(port=8765)

    assert Listener.parse("0.0.0.0:9000", base) == Listener("0.0.0.0", 9000)
    assert Listener.parse("node.example:0", base) == Listener("node.example", 0)
    assert Listener.parse("h:65535", base).port == 65535


def test_listener_parse_port_only_keeps_the_base_host_and_tls() -> None:
    base = Listener("10.0.0.5", 8765, certfile="cert.pem", keyfile="key.pem")

    parsed = Listener.parse(":9443", base)

    assert parsed == Listener("10.0.0.5", 9443, "cert.pem", "key.pem")
    assert parsed.tls


def test_listener_parse_bracketed_ipv6() -> None:
    assert Listener.parse("[::1]:9000", Listener()) == Listener("::1", 9000)
    assert Listener.parse("[2001:db8::7]:443", Listener()) == Listener("2001:db8::7", 443)


@pytest.mark.parametrize("text", [
    "", "9000", "host", "host:", "host:http", "host:65536", "host:-1", "host:+80",
    "host: 80", "[::1]", "host:²",
])
def test_listener_parse_rejects_anything_else(text: str) -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        Listener.parse(text, Listener(port=8765))


# --- run-time policy changes ------------------------------------------------


def test_policy_changes_make_a_new_policy() -> None:
    policy = Policy()

    changed = policy.with_changes({"challenge_ttl_s": 120, "match": "choose", "match_digits": 3,
                                   "require_biometric": True, "ack_timeout_s": 1})

    assert changed == Policy(challenge_ttl_s=120, match=MatchMode.CHOOSE, match_digits=3,
                             require_biometric=True, ack_timeout_s=1.0)
    assert isinstance(changed.ack_timeout_s, float)
    assert policy == Policy()  # unchanged
    assert changed.to_dict()["match"] == "choose"


@pytest.mark.parametrize("key", ["challenge_ttl_s", "max_open_per_resource",
                                 "max_per_user_per_hour", "deny_streak_suspend",
                                 "suspend_minutes", "match_digits", "ack_timeout_s"])
@pytest.mark.parametrize("value", [True, False])
def test_a_bool_is_not_a_number(key: str, value: bool) -> None:
    with pytest.raises(ConfigError):
        Policy().with_changes({key: value})


@pytest.mark.parametrize("changes", [
    {"challenge_ttl_s": 60.0},
    {"challenge_ttl_s": "60"},
    {"max_open_per_resource": None},
    {"ack_timeout_s": "5"},
    {"require_biometric": 1},
    {"require_biometric": "true"},
])
def test_policy_values_of_the_wrong_type_are_rejected(changes: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Policy().with_changes(changes)


@pytest.mark.parametrize(("key", "low", "high"), [
    ("challenge_ttl_s", 5, 600),
    ("max_open_per_resource", 1, 100),
    ("max_per_user_per_hour", 1, 100_000),
    ("deny_streak_suspend", 1, 1000),
    ("suspend_minutes", 1, 7 * 24 * 60),
    ("match_digits", 2, 6),
])
def test_policy_ranges(key: str, low: int, high: int) -> None:
    assert getattr(Policy().with_changes({key: low}), key) == low
    assert getattr(Policy().with_changes({key: high}), key) == high
    with pytest.raises(ConfigError):
        Policy().with_changes({key: low - 1})
    with pytest.raises(ConfigError):
        Policy().with_changes({key: high + 1})


@pytest.mark.parametrize("value", [0.09, 600.5, float("nan"), float("inf")])
def test_ack_timeout_out_of_range_is_rejected(value: float) -> None:
    with pytest.raises(ConfigError):
        Policy().with_changes({"ack_timeout_s": value})


@pytest.mark.parametrize("mode", ["none", "choose", "type"])
def test_match_modes_are_accepted(mode: str) -> None:
    assert Policy().with_changes({"match": mode}).match is MatchMode(mode)


@pytest.mark.parametrize("mode", ["TYPE", "sms", "", None, 1, ["type"]])
def test_unknown_match_modes_are_rejected(mode: Any) -> None:
    with pytest.raises(ConfigError, match="match must be one of"):
        Policy().with_changes({"match": mode})


@pytest.mark.parametrize("changes", [{"colour": "red"}, ["challenge_ttl_s", 60], None])
def test_unknown_keys_and_non_maps_are_rejected(changes: Any) -> None:
    with pytest.raises(ConfigError):
        Policy().with_changes(changes)


def test_a_rejected_change_applies_nothing() -> None:
    policy = Policy()

    with pytest.raises(ConfigError):
        policy.with_changes({"challenge_ttl_s": 120, "suspend_minutes": 0})

    assert policy == Policy()


def test_totp_settings_are_checked_when_the_config_loads(tmp_path):
    from engine.config import ConfigError, load_config

    for text, fragment in [('totp_issuer = "a:b"', "totp_issuer"), ('totp_key = "short"', "totp_key"),
                           ("[policy]\ntotp_lockout_s = 60\ntotp_lockout_max_s = 30", "totp_lockout_max_s")]:
        path = tmp_path / "bad.toml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=fragment):
            load_config(path)
