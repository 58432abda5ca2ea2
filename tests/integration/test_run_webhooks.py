"""A run's webhook end to end, on every store: ``start_run(webhook=...)`` on a runtime with an
allow-list and a secret, the run ends, and a local receiver gets one POST signed per the
Standard Webhooks spec (checked with the ``standardwebhooks`` package) whose body is the run as
``get_run`` answers it; ``get_run`` then says it was delivered. The deliverer's retries,
failures and allow-list are tested in test_webhooks.py."""

from __future__ import annotations

import asyncio
import base64

import msgspec
import pytest
import standardwebhooks

import jidoka
from jidoka.runs.webhooks import WebhookEvent

from ..helpers import PROMPTLY
from ..support.webhook_receiver import WebhookReceiver

SECRET = "whsec_" + base64.b64encode(b"run-webhooks-test-secret-32-byte").decode()
SCRIPT = {"provider": "scripted", "script": [{"chunks": ["all ", "done"]}]}


async def test_a_runs_end_is_posted_signed_once_and_marked_delivered() -> None:
    async with WebhookReceiver() as receiver:
        runtime = jidoka.Runtime(webhook_allow=(receiver.origin,), webhook_secret=SECRET)
        async with runtime:
            client = runtime.client
            sid = await client.create_session(llm_config=SCRIPT)
            run = await client.start_run(sid, "go", webhook=receiver.url("/hooks/runs"))
            assert run.webhook is not None
            assert run.webhook.url == receiver.url("/hooks/runs")
            [request] = await receiver.wait(1)
            hooks = runtime.webhooks
            assert hooks is not None
            async with asyncio.timeout(PROMPTLY):
                await hooks.wait_statistics(lambda s: s.delivered == 1)  # and recorded
            info = await client.get_run(sid, run.run_id)
    payload = standardwebhooks.Webhook(SECRET).verify(request.body, request.headers)
    assert payload["type"] == "run.completed"
    event = msgspec.json.decode(request.body, type=WebhookEvent)
    assert event.data.run_id == run.run_id
    assert event.data.status == "completed"
    assert event.data.message is not None
    assert event.data.message.content == "all done"
    assert request.headers["webhook-id"] == f"msg_{run.run_id}"
    assert info.webhook is not None
    assert (info.webhook.state, info.webhook.attempts) == ("delivered", 1)
    assert len(receiver.requests) == 1


async def test_a_webhook_outside_the_allow_list_is_refused_before_anything_runs() -> None:
    async with WebhookReceiver() as receiver:
        runtime = jidoka.Runtime(webhook_allow=(receiver.origin,), webhook_secret=SECRET)
        async with runtime:
            client = runtime.client
            sid = await client.create_session(llm_config=SCRIPT)
            for url in ("http://169.254.169.254/latest", "http://127.0.0.1:1/x", "ftp://a/b"):
                with pytest.raises(jidoka.InvalidArgument) as caught:
                    await client.start_run(sid, "go", webhook=url)
                assert caught.value.argument == "webhook"
                assert caught.value.session_id == sid
            assert (await client.list_runs(sid)).runs == []
