"""The node's listening sockets: plain TCP, or TLS when a certificate is configured."""

from __future__ import annotations

import ssl
from typing import Any

import trio

from engine.config import Listener


def server_context(listener: Listener) -> ssl.SSLContext | None:
    """A server context for the listener, or None when it serves plain TCP."""
    if not listener.tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(listener.certfile, listener.keyfile)
    return context


async def open_listeners(listener: Listener) -> tuple[list[Any], int]:
    """Listening sockets for `listener` (TLS-wrapped when configured) and the port bound."""
    sockets: list[trio.SocketListener] = await trio.open_tcp_listeners(listener.port, host=listener.host)
    port = sockets[0].socket.getsockname()[1]
    context = server_context(listener)
    if context is None:
        return list(sockets), port
    return [trio.SSLListener(s, context, https_compatible=False) for s in sockets], port
