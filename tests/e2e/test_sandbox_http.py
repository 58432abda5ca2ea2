"""The sandbox race over HTTP: a real ``jidoka serve`` (with ``JIDOKA_PROJECTS_DIR``) answers
session creation and ``add_file`` while a thread in this process keeps swapping a directory with
a symlink to an outside one. Every answer must be a success or a 4xx problem: a refusal, never a
500 (before, ``realpath`` raising EINVAL mid-swap came out as one), and nothing outside may be
rooted or read. Malformed roots (NUL, a lone surrogate, not a string) are 422s too.

The loops are bounded by count; the server's own deadline (``HTTP_TIMEOUT``) is the only clock.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ..support.swap import swapping
from .conftest import ALICE_TOKEN, ServerProcess, http_client, problem_of

TRIES = 300
INSIDE = "inside\n"
SECRET = "SECRET\nSECRET\nSECRET\n"


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``projects/proj`` (with ``d/f.txt``, and a link ``x`` to an outside twin of ``d``) and
    ``projects/evil``, a link to an outside directory."""
    top = tmp_path_factory.mktemp("sandbox-http")
    projects = top / "projects"
    (projects / "proj" / "d").mkdir(parents=True)
    (projects / "proj" / "d" / "f.txt").write_text(INSIDE, encoding="utf-8")
    (top / "outside").mkdir()
    (top / "outside" / "f.txt").write_text(SECRET, encoding="utf-8")
    os.symlink(top / "outside", projects / "proj" / "x")
    os.symlink(top / "outside", projects / "evil")
    return projects


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, projects: Path) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("sandbox-http-server")
    env = {"JIDOKA_PROJECTS_DIR": str(projects)}
    with ServerProcess(root / "data", log_dir=root, env=env) as process:
        yield process


@pytest.fixture
def alice(server: ServerProcess) -> Iterator[httpx.Client]:
    with http_client(server.url, ALICE_TOKEN) as client:
        yield client


class Tally:
    """What came back: successes, 4xx refusals (problem documents), 5xx answers, escapes."""

    def __init__(self) -> None:
        self.ok = self.refused = 0
        self.errors: list[str] = []
        self.escapes: list[str] = []

    def count(self, response: httpx.Response, success: int) -> bool:
        """Record ``response``; whether it was a success."""
        if response.status_code == success:
            self.ok += 1
            return True
        if response.status_code >= 500:
            self.errors.append(f"{response.status_code} {response.text[:200]}")
        else:
            assert response.status_code in (404, 422), (response.status_code, response.text)
            assert response.json()["type"].endswith("/path-not-allowed"), response.text
            self.refused += 1
        return False

    def __str__(self) -> str:
        return (
            f"{self.ok} ok, {self.refused} refused, {len(self.errors)} 5xx {self.errors[:2]}, "
            f"{len(self.escapes)} escapes {self.escapes[:2]}"
        )


def test_creating_sessions_under_a_swap_never_fails_or_escapes(
    alice: httpx.Client, projects: Path
) -> None:
    real_projects = os.path.realpath(projects)
    tally = Tally()
    with swapping(projects / "proj", projects / "evil"):
        for _ in range(TRIES):
            response = alice.post("/v1/sessions", json={"project_root": "proj"})
            if tally.count(response, 201):
                root = response.json()["project_root"]
                if os.path.commonpath([root, real_projects]) != real_projects:
                    tally.escapes.append(root)
                alice.delete(f"/v1/sessions/{response.json()['session_id']}")
    print(f"create over HTTP: {tally}")
    assert not tally.errors, str(tally)
    assert not tally.escapes, str(tally)


def test_adding_files_under_a_swap_never_fails_or_leaks(
    alice: httpx.Client, projects: Path
) -> None:
    response = alice.post("/v1/sessions", json={"project_root": "proj"})
    assert response.status_code == 201, response.text
    sid = response.json()["session_id"]
    tally = Tally()
    with swapping(projects / "proj" / "d", projects / "proj" / "x"):
        for _ in range(TRIES):
            if tally.count(alice.post(f"/v1/sessions/{sid}/files", json={"path": "d/f.txt"}), 201):
                entries = alice.get(f"/v1/sessions/{sid}/file-index").json()["entries"]
                [size] = [entry["size"] for entry in entries if entry["path"] == "d/f.txt"]
                if size != len(INSIDE):
                    tally.escapes.append(f"indexed {size} bytes")
    print(f"add_file over HTTP: {tally}")
    assert not tally.errors, str(tally)
    assert not tally.escapes, str(tally)


@pytest.mark.parametrize(
    "body",
    [
        '{"project_root": "pr\\u0000oj"}',
        '{"project_root": "\\ud800"}',
        '{"project_root": 42}',
        '{"project_root": ["proj"]}',
        '{"project_root": ""}',
        '{"project_root": "../outside"}',
        '{"project_root": "evil"}',
    ],
)
def test_malformed_or_escaping_roots_are_4xx(alice: httpx.Client, body: str) -> None:
    """A 422 problem; a lone surrogate is already refused as JSON (400)."""
    response = alice.post(
        "/v1/sessions", content=body, headers={"Content-Type": "application/json"}
    )
    status = 400 if "ud800" in body else 422
    problem = problem_of(response, response.json()["type"].rsplit("/", 1)[-1], status)
    assert problem["type"].endswith(("/path-not-allowed", "/invalid-argument")), problem
