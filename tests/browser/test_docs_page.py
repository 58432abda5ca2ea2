"""``/docs`` renders in a real Chromium with no network but the server's own.

Every request the page makes is let through only if it goes to the server's loopback address;
anything else is aborted and recorded, so the page passes only if it needs nothing from another
host (Swagger UI from a CDN would leave it blank). The rendered page is saved as a screenshot in
the test's temporary directory, and the route list must be on screen: one operation block per
route of the OpenAPI document.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.browser.conftest import BrowserThread
from tests.e2e.conftest import ServerProcess, http_client

pytestmark = pytest.mark.timeout(120)

#: At least this many operations are listed (the API has more; the issue's bar).
MIN_OPERATIONS = 20


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path / "data", log_dir=tmp_path) as process:
        yield process


def test_docs_render_offline_with_the_route_list(
    chromium: BrowserThread, server: ServerProcess, tmp_path: Path
) -> None:
    with http_client(server.url) as client:
        document = client.get("/openapi.json").json()
    operations = sum(len(methods) for methods in document["paths"].values())
    assert operations >= MIN_OPERATIONS
    own = urlsplit(server.url).netloc
    screenshot = tmp_path / "docs.png"

    def render(context: Any) -> dict[str, Any]:
        elsewhere: list[str] = []

        def only_the_server(route: Any) -> None:
            if urlsplit(route.request.url).netloc == own:
                route.continue_()
            else:
                elsewhere.append(route.request.url)
                route.abort()

        context.route("**/*", only_the_server)
        page = context.new_page()
        failed: list[str] = []
        page.on("requestfailed", lambda request: failed.append(request.url))
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        response = page.goto(server.url + "/docs")
        assert response is not None
        assert response.ok, response.status
        blocks = page.locator(".opblock")
        blocks.first.wait_for(state="visible")
        page.wait_for_function(f"document.querySelectorAll('.opblock').length >= {operations}")
        page.screenshot(path=str(screenshot), full_page=True)
        return {
            "count": blocks.count(),
            "visible": [blocks.nth(i).is_visible() for i in range(blocks.count())],
            "paths": page.locator(".opblock-summary-path").all_inner_texts(),
            "elsewhere": elsewhere,
            "failed": failed,
            "errors": errors,
        }

    seen = chromium.run(render)
    assert seen["elsewhere"] == [], seen
    assert seen["failed"] == [], seen
    assert seen["errors"] == [], seen
    assert seen["count"] == operations >= MIN_OPERATIONS
    assert all(seen["visible"]), seen["visible"]
    shown = {path.replace("\u200b", "").strip() for path in seen["paths"]}
    assert {"/v1/sessions", "/v1/stream-tickets", "/v1/sessions/{session_id}/events"} <= shown
    assert screenshot.stat().st_size > 10_000  # a rendered page, not a blank one
