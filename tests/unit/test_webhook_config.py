"""Webhook signing (checked against the reference ``standardwebhooks`` library) and the webhook
settings: the secret (environment only, never shown), the allow-list (flag and environment),
and the policy a run's webhook is judged by."""

from __future__ import annotations

import base64
import importlib
from datetime import UTC, datetime

import pytest
import standardwebhooks
from hypothesis import given, settings
from hypothesis import strategies as st

import jidoka
from jidoka.cli import main
from jidoka.config import Settings
from jidoka.errors import InvalidArgument, InvalidConfig
from jidoka.runs.policy import WebhookPolicy
from jidoka.runs.signing import sign, webhook_headers, webhook_key

KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()


@settings(max_examples=200, deadline=None)
@given(
    key=st.binary(min_size=16, max_size=64),
    webhook_id=st.text(min_size=1, max_size=40).filter(lambda s: "\x00" not in s),
    timestamp=st.integers(min_value=0, max_value=4_000_000_000),
    body=st.binary(max_size=500),
    prefixed=st.booleans(),
    padded=st.booleans(),
)
def test_signatures_match_the_reference_library(
    key: bytes, webhook_id: str, timestamp: int, body: bytes, prefixed: bool, padded: bool
) -> None:
    encoded = base64.b64encode(key).decode()
    if not padded:
        encoded = encoded.rstrip("=")
    secret = ("whsec_" if prefixed else "") + encoded
    assert webhook_key(secret) == key
    reference = standardwebhooks.Webhook(secret)
    when = datetime.fromtimestamp(timestamp, UTC)
    assert sign(key, webhook_id, timestamp, body) == reference.sign(webhook_id, when, body)


def test_headers_verify_with_the_reference_library() -> None:
    body = b'{"type":"run.completed"}'
    now = int(datetime.now(UTC).timestamp())
    headers = webhook_headers(KEY, "wh_1", now, body)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-signature"].startswith("v1,")
    assert standardwebhooks.Webhook(SECRET).verify(body, headers) == {"type": "run.completed"}
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook("whsec_" + base64.b64encode(b"x" * 32).decode()).verify(
            body, headers
        )


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        ("not base64!", "not base64"),
        ("whsec_plain words here", "not base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "5 bytes long"),
        ("whsec_", "0 bytes long"),
    ],
)
def test_bad_secrets_are_refused_without_being_shown(secret: str, why: str) -> None:
    with pytest.raises(InvalidConfig) as caught:
        webhook_key(secret)
    assert caught.value.field == "webhook_secret"
    assert why in str(caught.value)
    assert "JIDOKA_WEBHOOK_SECRET" in str(caught.value)
    if secret.removeprefix("whsec_"):
        assert secret.removeprefix("whsec_") not in str(caught.value)


def test_settings_from_the_environment_hide_the_secret() -> None:
    env = {
        "JIDOKA_WEBHOOK_ALLOW": " https://a.example/hooks/ ,, http://127.0.0.1:9000",
        "JIDOKA_WEBHOOK_SECRET": SECRET,
    }
    found = Settings.from_env(env)
    assert found.webhook_allow == ("https://a.example/hooks/", "http://127.0.0.1:9000")
    assert found.webhook_secret == SECRET
    assert SECRET not in repr(found)
    assert SECRET[6:20] not in repr(found)
    assert "webhook_secret='***'" in repr(found)
    assert Settings().webhook_allow == ()
    assert Settings().webhook_secret is None


def test_the_policy() -> None:
    policy = WebhookPolicy(("https://a.example/hooks/",), SECRET)
    assert policy.key == KEY
    assert policy.check("https://a.example/hooks/x") == "https://a.example/hooks/x"
    with pytest.raises(InvalidArgument, match="not allowed") as caught:
        policy.check("https://a.example/other")
    assert caught.value.argument == "webhook"
    assert SECRET not in repr(policy)
    with pytest.raises(InvalidConfig) as bad:
        WebhookPolicy(("a.example",), SECRET)
    assert bad.value.field == "webhook_allow"


def test_without_a_secret_every_webhook_is_refused_saying_what_to_set() -> None:
    policy = WebhookPolicy(("https://a.example",), None)
    with pytest.raises(InvalidArgument) as caught:
        policy.check("https://a.example/hooks")
    assert caught.value.argument == "webhook"
    assert "JIDOKA_WEBHOOK_SECRET" in str(caught.value)


def test_the_runtime_refuses_a_bad_webhook_configuration() -> None:
    with pytest.raises(InvalidConfig) as caught:
        jidoka.Runtime(store="memory", webhook_allow=("ftp://x",))
    assert caught.value.field == "webhook_allow"
    with pytest.raises(InvalidConfig) as caught:
        jidoka.Runtime(store="memory", webhook_secret="whsec_c2hvcnQ=")
    assert caught.value.field == "webhook_secret"


def test_serve_takes_allow_entries_from_flags_and_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``run_server`` is replaced: this is about the mapping of flags and variables."""
    server = importlib.import_module("jidoka.server.serve")
    seen: dict[str, object] = {}

    def run_server(config: object, settings: object, *, log_level: str) -> int:
        seen.update(settings=settings)
        return 0

    monkeypatch.setattr(server, "run_server", run_server)
    monkeypatch.setenv("JIDOKA_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("JIDOKA_WEBHOOK_ALLOW", "https://env.example")
    assert main(["serve", "--port", "0"]) == 0
    found = seen["settings"]
    assert isinstance(found, Settings)
    assert found.webhook_allow == ("https://env.example",)
    assert found.webhook_secret == SECRET
    argv = ["serve", "--port", "0", "--webhook-allow", "https://a.example"]
    assert main([*argv, "--webhook-allow", "http://127.0.0.1:8123/hooks/"]) == 0
    found = seen["settings"]
    assert isinstance(found, Settings)
    assert found.webhook_allow == ("https://a.example", "http://127.0.0.1:8123/hooks/")

    assert main(["serve", "--port", "0", "--webhook-allow", "https://u@a.example"]) == 2
    assert "userinfo" in capsys.readouterr().err
    monkeypatch.setenv("JIDOKA_WEBHOOK_SECRET", "oops not base64")
    assert main(["serve", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "webhook secret is not base64" in err
    assert "oops" not in err
    # The secret is never a flag.
    assert main(["serve", "--webhook-secret", SECRET]) == 2
    assert SECRET not in capsys.readouterr().err
