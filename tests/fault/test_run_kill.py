"""Runs survive ``jidoka serve`` being killed with SIGKILL mid-run, on SQLite and Postgres.

A session runs a run whose model (the local OpenAI-compatible server in this test's process)
first calls ``write_file`` and then never answers; a second run, sent with an
``Idempotency-Key``, waits behind it (``enqueue``). The server is killed with SIGKILL while the
first run waits on its model. After a restart on the same store:

- the first run is ``interrupted`` (reason ``restart``), never run again: its tool ran once
  (one ``tool_call`` event, one write on disk), and it has one ``run_started``;
- the queued run runs by itself (nobody touches the session) and completes;
- a request repeated with the same ``Idempotency-Key`` answers the run made before the kill.

Nothing sleeps: every wait is on the model server receiving a request, on the server's output
or on ``join`` (a bounded wait on the server).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ALICE_TOKEN, ServerProcess, store_under_test
from tests.support.openai_server import (
    Arrivals,
    Hang,
    OpenAIServer,
    Text,
    ToolCalls,
    arrived,
    openai_server,
)
from tests.support.openai_server import llm_config as llm

pytestmark = pytest.mark.stores("sqlite", "postgres")

JOIN = 30.0


@pytest.fixture
async def model() -> AsyncIterator[OpenAIServer]:
    async with openai_server() as server:
        server.requests = Arrivals()
        yield server


def _client(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {ALICE_TOKEN}"}, timeout=JOIN + 10
    )


async def _ok(response: httpx.Response) -> Any:
    assert response.status_code < 300, (response.status_code, response.text)
    return response.json()


async def test_a_killed_servers_running_run_ends_interrupted_and_its_queued_run_runs(
    model: OpenAIServer, tmp_path: Path, store_backend: str
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    store, env = store_under_test()
    server = ServerProcess(tmp_path / "data", log_dir=tmp_path, store=store, env=env)
    write = json.dumps({"path": "out.txt", "content": "written once\n"})
    model.queue(ToolCalls([("w1", "write_file", write)]), Hang())
    url = await asyncio.to_thread(server.start)
    try:
        async with _client(url) as http:
            created = await _ok(
                await http.post(
                    "/v1/sessions",
                    json={
                        "project_root": str(project),
                        "config": {"allow_write": True},
                        "llm_config": llm(model),
                    },
                )
            )
            sid = created["session_id"]
            first = await _ok(await http.post(f"/v1/sessions/{sid}/runs", json={"text": "write"}))
            await arrived(model, 2)  # the tool ran; the second model call hangs
            queued = await _ok(
                await http.post(
                    f"/v1/sessions/{sid}/runs",
                    json={"text": "then this", "multitask": "enqueue"},
                    headers={"Idempotency-Key": "queued-1"},
                )
            )
            assert queued["status"] == "queued"
        assert (project / "out.txt").read_text() == "written once\n"
        model.queue(Text(["the queued answer"]))
        await asyncio.to_thread(server.kill)
        url = await asyncio.to_thread(server.restart)
        async with _client(url) as http:
            runs = f"/v1/sessions/{sid}/runs"
            # Nobody touches the session: the restarted server finds the unfinished runs.
            done = await _ok(
                await http.get(f"{runs}/{queued['run_id']}/join", params={"timeout": JOIN})
            )
            assert done["status"] == "completed", done
            assert done["message"]["content"] == "the queued answer"
            ended = await _ok(await http.get(f"{runs}/{first['run_id']}"))
            assert (ended["status"], ended["reason"]) == ("interrupted", "restart")
            # The same request again, with its key: the run made before the kill.
            again = await http.post(
                runs,
                json={"text": "then this", "multitask": "enqueue"},
                headers={"Idempotency-Key": "queued-1"},
            )
            assert again.status_code == 202
            assert again.json()["run_id"] == queued["run_id"]
            log = await _ok(await http.get(f"/v1/sessions/{sid}/log", params={"limit": 1000}))
    finally:
        await asyncio.to_thread(server.close)
    events = log["events"]
    of_first = [e for e in events if e["data"].get("run_id") == first["run_id"]]
    kinds = [e["type"] for e in of_first]
    assert kinds.count("run_started") == 1  # never run again
    assert kinds.count("tool_call") == 1  # its tool ran once
    assert kinds[-1] == "run_completed"
    assert (project / "out.txt").read_text() == "written once\n"
    assert len(model.requests) == 3  # two calls of the first run, one of the queued one
    assert [e["data"]["run_id"] for e in events if e["type"] == "run_queued"] == [
        first["run_id"],
        queued["run_id"],
    ]
