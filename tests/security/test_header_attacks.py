"""Header and framing attacks: spoofed attribution and identity headers, Host games,
absolute-form targets, CR/LF injection and request smuggling.

Framing attacks are sent as raw bytes over TLS, since no well-behaved client library
can produce them. The invariant is always the same: the upstream sees nothing it should
not, and clawgate answers each attack with a deliberate 4xx instead of a crash.
"""

from __future__ import annotations

from pathlib import Path

from tests.security.helpers import bare_client, gate_for, raw_exchange, signed_in_browser, status_of
from tests.support.idp import BOB, TestIdP
from tests.support.upstream import Upstream

PUBLIC = {"route": {"allow_public_unauthenticated_access": True, "policy": None}}


async def test_spoofed_attribution_and_identity_headers(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    async with gate_for(upstream, tmp_path, idp) as gate, signed_in_browser(gate, BOB) as b:
        forged = [
            ("X-Forwarded-For", "10.9.9.9"),
            ("x-forwarded-for", "10.8.8.8"),
            ("X_Forwarded_For", "10.7.7.7"),
            ("X-Forwarded-Host", "evil.example"),
            ("X-Forwarded-Proto", "http"),
            ("X-Forwarded-Port", "80"),
            ("X-Forwarded-Prefix", "/admin"),
            ("Forwarded", "for=10.9.9.9;host=evil.example"),
            ("X-Real-IP", "10.9.9.9"),
            ("X_Real_IP", "10.9.9.9"),
            ("True-Client-IP", "1.1.1.1"),
            ("CF-Connecting-IP", "1.1.1.1"),
            ("X-Client-IP", "1.1.1.1"),
            ("X-Pomerium-Jwt-Assertion", "forged"),
            ("X-POMERIUM-JWT-ASSERTION", "forged2"),
            ("X_Pomerium_Jwt_Assertion", "forged3"),
            ("X-Pomerium-Claim-Email", "alice@example.com"),
            ("x_pomerium_claim_email", "alice@example.com"),
            ("X-Clawgate-Groups", "admins"),
            ("X_Clawgate_Groups", "admins"),
            ("Connection", "X-Request-Id"),
        ]
        async with b.get(f"{gate.url}/echo", headers=forged) as r:
            assert r.status == 200
            seen = await r.json()
        pairs = [(k.lower(), v) for k, v in seen["header_list"]]
        names = [k for k, _ in pairs]
        values = dict(pairs)
        assert values["x-forwarded-for"] == "127.0.0.1"
        assert values["x-forwarded-proto"] == "https"
        assert values["x-forwarded-host"] == f"127.0.0.1:{gate.port}"
        assert values["x-pomerium-claim-email"] == BOB.email
        assert values["x-clawgate-groups"] == "staff"
        assert values["x-pomerium-jwt-assertion"].count(".") == 2
        for name in (
            "x-forwarded-for",
            "x-pomerium-claim-email",
            "x-pomerium-jwt-assertion",
            "x-clawgate-groups",
            "x-forwarded-host",
            "x-forwarded-proto",
        ):
            assert names.count(name) == 1, name
        for name in (
            "forwarded",
            "x-real-ip",
            "true-client-ip",
            "cf-connecting-ip",
            "x-client-ip",
            "x-forwarded-port",
            "x-forwarded-prefix",
        ):
            assert name not in values, name
        assert not [n for n in names if "_" in n], names
        assert "forged" not in str(pairs) and "10.9.9.9" not in str(pairs)


async def test_trusted_hops_pick_the_client_and_the_rest_is_ignored(
    upstream: Upstream, tmp_path: Path
) -> None:
    async with (
        gate_for(upstream, tmp_path, None, xff_num_trusted_hops=1, **PUBLIC) as gate,
        bare_client() as client,
    ):
        async with client.get(
            f"{gate.url}/a", headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.7"}
        ) as r:
            seen = await r.json()
        assert seen["headers"]["X-Forwarded-For"] == "203.0.113.7"
        async with client.get(f"{gate.url}/a", headers={"X-Forwarded-For": "not-an-ip"}) as r:
            seen = await r.json()
        assert seen["headers"]["X-Forwarded-For"] == "127.0.0.1"


HOSTILE_HOSTS = [
    "evil.example",
    "evil.example:{PORT}",
    "127.0.0.1:1",
    "127.0.0.2:{PORT}",
    "127.0.0.1:{PORT}.evil.example",
    "127.0.0.1.evil.example:{PORT}",
    "localhost:{PORT}",
    "[::1]:{PORT}",
    "127.0.0.1:{PORT}@evil.example",
]


async def test_host_without_a_route_is_404_never_the_first_route(
    upstream: Upstream, tmp_path: Path
) -> None:
    async with gate_for(upstream, tmp_path, None, **PUBLIC) as gate:
        for host in HOSTILE_HOSTS:
            h = host.replace("{PORT}", str(gate.port))
            for path in (
                "/x",
                "/.clawgate/sign_in",
                "/.well-known/clawgate/jwks.json",
                "/.clawgate/",
            ):
                reply = await raw_exchange(
                    gate.port,
                    f"GET {path} HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n".encode(),
                )
                assert status_of(reply) in (400, 404), (h, path, reply[:300])
        assert upstream.seen.requests == []


FRAMING_ATTACKS = {
    "absolute-form to another host": "GET http://evil.example/x HTTP/1.1\r\n{HOST}Connection: close\r\n\r\n",
    "absolute-form to our host": "GET https://127.0.0.1:{PORT}/x HTTP/1.1\r\n{HOST}Connection: close\r\n\r\n",
    "authority-form": "CONNECT evil.example:443 HTTP/1.1\r\n{HOST}\r\n",
    "asterisk-form": "OPTIONS * HTTP/1.1\r\n{HOST}Connection: close\r\n\r\n",
    "duplicate Host": "GET /x HTTP/1.1\r\n{HOST}Host: evil.example\r\n\r\n",
    "no Host": "GET /x HTTP/1.1\r\nConnection: close\r\n\r\n",
    "bare LF line ends": "GET /x HTTP/1.1\n{HOST}X-A: b\n\n",
    "bare CR in a value": "GET /x HTTP/1.1\r\n{HOST}X-A: b\rX-Pomerium-Claim-Email: a\r\n\r\n",
    "NUL in a value": "GET /x HTTP/1.1\r\n{HOST}X-A: b\x00c\r\n\r\n",
    "obsolete line folding": "GET /x HTTP/1.1\r\n{HOST}X-A: b\r\n X-Injected: c\r\n\r\n",
    "space before colon": "GET /x HTTP/1.1\r\n{HOST}X-Forwarded-For : 1.2.3.4\r\n\r\n",
    "CR LF in the target": "GET /x\r\nX-Injected: 1 HTTP/1.1\r\n{HOST}\r\n",
    "CL and TE together": "POST /x HTTP/1.1\r\n{HOST}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
    "0\r\n\r\nGET /smuggled HTTP/1.1\r\n{HOST}\r\n",
    "TE and CL together": "POST /x HTTP/1.1\r\n{HOST}Transfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n"
    "0\r\n\r\nGET /smuggled HTTP/1.1\r\n{HOST}\r\n",
    "two different Content-Lengths": "POST /x HTTP/1.1\r\n{HOST}Content-Length: 0\r\nContent-Length: 44\r\n\r\n"
    "GET /smuggled HTTP/1.1\r\n{HOST}\r\n",
    "Content-Length list": "POST /x HTTP/1.1\r\n{HOST}Content-Length: 5, 5\r\n\r\nhello",
    "signed Content-Length": "POST /x HTTP/1.1\r\n{HOST}Content-Length: +5\r\n\r\nhello",
    "TE xchunked": "POST /x HTTP/1.1\r\n{HOST}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "TE chunked, identity": "POST /x HTTP/1.1\r\n{HOST}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "TE twice": "POST /x HTTP/1.1\r\n{HOST}Transfer-Encoding: chunked\r\n"
    "Transfer-Encoding: identity\r\n\r\n0\r\n\r\n",
    "HTTP/1.0 with TE": "POST /x HTTP/1.0\r\n{HOST}Transfer-Encoding: chunked\r\n"
    "Connection: keep-alive\r\n\r\n2c\r\nGET /smuggled HTTP/1.1\r\n"
    "{HOST}\r\n\r\n0\r\n\r\n",
    "chunk size overflow": "POST /x HTTP/1.1\r\n{HOST}Transfer-Encoding: chunked\r\n\r\n"
    "fffffffffffffffff1\r\nab\r\n0\r\n\r\n",
    "chunk extension with CR LF": "POST /x HTTP/1.1\r\n{HOST}Transfer-Encoding: chunked\r\n\r\n"
    '2;x="a\r\nb"\r\nab\r\n0\r\n\r\n',
    "bad chunk terminator": "POST /x HTTP/1.1\r\n{HOST}Transfer-Encoding: chunked\r\n\r\n"
    "2\r\nabXX0\r\n\r\nGET /smuggled HTTP/1.1\r\n{HOST}\r\n",
    "HTTP/0.9 request": "GET /x\r\n\r\n",
    "HTTP/2 preface": "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "unknown version": "GET /x HTTP/1.7\r\n{HOST}\r\n",
}


async def test_framing_attacks_never_reach_the_upstream(upstream: Upstream, tmp_path: Path) -> None:
    async with gate_for(upstream, tmp_path, None, **PUBLIC) as gate:
        for name, template in FRAMING_ATTACKS.items():
            template = template.replace("{PORT}", str(gate.port))
            data = template.replace("{HOST}", f"Host: 127.0.0.1:{gate.port}\r\n")
            reply = await raw_exchange(gate.port, data.encode("latin-1"), timeout=1)
            status = status_of(reply)
            assert status is None or 400 <= status < 500 or status == 505, (name, reply[:300])
            assert b"Traceback" not in reply and b"smuggled" not in reply, name
            assert upstream.seen.requests == [], (name, upstream.seen.requests)
        async with bare_client() as client, client.get(f"{gate.url}/still-fine") as r:
            assert r.status == 200


async def test_bodies_are_reframed_so_nothing_rides_along(
    upstream: Upstream, tmp_path: Path
) -> None:
    """What a client puts inside a body stays the body of exactly one upstream request."""
    async with gate_for(upstream, tmp_path, None, **PUBLIC) as gate:
        inner = f"GET /smuggled HTTP/1.1\r\nHost: 127.0.0.1:{gate.port}\r\n\r\n".encode()
        chunked = (
            (
                f"POST /x HTTP/1.1\r\nHost: 127.0.0.1:{gate.port}\r\n"
                "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            ).encode()
            + f"{len(inner):x}\r\n".encode()
            + inner
            + b"\r\n0\r\n\r\n"
        )
        reply = await raw_exchange(gate.port, chunked)
        assert status_of(reply) == 200
        http10 = (
            (
                f"POST /y HTTP/1.0\r\nHost: 127.0.0.1:{gate.port}\r\n"
                "Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
            ).encode()
            + b"0\r\n\r\n"
            + inner
        )
        await raw_exchange(gate.port, http10, timeout=2)
        paths = [r["path"] for r in upstream.seen.requests]
        assert "/smuggled" not in paths, paths
        first = upstream.seen.requests[0]
        assert first["path"] == "/x" and first["body_len"] == len(inner)


async def test_response_header_injection_through_claims_is_impossible(
    upstream: Upstream, tmp_path: Path
) -> None:
    async with gate_for(upstream, tmp_path, None, **PUBLIC) as gate, bare_client() as client:
        async with client.get(f"{gate.url}/x%0d%0aSet-Cookie:%20evil=1") as r:
            assert "evil" not in r.headers.get("Set-Cookie", "")
        async with client.get(
            f"{gate.url}/.clawgate/sign_in",
            params={"redirect_uri": "/a\r\nSet-Cookie: evil=1"},
            allow_redirects=False,
        ) as r:
            assert "evil" not in str(r.headers)
