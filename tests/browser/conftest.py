"""Real-browser fixtures: Debian's ``chromium`` driven by Playwright, never a downloaded browser.

- ``chromium`` (session scope) is a :class:`BrowserThread`: one headless Chromium for the whole
  run. A test hands it a function, which runs with a fresh ``BrowserContext`` (its own cookies,
  cache and storage) that is closed afterwards: ``chromium.run(lambda context: ...)``.
- :class:`StaticSite` serves a few fixed pages from a loopback port: another origin than the
  server under test (a different port is a different origin), such as an attacker's page.

Why a thread: Playwright's sync API marks its own event loop as the running one in the thread
that uses it, also between calls, which would break every asyncio test that runs after it in
the main thread (pytest-asyncio starts a loop per test). In a thread of its own the browser is
independent of them, and sync and async tests alike can use it (an async test calls
``await asyncio.to_thread(chromium.run, work)``).

The browser resolves every made-up name under the reserved ``.test`` domain to 127.0.0.1
(``http://evil.test:PORT`` reaches a loopback server while the page's origin says
``evil.test``), and Chromium's own block on public pages reaching loopback addresses (Local
Network Access) is off: the tests are about the server's defences, which must hold in browsers
without that block too.

No Chromium (``scripts/test`` installs Debian's when it runs as root) or no Playwright: the
browser tests are skipped with the reason, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import concurrent.futures
import http.server
import os
import shutil
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from tests.e2e.conftest import _ACTIVE

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Playwright

T = TypeVar("T")

#: Every name under .test is this machine: no request of a browser test leaves it.
HOST_RULES = "MAP *.test 127.0.0.1"
LAUNCH_TIMEOUT = 60.0
#: Bound of one ``run`` (the pages' own waits are bounded by Playwright's timeouts, 30 s each).
RUN_TIMEOUT = 90.0


def chromium_args() -> list[str]:
    args = [
        f"--host-resolver-rules={HOST_RULES}",
        "--disable-features=LocalNetworkAccessChecks",
    ]
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    return args


class BrowserThread:
    """A headless Chromium that lives in one worker thread; see the module docstring."""

    def __init__(self, executable: str, args: list[str]) -> None:
        self.executable = executable
        self.args = args
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="chromium")
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None

    def start(self) -> None:
        self._worker.submit(self._launch).result(LAUNCH_TIMEOUT)

    def _launch(self) -> None:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self._browser = self._playwright.chromium.launch(
            executable_path=self.executable,
            args=self.args,
            timeout=LAUNCH_TIMEOUT * 1000,
        )

    @property
    def version(self) -> str:
        assert self._browser is not None
        return self._browser.version

    def run(self, work: Callable[[BrowserContext], T], *, timeout: float = RUN_TIMEOUT) -> T:
        """``work(context)`` in the browser's thread, with a context of its own."""

        def in_thread() -> T:
            assert self._browser is not None, "the browser is not started"
            context = self._browser.new_context()
            context.set_default_timeout(30_000)
            try:
                return work(context)
            finally:
                context.close()

        return self._worker.submit(in_thread).result(timeout)

    def close(self) -> None:
        def in_thread() -> None:
            try:
                if self._browser is not None:
                    self._browser.close()
            finally:
                if self._playwright is not None:
                    self._playwright.stop()

        try:
            self._worker.submit(in_thread).result(LAUNCH_TIMEOUT)
        finally:
            self._worker.shutdown(wait=True)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests cannot run on CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium() -> Iterator[BrowserThread]:
    executable = shutil.which("chromium")
    if executable is None:
        _unavailable(
            "Debian's chromium is not installed (scripts/test installs it when run as root: "
            "apt-get install chromium)"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    assert executable is not None
    browser = BrowserThread(executable, chromium_args())
    browser.start()
    try:
        yield browser
    finally:
        browser.close()


class StaticSite:
    """Fixed pages (path -> HTML) on ``http://127.0.0.1:<free port>`` (or another name under
    ``.test``, which the browser maps to 127.0.0.1), served from a thread until closed."""

    def __init__(self, pages: Mapping[str, str]) -> None:
        self.pages = {path: html.encode() for path, html in pages.items()}
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = site.pages.get(self.path.partition("?")[0])
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: a failing test shows what the page saw

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str = "/", *, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> StaticSite:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failing browser test shows the stderr of every ``jidoka serve`` still running."""
    report = yield
    if report.failed and call.when in ("setup", "call"):
        for process in _ACTIVE:
            report.sections.append(
                (f"jidoka serve stderr ({process.stderr_path})", process.stderr_text())
            )
    return report
