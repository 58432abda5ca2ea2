"""Standard Webhooks signatures (https://www.standardwebhooks.com), written out with ``hmac``.

A webhook carries three headers: ``webhook-id`` (the same on every attempt, so a receiver can
drop a duplicate), ``webhook-timestamp`` (unix seconds of this attempt, so a receiver can refuse
a replay) and ``webhook-signature``: ``v1,`` and the base64 HMAC-SHA256, keyed by the server's
secret, of ``{webhook-id}.{webhook-timestamp}.{body}``.

The secret (``JIDOKA_WEBHOOK_SECRET``) is written as the spec writes it, ``whsec_`` and the key
in base64, or as the bare base64. That is exactly how the reference library
(``standardwebhooks.Webhook(secret)``) reads a string secret, so the receiver verifies with the
same string the operator configured. A string that is not base64 is refused rather than taken as
raw UTF-8 bytes: the reference library would still base64-decode it (skipping the characters it
does not know) into a different key, and every signature would fail to verify on the other side.
Keys shorter than :data:`MIN_KEY_BYTES` are refused too (the spec recommends 24 to 64 bytes).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Final

from ..errors import InvalidConfig

__all__ = ["MIN_KEY_BYTES", "SECRET_PREFIX", "sign", "webhook_headers", "webhook_key"]

SECRET_PREFIX: Final = "whsec_"
#: The shortest key accepted, in bytes (an HMAC key much shorter is guessable).
MIN_KEY_BYTES: Final = 16
_HOW = (
    "set JIDOKA_WEBHOOK_SECRET to 'whsec_' and at least 16 random bytes in base64, e.g. the "
    'output of: python -c "import base64, secrets; '
    "print('whsec_' + base64.b64encode(secrets.token_bytes(32)).decode())\""
)


def webhook_key(secret: str) -> bytes:
    """The HMAC key a configured secret stands for; :class:`~jidoka.InvalidConfig` (field
    ``webhook_secret``) if it is not one. The message never quotes the secret."""
    text = secret.strip()
    if text.startswith(SECRET_PREFIX):
        text = text[len(SECRET_PREFIX) :]
    try:
        # The reference library pads an unpadded secret; strict decoding refuses anything else.
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidConfig(
            f"the webhook secret is not base64; {_HOW}", field="webhook_secret"
        ) from None
    if len(key) < MIN_KEY_BYTES:
        raise InvalidConfig(
            f"the webhook secret is {len(key)} bytes long, fewer than {MIN_KEY_BYTES}; {_HOW}",
            field="webhook_secret",
        )
    return key


def sign(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header's value: ``v1,<base64 HMAC-SHA256>``."""
    content = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def webhook_headers(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, webhook_id, timestamp, body),
    }
