"""The hash a phone signs to say "this is the context I showed the user".

context_hash = base64url(SHA-256(canonical JSON)), unpadded, where the
canonical JSON is the object below with keys sorted, no spaces, UTF-8:

    {"account": ..., "context": {"app", "ip", "location", "user_agent"},
     "expires_at": ..., "id": ..., "resource": {"kind", "name"}}

Context fields that are absent are null. A phone recomputes it from what it
displays and puts it in the `ctx` claim of its respond token.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

CONTEXT_FIELDS = ("app", "ip", "location", "user_agent")


def context_hash(
    challenge_id: str,
    account: str,
    resource_kind: str,
    resource_name: str,
    context: dict[str, Any],
    expires_at: int,
) -> str:
    canonical = {
        "account": account,
        "context": {name: context.get(name) for name in CONTEXT_FIELDS},
        "expires_at": expires_at,
        "id": challenge_id,
        "resource": {"kind": resource_kind, "name": resource_name},
    }
    data = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
