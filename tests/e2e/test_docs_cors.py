"""A browser's first contact with a real ``jidoka serve``: ``/``, ``/docs`` and CORS preflights.

``/docs`` must render with no network but the server's own: every URL the page loads is
same-origin and served here with its content type and long cache headers. A browser app on
another origin that follows an event stream sends ``Cache-Control`` and ``Last-Event-ID`` in its
preflight; they must be allowed.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.conftest import ALICE_TOKEN, ServerProcess, bearer, http_client, problem_of

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
ORIGIN = "http://example.test"
#: What each referenced asset must be answered with, by the end of its path.
TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".png": "image/png",
    ".json": "application/json",
}


class _Links(HTMLParser):
    """Every URL a page makes the browser load or offer: ``src``, ``href``, ``action``..."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []  # (tag, attribute, url)
        self.scripts: list[str] = []  # inline script text

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "action", "formaction", "srcset", "poster", "data"):
                self.urls.append((tag, name, value or ""))

    def handle_data(self, data: str) -> None:
        if self.lasttag == "script" and data.strip():
            self.scripts.append(data)


def _links(html: str) -> _Links:
    parser = _Links()
    parser.feed(html)
    parser.close()
    return parser


@pytest.fixture
def browser(server: ServerProcess) -> Iterator[httpx.Client]:
    """No token, a browser's Accept header, and no redirect following (to see them)."""
    with http_client(server.url) as client:
        client.headers["Accept"] = BROWSER_ACCEPT
        yield client


# --- GET / --------------------------------------------------------------------------------------


def test_root_tells_a_curl_user_where_the_docs_are(anonymous: httpx.Client) -> None:
    response = anonymous.get("/")  # httpx sends Accept: */*, as curl does
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert "accept" in response.headers["vary"].lower()
    index = response.json()
    assert index["name"] == "jidoka"
    assert index["docs"] == "/docs"
    assert index["openapi"] == "/openapi.json"
    assert isinstance(index["version"], str)
    assert index["version"]
    for key in ("docs", "openapi", "health"):
        assert anonymous.get(index[key]).status_code == 200, key
    asks_json = anonymous.get("/", headers={"Accept": "application/json, text/html"})
    assert asks_json.status_code == 200
    assert asks_json.json() == index


def test_root_sends_a_browser_to_the_docs(browser: httpx.Client) -> None:
    response = browser.get("/")
    assert response.status_code == 307, response.text
    assert response.headers["location"] == "/docs"
    assert "accept" in response.headers["vary"].lower()
    assert browser.head("/").status_code == 307
    assert browser.post("/").status_code == 405


# --- /docs --------------------------------------------------------------------------------------


def test_docs_loads_only_same_origin_assets_served_here(browser: httpx.Client) -> None:
    page = browser.get("/docs")
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    links = _links(page.text)
    assert not links.scripts, "inline scripts: the page's CSP forbids them"
    scripts = [url for tag, name, url in links.urls if tag == "script" and name == "src"]
    styles = [url for tag, _, url in links.urls if tag == "link" and ".css" in url]
    assert scripts, page.text
    assert styles, page.text
    assets = 0
    for tag, attribute, url in links.urls:
        parts = urlsplit(url)
        assert not parts.scheme, f"<{tag} {attribute}={url!r}> is absolute"
        assert not parts.netloc, f"<{tag} {attribute}={url!r}> names another host"
        assert parts.path.startswith("/"), f"<{tag} {attribute}={url!r}> is not root-relative"
        answer = browser.get(url)
        assert answer.status_code == 200, (url, answer.status_code, answer.text[:300])
        assert answer.content, url
        suffix = "." + parts.path.rsplit(".", 1)[-1]
        assert answer.headers["content-type"].startswith(TYPES[suffix]), (url, answer.headers)
        if not parts.path.startswith("/docs/assets/"):
            continue  # a link to /openapi.json
        assets += 1
        assert answer.headers["x-content-type-options"] == "nosniff"
        cache = answer.headers["cache-control"]
        assert "immutable" in cache, (url, cache)
        assert int(cache.split("max-age=")[1].split(",")[0]) >= 86400 * 30, (url, cache)
        if parts.path == "/docs/assets/jidoka-docs.js":
            starter = answer.text  # the page's own script: it loads the document from here
            assert "/openapi.json" in starter
            assert "http:" not in starter
            assert "https:" not in starter
    assert assets >= 3


