"""proxy/tls.py's DirectSSLObject: the server context's TLS objects call the C methods
directly and behave as ssl.SSLObject does (handshake, data both ways, reads into a
buffer, want-read, close_notify)."""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path

import pytest

from proxy.tls import DirectSSLObject, generate_self_signed, new_server_context


def _pump(a: ssl.MemoryBIO, b: ssl.MemoryBIO) -> None:
    data = a.read()
    if data:
        b.write(data)


def test_a_server_object_talks_tls_like_the_standard_one(tmp_path: Path) -> None:
    made = generate_self_signed(["localhost"])
    (tmp_path / "c.pem").write_bytes(made.cert_pem)
    (tmp_path / "k.pem").write_bytes(made.key_pem)
    server_ctx = new_server_context()
    server_ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    client_ctx = ssl.create_default_context()
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE

    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    assert isinstance(server, DirectSSLObject)
    assert type(server.read).__name__ == "builtin_function_or_method"
    assert type(client.read).__name__ == "method"  # the client side is not touched

    for _ in range(10):  # handshake
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        _pump(c_out, s_in)
        _pump(s_out, c_in)
    assert server.version() in ("TLSv1.2", "TLSv1.3")

    with pytest.raises(ssl.SSLWantReadError):
        server.read(1024)  # nothing sent yet
    client.write(b"GET / HTTP/1.1\r\n\r\n")
    _pump(c_out, s_in)
    assert server.pending() == 0  # decrypted on read, not before
    buffer = bytearray(64)
    count = server.read(64, buffer)
    assert bytes(buffer[:count]) == b"GET / HTTP/1.1\r\n\r\n"
    assert server.write(b"x" * 5000) == 5000
    _pump(s_out, c_in)
    received = b""
    while len(received) < 5000:
        received += client.read(4096)
    assert received == b"x" * 5000

    with contextlib.suppress(ssl.SSLWantReadError):
        client.unwrap()  # close_notify
    _pump(c_out, s_in)
    assert server.read(1024) == b""  # close_notify reads as end of stream
