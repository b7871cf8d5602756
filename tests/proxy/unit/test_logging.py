"""proxy/logging.py: the JSON lines keep structlog's shape (keys, order, bound context,
exceptions) on the inlined path too."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import select
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from proxy import logging as clawlog


@pytest.fixture
def captured() -> Iterator[io.BytesIO]:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8")
    real = sys.stderr
    sys.stderr = stream
    try:
        clawlog.configure("info", "json")
    finally:
        sys.stderr = real
    yield raw
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()


def _lines(raw: io.BytesIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in raw.getvalue().decode().splitlines()]


def test_json_lines_carry_bound_context_level_and_time_in_order(captured: io.BytesIO) -> None:
    log = structlog.get_logger("t").bind()
    assert isinstance(log, clawlog.JsonBoundLogger)
    structlog.contextvars.bind_contextvars(worker=3, request_id="from-context")
    log.info("access", request_id="given", status=200)
    log.debug("hidden")
    structlog.contextvars.bind_contextvars(late_key="x")  # a key bound after the first line
    log.warning("second %s", "arg")
    [first, second] = _lines(captured)
    assert list(first) == ["request_id", "status", "event", "worker", "level", "timestamp"]
    assert first["request_id"] == "given"  # the call's own value wins over the context
    assert first["worker"] == 3 and first["level"] == "info"
    assert str(first["timestamp"]).endswith("Z")
    assert second["event"] == "second arg" and second["late_key"] == "x"
    assert second["level"] == "warning" and second["request_id"] == "from-context"


def test_exceptions_are_rendered_and_lines_gathered_inside_a_loop(captured: io.BytesIO) -> None:
    log = structlog.get_logger("t").bind()

    async def in_loop() -> int:
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
        log.info("after")
        written = len(captured.getvalue())
        await asyncio.sleep(0)  # gathered lines are written at the loop's next turn
        return written

    assert asyncio.run(in_loop()) == 0
    failed, after = _lines(captured)
    assert failed["level"] == "error" and "ValueError: boom" in str(failed["exception"])
    assert after["event"] == "after"


def test_another_processor_chain_takes_the_general_path(captured: io.BytesIO) -> None:
    seen: list[dict[str, object]] = []

    def keep(logger: object, name: str, event_dict: dict[str, object]) -> str:
        seen.append(dict(event_dict))
        return json.dumps(event_dict)

    structlog.configure(processors=[keep], cache_logger_on_first_use=False)
    structlog.get_logger("t").info("plain", a=1)
    assert seen == [{"a": 1, "event": "plain"}]


def test_gathered_lines_go_to_a_file_in_one_write_and_to_a_pipe_in_pipe_buf_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[int] = []
    real_write = os.write

    def counting(fd: int, data: bytes | memoryview) -> int:
        writes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", counting)
    line = b'{"event":"access","pad":"' + b"p" * 250 + b'"}'

    async def gather(writer: clawlog.LineWriter) -> None:
        for _ in range(40):  # ~11 KB: more than one pipe buffer
            writer.msg(line)
        await asyncio.sleep(0.01)

    with (tmp_path / "log").open("wb") as file:
        asyncio.run(gather(clawlog.LineWriter(file, sys.stderr)))
    assert writes == [40 * (len(line) + 1)]
    assert (tmp_path / "log").read_bytes() == (line + b"\n") * 40

    writes.clear()
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    with os.fdopen(write_end, "wb") as pipe:
        asyncio.run(gather(clawlog.LineWriter(pipe, sys.stderr)))
    received = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(read_end, 65536):
            received += chunk
    os.close(read_end)
    assert len(writes) > 1 and max(writes) <= select.PIPE_BUF
    assert received == (line + b"\n") * 40


def test_a_prepared_line_writes_what_the_logger_would(captured: io.BytesIO) -> None:
    log = structlog.get_logger("t").bind()
    fields = {"allow": True, "reason": "allow: rule 0 \"q\" é", "user": None, "n": 3}
    line = clawlog.PreparedLine("authorization", fields)

    def both(**tail: object) -> tuple[bytes, bytes]:
        start = len(captured.getvalue())
        line.info(log, "rid-1", **tail)
        log.info("authorization", request_id="rid-1", **fields, **tail)
        prepared, general = captured.getvalue()[start:].splitlines()
        cut = [re.sub(rb'"timestamp": ?"[^"]*"', b'"timestamp":""', x) for x in (prepared, general)]
        return cut[0], cut[1]

    prepared, general = both()
    assert prepared == general
    prepared, general = both(status=200, duration_ms=0.31)
    assert prepared == general and b'"status":200,"duration_ms":0.31,"event"' in prepared
    structlog.contextvars.bind_contextvars(worker=1, reason="context loses to the field")
    prepared, general = both(status=404)
    assert prepared == general and b'"worker":1' in prepared
    assert b"context loses" not in prepared
    structlog.contextvars.bind_contextvars(level="bound")  # a key the line adds itself
    prepared, general = both()
    assert prepared == general and prepared.count(b'"level"') == 1
    structlog.contextvars.clear_contextvars()
    prepared, general = both(big=2**70)  # beyond orjson: the standard library renders it
    assert prepared == general
    bound = log.bind(extra="x")
    start = len(captured.getvalue())
    line.info(bound, "rid-2")
    assert b'"extra":"x"' in captured.getvalue()[start:]


def test_emit_writes_what_info_writes(captured: io.BytesIO) -> None:
    log = structlog.get_logger("t").bind()
    fields = {"method": "GET", "path": "/a b", "user": "ada@example.com"}
    line = clawlog.PreparedLine("access", fields, tail=("status", "duration_ms"))

    def last() -> bytes:
        text = captured.getvalue().splitlines()[-1]
        return re.sub(rb'"timestamp": ?"[^"]*"', b'"timestamp":""', text)

    line.info(log, "rid-1", status=502, duration_ms=1.5)
    by_info = last()
    line.emit(log, "rid-1", 502, 1.5)
    assert last() == by_info and b'"status":502,"duration_ms":1.5,"event":"access"' in by_info
    structlog.contextvars.bind_contextvars(worker=2, status="the argument wins")
    try:
        line.emit(log, "rid-2", 200, 0.25)
        with_context = last()
        line.info(log, "rid-2", status=200, duration_ms=0.25)
        assert last() == with_context and b'"worker":2' in with_context
        assert b"the argument wins" not in with_context
    finally:
        structlog.contextvars.clear_contextvars()
    with pytest.raises(TypeError):
        line.emit(log, "rid-3", 200)


def test_a_prepared_line_respects_the_level(captured: io.BytesIO) -> None:
    sys.stderr, real = io.TextIOWrapper(captured, encoding="utf-8"), sys.stderr
    try:
        clawlog.configure("warning", "json")
    finally:
        sys.stderr = real
    clawlog.PreparedLine("access", {"a": 1}).info(structlog.get_logger("t").bind(), "r")
    assert captured.getvalue() == b""


def test_a_prepared_line_through_the_console_logger_takes_the_general_path(
    captured: io.BytesIO,
) -> None:
    text = io.StringIO()
    sys.stderr, real = text, sys.stderr
    try:
        clawlog.configure("info", "console")
    finally:
        sys.stderr = real
    clawlog.PreparedLine("access", {"path": "/p"}).info(structlog.get_logger("t"), "rid-c")
    assert "access" in text.getvalue() and "rid-c" in text.getvalue()


def test_console_lines_are_written_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers share one stderr: a console line and its newline must go in one write,
    or two workers' lines interleave (print() writes them apart)."""
    writes: list[bytes] = []
    real_write = os.write

    def recording(fd: int, data: bytes | memoryview) -> int:
        writes.append(bytes(data))
        return real_write(fd, data)

    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as stream:
        sys.stderr, real = stream, sys.stderr
        try:
            clawlog.configure("info", "console")
        finally:
            sys.stderr = real
        monkeypatch.setattr(os, "write", recording)
        structlog.get_logger("t").info("listening", worker=1)
        structlog.get_logger("t").info("listening", worker=2)
        monkeypatch.undo()
    os.close(read_end)
    structlog.reset_defaults()
    assert len(writes) == 2
    assert all(w.endswith(b"\n") and w.count(b"\n") == 1 and b"listening" in w for w in writes)