def test_docs_assets_are_conditional_and_compressed(browser: httpx.Client) -> None:
    links = _links(browser.get("/docs").text)
    bundle = next(url for _, _, url in links.urls if "swagger-ui-bundle.js" in url)
    plain = browser.get(bundle, headers={"Accept-Encoding": "identity"})
    assert plain.status_code == 200
    assert "content-encoding" not in plain.headers
    assert "accept-encoding" in plain.headers["vary"].lower()
    with httpx.stream("GET", str(browser.base_url.join(bundle)),
                      headers={"Accept-Encoding": "gzip"}) as zipped:  # fmt: skip
        assert zipped.headers["content-encoding"] == "gzip"
        raw = b"".join(zipped.iter_raw())
    assert gzip.decompress(raw) == plain.content
    assert len(raw) < len(plain.content) // 2
    etag = plain.headers["etag"]
    again = browser.get(bundle, headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag


@pytest.mark.parametrize(
    "path",
    [
        "/docs/assets/swagger-editor-bundle.js",  # in the package, not offered
        "/docs/assets/LICENSE",
        "/docs/assets/..%2f..%2f..%2fpyproject.toml",
        "/docs/assets/%2e%2e",
        "/docs/assets/",
        "/docs/assets/a/b",
    ],
)
def test_docs_assets_serve_only_their_own_files(anonymous: httpx.Client, path: str) -> None:
    problem_of(anonymous.get(path), "not-found", 404)


def test_docs_routes_need_no_token(server: ServerProcess) -> None:
    with http_client(server.url) as anonymous, http_client(server.url, "wrong") as wrong:
        for client in (anonymous, wrong):
            assert client.get("/docs").status_code == 200
            assert client.get("/openapi.json").status_code == 200
            assert client.get("/").status_code == 200


# --- CORS ---------------------------------------------------------------------------------------


@pytest.fixture
def cors_server(make_server: Any) -> ServerProcess:
    server: ServerProcess = make_server(env={"JIDOKA_CORS_ORIGINS": ORIGIN})
    return server


def _preflight(url: str, method: str, headers: str, origin: str = ORIGIN) -> httpx.Response:
    return httpx.options(
        url,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers,
        },
    )


def _listed(value: str) -> set[str]:
    return {item.strip().lower() for item in value.split(",") if item.strip()}


def test_preflight_of_an_event_stream_allows_what_sse_libraries_send(
    cors_server: ServerProcess,
) -> None:
    url = cors_server.url + "/v1/sessions/some-session/events"
    asked = "cache-control, last-event-id, idempotency-key"
    response = _preflight(url, "GET", asked)
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert _listed(response.headers["access-control-allow-headers"]) >= _listed(asked)
    assert "get" in _listed(response.headers["access-control-allow-methods"])
    everything = "accept, authorization, content-type, x-request-id, cache-control, " + asked
    response = _preflight(cors_server.url + "/v1/sessions", "POST", everything)
    assert response.status_code == 200, response.text


def test_preflight_still_refuses_other_origins_and_unknown_headers(
    cors_server: ServerProcess,
) -> None:
    url = cors_server.url + "/v1/sessions"
    assert _preflight(url, "POST", "content-type", origin="http://evil.test").status_code == 400
    assert _preflight(url, "POST", "x-made-up").status_code == 400


def test_cross_origin_responses_expose_the_useful_headers(cors_server: ServerProcess) -> None:
    headers = {**bearer(ALICE_TOKEN), "Origin": ORIGIN}
    response = httpx.post(cors_server.url + "/v1/sessions", json={}, headers=headers)
    assert response.status_code == 201, response.text
    assert response.headers["access-control-allow-origin"] == ORIGIN
    exposed = _listed(response.headers["access-control-expose-headers"])
    assert exposed >= {"x-request-id", "retry-after", "location"}
