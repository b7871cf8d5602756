"""proxy/framing.py, bytes in and bytes out: the one writer of upstream request heads
and the one reader of ``Connection``."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from proxy.framing import (
    CHUNKED,
    NO_BODY,
    Framing,
    FramingError,
    connection_options,
    finish_head,
    request_head,
    request_head_prefix,
)


@pytest.mark.parametrize(
    "value",
    [
        "content-length",
        "Content-Length",
        " keep-alive ,CONTENT-LENGTH",
        "transfer-encoding",
        "Transfer_Encoding",
        "close, content_length",
    ],
)
def test_naming_a_framing_header_is_refused(value: str) -> None:
    with pytest.raises(FramingError) as caught:
        connection_options([value])
    assert caught.value.reason == "connection_names_framing_header"


def test_connection_options() -> None:
    opts = connection_options(["keep-alive, Upgrade", "close , X-Hop,, x_other"])
    assert (opts.close, opts.keep_alive, opts.upgrade) == (True, True, True)
    assert opts.nominated == {"x-hop", "x-other"}
    # Substrings are not options: "closed" does not close, "upgrades" does not upgrade.
    opts = connection_options(["closed, upgrades"])
    assert (opts.close, opts.upgrade) == (False, False)
    # Host and the handshake headers can be named, and stay.
    opts = connection_options(["host, sec-websocket-key, upgrade, connection"])
    assert opts.nominated == frozenset()


def test_the_framing_line_comes_from_the_value_never_from_the_headers() -> None:
    headers = CIMultiDict(
        [
            ("Host", "up"),
            ("Content-Length", "999"),
            ("transfer-encoding", "chunked"),
            ("X-Request-Id", "client-chosen"),
            ("X-A", "1"),
        ]
    )
    assert request_head("POST", "/p", headers, Framing(5), "r1") == (
        b"POST /p HTTP/1.1\r\nHost: up\r\nX-A: 1\r\nContent-Length: 5\r\n"
        b"X-Request-Id: r1\r\n\r\n"
    )
    assert request_head("POST", "/p", headers, CHUNKED, None) == (
        b"POST /p HTTP/1.1\r\nHost: up\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    assert request_head("GET", "/p", headers, NO_BODY, "r2") == (
        b"GET /p HTTP/1.1\r\nHost: up\r\nX-A: 1\r\nX-Request-Id: r2\r\n\r\n"
    )


def test_a_template_prefix_finishes_to_the_same_head() -> None:
    headers = [("Host", "up"), ("X-A", "1")]
    prefix = request_head_prefix("GET", "/", headers, NO_BODY)
    assert finish_head(prefix, "abc") == request_head("GET", "/", headers, NO_BODY, "abc")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-A", "v\r\nX-Injected: 1"),
        ("X-A", "v\nX"),
        ("X-A", "v\rX"),
        ("X-B\r\nX-C", "1"),
        ("X-A", "v\x00"),
        ("X A", "1"),
        ("X-A:", "1"),
        ("", "1"),
        ("X-A: Y", "1"),
    ],
)
def test_a_header_that_would_split_the_head_is_refused(name: str, value: str) -> None:
    with pytest.raises(FramingError):
        request_head("GET", "/", [(name, value)], NO_BODY, None)
