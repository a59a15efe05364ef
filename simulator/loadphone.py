"""A phone under load: it stays connected, answers each challenge by its plan,
injects the plan's fault, and checks how the node reacts.

The driver gives a phone at most one challenge at a time and sets the `Plan`
before it calls challenge.create, so the phone knows what to do with the next
challenge frame even when the frame overtakes the create's reply. One task
reads the socket; answers and errors are routed to the task handling that
challenge by id.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

import msgpack
import trio
from trio_websocket import ConnectionClosed, HandshakeError

from engine.protocol.device import ChallengeFrame, Closed, Error, Result, Revoked, Welcome
from simulator.device import PhoneClosed, PhoneRejected, PhoneRevoked, SimPhone
from simulator.faults import OVERSIZE_BYTES, PROTOCOL_ERRORS_BEFORE_CLOSE, SKEW_S, Fault, FaultTally
from simulator.mix import Action
from simulator.report import Report

log = logging.getLogger(__name__)

ANSWER_TIMEOUT_S = 10.0
# Faults whose outcome the phone sees; the driver checks the others from the backend's side.
PHONE_CHECKED = frozenset({Fault.FLAP, Fault.SKEW, Fault.REPLAY, Fault.GARBAGE, Fault.OVERSIZE})
CLOSE_POLICY = 1008
LOST = object()  # put in answer channels when the socket goes away
CLOSE_REVOKED = 4403


@dataclass(eq=False)
class Plan:
    """What the user does with the phone's next challenge, and what the phone saw."""

    action: Action
    think_s: float
    biometric: bool
    fault: Fault | None
    created_at: float  # trio time the driver sent challenge.create
    code: str | None = None  # the number the login screen shows, when matching
    code_ready: trio.Event = field(default_factory=trio.Event)
    challenge_id: str | None = None
    delivered_at: float | None = None
    shown_at: float | None = None
    redelivered: trio.Event = field(default_factory=trio.Event)
    handled: trio.Event = field(default_factory=trio.Event)
    fault_checked: bool = False


