"""TLS contexts for the node's listeners."""

from __future__ import annotations

import ssl

from engine.config import Listener


def server_context(listener: Listener) -> ssl.SSLContext | None:
    """A server context for the listener, or None when it serves plain TCP."""
    if not listener.tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(listener.certfile, listener.keyfile)
    return context
