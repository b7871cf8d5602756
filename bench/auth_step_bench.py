"""Per-request cost of the authentication step, in microseconds per call.

Run: ``python bench/auth_step_bench.py`` (from the repository root).

Measures what every proxied request pays before the policy decision: reading our
cookies out of the ``Cookie`` header, turning them into a Session (decode cache hit and
miss) and producing the identity assertion (cached and freshly signed).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.assertion import AssertionSigner, generate_signing_key, load_signing_key
from proxy.session import Session, SessionCodec, parse_cookie_header

COOKIE = "_clawgate"
HOST = "claw.example.com"
NOW = int(time.time())


def per_call_us(fn: Callable[[], object], min_seconds: float = 0.3) -> float:
    """Best of 5 rounds, each long enough to swamp timer resolution."""
    n = 1
    while True:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds / 5:
            break
        n *= 2
    best = elapsed
    for _ in range(4):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / n * 1e6


def make_session(claim_bytes: int = 0) -> Session:
    return Session.create(
        sub="248289761001",
        email="ada@example.com",
        email_verified=True,
        groups=["admins", "dev", "ops"],
        claims={"name": "Ada Lovelace", **({"pad": "x" * claim_bytes} if claim_bytes else {})},
        host=HOST,
        now=NOW,
        lifetime=8 * 3600,
        refresh_at=NOW + 3600,
        refresh_token="r" * 300,  # providers' refresh tokens are often a few hundred bytes
        id_token="i" * 900,
    )


def main() -> None:
    codec = SessionCodec([os.urandom(32), os.urandom(32)], COOKIE)
    signer = AssertionSigner(load_signing_key(generate_signing_key()))
    rows: list[tuple[str, float]] = []

    for label, session in (("typical", make_session()), ("chunked 6 KB", make_session(6000))):
        pairs = codec.encode(session)
        header = "; ".join(
            ["_ga=GA1.2.3456.7890", "theme=dark", *(f"{n}={v}" for n, v in pairs), "lang=en"]
        )
        size = f"{len(pairs)} cookie(s), {len(header)} B header"

        def parse_and_decode(h: str = header) -> object:
            return codec.decode(parse_cookie_header(h, COOKIE), host=HOST, now=NOW)

        def parse_and_decode_cold(h: str = header) -> object:
            codec.clear_cache()
            return codec.decode(parse_cookie_header(h, COOKIE), host=HOST, now=NOW)

        parse_and_decode()
        rows.append(
            (
                f"parse only ({label}; {size})",
                per_call_us(lambda h=header: parse_cookie_header(h, COOKIE)),
            )
        )
        rows.append((f"parse + decode, cache hit ({label})", per_call_us(parse_and_decode)))
        rows.append((f"parse + decode, cache miss ({label})", per_call_us(parse_and_decode_cold)))

    session = make_session()
    signer.sign(session, audience=HOST, now=NOW)
    rows.append(
        (
            "assertion sign, cached",
            per_call_us(lambda: signer.sign(session, audience=HOST, now=NOW)),
        )
    )

    uncached = AssertionSigner(load_signing_key(generate_signing_key()), cache_size=0)
    rows.append(
        (
            "assertion sign, uncached (ES256)",
            per_call_us(lambda: uncached.sign(session, audience=HOST, now=NOW)),
        )
    )

    width = max(len(name) for name, _ in rows)
    print(f"{'step'.ljust(width)}  us/call")
    print(f"{'-' * width}  -------")
    for name, us in rows:
        print(f"{name.ljust(width)}  {us:7.2f}")


if __name__ == "__main__":
    main()
