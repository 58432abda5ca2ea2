"""The webhook destination allow-list (:mod:`jidoka.runs.allow`): table cases, then properties.

The property that matters: whatever a client writes, a URL the list accepts is one that httpx
(the deliverer's client) connects to an allowed scheme, host and port for, under an allowed path.
Hypothesis builds hostile URLs around an allowed host (userinfo, fragments, backslashes, escapes,
dot segments, look-alike suffixes) and checks that with httpx's own parser.
"""

from __future__ import annotations

from urllib.parse import unquote

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jidoka.errors import InvalidArgument, InvalidConfig
from jidoka.runs.allow import MAX_URL_LENGTH, check_webhook, parse_allow, parse_allow_entry

ALLOW = parse_allow(
    (
        "https://hooks.example.com",
        "http://127.0.0.1:8123/hooks/",
        "https://bücher.example/in",
        "http://[::1]:9000/v1/x",
    )
)


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com",
        "https://hooks.example.com/",
        "https://HOOKS.Example.COM/a/b?c=d",
        "https://hooks.example.com:443/a",
        "http://127.0.0.1:8123/hooks",
        "http://127.0.0.1:8123/hooks/",
        "http://127.0.0.1:8123/hooks/run/1?x=1",
        "http://127.0.0.1:8123/%68ooks/a",
        "https://xn--bcher-kva.example/in/a",
        "https://bücher.example/in",
        "http://[::1]:9000/v1/x/y",
    ],
)
def test_allowed(url: str) -> None:
    assert check_webhook(url, ALLOW) == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://hooks.example.com.evil.com/", "not allowed"),
        ("https://evilhooks.example.com/", "not allowed"),
        ("https://hooks.example.com:8443/", "not allowed"),
        ("http://hooks.example.com/", "not allowed"),
        ("http://127.0.0.1:8123/hooksx", "not allowed"),
        ("http://127.0.0.1:8123/", "not allowed"),
        ("http://127.0.0.1/hooks/", "not allowed"),
        ("http://127.0.0.2:8123/hooks/", "not allowed"),
        ("http://localhost:8123/hooks/", "not allowed"),
        ("http://[::1]:9000/v1/xy", "not allowed"),
        ("https://hooks.example.com@evil.com/", "userinfo"),
        ("https://user:pw@hooks.example.com/", "userinfo"),
        ("https://evil.com#@hooks.example.com/", "fragment"),
        ("https://hooks.example.com/#x", "fragment"),
        ("https://evil.com\\@hooks.example.com/", "backslash"),
        ("https://hooks.example.com /", "whitespace"),
        ("ftp://hooks.example.com/", "only http and https"),
        ("javascript:alert(1)", "only http and https"),
        ("//hooks.example.com/", "only http and https"),
        ("https:///path", "no host"),
        ("https://hooks.example.com:99999/", "Port"),
        ("https://hooks%2eexample.com/", "host has characters"),
        ("http://127.0.0.1:8123/hooks/../admin", "'.' or '..'"),
        ("http://127.0.0.1:8123/hooks/%2e%2e/admin", "'.' or '..'"),
        ("http://127.0.0.1:8123/hooks%2f..%2fadmin", "escaped slash"),
        ("https://hooks.example.com/" + "a" * MAX_URL_LENGTH, "longer than"),
    ],
)
def test_refused(url: str, why: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_webhook(url, ALLOW)
    assert caught.value.argument == "webhook"
    assert why in str(caught.value)
    assert repr(url)[:50] in str(caught.value)


def test_an_empty_list_refuses_everything() -> None:
    with pytest.raises(InvalidArgument, match="allows no webhook destinations"):
        check_webhook("https://hooks.example.com/", ())


def test_not_a_string() -> None:
    with pytest.raises(InvalidArgument, match="not a string"):
        check_webhook(42, ALLOW)


@pytest.mark.parametrize(
    "entry",
    ["hooks.example.com", "ftp://x", "https://u@x", "https://x/?a=1", "https://x/#f", "https://"],
)
def test_bad_entries_name_the_setting(entry: str) -> None:
    with pytest.raises(InvalidConfig) as caught:
        parse_allow_entry(entry)
    assert caught.value.field == "webhook_allow"
    assert repr(entry) in str(caught.value)


def test_entry_forms() -> None:
    assert parse_allow_entry("https://H.example") == parse_allow_entry("https://h.example:443/")
    assert parse_allow_entry("http://h/a/").segments == ("a",)


# --- properties -----------------------------------------------------------------------------

#: Around the allowed host: nothing half the time, else characters parsers disagree about.
_JUNK = st.one_of(st.just(""), st.text(alphabet="@#\\/.:%?&=[]-_ aZ09\t\x00é", max_size=8))
#: Path segments: the allowed prefixes' own half the time, else escapes, dots and delimiters.
_SEGMENT = st.one_of(
    st.sampled_from(["hooks", "v1", "x", "a"]),
    st.text(alphabet="abz09-._~%2eEfF/\\?#@", max_size=6),
)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=120))
def test_any_text_is_accepted_or_refused_cleanly(text: str) -> None:
    try:
        assert check_webhook(text, ALLOW) == text
    except InvalidArgument as exc:
        assert exc.argument == "webhook"


@settings(max_examples=1500, deadline=None)
@given(
    scheme=st.sampled_from(["http", "https", "HTTPS", "ftp"]),
    before=_JUNK,
    host=st.sampled_from(["hooks.example.com", "HOOKS.example.com", "127.0.0.1", "[::1]"]),
    after=_JUNK,
    port=st.sampled_from(["", ":443", ":80", ":8123", ":9000", ":", ":0443"]),
    segments=st.lists(_SEGMENT, max_size=4),
    tail=st.sampled_from(["", "?q=1", "#f", "?a#b"]),
)
def test_an_accepted_url_goes_where_the_list_says(
    scheme: str,
    before: str,
    host: str,
    after: str,
    port: str,
    segments: list[str],
    tail: str,
) -> None:
    """httpx's reading of every accepted URL is an allowed origin and path."""
    url = f"{scheme}://{before}{host}{after}{port}/{'/'.join(segments)}{tail}"
    try:
        check_webhook(url, ALLOW)
    except InvalidArgument:
        return
    parsed = httpx.URL(url)
    origin = (parsed.scheme, parsed.host, parsed.port or {"http": 80, "https": 443}[parsed.scheme])
    allowed = {
        ("https", "hooks.example.com", 443): "/",
        ("http", "127.0.0.1", 8123): "/hooks",
        ("http", "::1", 9000): "/v1/x",
    }
    assert origin in allowed, (url, origin)
    path = parsed.path  # httpx normalises dot segments: none may be left to normalise
    prefix = allowed[origin]
    decoded = unquote(path)
    assert decoded == prefix or decoded.startswith(prefix.rstrip("/") + "/"), (url, path)


@settings(max_examples=300, deadline=None)
@given(
    origin=st.sampled_from(
        [
            "https://hooks.example.com",
            "https://Hooks.Example.com:443",
            "http://127.0.0.1:8123/hooks",
        ]
    ),
    segments=st.lists(st.text(alphabet="abcXYZ019-_~", min_size=1, max_size=8), max_size=5),
    query=st.sampled_from(["", "?a=1", "?x=y&z"]),
)
def test_plain_urls_under_an_entry_are_accepted(
    origin: str, segments: list[str], query: str
) -> None:
    url = "/".join([origin, *segments]) + query
    assert check_webhook(url, ALLOW) == url