class LoadPhone:
    def __init__(self, phone: SimPhone, report: Report, *, ack_timeout_s: float, seed: int):
        self.phone = phone
        self.report = report
        self.faults: FaultTally = report.faults
        self.ack_timeout_s = ack_timeout_s
        self.rng = random.Random(seed)
        self.plan: Plan | None = None
        self.busy = False  # the driver has a challenge out for this phone
        self.retired = False  # suspended or revoked: the driver leaves it alone
        self.connected = trio.Event()
        self.reconnects = 0
        self._errors_on_socket = 0  # protocol errors this socket has been charged
        self._answers: dict[str | None, trio.MemorySendChannel] = {}
        self._closed_by_policy = trio.Event()
        self._stop = False

    @property
    def user_id(self) -> str:
        assert self.phone.account is not None
        return self.phone.account

    # -- the connection ----------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, then read frames until cancelled or revoked, reconnecting as a
        phone does (backoff with full jitter). Started once connected (or not)."""
        try:
            await self._run(task_status)
        finally:
            with trio.CancelScope(shield=True):
                await self.phone._close_stream()

    async def _run(self, task_status) -> None:
        async with trio.open_nursery() as handlers:
            first = True
            while not self._stop:
                try:
                    started = trio.current_time()
                    welcome = await self.phone.connect_with_backoff(attempts=20, base_s=0.05, cap_s=2.0)
                    self.report.observe("connect", trio.current_time() - started)
                except PhoneRevoked:
                    self.retired = True
                    break
                except (OSError, PhoneClosed, PhoneRejected, HandshakeError) as exc:
                    self.report.expect(False, f"phone {self.phone.device_id} could not connect: {exc!r}")
                    break
                finally:
                    if first:
                        first = False
                        task_status.started()
                self._errors_on_socket = 0
                self._on_welcome(welcome, handlers)
                self.connected.set()
                try:
                    while True:
                        message = await self.phone.receive(timeout=float("inf"))
                        self._on_message(message, handlers)
                except PhoneClosed as closed:
                    for waiting in list(self._answers.values()):
                        # Whoever waits for an answer on the lost socket stops waiting.
                        try:
                            waiting.send_nowait(LOST)
                        except (trio.WouldBlock, trio.BrokenResourceError):
                            pass
                    self.connected = trio.Event()
                    if closed.code == CLOSE_POLICY:
                        self._closed_by_policy.set()
                    if closed.code == CLOSE_REVOKED:
                        self.retired = True
                        break
                    self.reconnects += 1
            handlers.cancel_scope.cancel()

    async def drop(self) -> None:
        """Lose the network: the socket goes away without a close handshake."""
        await self.phone._close_stream()

    def stop(self) -> None:
        self._stop = True

    def _on_welcome(self, welcome: Welcome, handlers: trio.Nursery) -> None:
        plan = self.plan
        if plan is not None and plan.challenge_id is not None:
            if any(frame.id == plan.challenge_id for frame in welcome.pending):
                plan.redelivered.set()
        elif plan is not None and welcome.pending:
            self._on_message(welcome.pending[-1], handlers)

    def _on_message(self, message: object, handlers: trio.Nursery) -> None:
        now = trio.current_time()
        match message:
            case ChallengeFrame(id=cid):
                plan = self.plan
                if plan is None or plan.handled.is_set():
                    return  # not ours (a challenge from before this run)
                if plan.challenge_id is None:
                    plan.challenge_id, plan.delivered_at = cid, now
                    self.report.observe("create_to_delivered", now - plan.created_at)
                    handlers.start_soon(self._handle, plan, message)
                elif cid == plan.challenge_id:
                    plan.redelivered.set()
            case Result(id=cid) | Error(id=cid):
                channel = self._answers.get(cid)
                if channel is not None:
                    try:
                        channel.send_nowait(message)
                    except (trio.WouldBlock, trio.BrokenResourceError):
                        pass
            case Closed() | Revoked() | Welcome():
                pass

    # -- one challenge ---------------------------------------------------------------
    async def _handle(self, plan: Plan, frame: ChallengeFrame) -> None:
        send, receive = trio.open_memory_channel[Result | Error](8)
        errors_send, errors_receive = trio.open_memory_channel[Result | Error](8)
        self._answers[frame.id], self._answers[None] = send, errors_send
        try:
            for attempt in range(3):
                epoch = self.reconnects
                try:
                    await self._play(plan, frame, receive, errors_receive, first=attempt == 0)
                    return
                except (PhoneClosed, ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    # The socket went away mid-answer (a storm, say). The node re-sends
                    # the challenge on reconnect; the user answers it again, as a person would.
                    log.debug("phone %s lost challenge %s: %r", self.phone.device_id, frame.id, exc)
                    if plan.fault in PHONE_CHECKED and not plan.fault_checked:
                        self.faults.disturb(plan.fault)
                        plan.fault_checked = True
                    try:
                        with trio.fail_after(ANSWER_TIMEOUT_S * 2):
                            while self.reconnects == epoch or not self.connected.is_set():
                                await trio.sleep(0.01)
                    except trio.TooSlowError:
                        return
        finally:
            self._answers.pop(frame.id, None)
            if self._answers.get(None) is errors_send:
                del self._answers[None]
            plan.handled.set()

    def _check(self, plan: Plan, epoch: int, ok: bool, what: str) -> None:
        """Record a fault's outcome; one that a lost connection interrupted proves nothing either way."""
        assert plan.fault is not None
        plan.fault_checked = True
        if not ok and self.reconnects != epoch:
            self.faults.disturb(plan.fault)
        else:
            self.faults.check(plan.fault, ok, what)

    async def _play(self, plan: Plan, frame: ChallengeFrame, answers: trio.MemoryReceiveChannel,
                    anonymous: trio.MemoryReceiveChannel, *, first: bool) -> None:
        phone = self.phone
        fault = plan.fault if first else None  # a second go after a lost socket injects nothing
        epoch = self.reconnects
        if fault is not None:
            self.faults.inject(fault)
        if fault is Fault.FLAP:
            await self.drop()
            with trio.move_on_after(ANSWER_TIMEOUT_S):
                await plan.redelivered.wait()
            self._check(plan, epoch, plan.redelivered.is_set(),
                        f"challenge {frame.id} was not re-sent after the phone reconnected")
            await self._wait_connected()
        if fault is Fault.ACK_DELAY:
            await trio.sleep(self.ack_timeout_s + 0.5)
        if fault is not Fault.ACK_LOSS:
            await phone.ack(frame.id, shown=True)
            plan.shown_at = trio.current_time()
            if plan.fault is None:  # a fault's own delays are not the node's latency
                self.report.observe("create_to_shown", plan.shown_at - plan.created_at)
        if fault in (Fault.GARBAGE, Fault.OVERSIZE):
            await self._protocol_fault(plan, fault, anonymous)
        if plan.action is Action.IGNORE:
            return
        await trio.sleep(plan.think_s)
        if frame.match != "none":
            with trio.fail_after(ANSWER_TIMEOUT_S):
                await plan.code_ready.wait()
        decision = "approve" if plan.action is Action.APPROVE else "deny"
        token_args = {"biometric": plan.biometric, "code": plan.code if frame.match != "none" else None,
                      "fraud": plan.action is Action.FRAUD}
        if fault is Fault.SKEW:
            await phone.send_token(phone.respond_token(frame, decision, skew_s=SKEW_S, **token_args))
            answer = await self._next(answers)
            self._check(plan, epoch, isinstance(answer, Error) and answer.code == "bad_signature",
                        f"a respond signed {SKEW_S} s in the future got {answer!r}")
        token = phone.respond_token(frame, decision, **token_args)
        await phone.send_token(token)
        answer = await self._next(answers)
        if fault is Fault.REPLAY:
            await phone.send_token(token)
            copy = await self._next(answers)
            self._check(plan, epoch, isinstance(answer, Result) and isinstance(copy, Error)
                        and copy.code == "bad_signature", f"a replayed respond got {answer!r} then {copy!r}")

    async def _protocol_fault(self, plan: Plan, fault: Fault, anonymous: trio.MemoryReceiveChannel) -> None:
        """Send a frame the node must refuse; the fifth on one socket closes it with 1008."""
        if fault is Fault.GARBAGE:
            payload: bytes | str = b"\xc1\xc1 not msgpack" if self.phone.encoding == "msgpack" else "{not json"
            expected = "bad_frame"
        else:
            filler = "x" * OVERSIZE_BYTES
            payload = (msgpack.packb({"type": "ack", "id": "x", "pad": filler})
                       if self.phone.encoding == "msgpack" else '{"type":"ack","pad":"' + filler + '"}')
            expected = "too_large"
        epoch = self.reconnects
        self._errors_on_socket += 1
        closes = self._errors_on_socket >= PROTOCOL_ERRORS_BEFORE_CLOSE
        self._closed_by_policy = trio.Event()
        await self.phone.send_raw(payload)
        error = await self._next(anonymous)
        ok = isinstance(error, Error) and error.code == expected
        if closes:
            with trio.move_on_after(ANSWER_TIMEOUT_S):
                await self._closed_by_policy.wait()
            ok = ok and self._closed_by_policy.is_set()
            await self._wait_connected()
        self._check(plan, epoch if not closes else epoch + 1, ok,
                    f"expected error {expected}{' then close 1008' if closes else ''}, got {error!r}")

    async def _next(self, channel: trio.MemoryReceiveChannel) -> Result | Error | None:
        """The next answer on `channel`; None after ANSWER_TIMEOUT_S.

        Raises:
            PhoneClosed: the socket was lost meanwhile (the reader says so with LOST).
        """
        answer = None
        with trio.move_on_after(ANSWER_TIMEOUT_S):
            answer = await channel.receive()
        if answer is LOST:
            raise PhoneClosed(None, "the socket was lost while waiting for an answer")
        return answer

    async def _wait_connected(self) -> None:
        with trio.fail_after(ANSWER_TIMEOUT_S * 2):
            while not self.connected.is_set():
                await self.connected.wait()
