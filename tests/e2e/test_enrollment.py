"""Push enrollment through the real flow, and one device per user."""

from __future__ import annotations

import pytest
import trio

from engine.protocol.device import ChallengeFrame, Revoked
from engine.rpc_client import RemoteError
from engine.protocol.device import Closed, Error, Unenroll
from simulator.device import PhoneRejected, PhoneRevoked, SimPhone
from tests.conftest import enrolled_phone, ws_url

pytestmark = pytest.mark.trio


async def test_enrollment_status_and_device_info(node, rpc):
    started = await rpc.call("push.begin_enrollment", "kim", {})
    assert started["uri"].startswith("pushguard://enroll?")
    assert len(started["code"]) >= 32  # 192 random bits, base64url
    assert (await rpc.call("push.enrollment", started["enrollment_id"]))["status"] == "pending"
    assert await rpc.call("push.device", "kim") is None
    async with trio.open_nursery() as nursery:
        phone = SimPhone(ws_url(node), nursery, device_name="Kim's phone")
        enrolled = await phone.enroll(started["uri"])
        assert enrolled.account == "kim" and enrolled.audience == node.config.audience
        welcome = await phone.hello()
        assert welcome.pending == ()
        status = await rpc.call("push.enrollment", started["enrollment_id"])
        assert status == {"status": "completed", "device_id": enrolled.device_id, "user_id": "kim",
                          "expires_at": started["expires_at"]}
        device = await rpc.call("push.device", "kim")
        assert device["device_id"] == enrolled.device_id
        assert device["device_name"] == "Kim's phone"
        assert device["connected"] is True
        await phone.close()
        await trio.sleep(0.1)
        device = await rpc.call("push.device", "kim")
        assert device["connected"] is False and device["last_seen"] is not None


async def test_code_works_once_and_only_hashed_codes_are_stored(node, rpc):
    started = await rpc.call("push.begin_enrollment", "lee")
    async with trio.open_nursery() as nursery:
        first = SimPhone(ws_url(node), nursery)
        await first.enroll(started["code"])
        second = SimPhone(ws_url(node), nursery)
        with pytest.raises(PhoneRejected) as caught:
            await second.enroll(started["code"])
        assert caught.value.error.code == "enrollment_failed"
        await first.close()
        await second.close()
    raw = node.config.db_path.read_bytes() + (node.config.db_path.with_name(node.config.db_path.name + "-wal")).read_bytes()
    assert started["code"].encode() not in raw


async def test_second_enrollment_revokes_the_first_device(node, rpc):
    async with trio.open_nursery() as nursery:
        old = await enrolled_phone(node, rpc, nursery, "mia")
        new = await enrolled_phone(node, rpc, nursery, "mia")
        assert await old.expect(Revoked)
        assert await old.wait_closed() == 4403
        assert (await rpc.call("push.device", "mia"))["device_id"] == new.device_id
        # The old phone can no longer authenticate, and is told why; the new one
        # gets the challenges.
        with pytest.raises(PhoneRevoked):
            await old.hello()
        assert await old.wait_closed() == 4403
        await old.close()
        await rpc.call("challenge.create", "mia", {"kind": "login", "name": "portal"}, {})
        assert await new.expect(ChallengeFrame)
        await new.close()


async def test_revoke_cancels_open_challenges(node, rpc):
    async with trio.open_nursery() as nursery:
        phone = await enrolled_phone(node, rpc, nursery, "ned")
        created = await rpc.call("challenge.create", "ned", {"kind": "login", "name": "portal"}, {})
        await phone.expect(ChallengeFrame)
        assert (await rpc.call("push.revoke", "ned"))["revoked"] is True
        # The phone takes the challenge off its screen before it is told it is revoked.
        closed = await phone.expect(Closed)
        assert (closed.id, closed.status) == (created["challenge_id"], "cancelled")
        assert await phone.expect(Revoked)
        assert await phone.wait_closed() == 4403
        assert (await rpc.call("challenge.get", created["challenge_id"]))["status"] == "cancelled"
        with pytest.raises(RemoteError) as caught:
            await rpc.call("challenge.create", "ned", {"kind": "login", "name": "portal"}, {})
        assert caught.value.code == "not_enrolled"


async def test_unenroll_from_the_app(node, rpc):
    async with trio.open_nursery() as nursery:
        phone = await enrolled_phone(node, rpc, nursery, "ora")
        await phone.unenroll()
        assert await phone.wait_closed() == 4403
        assert await rpc.call("push.device", "ora") is None


async def test_a_respond_token_cannot_delete_the_account(node, rpc):
    async with trio.open_nursery() as nursery:
        phone = await enrolled_phone(node, rpc, nursery, "pat")
        await rpc.call("challenge.create", "pat", {"kind": "login", "name": "portal"}, {})
        frame = await phone.expect(ChallengeFrame)
        # Validly signed by the device, but made to answer a challenge, not to unenroll.
        await phone.send(Unenroll(token=phone.respond_token(frame, "deny")))
        error = await phone.expect(Error)
        assert error.code == "bad_signature"
        assert (await rpc.call("push.device", "pat"))["device_id"] == phone.device_id
        await phone.close()


async def test_revocation_does_not_spin_the_actor(node, rpc):
    async with trio.open_nursery() as nursery:
        old = await enrolled_phone(node, rpc, nursery, "quin")
        new = await enrolled_phone(node, rpc, nursery, "quin")
        assert await old.wait_closed() == 4403
        before = node.stats.counters["actor_activations"]
        await trio.sleep(0.3)
        # A revoked device's actor stops and stays stopped: it is not restarted
        # for the messages that were on their way to it.
        assert node.stats.counters["actor_activations"] - before <= 1
        assert not node.registry.is_active(old.device_id)
        await new.close()
