"""A phone's owner, simulated: acknowledge each challenge, think, answer.

`run_autopilot` keeps a `SimPhone` connected (reconnecting with backoff and
jitter when the node drops it) and hands every challenge to a `Behaviour`
that decides what the user does. Used by the demo, and by load runs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from engine.protocol.device import ChallengeFrame, Closed, Error, Result, Revoked, Welcome
from simulator.device import PhoneClosed, SimPhone

log = logging.getLogger(__name__)

REVOKED_CLOSE = 4403


@dataclass(frozen=True, slots=True)
class Answer:
    """What the user does with one challenge. decision None: ignore it."""

    decision: str | None
    think_s: float = 0.0
    biometric: bool = True
    code: str | None = None
    fraud: bool = False


Behaviour = Callable[[ChallengeFrame], Awaitable[Answer]]
Observer = Callable[[SimPhone, object], None]


async def run_autopilot(phone: SimPhone, behaviour: Behaviour, *, on_frame: Observer | None = None,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Run until cancelled or until the device is revoked. The phone must be enrolled."""
    started = False
    async with trio.open_nursery() as nursery:
        while True:
            try:
                if not phone.authenticated:
                    if phone.ws is not None and phone.ws.closed is None:
                        welcome = await phone.hello()  # still on the enrollment connection
                    else:
                        welcome = await phone.connect_with_backoff()
                    _notify(on_frame, phone, welcome)
                    for frame in welcome.pending:
                        nursery.start_soon(_handle, phone, behaviour, frame)
                if not started:
                    started = True
                    task_status.started()
                message = await phone.receive(timeout=float("inf"))
            except PhoneClosed as closed:
                if closed.code == REVOKED_CLOSE:
                    return
                continue
            _notify(on_frame, phone, message)
            if isinstance(message, ChallengeFrame):
                nursery.start_soon(_handle, phone, behaviour, message)
            elif isinstance(message, Revoked):
                return


async def _handle(phone: SimPhone, behaviour: Behaviour, frame: ChallengeFrame) -> None:
    try:
        await phone.ack(frame.id, shown=True)
        answer = await behaviour(frame)
        if answer.decision is None:
            return
        await trio.sleep(answer.think_s)
        token = phone.respond_token(frame, answer.decision, biometric=answer.biometric, code=answer.code,
                                    fraud=answer.fraud)
        await phone.send_token(token)
    except Exception as exc:  # a dropped connection mid-answer: the node re-sends on reconnect
        log.debug("phone %s could not answer %s: %r", phone.device_id, frame.id, exc)


def _notify(observer: Observer | None, phone: SimPhone, message: object) -> None:
    if observer is not None and isinstance(message, (ChallengeFrame, Result, Error, Closed, Welcome, Revoked)):
        observer(phone, message)
