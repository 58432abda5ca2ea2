"""What the operator configured for webhooks, checked once: the allow-list and the signing key.

``Settings`` keeps both as plain strings (so ``config`` stays free of this package); the runtime
builds one :class:`WebhookPolicy` from them at start, which refuses a bad entry or secret with
:class:`~jidoka.InvalidConfig` before anything runs, and which ``start_run`` and the deliverer
both ask, so a webhook is judged by one rule when it is asked for and again when it is sent.
"""

from __future__ import annotations

from ..config import Settings
from ..errors import InvalidArgument
from .allow import AllowEntry, check_webhook, parse_allow
from .signing import webhook_key

__all__ = ["WebhookPolicy"]


class WebhookPolicy:
    """The parsed allow-list (:mod:`.allow`) and the HMAC key (:mod:`.signing`, ``None``: no
    secret configured, so no webhook is accepted)."""

    __slots__ = ("allow", "key")

    def __init__(self, allow: tuple[str, ...] = (), secret: str | None = None) -> None:
        self.allow: tuple[AllowEntry, ...] = parse_allow(allow)
        self.key: bytes | None = webhook_key(secret) if secret else None

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookPolicy:
        return cls(settings.webhook_allow, settings.webhook_secret)

    def check(self, url: object) -> str:
        """``url`` if a run may ask for a webhook there, else :class:`~jidoka.InvalidArgument`
        (argument ``webhook``) saying why: no secret configured, malformed, or not allowed."""
        if self.key is None:
            raise InvalidArgument(
                f"webhook URL {repr(url)[:200]} cannot be used: this server signs webhooks with "
                "a secret and none is configured (its operator sets JIDOKA_WEBHOOK_SECRET)",
                argument="webhook",
            )
        return check_webhook(url, self.allow)

    def __repr__(self) -> str:
        secret = "set" if self.key is not None else "unset"
        return f"<WebhookPolicy allow={len(self.allow)} entries, secret {secret}>"
