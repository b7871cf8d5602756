"""Checking a local user's password, in the same time whether or not the user exists.

Answering "no such user" faster than "wrong password" would let anyone list the
accounts by timing the sign-in form, and then spend their guesses on real ones. So an
unknown name is checked too, against a hash of an unguessable password made at the
cost most of the file's users have: for them, the two answers cost the same bcrypt run.
"""

from __future__ import annotations

import functools
import secrets
from collections import Counter
from collections.abc import Mapping

import bcrypt

from proxy.localusers._file import DEFAULT_COST, MAX_PASSWORD_BYTES, LocalUser, bcrypt_form

__all__ = ["Verifier"]


@functools.cache
def _dummy_hash(cost: int) -> bytes:
    # One per cost and process: a file reload does not pay for it again.
    return bcrypt.hashpw(secrets.token_bytes(24), bcrypt.gensalt(cost))


def _cost(password_hash: bytes) -> int:
    return int(password_hash[4:6])


class Verifier:
    """The users of one load of the file. ``check`` blocks for one bcrypt run (about
    0.25 s at cost 12): call it from a worker thread, not the event loop."""

    def __init__(self, users: Mapping[str, LocalUser]) -> None:
        self._users = dict(users)
        costs = Counter(_cost(user.password_hash) for user in self._users.values())
        # The commonest cost (the higher one on a tie): unknown names look like most users.
        cost = max(costs, key=lambda c: (costs[c], c)) if costs else DEFAULT_COST
        self._dummy = _dummy_hash(cost)

    def check(self, name: str, password: str) -> LocalUser | None:
        """The user when ``password`` is theirs, else None (unknown user or wrong
        password, told apart neither by the answer nor by its time)."""
        user = self._users.get(name)
        stored = self._dummy if user is None else user.password_hash
        # As Apache does: bcrypt reads 72 bytes, so a longer password set with htpasswd
        # was hashed from its first 72. surrogatepass: any str encodes, none matches.
        secret = password.encode("utf-8", "surrogatepass")[:MAX_PASSWORD_BYTES]
        try:
            matches = bcrypt.checkpw(secret, bcrypt_form(stored))
        except ValueError:  # a hash load_htpasswd would not have let through
            matches = False
        return user if matches and user is not None else None
