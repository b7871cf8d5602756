"""Verifier: one bcrypt run per check, known user or not, so the time of a refusal does
not tell which names exist."""

from __future__ import annotations

import statistics
import time

from proxy.localusers import LocalUser, Verifier, hash_password


def _time(verifier: Verifier, name: str, password: str) -> float:
    start = time.perf_counter()
    assert verifier.check(name, password) is None
    return time.perf_counter() - start


def test_unknown_user_costs_a_bcrypt_run_like_a_wrong_password() -> None:
    # Cost 4 (files refuse it) keeps this fast; only the ratio of the two is compared.
    users = {"alice": LocalUser("alice", hash_password("right", cost=4))}
    verifier = Verifier(users)
    assert verifier.check("alice", "right") == users["alice"]
    unknown: list[float] = []
    wrong: list[float] = []
    for _ in range(21):  # interleaved, so a slower moment of the machine hits both
        unknown.append(_time(verifier, "mallory", "right"))
        wrong.append(_time(verifier, "alice", "wrong"))
    slow, fast = sorted([statistics.median(unknown), statistics.median(wrong)], reverse=True)
    assert slow / fast < 1.5, (statistics.median(unknown), statistics.median(wrong))


def test_dummy_hash_has_the_commonest_cost() -> None:
    users = {
        "a": LocalUser("a", hash_password("x", cost=5)),
        "b": LocalUser("b", hash_password("x", cost=4)),
        "c": LocalUser("c", hash_password("x", cost=5)),
    }
    assert Verifier(users)._dummy[4:6] == b"05"
    assert Verifier({})._dummy[4:6] == b"12"


def test_names_are_exact_and_odd_passwords_are_refused() -> None:
    users = {"alice": LocalUser("alice", hash_password("secret", cost=4))}
    verifier = Verifier(users)
    assert verifier.check("alice", "secret") is not None
    assert verifier.check("Alice", "secret") is None  # Apache compares names exactly
    assert verifier.check("alice ", "secret") is None
    assert verifier.check("alice", "secret\0") is None
    assert verifier.check("alice", "secret\ud800") is None  # not encodable as UTF-8
    assert verifier.check("alice", "") is None
    assert verifier.check("alice", "secret" * 20) is None


def test_corrupt_hash_is_a_refusal_not_an_error() -> None:
    verifier = Verifier({"alice": LocalUser("alice", b"$2y$04$" + b"!" * 53)})
    assert verifier.check("alice", "anything") is None
