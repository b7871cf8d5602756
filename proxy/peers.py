"""What workers tell each other: sign-outs, and what they admitted under rate limits.

With ``workers: N`` a sign-out lands in one process, but the user's cookie copies and
WebSockets may be served by any of them. Each supervised worker binds a UNIX datagram
socket in the supervisor's private directory (mode 0700, so no other user can send)
and tells its siblings about every session it revokes; a sibling then refuses that
session and closes its WebSockets with 1008, as the worker that handled the sign-out did.

Rate limits are meant for the whole deployment, but SO_REUSEPORT spreads one client's
connections over the workers. So each worker reports, at most every ``REPORT_DELAY``
seconds, how many requests it admitted per limit and key, and charges its own buckets
with its siblings' reports (proxy/throttle.py): together the workers admit what one
would, give or take what a client gets through in one report's delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path

import structlog

from proxy.policy_watch import close_signed_out
from proxy.runtime import Runtime
from proxy.store import Revocation
from proxy.throttle import SCOPES, Throttle

log = structlog.get_logger("clawgate.peers")

PEERS_ENV = "_CLAWGATE_PEERS_DIR"
_MAX_MESSAGE = 65536
REPORT_DELAY = 0.02
# Reports kept per sibling while its queue is full; older ones are dropped beyond
# (its buckets are then lenient by what they held).
_MAX_QUEUED_REPORTS = 64
_SAY_DROPPED_EVERY = 10.0
# A report datagram's size at most (its keys are split over as many as it takes), and
# the longest key reported: a key is an address, a /64 or a subject, far shorter.
_REPORT_BYTES = 48 * 1024
_MAX_KEY_BYTES = 4096
# A count no honest report carries (a worker admits far fewer in REPORT_DELAY).
_MAX_COUNT = 1_000_000


class Peers:
    """This worker's mailbox and the addresses of its siblings."""

    def __init__(self, runtime: Runtime, directory: Path, index: int) -> None:
        self._runtime = runtime
        self._dir = directory
        self._path = directory / f"worker-{index}.sock"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()  # left by a previous incarnation of this worker
        self._sock.bind(str(self._path))
        self._sock.setblocking(False)
        # Close tasks in flight (the loop keeps only weak references to tasks).
        self._pending: set[asyncio.Future[int]] = set()
        self._throttle: Throttle | None = None
        self._report_due: asyncio.TimerHandle | None = None
        # Per sibling, what it could not take yet (its queue was full), in order, each
        # marked whether it is a report: reports may be dropped, sign-outs never.
        self._outbox: dict[str, deque[tuple[bool, bytes]]] = {}
        self._retry_due: asyncio.TimerHandle | None = None
        self._dropped = 0  # reports dropped since last said, and when that was
        self._dropped_said = -_SAY_DROPPED_EVERY

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self._sock.fileno(), self._receive)
        self._runtime.revoke_hooks.append(self.broadcast)

    def share_limits(self, throttle: Throttle) -> None:
        """Report what ``throttle`` admits to the siblings, and charge it with theirs."""
        self._throttle = throttle
        throttle.share(self._report_soon)

    def close(self) -> None:
        for timer in (self._report_due, self._retry_due):
            if timer is not None:
                timer.cancel()
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()

    def broadcast(self, revocation: Revocation) -> None:
        r = revocation
        message = {"revocation": [r.kind, r.subject, r.not_before, r.until]}
        self._send([json.dumps(message).encode()], reports=False)

    def _send(self, messages: list[bytes], *, reports: bool) -> None:
        siblings = {str(p) for p in self._dir.glob("worker-*.sock") if p != self._path}
        for gone in self._outbox.keys() - siblings:
            del self._outbox[gone]
        waiting = False
        for peer in siblings:
            outbox = self._outbox.setdefault(peer, deque())
            outbox.extend((reports, message) for message in messages)
            if reports and (dropped := _trim_reports(outbox)):
                self._dropped += dropped
            while outbox:
                try:
                    self._sock.sendto(outbox[0][1], peer)
                except (BlockingIOError, InterruptedError):
                    waiting = True  # its queue is full: again in a moment
                    break
                except OSError:
                    outbox.clear()  # restarting: it starts afresh and misses nothing it serves
                    break
                outbox.popleft()
        if waiting and self._retry_due is None:
            self._retry_due = asyncio.get_running_loop().call_later(REPORT_DELAY, self._retry)
        if self._dropped and time.monotonic() - self._dropped_said >= _SAY_DROPPED_EVERY:
            # A sibling that cannot keep up lets clients through more than the limits say.
            log.warning("peer_reports_dropped", reports=self._dropped)
            self._dropped, self._dropped_said = 0, time.monotonic()

    def _retry(self) -> None:
        self._retry_due = None
        self._send([], reports=True)

    def _report_soon(self) -> None:
        if self._report_due is None:
            self._report_due = asyncio.get_running_loop().call_later(REPORT_DELAY, self._report)

    def _report(self) -> None:
        self._report_due = None
        if self._throttle is None:
            return
        messages = [
            message
            for scope, counts in self._throttle.take_admitted().items()
            for message in _report_messages(scope, counts)
        ]
        if messages:
            self._send(messages, reports=True)

    def _receive(self) -> None:
        while True:
            try:
                data = self._sock.recv(_MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            try:
                doc = json.loads(data)
                if "admitted" in doc:
                    self._charge(doc["admitted"])
                    continue
                revocation = _revocation(doc["revocation"])
            except (ValueError, KeyError, TypeError, AttributeError):
                log.warning("peer_message_ignored")
                continue
            self._runtime.revoke(revocation, broadcast=False)
            task = asyncio.ensure_future(close_signed_out(self._runtime))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    def _charge(self, admitted: dict[str, dict[str, int]]) -> None:
        """Charge this worker's limits with a sibling's report; checked whole first, so
        a malformed report changes nothing."""
        checked: list[tuple[str, dict[str, int]]] = []
        for scope, counts in admitted.items():
            if scope not in SCOPES or not isinstance(counts, dict):
                raise ValueError("unknown scope")
            for key, n in counts.items():
                if not isinstance(key, str) or type(n) is not int or not 0 < n <= _MAX_COUNT:
                    raise ValueError("bad count")
            checked.append((scope, counts))
        if self._throttle is not None:
            # This worker may not have served a request yet: its limits are made from the
            # configuration in force on first use, here as on the request path.
            self._throttle.configure(self._runtime.snapshot.settings.rate_limits)
            now = time.monotonic()
            for scope, counts in checked:
                self._throttle.charge(scope, counts, now)


def _revocation(fields: object) -> Revocation:
    """A sign-out from a sibling's message, checked whole (ValueError otherwise)."""
    if not isinstance(fields, list) or len(fields) != 4:
        raise ValueError("bad revocation")
    kind, subject, not_before, until = fields
    if kind not in ("session", "user", "all", "provider_session") or not isinstance(subject, str):
        raise ValueError("bad revocation")
    if type(not_before) is not int or type(until) is not int:
        raise ValueError("bad revocation")
    return Revocation(kind, subject, not_before, until)


def _report_messages(scope: str, counts: Mapping[str, int]) -> list[bytes]:
    """``{"admitted": {scope: {key: n, ...}}}`` datagrams of at most _REPORT_BYTES."""
    head = b'{"admitted":{' + json.dumps(scope).encode() + b":{"
    messages: list[bytes] = []
    items: list[bytes] = []
    size = len(head)
    for key, n in counts.items():
        item = json.dumps(key).encode() + b":%d" % n
        if len(item) > _MAX_KEY_BYTES:
            continue
        if items and size + len(item) + 4 > _REPORT_BYTES:
            messages.append(head + b",".join(items) + b"}}}")
            items, size = [], len(head)
        items.append(item)
        size += len(item) + 1
    if items:
        messages.append(head + b",".join(items) + b"}}}")
    return messages


def _trim_reports(outbox: deque[tuple[bool, bytes]]) -> int:
    """Drop the oldest reports beyond _MAX_QUEUED_REPORTS, keeping every sign-out;
    returns how many were dropped."""
    excess = dropped = sum(report for report, _ in outbox) - _MAX_QUEUED_REPORTS
    if excess <= 0:
        return 0
    kept: list[tuple[bool, bytes]] = []
    for entry in outbox:
        if entry[0] and excess > 0:
            excess -= 1
            continue
        kept.append(entry)
    outbox.clear()
    outbox.extend(kept)
    return dropped
