"""The simulated phone's authenticator: the app's list of TOTP accounts.

It takes an otpauth URI as if its QR code were scanned, keeps any number of
accounts (pushguard's and others), and shows for each the current code and
the seconds it has left, so tests and the load simulator log in with TOTP the
way a person reads the screen.

It uses only what a real app has: the URI (pyotp parses the Key URI Format).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pyotp


@dataclass(frozen=True, slots=True)
class AccountCode:
    """What the app shows for one account at one moment."""

    issuer: str | None
    label: str
    code: str
    seconds_left: int


@dataclass
class Authenticator:
    """The authenticator app. `now` is the phone's clock (seconds since the
    epoch); give a skewed one to simulate a phone whose clock drifts."""

    now: Callable[[], float] = field(default=time.time)
    _accounts: dict[tuple[str | None, str], pyotp.TOTP] = field(default_factory=dict)

    def scan(self, otpauth_uri: str) -> tuple[str | None, str]:
        """Add (or replace) the account in the URI; returns its key (issuer, label).

        Raises:
            ValueError: not a TOTP otpauth URI.
        """
        otp = pyotp.parse_uri(otpauth_uri)
        if not isinstance(otp, pyotp.TOTP):
            raise ValueError("not a TOTP URI")
        key = (otp.issuer, otp.name)
        self._accounts[key] = otp
        return key

    def remove(self, issuer: str | None, label: str) -> None:
        del self._accounts[(issuer, label)]

    @property
    def accounts(self) -> list[tuple[str | None, str]]:
        return list(self._accounts)

    def code(self, label: str, issuer: str | None = None, *, offset_steps: int = 0) -> str:
        """The account's current code (or a neighbouring step's, to test drift).

        Raises:
            KeyError: no such account (with `issuer` None, the label alone must
                name exactly one account).
        """
        otp = self._find(label, issuer)
        return otp.at(self.now(), counter_offset=offset_steps)

    def screen(self) -> list[AccountCode]:
        """Every account as the app lists it."""
        now = self.now()
        return [AccountCode(issuer, label, otp.at(now), _seconds_left(now, otp.interval))
                for (issuer, label), otp in self._accounts.items()]

    def render(self) -> str:
        """The screen as text: one line an account."""
        return "\n".join(
            f"{entry.issuer or '-':<16} {entry.label:<24} {_grouped(entry.code)}  {entry.seconds_left:>2}s"
            for entry in self.screen())

    def _find(self, label: str, issuer: str | None) -> pyotp.TOTP:
        if issuer is not None:
            return self._accounts[(issuer, label)]
        matches = [otp for (_, name), otp in self._accounts.items() if name == label]
        if len(matches) != 1:
            raise KeyError(f"{len(matches)} accounts are labelled {label!r}; name the issuer")
        return matches[0]


def _seconds_left(now: float, period: int) -> int:
    return period - int(now % period)


def _grouped(code: str) -> str:
    """ "123 456" as apps show it."""
    half = len(code) // 2
    return f"{code[:half]} {code[half:]}"
