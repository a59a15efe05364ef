"""The registry of live device actors: activation on demand, passivation,
supervision.

An actor exists only while its device is connected or has work; `tell`
starts one when a message arrives for a device that has none. Each actor runs
under a supervisor loop in the registry's nursery: a crash is logged and
counted, the phone's link is closed with 1011 (the phone reconnects and finds
its open challenges in `welcome`), and the actor restarts with the same
mailbox while its restart budget lasts. Past the budget the actor stays down
until the next message activates it afresh; one device's failure never
reaches another device or the node.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import trio

from actors.device_actor import ActorDeps, DeviceActor
from actors.messages import ActorMessage, Attach, DeviceLink, FromPhone
from actors.supervision import RestartBudget
from engine.errors import CLOSE_INTERNAL, CLOSE_REVOKED
from engine.models import Device

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ActorCell:
    """The registry's record of one live actor, which outlives its restarts."""

    device_id: str
    send: trio.MemorySendChannel[ActorMessage]
    receive: trio.MemoryReceiveChannel[ActorMessage]
    budget: RestartBudget
    link: DeviceLink | None = None
    actor: DeviceActor | None = field(default=None, repr=False)
    device_hint: Device | None = None  # a fresh record for the actor to start from


class ActorRegistry:
    def __init__(self, deps: ActorDeps):
        self._deps = deps
        self._cells: dict[str, ActorCell] = {}
        self._nursery: trio.Nursery | None = None
        self.stopping = False  # the node is shutting down: start no new actors

    @property
    def active_count(self) -> int:
        return len(self._cells)

    def is_active(self, device_id: str) -> bool:
        return device_id in self._cells

    async def run(self, *, task_status: trio.TaskStatus[ActorRegistry] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the actors until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started(self)
            await trio.sleep_forever()

    def tell(self, device_id: str, message: ActorMessage) -> bool:
        """Cast without waiting; starts the actor if needed. False when the
        mailbox is full: the message is dropped and counted (the store stays the
        truth, and the phone re-syncs from it on its next connect)."""
        cell = self._cell(device_id)
        try:
            cell.send.send_nowait(message)
            return True
        except trio.WouldBlock:
            self._deps.stats.incr("mailbox_full_drops")
            log.warning("mailbox of device %s is full; dropped %s", device_id, type(message).__name__)
            return False

    async def send(self, device_id: str, message: ActorMessage) -> None:
        """Wait for room in the mailbox: used for frames from the phone, so a
        phone that sends faster than its actor works is slowed at its own socket."""
        while True:
            cell = self._cell(device_id)
            if isinstance(message, Attach) and cell.actor is None:
                cell.device_hint = message.device
            try:
                await cell.send.send(message)
                return
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                continue  # the actor passivated meanwhile; start a new one

    def _cell(self, device_id: str) -> ActorCell:
        cell = self._cells.get(device_id)
        if cell is None:
            if self._nursery is None:
                raise RuntimeError("the actor registry is not running")
            send, receive = trio.open_memory_channel[ActorMessage](self._deps.config.actor_mailbox)
            budget = RestartBudget(self._deps.config.actor_restarts, self._deps.config.actor_restart_period_s)
            cell = ActorCell(device_id, send, receive, budget)
            self._cells[device_id] = cell
            self._deps.stats.incr("actor_activations")
            self._nursery.start_soon(self._supervise, cell, name=f"actor:{device_id}")
        return cell

    async def _supervise(self, cell: ActorCell) -> None:
        escalated = gone = False
        try:
            while True:
                cell.actor = DeviceActor(cell.device_id, self._deps, cell)
                try:
                    gone = await cell.actor.run(cell.receive)
                    return  # passivated, or the device is revoked
                except Exception as exc:
                    self._deps.stats.incr("actor_crashes")
                    log.error("actor for device %s crashed: %r", cell.device_id, exc, exc_info=exc)
                    if cell.link is not None:
                        cell.link.close(CLOSE_INTERNAL, "device actor restarted")
                        cell.link = None
                    await self._deps.events.emit("actor.crashed", device_id=cell.device_id,
                                                 error=type(exc).__name__)
                    if not cell.budget.allow():
                        escalated = True
                        self._deps.stats.incr("actor_escalations")
                        log.error("actor for device %s exceeded its restart budget; stopped",
                                  cell.device_id)
                        return
                    self._deps.stats.incr("actor_restarts")
        finally:
            # No checkpoint between the actor's return and this removal, so a
            # `tell` either reached this mailbox before it closed or starts a new
            # actor; messages still queued here are handed to that new actor.
            if self._cells.get(cell.device_id) is cell:
                del self._cells[cell.device_id]
            cell.send.close()
            leftovers = []
            while True:
                try:
                    leftovers.append(cell.receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            cell.receive.close()
            if gone:
                # A revoked device has nothing to do; handing these to a fresh
                # actor would only start it to stop it again, forever. Links
                # that were on their way to it are closed as revoked.
                for message in leftovers:
                    if isinstance(message, (Attach, FromPhone)):
                        message.link.close(CLOSE_REVOKED, "device revoked")
            elif escalated:
                # Handing these to a fresh actor would restart the crash loop
                # with a fresh budget; the store keeps what they were about.
                self._deps.stats.incr("mailbox_dropped_on_escalation", len(leftovers))
            elif leftovers and self._nursery is not None and not self.stopping:
                for message in leftovers:
                    self.tell(cell.device_id, message)

    def links(self) -> list[DeviceLink]:
        return [cell.link for cell in self._cells.values() if cell.link is not None]
