"""``/``, ``/docs`` and its assets in process: content negotiation, and the page without Swagger UI.

The page with Swagger UI's files, as a browser gets it, is tested on a real server in
tests/e2e/test_docs_cors.py.
"""

from __future__ import annotations

import logging
from html.parser import HTMLParser
from pathlib import Path

import pytest
from starlette.requests import Request

from jidoka.server.docs import ApiDocs, prefers_html, swagger_ui_dir
from jidoka.server.openapi import openapi_document
from jidoka.server.responses import RouteNotFound


def _request(path: str, headers: dict[str, str] | None = None, **params: str) -> Request:
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "path_params": params,
    }
    return Request(scope)


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        ("", False),
        ("*/*", False),  # curl, httpx, requests
        ("application/json", False),
        ("application/json, text/html", False),  # a tie goes to JSON
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", True),  # browsers
        ("text/html;q=0.5, application/*;q=0.9", False),
        ("text/html;q=0.9, application/json;q=0.1, */*", True),  # the exact range counts
        ("TEXT/HTML", True),
        ("text/html;q=0", False),
        ("text/html;q=nan", False),
        ("text/html;q=2", False),
        ("text/html;q=abc", False),
        ("text/plain, " * 100 + "text/html", False),  # past the ranges looked at
    ],
)
def test_prefers_html(accept: str, html: bool) -> None:
    assert prefers_html(accept) is html


def test_swagger_ui_files_are_found_in_the_installed_package() -> None:
    found = swagger_ui_dir()
    assert found is not None, "swagger-ui-py (the server extra) is not installed"
    assert (found / "swagger-ui-bundle.js").is_file()


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


@pytest.mark.parametrize("where", ["not installed", "unreadable"])
async def test_without_swagger_ui_docs_is_a_plain_list_of_the_routes(
    where: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # "unreadable": the package was found, then its files could not be read (an empty folder).
    docs = ApiDocs(locate=lambda: None if where == "not installed" else tmp_path)
    with caplog.at_level(logging.WARNING, logger="jidoka.server"):
        response = await docs.page(_request("/docs"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "script-src" not in policy
    page = _Page()
    page.feed(bytes(response.body).decode())
    assert "script" not in page.tags
    assert "link" not in page.tags
    text = " ".join(page.text)
    assert "/openapi.json" in text
    assert "jidoka-core[server]" in text
    for path, operations in openapi_document()["paths"].items():
        assert path in text
        for operation in operations.values():
            assert operation["summary"] in text
    if where == "unreadable":
        assert "cannot read Swagger UI's files" in caplog.text
    with pytest.raises(RouteNotFound) as caught:
        await docs.asset(_request("/docs/assets/swagger-ui.css", name="swagger-ui.css"))
    assert caught.value.status == 404
    assert "swagger-ui.css" in str(caught.value)


async def test_the_page_is_built_once() -> None:
    calls: list[None] = []

    def locate() -> Path | None:
        calls.append(None)
        return None

    docs = ApiDocs(locate=locate)
    first = await docs.page(_request("/docs"))
    second = await docs.page(_request("/docs"))
    assert first.body == second.body
    assert len(calls) == 1


async def test_an_asset_name_is_looked_up_never_joined_to_a_path() -> None:
    docs = ApiDocs()
    for name in ("../static/swagger-ui.css", "..", "", "swagger-ui.css\x00", "x" * 5000):
        with pytest.raises(RouteNotFound) as caught:
            await docs.asset(_request("/docs/assets/x", name=name))
        assert len(str(caught.value)) < 200  # the name is cut in the message
    served = await docs.asset(_request("/docs/assets/swagger-ui.css", name="swagger-ui.css"))
    assert served.headers["content-type"].startswith("text/css")
